"""Result writers: PNG and TIFF files written atomically (:mod:`unetlab.atomic`), the array as
given (uint8 / uint16 / float32; RGB (H, W, 3) allowed)."""
from __future__ import annotations

import os

import numpy as np

from .atomic import atomic_path

__all__ = ["write_png", "write_tiff"]


def write_png(path: str | os.PathLike, array: np.ndarray) -> None:
    """``array`` ((H, W) or (H, W, 3), uint8 or uint16) as a PNG file, atomically."""
    from PIL import Image

    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(np.ascontiguousarray(array)).save(tmp, format="PNG")


def write_tiff(path: str | os.PathLike, array: np.ndarray) -> None:
    """``array`` as a TIFF file (tifffile), atomically."""
    import tifffile

    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, np.asarray(array))
