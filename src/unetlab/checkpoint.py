"""Saving and loading models safely.

A model file (``model.pt``) is a plain dictionary saved with ``torch.save``::

    {"format": "unetlab-model", "version": 1, "config": UNet.config(), "state_dict": {...},
     "meta": {...}}

It is loaded with ``torch.load(weights_only=True)``: only tensors and plain containers are
unpickled, never arbitrary objects, so a crafted file cannot run code.
"""
from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_torch_save
from .errors import UnetlabError
from .model import UNet

__all__ = ["save_model", "load_model", "safe_load", "MODEL_FORMAT"]

MODEL_FORMAT = "unetlab-model"


def safe_load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` with clear errors naming the file."""
    path = Path(path)
    if not path.exists():
        from .shipped import pretrained_models

        names = ", ".join(sorted(pretrained_models()))
        shipped = f" (nor a shipped model: {names})" if names and os.sep not in str(path) else ""
        raise UnetlabError(f"{path}: no such file{shipped}")
    if path.is_dir():
        raise UnetlabError(f"{path}: is a folder, expected a model/checkpoint file")
    try:
        with open(path, "rb") as f:
            magic = f.read(2)
    except OSError as e:
        raise UnetlabError(f"{path}: cannot read ({e.strerror or e})") from None
    if magic[:2] != b"PK" and magic[:1] != b"\x80":
        raise UnetlabError(f"{path}: not a PyTorch model/checkpoint file (it is empty or holds "
                           "something else, e.g. text or an image)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnetlabError(f"{path}: refused to load: the file holds objects other than weights "
                           f"({_unpickling_reason(e)}); unetlab never runs code from model "
                           f"files") from None
    except (RuntimeError, zipfile.BadZipFile, EOFError, OSError, ValueError, AttributeError,
            KeyError, IndexError, TypeError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnetlabError(f"{path}: not a readable PyTorch file ({msg[:200]})") from None


def _unpickling_reason(e: BaseException) -> str:
    """The useful part of torch's weights_only error (e.g. 'Unsupported global: GLOBAL
    io.open'), one line, without the terminal escape codes torch puts in it."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    m = re.search(r"WeightsUnpickler error:\s*(.+?)(?: was not an allowed global|\n\n|$)",
                  text, flags=re.S)
    reason = (m.group(1) if m else text).strip() or "unsupported content"
    return " ".join(reason.split())[:160]


def save_model(net: UNet, path: str | os.PathLike, meta: dict | None = None) -> None:
    """Write ``net`` (architecture + weights) to ``path`` atomically."""
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    atomic_torch_save({"format": MODEL_FORMAT, "version": 1, "config": net.config(),
                       "state_dict": state, "meta": dict(meta or {})}, path)


def model_from_state(obj: Any, path: str | os.PathLike = "<memory>") -> UNet:
    """Build a UNet from a loaded model dict (or a training checkpoint holding one)."""
    if isinstance(obj, dict) and obj.get("format") != MODEL_FORMAT and "model" in obj:
        obj = obj["model"]
    if not isinstance(obj, dict) or obj.get("format") != MODEL_FORMAT:
        raise UnetlabError(f"{path}: not a unetlab model file (no '{MODEL_FORMAT}' header)")
    try:
        net = UNet.from_config(dict(obj["config"]))
    except (KeyError, TypeError, ValueError) as e:
        raise UnetlabError(f"{path}: invalid model configuration ({e})") from None
    try:
        net.load_state_dict(obj["state_dict"])
    except (RuntimeError, KeyError) as e:
        first = str(e).strip().splitlines()[0]
        raise UnetlabError(f"{path}: weights do not match the architecture ({first[:200]})") from None
    return net


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> UNet:
    """Load a model written by :func:`save_model` (or a training checkpoint, a bioimage.io
    package written by :func:`unetlab.bioimageio.export_bioimageio`, or the name of a shipped
    model, :mod:`unetlab.shipped`), in eval mode."""
    from .bioimageio import is_bioimageio_package, load_bioimageio
    from .shipped import resolve_model_path

    path = resolve_model_path(path)
    if is_bioimageio_package(path):
        return load_bioimageio(path).to(map_location)
    net = model_from_state(safe_load(path, map_location), path)
    return net.eval()
