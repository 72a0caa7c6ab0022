"""Random training tiles for the overlap-tile strategy (Sec. 2, Fig. 2).

:class:`TileSampler` draws random training tiles: the network input (T×T) with mirror-padded
context where the image ends, and the matching centre crop (O×O) of class labels and weights, in
which pixels outside the image are ignored (class IGNORE_INDEX, weight 0) — labels are never
mirrored.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from ..errors import UnetlabError
from ..tiling import reflect_indices
from ..weights import IGNORE_INDEX
from .sample import Sample

__all__ = ["TileSampler"]


def _pair(v: int | Sequence[int], what: str) -> tuple[int, int]:
    if isinstance(v, (int, np.integer)):
        t = (int(v), int(v))
    else:
        t = tuple(int(x) for x in v)  # type: ignore[assignment]
        if len(t) != 2:
            raise UnetlabError(f"{what}: expected one size or (height, width), got {v!r}")
    if min(t) < 1:
        raise UnetlabError(f"{what}: sizes must be >= 1, got {v!r}")
    return t  # type: ignore[return-value]


class TileSampler:
    """Random training tiles: network input with mirrored context, targets of the centre crop.

    samples:    the training :class:`Sample` list.
    tile_size:  T, the network input size (int or (Th, Tw)).
    out_size:   O, the network output size (O = T for "same" padding; T - 2·context for "valid",
                e.g. 572 → 388 for the paper's network). T - O must be even.
    targets_fn: ``targets_fn(instances (H, W) int32) -> (classes (H, W) uint8 with 255 = ignore,
                weights (H, W) float32)``, e.g. ``functools.partial(weights.training_targets,
                w0=10, sigma=5)``. Computed once per sample (lazily, cached). Pixels whose instance
                id is -1 are forced to class IGNORE_INDEX, weight 0 afterwards.
    augment:    optional ``augment(image (C,T,T), classes (T,T), weights (T,T), rng) -> same``
                applied to the FULL input-sized tile before the centre crop.
    weighting:  "area" (default): a sample is picked with probability proportional to its
                area H·W, so every pixel of the data set is about equally likely to be trained
                on; "uniform": every sample equally likely.

    :meth:`sample` returns ``(image (C, T, T) float32, classes (O, O) uint8, weights (O, O)
    float32)``. The output window (O×O) is placed uniformly at random among the positions inside
    the image (or, where the image is smaller than O, among the positions that contain the image);
    the input tile adds ``(T - O) / 2`` pixels of context on each side, taken from the image where
    it exists and mirrored (``numpy.pad(mode="reflect")``, repeated) where it does not — the
    paper's overlap-tile strategy (Sec. 2, Fig. 2). Targets outside the image are ignored (class
    IGNORE_INDEX, weight 0); labels are never mirrored. Deterministic given ``rng``; picklable if
    ``targets_fn`` and ``augment`` are.
    """

    def __init__(self, samples: Sequence[Sample], tile_size: int | Sequence[int],
                 out_size: int | Sequence[int], targets_fn: Callable[[np.ndarray], Any],
                 augment: Callable | None = None, weighting: str = "area"):
        self.samples = list(samples)
        if not self.samples:
            raise UnetlabError("tile sampler: no training samples")
        for s in self.samples:
            if not isinstance(s, Sample):
                raise TypeError(f"TileSampler expects Sample objects, got {type(s).__name__}")
        chans = {s.channels for s in self.samples}
        if len(chans) != 1:
            raise UnetlabError(f"training samples have different channel counts {sorted(chans)}")
        self.tile_size = _pair(tile_size, "tile_size")
        self.out_size = _pair(out_size, "out_size")
        ctx = []
        for t, o in zip(self.tile_size, self.out_size):
            if o > t or (t - o) % 2:
                raise UnetlabError(f"tile_size {t} and out_size {o}: the output must fit in the "
                                   "tile with equal context on both sides (T - O even, >= 0)")
            ctx.append((t - o) // 2)
        self.context = (ctx[0], ctx[1])
        self.targets_fn = targets_fn
        self.augment = augment
        if weighting not in ("area", "uniform"):
            raise UnetlabError(f"weighting: must be 'area' or 'uniform', got {weighting!r}")
        self.weighting = weighting
        areas = np.array([s.shape[0] * s.shape[1] for s in self.samples], dtype=np.float64)
        p = areas if weighting == "area" else np.ones_like(areas)
        self.probabilities = p / p.sum()
        self._targets: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(self.samples)

    @classmethod
    def for_network(cls, samples: Sequence[Sample], net: Any, tile_size: int,
                    targets_fn: Callable, augment: Callable | None = None,
                    **kw: Any) -> "TileSampler":
        """Sampler whose out_size is ``net.output_size(tile_size)`` (a :class:`unetlab.UNet`)."""
        return cls(samples, tile_size, net.output_size(tile_size), targets_fn, augment, **kw)

    def __len__(self) -> int:
        return len(self.samples)

    def targets(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(classes uint8, weights float32) of sample ``i``, computed once."""
        cached = self._targets[i]
        if cached is not None:
            return cached
        s = self.samples[i]
        classes, weights = self.targets_fn(s.instances)
        classes = np.asarray(classes)
        weights = np.asarray(weights, dtype=np.float32)
        if classes.shape != s.shape or weights.shape != s.shape:
            raise ValueError(f"targets_fn returned shapes {classes.shape}, {weights.shape} for "
                             f"sample {s.name!r} of shape {s.shape}")
        classes = classes.astype(np.uint8, copy=True)
        weights = weights.copy()
        ignored = s.instances < 0
        if ignored.any():
            classes[ignored] = IGNORE_INDEX
            weights[ignored] = 0.0
        cached = (classes, weights)
        self._targets[i] = cached
        return cached

    def precompute(self) -> "TileSampler":
        """Compute every sample's targets now (e.g. before forking data-loader workers)."""
        for i in range(len(self.samples)):
            self.targets(i)
        return self

    def sample(self, rng: np.random.Generator | int | None = None, index: int | None = None):
        """One random tile: (image (C, T, T) float32, classes (O, O) uint8, weights (O, O) f32).

        ``index`` fixes the sample (default: drawn by ``weighting``)."""
        rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
        i = int(rng.choice(len(self.samples), p=self.probabilities)) if index is None else index
        s = self.samples[i]
        h, w = s.shape
        oh, ow = self.out_size
        y0 = int(rng.integers(min(0, h - oh), max(0, h - oh) + 1))
        x0 = int(rng.integers(min(0, w - ow), max(0, w - ow) + 1))
        return self.tile_at(i, y0, x0, rng)

    def tile_at(self, index: int, y0: int, x0: int, rng: np.random.Generator | None = None):
        """The tile whose OUTPUT window starts at (y0, x0) of sample ``index`` (may be negative or
        extend past the image). ``rng`` is passed to ``augment``."""
        s = self.samples[index]
        classes, weights = self.targets(index)
        h, w = s.shape
        (th, tw), (oh, ow), (ch, cw) = self.tile_size, self.out_size, self.context
        iy = reflect_indices(y0 - ch, y0 - ch + th, h)
        ix = reflect_indices(x0 - cw, x0 - cw + tw, w)
        image = s.image[:, iy[:, None], ix[None, :]]
        if self.augment is not None:
            ty, tx = y0 - ch, x0 - cw  # targets for the full T×T window
            cls_t, w_t = _window(classes, weights, ty, tx, th, tw)
            image, cls_t, w_t = self.augment(image, cls_t, w_t, rng)
            image = np.ascontiguousarray(image, dtype=np.float32)
            cls_out = np.ascontiguousarray(np.asarray(cls_t)[ch:ch + oh, cw:cw + ow],
                                           dtype=np.uint8)
            w_out = np.ascontiguousarray(np.asarray(w_t)[ch:ch + oh, cw:cw + ow],
                                         dtype=np.float32)
            return image, cls_out, w_out
        cls_out, w_out = _window(classes, weights, y0, x0, oh, ow)
        return np.ascontiguousarray(image, dtype=np.float32), cls_out, w_out


def _window(classes: np.ndarray, weights: np.ndarray, y0: int, x0: int, hh: int,
            ww: int) -> tuple[np.ndarray, np.ndarray]:
    """classes/weights of the window [y0, y0+hh) × [x0, x0+ww); outside the image IGNORE_INDEX / 0."""
    h, w = classes.shape
    c = np.full((hh, ww), IGNORE_INDEX, dtype=np.uint8)
    wt = np.zeros((hh, ww), dtype=np.float32)
    sy0, sy1 = max(y0, 0), min(y0 + hh, h)
    sx0, sx1 = max(x0, 0), min(x0 + ww, w)
    if sy1 > sy0 and sx1 > sx0:
        c[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = classes[sy0:sy1, sx0:sx1]
        wt[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = weights[sy0:sy1, sx0:sx1]
    return c, wt
