"""The tiled-inference engine (Ronneberger et al. 2015, Sec. 2, Fig. 2: the overlap-tile
strategy; Sec. 3.1/4: averaging over rotated and flipped versions of the input).

One loop for images and volumes (a ``spatial_dims=3`` network: Çiçek et al. 2016), used by
:func:`unetlab.predict.predict_tiled` (a whole image or volume) and by the Dask path
(:mod:`unetlab.dask_predict`, one output chunk at a time):

1. **plan** (:func:`plan_region`): for each transform g (a rotation/flip of the spatial axes,
   :func:`unetlab.tiling.tta_transforms`), tiles on the pooling lattice of g(image) that cover
   the requested output rectangle (see :mod:`unetlab.tiling`);
2. **read**: each input tile is read mirror-padded in image coordinates by a ``read(rect)``
   callable and transformed by g;
3. **run** (:class:`NetRunner`): batches of tiles through the network in eval mode, on the
   device, optionally channels-last (channels-last-3d for volumes), under the resolved
   precision (fp32, or bf16/fp16 autocast); the soft-max and the TTA sum are computed in float32;
4. **scatter**: the part each tile owns is transformed back by g⁻¹ and written (or added, with
   TTA) into ``out``, any writable array (numpy, memmap, zarr, a class-selecting view).

All sizes are pixels (voxels); rectangles are flat and half-open in image coordinates,
``(y0, y1, x0, x1)`` or ``(z0, z1, y0, y1, x0, x1)``.
"""
from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .errors import UnetlabError
from .hardware import autocast as precision_context
from .hardware import resolve_precision
from .tiling import (TileGeometry, Transform, choose_tile_size, from_dihedral,
                     image_rect_to_transform, invert_transform, apply_transform, plan_tiles,
                     transform_rect_to_image, tta_transforms)

__all__ = ["NetRunner", "TileJob", "TileEngine", "plan_region", "rect_to_dihedral",
           "balanced_tile", "CHANNELS_LAST_MIN_PIXELS", "CHANNELS_LAST_MIN_VOXELS"]

#: Tiles of at least this many input pixels run in channels-last memory format on CPU (2D).
CHANNELS_LAST_MIN_PIXELS = 192 * 192
#: Volume tiles of at least this many voxels run channels-last-3d on CPU (measured, PyTorch
#: 2.13, one thread: 0.4–0.8× as fast below 30³, 1.2–1.6× at 44³, 2–3.5× from 90³).
CHANNELS_LAST_MIN_VOXELS = 40 ** 3

Rect = tuple[int, ...]


def rect_to_dihedral(rect: Rect, shape: Sequence[int], g: tuple[bool, bool, bool]) -> Rect:
    """Map an image rectangle (y0, y1, x0, x1) to the coordinates of g(image) (the inverse of
    :func:`unetlab.tiling.dihedral_rect_to_image`); ``shape`` is the image's (H, W)."""
    return image_rect_to_transform(rect, shape, from_dihedral(g))


@dataclass(frozen=True)
class TileJob:
    """One tile of one transform: read ``inp`` (image coordinates, mirror-padded outside the
    image), apply ``g``; keep ``crop`` (the network output's rectangle, transform frame) and
    write it, transformed back, to ``own`` (image coordinates)."""

    g: Transform
    inp: Rect
    tile_in: tuple[int, ...]
    crop: Rect
    own: Rect


