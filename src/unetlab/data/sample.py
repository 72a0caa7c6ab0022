"""One training image with its instance labels (:class:`Sample`), the unit every later step
(weights, tile sampler, training) works on.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UnetlabError

__all__ = ["Sample"]


@dataclass(eq=False)
class Sample:
    """One training image with its instance labels.

    image:     (C, H, W) float32, normalised (:func:`normalize_image`); a (H, W) array is accepted
               and becomes (1, H, W). Must be finite.
    instances: (H, W) int32; 0 = background, > 0 = instance ids (need not be contiguous),
               -1 = unlabelled / ignored pixels (partial annotation). Any integer dtype whose values
               fit is converted to int32.
    name:      a short name for logs and pictures (e.g. the file stem).
    path:      the image file it came from, or None (generated data).
    """

    image: np.ndarray
    instances: np.ndarray
    name: str = ""
    path: str | None = None

    def __post_init__(self) -> None:
        who = f"sample {self.name!r}" if self.name else "sample"
        img = np.asarray(self.image)
        if img.ndim == 2:
            img = img[None]
        if img.ndim != 3:
            raise UnetlabError(f"{who}: image must be (C, H, W), got shape {img.shape}")
        if not (np.issubdtype(img.dtype, np.floating) or np.issubdtype(img.dtype, np.integer)):
            raise UnetlabError(f"{who}: image must be a real number array, got dtype {img.dtype}")
        img = np.ascontiguousarray(img, dtype=np.float32)
        if img.size == 0:
            raise UnetlabError(f"{who}: image is empty, shape {img.shape}")
        if not np.isfinite(img).all():
            raise UnetlabError(f"{who}: image contains NaN or Inf")
        ins = np.asarray(self.instances)
        if ins.ndim != 2:
            raise UnetlabError(f"{who}: instances must be (H, W), got shape {ins.shape}")
        if ins.shape != img.shape[1:]:
            raise UnetlabError(
                f"{who}: instances shape {ins.shape} does not match image shape {img.shape[1:]}")
        if ins.dtype != np.int32:
            if not np.issubdtype(ins.dtype, np.integer) and ins.dtype != bool:
                raise UnetlabError(f"{who}: instances must be integers, got dtype {ins.dtype}")
            if ins.size and (ins.min() < -1 or ins.max() > np.iinfo(np.int32).max):
                raise UnetlabError(f"{who}: instance ids must be in [-1, 2^31 - 1]")
            ins = ins.astype(np.int32)
        elif ins.size and ins.min() < -1:
            raise UnetlabError(f"{who}: instances must be >= -1 (-1 = ignored), got {ins.min()}")
        self.image = img
        self.instances = np.ascontiguousarray(ins)
        self.name = str(self.name)
        self.path = None if self.path is None else str(self.path)

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of the sample."""
        return self.instances.shape  # type: ignore[return-value]

    @property
    def channels(self) -> int:
        return self.image.shape[0]
