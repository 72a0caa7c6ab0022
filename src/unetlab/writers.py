"""The one PNG and TIFF writer of the package: arrays are written as given, atomically.

Both functions write through :func:`unetlab.atomic.atomic_path`, so an interrupted or failed
write leaves no partial file and an existing file untouched; failures are raised as
:class:`unetlab.errors.UnetlabError` naming ``path``.

* :func:`write_png` — (H, W) greyscale or (H, W, 3) RGB / (H, W, 4) RGBA, uint8 or uint16
  (bool is written as 0/255 uint8).
* :func:`write_tiff` — any uint8 / uint16 / int32 / float32 … array: (H, W), a stack (S, H, W),
  or (H, W, 3) RGB; extra keyword arguments go to ``tifffile.imwrite`` (e.g. ``resolution``,
  ``metadata``).
"""
from __future__ import annotations

import os

import numpy as np

from .atomic import atomic_path
from .errors import UnetlabError

__all__ = ["write_png", "write_tiff"]


def write_png(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` as a PNG: (H, W), (H, W, 3) or (H, W, 4); uint8 or uint16 (bool → 0/255)."""
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
