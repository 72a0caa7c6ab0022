"""The one PNG and TIFF writer of the package: arrays are written as given, atomically.

Both functions write through :func:`unetlab.atomic.atomic_path`, so an interrupted or failed
write leaves no partial file and an existing file untouched; failures are raised as
:class:`unetlab.errors.UnetlabError` naming ``path``.

* :func:`write_png` — (H, W) greyscale or (H, W, 3) RGB / (H, W, 4) RGBA, uint8 or uint16
  (bool is written as 0/255 uint8).
* :func:`write_tiff` — any uint8 / uint16 / int32 / float32 … array: (H, W), a stack (S, H, W),
  or (H, W, 3) RGB; extra keyword arguments go to ``tifffile.imwrite`` (e.g. ``resolution``,
  ``metadata``).
* :func:`check_outputs` — the rule every verb applies before writing: never an input file, and
  an existing file only when asked to overwrite it.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .atomic import atomic_path
from .errors import UnetlabError

__all__ = ["write_png", "write_tiff", "check_outputs"]


def write_png(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` as a PNG: (H, W), (H, W, 3) or (H, W, 4); uint8, uint16 (bool → 0/255)."""
    a = np.asarray(array)
    if a.dtype == bool:
        a = a.astype(np.uint8) * np.uint8(255)
    if a.dtype not in (np.uint8, np.uint16):
        raise UnetlabError(f"{path}: PNG stores uint8 or uint16 pixels, got {a.dtype} "
                           "(write float data as TIFF)")
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (3, 4))):
        raise UnetlabError(f"{path}: PNG needs a (H, W), (H, W, 3) or (H, W, 4) array, "
                           f"got shape {a.shape}")
    import imageio.v3 as iio

    with atomic_path(path, suffix=".png") as tmp:
        iio.imwrite(tmp, np.ascontiguousarray(a), extension=".png")


def write_tiff(path: str | os.PathLike, array: np.ndarray, **metadata) -> None:
    """Write ``array`` as a TIFF with its dtype: (H, W) and stacks (S, H, W) as greyscale pages,
    (H, W, 3) uint8 as RGB. ``metadata`` is passed to ``tifffile.imwrite``."""
    import tifffile

    a = np.asarray(array)
    rgb = a.ndim == 3 and a.shape[-1] == 3 and a.dtype == np.uint8
    metadata.setdefault("photometric", "rgb" if rgb else "minisblack")
    with atomic_path(path, suffix=".tif") as tmp:
        tifffile.imwrite(tmp, a, **metadata)


def _input_files(inputs) -> dict[str, str]:
    """{real path: as given} of the input files; a folder stands for the files directly in it."""
    found: dict[str, str] = {}
    for i in inputs:
        p = Path(i)
        files = [f for f in p.iterdir() if f.is_file()] if p.is_dir() else [p]
        for f in files:
            found.setdefault(os.path.realpath(f), str(f))
    return found


def check_outputs(outputs, inputs=(), overwrite: bool = False) -> None:
    """Refuse before anything is written: an output that is one of the ``inputs`` (files, or
    folders standing for the files in them) even with ``overwrite``, an output that is a folder,
    and an existing output file unless ``overwrite``. Raises :class:`UnetlabError` naming it."""
    ins = _input_files(inputs)
    for o in outputs:
        o = Path(o)
        real = os.path.realpath(o)
        if real in ins:
            raise UnetlabError(f"{o}: is the input {ins[real]}; writing it would destroy the "
                               "input, choose another output")
        if o.is_dir():
            raise UnetlabError(f"{o}: is a folder, expected an output file name")
        if o.exists() and not overwrite:
            raise UnetlabError(f"{o}: already exists; pass --overwrite (overwrite=True) to "
                               "replace it")