def plan_region(geom: TileGeometry, image_shape: Sequence[int], rect: Rect, g: Transform,
                tile_in: Sequence[int] | None) -> list[TileJob]:
    """The tiles of transform ``g`` that cover the output rectangle ``rect`` of an image of
    spatial shape ``image_shape``. Tiles start on the lattice of g(image), so the result
    equals one pass over the whole image (Sec. 2: seamless); ``tile_in`` (one size per axis)
    is the request in the image's frame (permuted like the axes), None for one tile per axis.
    A 2D triple of :data:`unetlab.tiling.DIHEDRAL` is accepted for ``g``."""
    if len(g) == 3 and all(isinstance(v, (bool, np.bool_)) for v in g):
        g = from_dihedral(g)
    perm = g[0]
    n = len(perm)
    u = image_rect_to_transform(rect, image_shape, g)
    lats = geom.lattices
    base = [(u[2 * i] // lats[i]) * lats[i] for i in range(n)]
    req = None if tile_in is None else tuple(tile_in[p] for p in perm)
    plan = plan_tiles(geom, [u[2 * i + 1] - base[i] for i in range(n)], req)
    ms = geom.margins if geom.padding == "same" else (0,) * n
    jobs = []
    for t in plan:
        own, crop, inp = [], [], []
        for i in range(n):
            lo = max(t.own[2 * i] + base[i], u[2 * i])
            hi = min(t.own[2 * i + 1] + base[i], u[2 * i + 1])
            if hi <= lo:
                break
            p = t.out[2 * i] + base[i]
            own += [lo, hi]
            crop += [ms[i] + lo - p, ms[i] + hi - p]
            inp += [t.inp[2 * i] + base[i], t.inp[2 * i + 1] + base[i]]
        else:
            jobs.append(TileJob(g, transform_rect_to_image(inp, image_shape, g), plan.tile_in,
                                tuple(crop), transform_rect_to_image(own, image_shape, g)))
    return jobs


def _tiles_along(geom: TileGeometry, size: int, tile: list[int], axis: int) -> tuple[int, int]:
    """(tile count, actual input size) along ``axis`` for an axis of ``size`` pixels and the
    requested ``tile`` (one size per axis), the other axes one pixel long (one tile)."""
    shape = [1] * len(tile)
    shape[axis] = size
    plan = plan_tiles(geom, tuple(shape), tuple(tile))
    return len(plan), int(plan.tile_in[axis])


def balanced_tile(geom: TileGeometry, shape: Sequence[int], tile: Sequence[int]
                  ) -> tuple[int, ...]:
    """The smallest input tile, axis by axis, that covers an image of ``shape`` with as few
    tiles as ``tile`` does (counted by :func:`unetlab.tiling.plan_tiles`); never larger.

    The largest tile that fits the memory budget can need as many tiles as a much smaller one:
    a 1024² image with 1180² tiles (996² outputs) takes 2 × 2 tiles overlapping by 968 pixels;
    700² tiles (516² outputs) also take 2 × 2, with 2.8× fewer input pixels. The result is the
    same (every valid tile is seamless, Sec. 2); only the work shrinks."""
    best = [int(t) for t in tile]
    for a, size in enumerate(int(s) for s in shape):
        n, best[a] = _tiles_along(geom, size, best, a)
        lo, hi = 1, best[a]                 # the smallest request that keeps n tiles
        while lo < hi:
            mid = (lo + hi) // 2
            if _tiles_along(geom, size, best[:a] + [mid] + best[a + 1:], a)[0] <= n:
                hi = mid
            else:
                lo = mid + 1
        best[a] = _tiles_along(geom, size, best[:a] + [hi] + best[a + 1:], a)[1]
    return tuple(best)


class NetRunner:
    """The network prepared for inference (eval mode, on ``device``, optionally channels-last)
    and restored on exit; calling it returns float32 soft-max probabilities (N, K, *spatial)
    of a batch (N, C, *spatial), the forward pass run under ``precision`` ("fp32", "bf16" or "fp16")."""

    def __init__(self, net, device, channels_last: bool, precision: str = "fp32"):
        self.net, self.device = net, torch.device(device)
        self.channels_last, self.precision = channels_last, precision
        dims = int(getattr(net, "spatial_dims", 2))
        self.memory_format = torch.channels_last_3d if dims == 3 else torch.channels_last

    def __enter__(self):
        net = self.net
        self.was_training = net.training
        self.saved = None
        p_dev = next(net.parameters()).device
        if self.device != p_dev:
            # never move the caller's network: work on a copy on the device
            self.run = copy.deepcopy(net).to(self.device)
        else:
            self.run = net
            if self.channels_last:
                self.saved = {n: p.data for n, p in net.named_parameters()}
        self.run.eval()
        if self.channels_last:
            self.run.to(memory_format=self.memory_format)
        return self

    def __exit__(self, *exc):
        if self.saved is not None:
            for n, p in self.net.named_parameters():
                p.data = self.saved[n]
        self.net.train(self.was_training)
        return False

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with precision_context(self.precision, self.device):
            logits = self.run(x)
        return torch.softmax(logits.float(), dim=1)


def _network_device(net, device) -> torch.device:
    """``device`` as a torch.device (None: where the network's weights are)."""
    if device is None:
        return next(net.parameters()).device
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UnetlabError("--device cuda: CUDA is not available on this machine")
    return device


class TileEngine:
    """Plan → read → run → scatter for one network, transform set and batch size.

    ``runner``: an entered :class:`NetRunner`; ``tta``: False (the identity), True (every
    rotation/flip the network admits: 8 in 2D, 48 or 16 in 3D — see
    :func:`unetlab.tiling.tta_transforms`, which also takes a count 8/16/48 and the voxel
    ``spacing``); ``batch_size``: image tiles per forward pass (× their transforms);
    ``tile_size``: requested input tile (one size per axis) or None (the largest that fits the
    memory budget, per region). Input buffers are reused across calls.
    """

    def __init__(self, runner: NetRunner, geom: TileGeometry, *, tta, batch_size: int,
                 tile_size: Sequence[int] | None, memory_budget: int | None = None,
                 spacing: Sequence[float] | None = None):
        self.runner, self.geom = runner, geom
        try:
            self.transforms = tta_transforms(geom, tta, spacing)
        except ValueError as e:
            raise UnetlabError(str(e)) from None
        self.identity = self.transforms[0]
        self.batch_size, self.tile_size = int(batch_size), tile_size
        self.memory_budget = memory_budget
        self._buffers: dict[tuple, torch.Tensor] = {}

    def jobs(self, image_shape: Sequence[int], rect: Rect) -> list[TileJob]:
        """All tile jobs for ``rect``, tile-major (a tile's transforms are neighbours)."""
        tile = self.tile_size
        if tile is None:
            region = tuple(rect[2 * i + 1] - rect[2 * i] for i in range(len(rect) // 2))
            tile = balanced_tile(self.geom, region, choose_tile_size(
                self.geom, region, batch=self.batch_size * len(self.transforms),
                budget=self.memory_budget))
        per_g = [plan_region(self.geom, image_shape, rect, g, tile) for g in self.transforms]
        return [j for group in itertools.zip_longest(*per_g) for j in group if j is not None]

    def _buffer(self, n: int, cin: int, spatial: tuple[int, ...]) -> torch.Tensor:
        key = (n, cin) + tuple(spatial)
        if key not in self._buffers:
            pin = self.runner.device.type == "cuda"
            b = torch.empty(key, dtype=torch.float32, pin_memory=pin)
            if self.runner.channels_last:
                b = b.contiguous(memory_format=self.runner.memory_format)
            self._buffers[key] = b
        return self._buffers[key]

    def predict_region(self, read: Callable[[Rect], np.ndarray], image_shape: Sequence[int],
                       rect: Rect, out: Any, *, origin: Sequence[int] | None = None,
                       lead: tuple = (), progress: Any = None) -> None:
        """Probabilities of the output rectangle ``rect`` of an image of spatial shape
        ``image_shape`` written into ``out[lead + (:, *(position - origin))]``.

        ``read(rect)`` returns the (C, *sizes) float32 input of an image rectangle,
        mirror-padded where it leaves the image. With TTA, ``out`` is zeroed tile by tile first
        and the mean of the transforms' terms is accumulated into it (float32); without, each
        pixel is written once. ``progress``: an object with ``update(n)`` counting image
        tiles."""
        jobs = self.jobs(image_shape, rect)
        tta = len(self.transforms) > 1
        origin = (0,) * len(image_shape) if origin is None else tuple(origin)
        target = _Target(out, lead, origin, 1.0 / len(self.transforms) if tta else None)
        if tta:
            for j in jobs:
                if j.g == self.identity:
                    target.zero(j.own)
        step = self.batch_size * len(self.transforms)
        for c0 in range(0, len(jobs), step):
            chunk = jobs[c0:c0 + step]
            self._run_chunk(chunk, read, target)
            if progress is not None:
                progress.update(sum(j.g == self.identity for j in chunk))

    def _run_chunk(self, chunk: list[TileJob], read, target: "_Target") -> None:
        groups: dict[tuple[int, ...], list[TileJob]] = {}
        for j in chunk:
            groups.setdefault(j.tile_in, []).append(j)
        for size, group in groups.items():
            first = read(group[0].inp)
            buf = self._buffer(len(group), first.shape[0], size)
            for i, j in enumerate(group):
                patch = first if i == 0 else read(j.inp)
                buf[i].copy_(apply_transform(torch.from_numpy(patch), j.g))
            prob = self.runner(buf.to(self.runner.device, non_blocking=True))
            for i, j in enumerate(group):
                box = tuple(slice(j.crop[2 * a], j.crop[2 * a + 1])
                            for a in range(len(j.crop) // 2))
                p = invert_transform(prob[(i, slice(None)) + box], j.g).cpu().numpy()
                target.write(j.own, p)


class _Target:
    """Writes owned tiles into ``out`` (with a leading index and an origin offset); with a
    ``scale`` the tiles are added, scaled (the TTA mean)."""

    def __init__(self, out, lead: tuple, origin: tuple[int, ...], scale: float | None):
        self.out, self.lead, self.origin = out, tuple(lead), origin
        self.scale = None if scale is None else np.float32(scale)

    def _key(self, rect: Rect) -> tuple:
        return self.lead + (slice(None),) + tuple(
            slice(rect[2 * a] - o, rect[2 * a + 1] - o) for a, o in enumerate(self.origin))

    def zero(self, rect: Rect) -> None:
        self.out[self._key(rect)] = 0.0

    def write(self, rect: Rect, p: np.ndarray) -> None:
        key = self._key(rect)
        if self.scale is None:
            self.out[key] = p
        else:
            self.out[key] = np.asarray(self.out[key]) + p * self.scale


def make_runner(net, device, *, precision: str = "fp32", channels_last: bool | None,
                tile_pixels: int) -> NetRunner:
    """A :class:`NetRunner` with the precision resolved for ``device`` ("auto": bf16 where the
    device computes it natively) and, when ``channels_last`` is None, channels-last chosen for
    CPU tiles of at least :data:`CHANNELS_LAST_MIN_PIXELS` pixels (volumes:
    :data:`CHANNELS_LAST_MIN_VOXELS` voxels)."""
    device = _network_device(net, device)
    if channels_last is None:
        # oneDNN's channels-last kernels are faster on realistic tiles but have a fixed cost
        # that dominates tiny ones
        volume = int(getattr(net, "spatial_dims", 2)) == 3
        least = CHANNELS_LAST_MIN_VOXELS if volume else CHANNELS_LAST_MIN_PIXELS
        channels_last = device.type == "cpu" and tile_pixels >= least
    return NetRunner(net, device, channels_last, resolve_precision(precision, device))
