"""Models shipped inside the package, ready to predict without training (docs/models.md is
their model card).

Python::

    import unetlab
    net = unetlab.pretrained("em-membranes")        # a UNet in eval mode
    unetlab.pretrained_models()                      # {name: ShippedModel}

Command line: ``unetlab models`` lists them; every verb that takes a model file also takes a
shipped model's name (``unetlab predict em-membranes IMAGES --out DIR``, or
``--model em-membranes``). The files are unetlab model files (:func:`unetlab.save_model`),
loaded with ``torch.load(weights_only=True)`` like any other.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import UnetlabError

__all__ = ["ShippedModel", "pretrained", "pretrained_models", "shipped_model_path",
           "resolve_model_path", "MODELS_DIR"]

#: folder of the shipped model files (package data)
MODELS_DIR = Path(__file__).resolve().parent / "models"


@dataclass(frozen=True)
class ShippedModel:
    """One shipped model: its file in :data:`MODELS_DIR` and what it is for."""
    name: str
    file: str
    summary: str            # one line: what it segments
    data: str               # what it was trained on
    pixel_size: str         # the pixel size of the training images (where known)
    output: str             # what the output channels mean
    licence: str            # of the weights (and the data's terms)

    @property
    def path(self) -> Path:
        return MODELS_DIR / self.file


_SHIPPED = (
    ShippedModel(
        name="em-membranes",
        file="em-membranes.pt",
        summary="cell membranes in serial-section TEM of neural tissue (2D, one channel)",
        data="ISBI 2012 EM segmentation challenge, training slices 00-24 (512² ssTEM of the "
             "Drosophila first-instar larva ventral nerve cord)",
        pixel_size="4×4 nm (section thickness 50 nm)",
        output="2 classes: 0 = membrane, 1 = cell interior; P(cell) is the probability map",
        licence="weights: MIT (as unetlab); data: the ISBI 2012 challenge's (cite Cardona et al. "
                "2010 and Arganda-Carreras et al. 2015; PNG export of zhixuhao/unet, MIT)"),
)


def pretrained_models() -> dict[str, ShippedModel]:
    """{name: :class:`ShippedModel`} of the models whose files are installed."""
    return {m.name: m for m in _SHIPPED if m.path.is_file()}


def shipped_model_path(name: str) -> Path:
    """The file of shipped model ``name``; a :class:`UnetlabError` listing the shipped names
    otherwise."""
    models = pretrained_models()
    if name not in models:
        have = ", ".join(sorted(models)) or "none installed"
        raise UnetlabError(f"{name!r}: no shipped model of that name (shipped: {have}; "
                           f"`unetlab models` lists them)")
    return models[name].path


def resolve_model_path(model: str | os.PathLike) -> str | os.PathLike:
    """``model`` itself when it names an existing file or folder, else the file of the shipped
    model of that name (a file of the same name always wins), else ``model`` unchanged (so the
    caller's 'no such file' error names what the user typed)."""
    if isinstance(model, (str, os.PathLike)) and not Path(model).exists():
        models = pretrained_models()
        if str(model) in models:
            return models[str(model)].path
    return model


def pretrained(name: str = "em-membranes", device: str = "cpu"):
    """The shipped model ``name`` as a :class:`~unetlab.model.UNet` in eval mode on
    ``device`` (weights loaded with ``weights_only=True``)."""
    from .checkpoint import load_model

    return load_model(shipped_model_path(name), map_location=device)
