"""Overlap-tile geometry (Ronneberger et al. 2015, Sec. 2, Fig. 2): tile plans on the 2^depth
lattice, mirror padding, the 8 dihedral transforms, and the memory model that picks tile sizes.

Everything here is pure geometry on numpy arrays; the network only enters through a few numbers
(:class:`TileGeometry`). Conventions (all sizes in pixels, per spatial axis; rows and columns are
independent, so tiles need not be square):

* **margin** ``m``: the context an input tile carries on every side of its output tile. For a
  "valid" network it is ``net.context`` (92 for the paper's network): the network itself loses
  those pixels. For a "same" network it is the true reach of one output pixel rounded up to
  the lattice, ``ceil((net.receptive_radius + 2^depth - 1) / 2^depth) · 2^depth`` (24, 56, 112
  for depths 2, 3, 4): the 2×2 poolings and up-convolutions make the reach depend on the
  pixel's phase on the lattice, and at the worst phase it exceeds ``receptive_radius`` =
  ``6·2^depth − 4`` by ``2^depth − 1`` pixels (measured with input gradients). The network
  keeps the size and the margin is cropped from its output, so no output pixel that is kept
  has seen the tile's zero padding.
* **padded frame**: the image mirror-padded by ``m`` on every side with ``numpy.pad(mode=
  "reflect")`` semantics (repeated reflection when the image is smaller than the margin), and
  further at the bottom/right as far as a tile needs. Output pixel ``(y, x)`` of the image sits
  at ``(y + m, x + m)`` of this frame; an input tile whose output starts at image row ``y``
  reads frame rows ``[y, y + tile_in)``.
* **lattice**: 2×2 max pooling makes the network equivariant only to shifts by multiples of
  ``2^depth``. Every tile therefore starts at a multiple of ``2^depth`` in image coordinates
  (equivalently in the padded frame, as ``m`` ≡ 0 or is a fixed offset shared by all tiles), so
  the pooling grid of every tile coincides with the pooling grid of one pass over the whole
  padded frame — that is what makes tiled prediction *exactly* seamless. The paper's 388-pixel
  output tiles would step by 388 ≢ 0 (mod 16); here the step is ``floor(out / 2^depth)·2^depth``
  (384 for the paper's tile) and neighbouring output tiles overlap by the remainder (4 px).
* **ownership**: along each axis, tile ``j`` owns output rows ``[start_j, start_{j+1})`` and the
  last tile owns ``[start_last, size)``; owned regions partition the image, so every output pixel
  is written exactly once.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

__all__ = [
    "TileGeometry", "Tile", "TilePlan", "DIHEDRAL", "axis_starts", "plan_tiles", "choose_tile_size",
    "reflect_indices", "read_padded", "apply_dihedral", "invert_dihedral", "dihedral_shape",
    "dihedral_rect_to_image", "estimate_memory", "DEFAULT_MEMORY_BUDGET", "MAX_TILE",
]

#: Default bound (bytes) on the activation memory of one forward pass when ``tile_size=None``.
DEFAULT_MEMORY_BUDGET = 1 << 30
#: Largest input tile side chosen automatically (larger tiles gain < 2 % less context waste).
MAX_TILE = 4096


# ----------------------------------------------------------------------------- network geometry
@dataclass(frozen=True)
class TileGeometry:
    """The numbers of a network that tiling needs.

    ``padding``: "valid" or "same"; ``lattice``: 2^depth; ``margin``: context per side (see the
    module docstring); ``width``, ``in_channels``, ``num_classes``: for the memory model.
    """

    padding: str
    lattice: int
    margin: int
    in_channels: int = 1
    num_classes: int = 2
    width: int = 64
    depth: int = 4

    @classmethod
    def from_net(cls, net) -> "TileGeometry":
        lat = int(net.lattice)
        if net.padding == "valid":
            margin = int(net.context)
        else:
            margin = int(math.ceil((net.receptive_radius + lat - 1) / lat) * lat)
        return cls(padding=net.padding, lattice=lat, margin=margin,
                   in_channels=int(net.in_channels), num_classes=int(net.num_classes),
                   width=int(getattr(net, "width", 64)), depth=int(getattr(net, "depth", 4)))

    # sizes -----------------------------------------------------------------
    def _valid_trace(self, n: int) -> int | None:
        """Output size of a "valid" U-Net of this depth for input n, or None (see model.py)."""
        from .model import valid_output_size

        return valid_output_size(n, self.depth)

    def out_size(self, n_in: int) -> int | None:
        """Output-tile size (pixels kept) for an input tile of ``n_in``, or None if invalid."""
        if self.padding == "valid":
            out = self._valid_trace(n_in)
            if out is not None and out != n_in - 2 * self.margin:  # pragma: no cover - sanity
                raise AssertionError("network geometry disagrees with its context")
            return out
        if n_in % self.lattice or n_in - 2 * self.margin < self.lattice:
            return None
        return n_in - 2 * self.margin

    def smallest_input(self, min_out: int) -> int:
        """The smallest valid input tile whose output tile has at least ``min_out`` pixels."""
        n = max(2 * self.margin + max(int(min_out), 1), 1)
        if self.padding == "same":
            n = max(n, 2 * self.margin + self.lattice)
            return int(math.ceil(n / self.lattice) * self.lattice)
        while self.out_size(n) is None or self.out_size(n) < min_out:
            n += 1
        return n

    def largest_input_at_most(self, n_max: int) -> int | None:
        """The largest valid input tile ``<= n_max`` whose output is at least one lattice step."""
        n = int(n_max)
        floor = self.smallest_input(self.lattice)
        while n >= floor:
            if self.out_size(n) is not None and self.out_size(n) >= self.lattice:
                return n
            n -= 1
        return None


def estimate_memory(geom: TileGeometry, tile_hw: tuple[int, int], batch: int = 1) -> int:
    """Estimated peak bytes of one inference forward pass on ``batch`` tiles of ``tile_hw``.

    A U-Net keeps every skip connection alive until the expanding path consumes it; at the top
    level the up-convolution output, the skip, their concatenation (2·width channels) and the
    next convolution's output coexist, plus the skips of the lower levels (≈ width per pixel in
    total) and convolution work space. Measured on CPU (PyTorch 2.13, float32, inference mode)
    the peak is 6–9 × width × 4 bytes per input pixel for widths 8–32; we use 10 × width plus
    4 × (input channels + 3 × classes) per pixel for the input, logits and soft-max, times the
    batch. Float32 bytes; halve it roughly under CUDA autocast (not modelled: conservative).
    """
    h, w = tile_hw
    per_px = 4 * (10 * geom.width + 4 * (geom.in_channels + 3 * geom.num_classes))
    return int(per_px * h * w * max(int(batch), 1))


# ----------------------------------------------------------------------------- tile plans
def axis_starts(size: int, out: int, lattice: int) -> list[int]:
    """Start positions (image coordinates) of output tiles of ``out`` pixels covering
    ``[0, size)``: multiples of ``lattice``, stepping by ``floor(out/lattice)·lattice``; the last
    tile is moved back (on the lattice) so that it ends as close after ``size`` as possible."""
    if out >= size:
        return [0]
    step = (out // lattice) * lattice
    if step <= 0:
        raise ValueError(f"output tile of {out} px cannot step on a lattice of {lattice}")
    last = int(math.ceil((size - out) / lattice) * lattice)
    starts = [0]
    while starts[-1] + out < size:
        starts.append(min(starts[-1] + step, last))
    return starts


@dataclass(frozen=True)
class Tile:
    """One tile in image coordinates of the frame it was planned in.

    ``out``: (y0, y1, x0, x1) of the full output tile (may run past the image at the bottom /
    right); ``own``: the part this tile writes (inside the image); ``inp``: (y0, y1, x0, x1) of
    the input tile in image coordinates (may start before 0 and end after the image: mirror
    padding fills it).
    """

    out: tuple[int, int, int, int]
    own: tuple[int, int, int, int]
    inp: tuple[int, int, int, int]


@dataclass(frozen=True)
class TilePlan:
    """All tiles covering an image of ``shape`` (H, W) with input tiles of ``tile_in`` (h, w)."""

    shape: tuple[int, int]
    tile_in: tuple[int, int]
    tile_out: tuple[int, int]
    margin: int
    tiles: tuple[Tile, ...]

    def __len__(self) -> int:
        return len(self.tiles)

    def __iter__(self) -> Iterator[Tile]:
        return iter(self.tiles)


def _axis_tile(geom: TileGeometry, size: int, requested: int | None) -> int:
    """Input tile size along one axis for an image axis of ``size`` pixels."""
    cover = geom.smallest_input(size)            # one tile covers the whole axis
    if requested is None or requested >= cover:
        return cover
    n = geom.largest_input_at_most(requested)
    return n if n is not None else geom.smallest_input(geom.lattice)


def plan_tiles(geom: TileGeometry, shape: Sequence[int],
               tile_in: int | Sequence[int] | None) -> TilePlan:
    """Plan the tiles for an image of ``shape`` (H, W).

    ``tile_in``: requested input tile size (int or (h, w)), or None for one tile per axis. A
    requested size is rounded *down* to the nearest valid input size whose output tile is at
    least one lattice step (never more memory than asked), and *down* to the smallest tile that
    covers the axis at once (no work on pixels beyond the image).
    """
    H, W = int(shape[0]), int(shape[1])
    if H < 1 or W < 1:
        raise ValueError(f"cannot tile an empty image of shape {tuple(shape)}")
    if tile_in is None or isinstance(tile_in, (int, np.integer)):
        req = (None if tile_in is None else int(tile_in),) * 2
    else:
        req = tuple(int(t) for t in tile_in)
    th, tw = _axis_tile(geom, H, req[0]), _axis_tile(geom, W, req[1])
    oh, ow = geom.out_size(th), geom.out_size(tw)
    m = geom.margin
    ys, xs = axis_starts(H, oh, geom.lattice), axis_starts(W, ow, geom.lattice)
    tiles = []
    for i, y in enumerate(ys):
        y_own = ys[i + 1] if i + 1 < len(ys) else H
        for j, x in enumerate(xs):
            x_own = xs[j + 1] if j + 1 < len(xs) else W
            tiles.append(Tile(out=(y, y + oh, x, x + ow), own=(y, y_own, x, x_own),
                              inp=(y - m, y - m + th, x - m, x - m + tw)))
    return TilePlan((H, W), (th, tw), (oh, ow), m, tuple(tiles))


def choose_tile_size(geom: TileGeometry, shape: Sequence[int], batch: int = 1,
                     budget: int | None = None, square: bool = False) -> tuple[int, int]:
    """The largest valid input tile (h, w) whose forward pass of ``batch`` tiles fits ``budget``
    bytes (:func:`estimate_memory`; default :data:`DEFAULT_MEMORY_BUDGET` = 1 GiB), no larger
    than needed to cover the image and than :data:`MAX_TILE`. Larger tiles waste less on the
    context. When one axis is covered by a smaller tile, the other grows into the freed budget
    (e.g. long thin images), unless ``square``.
    """
    budget = DEFAULT_MEMORY_BUDGET if budget is None else int(budget)
    H, W = int(shape[0]), int(shape[1])
    cover = (geom.smallest_input(H), geom.smallest_input(W))
    floor = geom.smallest_input(geom.lattice)
    limit = max(min(MAX_TILE, max(cover)), floor)
    valid = [n for n in range(floor, limit + 1)
             if (o := geom.out_size(n)) is not None and o >= geom.lattice]

    def fits(h, w):
        return estimate_memory(geom, (h, w), batch) <= budget

    def largest(cap, other=None):
        best = None
        for n in valid:
            if n > cap:
                break
            if fits(n, n if other is None else other):
                best = n
        return best

    best = largest(limit) or floor
    th, tw = min(best, cover[0]), min(best, cover[1])
    if not square:
        # a short axis covered by a small tile leaves budget for the long one
        if th < best:
            tw = max(tw, largest(min(cover[1], MAX_TILE), th) or tw)
        elif tw < best:
            th = max(th, largest(min(cover[0], MAX_TILE), tw) or th)
    return int(th), int(tw)


# ----------------------------------------------------------------------------- mirror padding
def reflect_indices(start: int, stop: int, n: int) -> np.ndarray:
    """Indices into ``[0, n)`` of positions ``start..stop-1`` under ``numpy.pad(mode="reflect")``
    (mirror without repeating the edge pixel; repeated reflection, period ``2(n-1)``)."""
    idx = np.arange(start, stop, dtype=np.int64)
    if n == 1:
        return np.zeros_like(idx)
    period = 2 * (n - 1)
    idx = np.mod(idx, period)
    return np.where(idx >= n, period - idx, idx)


def read_padded(image, rows: tuple[int, int], cols: tuple[int, int],
                lead: tuple[int, ...] = ()) -> np.ndarray:
    """``image[lead][..., rows, cols]`` as float32, positions outside the image mirror-padded.

    ``image``: (..., H, W) array-like supporting basic slicing (numpy, memmap, zarr, dask,
    h5py). ``lead`` indexes leading axes first (e.g. the slice of a stack), so only that part
    is read. Only the bounding box of the pixels needed is read (one basic slice), so lazily
    stored images stay lazy. Returns a new C-contiguous float32 array (..., rows, cols).
    """
    H, W = int(image.shape[-2]), int(image.shape[-1])
    ri = reflect_indices(rows[0], rows[1], H)
    ci = reflect_indices(cols[0], cols[1], W)
    r0, r1 = int(ri.min()), int(ri.max()) + 1
    c0, c1 = int(ci.min()), int(ci.max()) + 1
    middle = (slice(None),) * (len(image.shape) - len(lead) - 2)
    block = np.asarray(image[tuple(lead) + middle + (slice(r0, r1), slice(c0, c1))])
    inside = (rows[0] >= 0 and rows[1] <= H and cols[0] >= 0 and cols[1] <= W)
    if inside:
        return np.ascontiguousarray(block, dtype=np.float32)
    block = block[..., ri - r0, :]
    block = block[..., :, ci - c0]
    return np.ascontiguousarray(block, dtype=np.float32)


# ----------------------------------------------------------------------------- dihedral group
#: The 8 rotations/flips of the square (Sec. 3.1, "7 rotated versions" + the original), each as
#: (transpose, flip rows, flip columns), applied in that order. The identity comes first.
DIHEDRAL: tuple[tuple[bool, bool, bool], ...] = tuple(
    (t, fr, fc) for t in (False, True) for fr in (False, True) for fc in (False, True))


def apply_dihedral(a, g: tuple[bool, bool, bool]):
    """g(a) for a numpy array or torch tensor (..., H, W): transpose the last two axes if
    g[0], then flip rows if g[1], columns if g[2]. Returns a view where possible."""
    t, fr, fc = g
    is_np = isinstance(a, np.ndarray)
    if t:
        a = a.swapaxes(-1, -2) if is_np else a.transpose(-1, -2)
    dims = [d for d, f in ((-2, fr), (-1, fc)) if f]
    if dims:
        a = np.flip(a, axis=tuple(dims)) if is_np else a.flip(dims)
    return a


def invert_dihedral(a, g: tuple[bool, bool, bool]):
    """g⁻¹(a): undo :func:`apply_dihedral` (flips first, then the transpose)."""
    t, fr, fc = g
    is_np = isinstance(a, np.ndarray)
    dims = [d for d, f in ((-2, fr), (-1, fc)) if f]
    if dims:
        a = np.flip(a, axis=tuple(dims)) if is_np else a.flip(dims)
    if t:
        a = a.swapaxes(-1, -2) if is_np else a.transpose(-1, -2)
    return a


def dihedral_shape(shape: Sequence[int], g: tuple[bool, bool, bool]) -> tuple[int, int]:
    """(H', W') of g(image) for an image of spatial ``shape`` (H, W)."""
    H, W = int(shape[-2]), int(shape[-1])
    return (W, H) if g[0] else (H, W)


def dihedral_rect_to_image(rect: tuple[int, int, int, int], shape: Sequence[int],
                           g: tuple[bool, bool, bool]) -> tuple[int, int, int, int]:
    """Map a rectangle (y0, y1, x0, x1) of g(image) back to image coordinates. Works for
    rectangles reaching outside the image too (mirror padding commutes with g)."""
    Hg, Wg = dihedral_shape(shape, g)
    t, fr, fc = g
    y0, y1, x0, x1 = rect
    if fr:
        y0, y1 = Hg - y1, Hg - y0
    if fc:
        x0, x1 = Wg - x1, Wg - x0
    if t:
        y0, y1, x0, x1 = x0, x1, y0, y1
    return (y0, y1, x0, x1)
