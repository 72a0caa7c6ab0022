"""unetlab: the U-Net of Ronneberger, Fischer and Brox (MICCAI 2015), done right.

Public API (imported lazily, so ``import unetlab`` is fast)::

    from unetlab import UNet, load_model, weight_map, elastic_deform, predict_tiled, metrics
    net = UNet.paper()                      # the 2015 network, 572 -> 388
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "UNet": "model",
    "GeometryError": "model",
    "UnetlabError": "errors",
    "save_model": "checkpoint",
    "load_model": "checkpoint",
    "weight_map": "weights",
    "border_weight_map": "weights",
    "class_balance_map": "weights",
    "separate_instances": "weights",
    "elastic_deform": "augment",
    "Augment": "augment",
    "touching_cells": "synthetic",
    "weighted_cross_entropy": "loss",
    "train": "training",
    "TrainConfig": "training",
    "predict_tiled": "predict",
    "predict_files": "prediction_io",
    "open_image": "sources",
    "predict_dask": "dask_predict",
    "to_instances": "postprocess",
    "label_to_instances": "data",
    "normalize_image": "data",
    "evaluate": "evaluation",
    "pretrained": "shipped",
    "pretrained_models": "shipped",
}
_SUBMODULES = {"model", "weights", "augment", "data", "synthetic", "loss", "training", "tiling",
               "predict", "postprocess", "metrics", "report", "checkpoint", "ddp", "dask_predict",
               "engine", "sources", "prediction_io", "hardware", "bioimageio", "errors",
               "atomic", "cli", "evaluation", "writers", "elastic", "shipped"}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        mod = importlib.import_module(f".{_EXPORTS[name]}", __name__)
        value = getattr(mod, name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'unetlab' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__) | _SUBMODULES)
