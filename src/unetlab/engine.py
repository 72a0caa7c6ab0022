"""The tiled-inference engine (Ronneberger et al. 2015, Sec. 2, Fig. 2: the overlap-tile
strategy; Sec. 3.1/4: averaging over rotated and flipped versions of the input).

One loop, used by :func:`unetlab.predict.predict_tiled` (a whole image) and by the Dask path
(:mod:`unetlab.dask_predict`, one output chunk at a time):

1. **plan** (:func:`plan_region`): for each dihedral transform g, tiles on the 2^depth lattice
   of g(image) that cover the requested output rectangle (see :mod:`unetlab.tiling`);
2. **read**: each input tile is read mirror-padded in image coordinates by a ``read(rect)``
   callable and transformed by g;
3. **run** (:class:`NetRunner`): batches of tiles through the network in eval mode, on the
   device, optionally channels-last, under the resolved precision (fp32 or bf16 autocast);
   the soft-max and the TTA sum are computed in float32;
4. **scatter**: the part each tile owns is transformed back by g⁻¹ and written (or added, with
   TTA) into ``out``, any writable array (numpy, memmap, zarr, a class-selecting view).

All sizes are pixels; rectangles are ``(y0, y1, x0, x1)`` in image coordinates, half-open.
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
from .tiling import (DIHEDRAL, TileGeometry, apply_dihedral, choose_tile_size,
                     dihedral_rect_to_image, invert_dihedral, plan_tiles)

__all__ = ["NetRunner", "TileJob", "TileEngine", "plan_region", "rect_to_dihedral",
           "balanced_tile", "CHANNELS_LAST_MIN_PIXELS"]

#: Tiles of at least this many input pixels run in channels-last memory format on CPU.
CHANNELS_LAST_MIN_PIXELS = 192 * 192

Rect = tuple[int, int, int, int]


def rect_to_dihedral(rect: Rect, shape: Sequence[int], g: tuple[bool, bool, bool]) -> Rect:
    """Map an image rectangle (y0, y1, x0, x1) to the coordinates of g(image) (the inverse of
    :func:`unetlab.tiling.dihedral_rect_to_image`); ``shape`` is the image's (H, W)."""
    t, fr, fc = g
    H, W = int(shape[0]), int(shape[1])
    y0, y1, x0, x1 = rect
    if t:
        y0, y1, x0, x1 = x0, x1, y0, y1
        H, W = W, H
    if fr:
        y0, y1 = H - y1, H - y0
    if fc:
        x0, x1 = W - x1, W - x0
    return (y0, y1, x0, x1)


@dataclass(frozen=True)
class TileJob:
    """One tile of one transform: read ``inp`` (image coordinates, mirror-padded outside the
    image), apply ``g``, run; keep ``crop`` (rows/cols of the network output, transform frame)
    and write it, transformed back, to ``own`` (image coordinates)."""

    g: tuple[bool, bool, bool]
    inp: Rect
    tile_in: tuple[int, int]
    crop: Rect
    own: Rect


