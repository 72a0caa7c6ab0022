"""Random training tiles for the overlap-tile strategy (Sec. 2, Fig. 2).

:class:`TileSampler` draws random training tiles: the network input (T×T) with mirror-padded
context where the image ends, and the matching centre crop (O×O) of class labels and weights, in
which pixels outside the image are ignored (class IGNORE_INDEX, weight 0) — labels are never
mirrored. Volumes work the same way on every axis: (C, Tz, Ty, Tx) inputs, (Oz, Oy, Ox)
targets (the 3D U-Net of Çiçek et al. 2016 uses valid convolutions too).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from ..errors import UnetlabError
from ..tiling import reflect_indices
from ..weights import IGNORE_INDEX
from .sample import Sample

__all__ = ["TileSampler"]


def _sizes(v: int | Sequence[int], what: str, ndim: int = 2) -> tuple[int, ...]:
    if isinstance(v, (int, np.integer)):
        t = (int(v),) * ndim
    else:
        t = tuple(int(x) for x in v)
        if len(t) != ndim:
            axes = "(height, width)" if ndim == 2 else "(depth, height, width)"
            raise UnetlabError(f"{what}: expected one size or {axes}, got {v!r}")
    if min(t) < 1:
        raise UnetlabError(f"{what}: sizes must be >= 1, got {v!r}")
    return t


class TileSampler:
    """Random training tiles: network input with mirrored context, targets of the centre crop.

    samples:    the training :class:`Sample` list: all images or all volumes.
    tile_size:  T, the network input size (int or (Th, Tw); volumes: int or (Tz, Ty, Tx)).
    out_size:   O, the network output size (O = T for "same" padding; T - 2·context for "valid",
                e.g. 572 → 388 for the paper's network). T - O must be even.
    targets_fn: ``targets_fn(instances (H, W) int32) -> (classes (H, W) uint8 with 255 = ignore,
                weights (H, W) float32)``, e.g. ``functools.partial(weights.training_targets,
                w0=10, sigma=5)``. Computed once per sample (lazily, cached). Pixels whose instance
                id is -1 are forced to class IGNORE_INDEX, weight 0 afterwards. A sample with a
                ``spacing`` (volumes read from files) is passed as
                ``targets_fn(instances, spacing=sample.spacing)``.
    augment:    optional ``augment(image (C,T,T), classes (T,T), weights (T,T), rng) -> same``
                applied to the FULL input-sized tile before the centre crop.
    weighting:  "area" (default): a sample is picked with probability proportional to its
                area H·W, so every pixel of the data set is about equally likely to be trained
                on; "uniform": every sample equally likely.

    :meth:`sample` returns ``(image (C, T, T) float32, classes (O, O) uint8, weights (O, O)
    float32)`` (volumes: ``(C, Tz, Ty, Tx)``, ``(Oz, Oy, Ox)``, ``(Oz, Oy, Ox)``). The output
    window (O×O) is placed uniformly at random among the positions inside the image (or, where
    the image is smaller than O, among the positions that contain the image); the input tile
    adds ``(T - O) / 2`` pixels of context on each side, taken from the image where it exists
    and mirrored (``numpy.pad(mode="reflect")``, repeated) where it does not — the
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
        dims = {s.ndim for s in self.samples}
        if len(dims) != 1:
            raise UnetlabError("training samples mix 2D images and 3D volumes; use one kind")
        self.ndim = dims.pop()
        self.tile_size = _sizes(tile_size, "tile_size", self.ndim)
        self.out_size = _sizes(out_size, "out_size", self.ndim)
        ctx = []
        for t, o in zip(self.tile_size, self.out_size):
            if o > t or (t - o) % 2:
                raise UnetlabError(f"tile_size {t} and out_size {o}: the output must fit in the "
                                   "tile with equal context on both sides (T - O even, >= 0)")
            ctx.append((t - o) // 2)
        self.context = tuple(ctx)
        self.targets_fn = targets_fn
        self.augment = augment
        if weighting not in ("area", "uniform"):
            raise UnetlabError(f"weighting: must be 'area' or 'uniform', got {weighting!r}")
        self.weighting = weighting
        areas = np.array([np.prod(s.shape, dtype=np.float64) for s in self.samples],
                         dtype=np.float64)
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
        if s.spacing is None:
            classes, weights = self.targets_fn(s.instances)
        else:
            classes, weights = self.targets_fn(s.instances, spacing=s.spacing)
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
        """One random tile: (image (C, T, T) float32, classes (O, O) uint8, weights (O, O) f32);
        volumes: (C, Tz, Ty, Tx), (Oz, Oy, Ox), (Oz, Oy, Ox).

        ``index`` fixes the sample (default: drawn by ``weighting``)."""
        rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
        i = int(rng.choice(len(self.samples), p=self.probabilities)) if index is None else index
        s = self.samples[i]
        start = [int(rng.integers(min(0, n - o), max(0, n - o) + 1))
                 for n, o in zip(s.shape, self.out_size)]
        return self.tile_at(i, *start, rng=rng)

    def tile_at(self, index: int, *start, rng: np.random.Generator | None = None):
        """The tile whose OUTPUT window starts at ``start`` = (y0, x0), or (z0, y0, x0) for
        volumes, of sample ``index`` (may be negative or extend past the image). ``rng`` is
        passed to ``augment`` (for images also accepted as a third positional argument)."""
        if len(start) == self.ndim + 1:
            *start, rng = start
        if len(start) != self.ndim:
            raise UnetlabError(f"tile_at: expected {self.ndim} start coordinates, got "
                               f"{len(start)}")
        s = self.samples[index]
        classes, weights = self.targets(index)
        first = [int(a) - c for a, c in zip(start, self.context)]  # input tile corner
        idx = [reflect_indices(f, f + t, n) for f, t, n in zip(first, self.tile_size, s.shape)]
        image = s.image[(slice(None),) + np.ix_(*idx)]
        if self.augment is not None:
            cls_t, w_t = _window(classes, weights, first, self.tile_size)  # the full T window
            image, cls_t, w_t = self.augment(image, cls_t, w_t, rng)
            image = np.ascontiguousarray(image, dtype=np.float32)
            crop = tuple(slice(c, c + o) for c, o in zip(self.context, self.out_size))
            cls_out = np.ascontiguousarray(np.asarray(cls_t)[crop], dtype=np.uint8)
            w_out = np.ascontiguousarray(np.asarray(w_t)[crop], dtype=np.float32)
            return image, cls_out, w_out
        cls_out, w_out = _window(classes, weights, [int(a) for a in start], self.out_size)
        return np.ascontiguousarray(image, dtype=np.float32), cls_out, w_out


def _window(classes: np.ndarray, weights: np.ndarray, start: Sequence[int],
            size: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """classes/weights of the window [start, start + size) on every axis; outside the image
    IGNORE_INDEX / 0."""
    c = np.full(tuple(size), IGNORE_INDEX, dtype=np.uint8)
    wt = np.zeros(tuple(size), dtype=np.float32)
    src, dst = [], []
    for a0, m, n in zip(start, size, classes.shape):
        lo, hi = max(a0, 0), min(a0 + m, n)
        if hi <= lo:
            return c, wt
        src.append(slice(lo, hi))
        dst.append(slice(lo - a0, hi - a0))
    c[tuple(dst)] = classes[tuple(src)]
    wt[tuple(dst)] = weights[tuple(src)]
    return c, wt
