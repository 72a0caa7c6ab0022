"""PNG and TIFF writers: arrays written as given, atomically (:func:`unetlab.atomic.atomic_path`).

* :func:`write_png` — (H, W), (H, W, 3) or (H, W, 4); uint8 or uint16.
* :func:`write_tiff` — any array as greyscale pages ((H, W) or (S, H, W)); (H, W, 3) uint8 as RGB.
"""
from __future__ import annotations

import os

import numpy as np

from .atomic import atomic_path

__all__ = ["write_png", "write_tiff"]


def write_png(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` as a PNG: (H, W), (H, W, 3) or (H, W, 4); uint8 or uint16."""
    import imageio.v3 as iio

    with atomic_path(path, suffix=".png") as tmp:
        iio.imwrite(tmp, np.ascontiguousarray(array), extension=".png")


def write_tiff(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` as a TIFF with its dtype ((H, W) / (S, H, W) greyscale, (H, W, 3) RGB)."""
    import tifffile

    a = np.asarray(array)
    rgb = a.ndim == 3 and a.shape[-1] == 3 and a.dtype == np.uint8
    with atomic_path(path, suffix=".tif") as tmp:
        tifffile.imwrite(tmp, a, photometric="rgb" if rgb else "minisblack")