def plan_region(geom: TileGeometry, image_hw: Sequence[int], rect: Rect,
                g: tuple[bool, bool, bool], tile_in: tuple[int, int] | None) -> list[TileJob]:
    """The tiles of transform ``g`` that cover the output rectangle ``rect`` of an image of
    ``image_hw`` (H, W). Tiles start on the lattice of g(image), so the result equals one pass
    over the whole image (Sec. 2: seamless); ``tile_in`` (h, w) is the request in the image's
    frame (transposed for transforms that transpose), None for one tile per axis."""
    u0, u1, v0, v1 = rect_to_dihedral(rect, image_hw, g)
    L = geom.lattice
    us, vs = (u0 // L) * L, (v0 // L) * L
    req = None if tile_in is None else ((tile_in[1], tile_in[0]) if g[0] else tuple(tile_in))
    plan = plan_tiles(geom, (u1 - us, v1 - vs), req)
    m = geom.margin if geom.padding == "same" else 0
    jobs = []
    for t in plan:
        oy0, oy1, ox0, ox1 = t.own
        gy0, gy1 = max(oy0 + us, u0), min(oy1 + us, u1)
        gx0, gx1 = max(ox0 + vs, v0), min(ox1 + vs, v1)
        if gy1 <= gy0 or gx1 <= gx0:
            continue
        py, px = t.out[0] + us, t.out[2] + vs
        iy0, iy1, ix0, ix1 = t.inp
        inp = dihedral_rect_to_image((iy0 + us, iy1 + us, ix0 + vs, ix1 + vs), image_hw, g)
        own = dihedral_rect_to_image((gy0, gy1, gx0, gx1), image_hw, g)
        jobs.append(TileJob(g, inp, plan.tile_in,
                            (m + gy0 - py, m + gy1 - py, m + gx0 - px, m + gx1 - px), own))
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
    and restored on exit; calling it returns float32 soft-max probabilities (N, K, h, w) of a
    batch (N, C, h, w), the forward pass run under ``precision`` ("fp32" or "bf16")."""

    def __init__(self, net, device, channels_last: bool, precision: str = "fp32"):
        self.net, self.device = net, torch.device(device)
        self.channels_last, self.precision = channels_last, precision

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
            self.run.to(memory_format=torch.channels_last)
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

    ``runner``: an entered :class:`NetRunner`; ``tta``: all 8 dihedral transforms (else the
    identity only); ``batch_size``: image tiles per forward pass (× their transforms);
    ``tile_size``: requested input tile (h, w) or None (the largest that fits the memory budget,
    per region). Input buffers are reused across calls.
    """

    def __init__(self, runner: NetRunner, geom: TileGeometry, *, tta: bool, batch_size: int,
                 tile_size: tuple[int, int] | None, memory_budget: int | None = None):
        self.runner, self.geom = runner, geom
        self.transforms = DIHEDRAL if tta else DIHEDRAL[:1]
        self.batch_size, self.tile_size = int(batch_size), tile_size
        self.memory_budget = memory_budget
        self._buffers: dict[tuple, torch.Tensor] = {}

    def jobs(self, image_hw: Sequence[int], rect: Rect) -> list[TileJob]:
        """All tile jobs for ``rect``, tile-major (a tile's transforms are neighbours)."""
        tile = self.tile_size
        if tile is None:
            region = (rect[1] - rect[0], rect[3] - rect[2])
            tile = balanced_tile(self.geom, region, choose_tile_size(
                self.geom, region, batch=self.batch_size * len(self.transforms),
                budget=self.memory_budget))
        per_g = [plan_region(self.geom, image_hw, rect, g, tile) for g in self.transforms]
        return [j for group in itertools.zip_longest(*per_g) for j in group if j is not None]

    def _buffer(self, n: int, cin: int, h: int, w: int) -> torch.Tensor:
        key = (n, cin, h, w)
        if key not in self._buffers:
            pin = self.runner.device.type == "cuda"
            b = torch.empty((n, cin, h, w), dtype=torch.float32, pin_memory=pin)
            if self.runner.channels_last:
                b = b.contiguous(memory_format=torch.channels_last)
            self._buffers[key] = b
        return self._buffers[key]

    def predict_region(self, read: Callable[[Rect], np.ndarray], image_hw: Sequence[int],
                       rect: Rect, out: Any, *, origin: tuple[int, int] = (0, 0),
                       lead: tuple = (), progress: Any = None) -> None:
        """Probabilities of the output rectangle ``rect`` of an image of ``image_hw`` written
        into ``out[lead + (:, y - origin_y, x - origin_x)]``.

        ``read(rect)`` returns the (C, h, w) float32 input of an image rectangle, mirror-padded
        where it leaves the image. With TTA, ``out`` is zeroed tile by tile first and the mean
        of the 8 terms is accumulated into it (float32); without, each pixel is written once.
        ``progress``: an object with ``update(n)`` counting image tiles."""
        jobs = self.jobs(image_hw, rect)
        tta = len(self.transforms) > 1
        target = _Target(out, lead, origin, 1.0 / len(self.transforms) if tta else None)
        if tta:
            for j in jobs:
                if j.g == DIHEDRAL[0]:
                    target.zero(j.own)
        step = self.batch_size * len(self.transforms)
        for c0 in range(0, len(jobs), step):
            chunk = jobs[c0:c0 + step]
            self._run_chunk(chunk, read, target)
            if progress is not None:
                progress.update(sum(j.g == DIHEDRAL[0] for j in chunk))

    def _run_chunk(self, chunk: list[TileJob], read, target: "_Target") -> None:
        groups: dict[tuple[int, int], list[TileJob]] = {}
        for j in chunk:
            groups.setdefault(j.tile_in, []).append(j)
        for (h, w), group in groups.items():
            first = read(group[0].inp)
            buf = self._buffer(len(group), first.shape[0], h, w)
            for i, j in enumerate(group):
                patch = first if i == 0 else read(j.inp)
                buf[i].copy_(apply_dihedral(torch.from_numpy(patch), j.g))
            prob = self.runner(buf.to(self.runner.device, non_blocking=True))
            for i, j in enumerate(group):
                y0, y1, x0, x1 = j.crop
                p = invert_dihedral(prob[i, :, y0:y1, x0:x1], j.g).cpu().numpy()
                target.write(j.own, p)


class _Target:
    """Writes owned tiles into ``out`` (with a leading index and an origin offset); with a
    ``scale`` the tiles are added, scaled (the TTA mean)."""

    def __init__(self, out, lead: tuple, origin: tuple[int, int], scale: float | None):
        self.out, self.lead, self.origin = out, tuple(lead), origin
        self.scale = None if scale is None else np.float32(scale)

    def _key(self, rect: Rect) -> tuple:
        oy, ox = self.origin
        return self.lead + (slice(None), slice(rect[0] - oy, rect[1] - oy),
                            slice(rect[2] - ox, rect[3] - ox))

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
    device computes it natively) and channels-last chosen for CPU tiles of at least
    :data:`CHANNELS_LAST_MIN_PIXELS` pixels when ``channels_last`` is None."""
    device = _network_device(net, device)
    if channels_last is None:
        # oneDNN's channels-last kernels are faster on realistic tiles but have a fixed cost
        # that dominates tiny ones
        channels_last = device.type == "cpu" and tile_pixels >= CHANNELS_LAST_MIN_PIXELS
    return NetRunner(net, device, channels_last, resolve_precision(precision, device))
