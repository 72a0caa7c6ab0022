"""One training image (or volume) with its instance labels (:class:`Sample`), the unit every
later step (weights, tile sampler, training) works on.
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
               and becomes (1, H, W). Must be finite. Volumes (when ``instances`` is
               (Z, Y, X)): (C, Z, Y, X), or (Z, Y, X) which becomes (1, Z, Y, X).
    instances: (H, W) or (Z, Y, X) int32; 0 = background, > 0 = instance ids (need not be
               contiguous), -1 = unlabelled / ignored pixels (partial or sparse annotation). Any
               integer dtype whose values fit is converted to int32.
    name:      a short name for logs and pictures (e.g. the file stem).
    path:      the image file it came from, or None (generated data).
    spacing:   voxel size per spatial axis, e.g. (dz, dy, dx) in µm as the file declares it, or
               None (1 per axis; what 2D readers give).
    """

    image: np.ndarray
    instances: np.ndarray
    name: str = ""
    path: str | None = None
    spacing: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        who = f"sample {self.name!r}" if self.name else "sample"
        nd = 3 if np.ndim(self.instances) == 3 else 2
        img = np.asarray(self.image)
        if img.ndim == nd:
            img = img[None]
        if img.ndim != nd + 1:
            want = "(C, H, W)" if nd == 2 else "(C, Z, Y, X)"
            raise UnetlabError(f"{who}: image must be {want}, got shape {img.shape}")
        if not (np.issubdtype(img.dtype, np.floating) or np.issubdtype(img.dtype, np.integer)):
            raise UnetlabError(f"{who}: image must be a real number array, got dtype {img.dtype}")
        img = np.ascontiguousarray(img, dtype=np.float32)
        if img.size == 0:
            raise UnetlabError(f"{who}: image is empty, shape {img.shape}")
        if not np.isfinite(img).all():
            raise UnetlabError(f"{who}: image contains NaN or Inf")
        ins = np.asarray(self.instances)
        if ins.ndim not in (2, 3):
            raise UnetlabError(f"{who}: instances must be (H, W) or (Z, Y, X), got shape "
                               f"{ins.shape}")
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
        if self.spacing is not None:
            try:
                sp = tuple(float(v) for v in self.spacing)
            except (TypeError, ValueError):
                raise UnetlabError(f"{who}: spacing must be numbers, got "
                                   f"{self.spacing!r}") from None
            if len(sp) != ins.ndim or not all(np.isfinite(v) and v > 0 for v in sp):
                raise UnetlabError(f"{who}: spacing must be {ins.ndim} finite numbers > 0 "
                                   f"(one per axis of {ins.shape}), got {sp}")
            self.spacing = sp

    @property
    def shape(self) -> tuple[int, ...]:
        """(H, W) of the sample, or (Z, Y, X) of a volume."""
        return self.instances.shape  # type: ignore[return-value]

    @property
    def ndim(self) -> int:
        """Spatial dimensions: 2 (image) or 3 (volume)."""
        return self.instances.ndim

    @property
    def channels(self) -> int:
        return self.image.shape[0]
