"""Overlap-tile geometry (Ronneberger et al. 2015, Sec. 2, Fig. 2; carried to volumes as in
Çiçek et al. 2016): tile plans on the pooling lattice of every axis, mirror padding, the
rotations/flips of test-time averaging, and the memory model that picks tile sizes.

Everything here is pure geometry on numpy arrays; the network only enters through a few numbers
(:class:`TileGeometry`). Conventions (all sizes in pixels — voxels for volumes — per spatial
axis; the axes are independent, so tiles need not be square or cubic, and a 3D network may pool
some axes less, e.g. ``pooling=(1, 2, 2)``, giving each axis its own lattice and margin):

* **rectangles** are flat half-open tuples, one (start, stop) pair per spatial axis:
  ``(y0, y1, x0, x1)`` for images, ``(z0, z1, y0, y1, x0, x1)`` for volumes.

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
* **lattice**: per axis the product of its pooling factors (2^depth for 2×2 pooling, 1 along
  an axis that is never pooled). Max pooling makes the network equivariant only to shifts by
  multiples of it (``2^depth``). Every tile therefore starts at a multiple of the lattice in
  image coordinates (equivalently in the padded frame, as ``m`` ≡ 0 or is a fixed offset
  shared by all tiles), so the pooling grid of every tile coincides with the pooling grid of
  one pass over the whole padded frame — that is what makes tiled prediction *exactly*
  seamless. The paper's 388-pixel
  output tiles would step by 388 ≢ 0 (mod 16); here the step is ``floor(out / 2^depth)·2^depth``
  (384 for the paper's tile) and neighbouring output tiles overlap by the remainder (4 px).
* **ownership**: along each axis, tile ``j`` owns output rows ``[start_j, start_{j+1})`` and the
  last tile owns ``[start_last, size)``; owned regions partition the image, so every output pixel
  is written exactly once.
* **transforms** (test-time averaging, Sec. 3.1/4): a transform ``g = (perm, flips)`` permutes
  the spatial axes (axis ``i`` of g(image) is axis ``perm[i]`` of the image) and then flips the
  axes ``i`` with ``flips[i]``. :func:`tta_transforms` gives the group a network admits: every
  flip, and the permutations that map each axis onto one that pools alike (and has the same
  voxel spacing, when given) — the 8 rotations/flips of the square in 2D, 48 for isotropic 3D
  networks, 16 (the 8 in-plane ones × the z-flip) when z pools differently, e.g.
  ``pooling=(1, 2, 2)``. The 2D triples of :data:`DIHEDRAL` (transpose, flip rows, flip
  columns) are the same 8 transforms in the same order.
"""
from __future__ import annotations

import bisect
import itertools
import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

__all__ = [
    "TileGeometry", "Tile", "TilePlan", "DIHEDRAL", "axis_starts", "plan_tiles", "choose_tile_size",
    "reflect_indices", "read_padded", "apply_dihedral", "invert_dihedral", "dihedral_shape",
    "dihedral_rect_to_image", "estimate_memory", "DEFAULT_MEMORY_BUDGET", "MAX_TILE",
    "Transform", "tta_transforms", "from_dihedral", "apply_transform", "invert_transform",
    "transform_shape", "transform_rect_to_image", "image_rect_to_transform",
]

#: Default bound (bytes) on the activation memory of one forward pass when ``tile_size=None``.
DEFAULT_MEMORY_BUDGET = 1 << 30
#: Largest input tile side chosen automatically (larger tiles gain < 2 % less context waste).
MAX_TILE = 4096

#: A rotation/flip of the spatial axes: (perm, flips) (module docstring, "transforms").
Transform = tuple[tuple[int, ...], tuple[bool, ...]]


# ----------------------------------------------------------------------------- network geometry
def _same(values: tuple):
    """One value when every axis agrees, else the tuple (as ``UNet.lattice``)."""
    return values[0] if len(set(values)) == 1 else values


@dataclass(frozen=True)
class TileGeometry:
    """The numbers of a network that tiling needs, per spatial axis.

    ``padding``: "valid" or "same"; ``lattices``: per axis the product of its pooling factors;
    ``margins``: context per side (see the module docstring); ``factors``: per axis the
    pooling factor of every level (empty: 2 everywhere); ``width`` (channels of the first
    level, doubled for ``channels="doubled"`` nets), ``in_channels``, ``num_classes``: for the
    memory model.
    """

    padding: str
    lattices: tuple[int, ...]
    margins: tuple[int, ...]
    in_channels: int = 1
    num_classes: int = 2
    width: int = 64
    depth: int = 4
    factors: tuple[tuple[int, ...], ...] = ()

    @classmethod
    def from_net(cls, net) -> "TileGeometry":
        dims = int(getattr(net, "spatial_dims", 2))
        lats = tuple(int(v) for v in (net.lattices if hasattr(net, "lattices") else
                                      (int(net.lattice),) * dims))
        if net.padding == "valid":
            margins = tuple(int(v) for v in (net.contexts if hasattr(net, "contexts") else
                                             (int(net.context),) * dims))
        else:
            radii = (net.receptive_radii if hasattr(net, "receptive_radii") else
                     (int(net.receptive_radius),) * dims)
            margins = tuple(int(math.ceil((int(r) + L - 1) / L) * L) for r, L in zip(radii, lats))
        pools = getattr(net, "pools", None)
        factors = tuple(tuple(int(v[a]) for v in pools) for a in range(dims)) if pools else ()
        width = int(getattr(net, "width", 64))
        if getattr(net, "channels", "paper") == "doubled":
            width *= 2
        return cls(padding=net.padding, lattices=lats, margins=margins,
                   in_channels=int(net.in_channels), num_classes=int(net.num_classes),
                   width=width, depth=int(getattr(net, "depth", 4)), factors=factors)

    @property
    def spatial_dims(self) -> int:
        return len(self.lattices)

    @property
    def lattice(self):
        """The lattice (an int when every axis pools alike, else :attr:`lattices`)."""
        return _same(self.lattices)

    @property
    def margin(self):
        """The margin (an int when every axis agrees, else :attr:`margins`)."""
        return _same(self.margins)

    def axis_factors(self, axis: int) -> tuple[int, ...]:
        """The pooling factor of every level along ``axis``."""
        return self.factors[axis] if self.factors else (2,) * self.depth

    # sizes (per axis; the default axis -1 is the same as any other for square pooling) -------
    def out_size(self, n_in: int, axis: int = -1) -> int | None:
        """Output-tile size (pixels kept) for an input tile of ``n_in``, or None if invalid."""
        lat, m = self.lattices[axis], self.margins[axis]
        if self.padding == "valid":
            from .model import valid_output_size

            out = valid_output_size(n_in, self.depth, self.axis_factors(axis))
            if out is not None and out != n_in - 2 * m:  # pragma: no cover - sanity
                raise AssertionError("network geometry disagrees with its context")
            return out
        if n_in % lat or n_in - 2 * m < lat:
            return None
        return n_in - 2 * m

    def smallest_input(self, min_out: int, axis: int = -1) -> int:
        """The smallest valid input tile whose output tile has at least ``min_out`` pixels."""
        lat, m = self.lattices[axis], self.margins[axis]
        n = max(2 * m + max(int(min_out), 1), 1)
        if self.padding == "same":
            n = max(n, 2 * m + lat)
            return int(math.ceil(n / lat) * lat)
        while self.out_size(n, axis) is None or self.out_size(n, axis) < min_out:
            n += 1
        return n

    def largest_input_at_most(self, n_max: int, axis: int = -1) -> int | None:
        """The largest valid input tile ``<= n_max`` whose output is at least one lattice step."""
        lat = self.lattices[axis]
        n = int(n_max)
        floor = self.smallest_input(lat, axis)
        while n >= floor:
            out = self.out_size(n, axis)
            if out is not None and out >= lat:
                return n
            n -= 1
        return None


def estimate_memory(geom: TileGeometry, tile_hw: Sequence[int], batch: int = 1) -> int:
    """Estimated peak bytes of one inference forward pass on ``batch`` tiles of ``tile_hw``
    ((h, w), or (d, h, w) for volumes: the estimate is per pixel/voxel).

    A U-Net keeps every skip connection alive until the expanding path consumes it; at the top
    level the up-convolution output, the skip, their concatenation (2·width channels) and the
    next convolution's output coexist, plus the skips of the lower levels (≈ width per pixel in
    total) and convolution work space. Measured on CPU (PyTorch 2.13, float32, inference mode)
    the peak is 6–9 × width × 4 bytes per input pixel for widths 8–32; we use 10 × width plus
    4 × (input channels + 3 × classes) per pixel for the input, logits and soft-max, times the
    batch. Float32 bytes; halve it roughly under CUDA autocast (not modelled: conservative).
    For 3D networks the same per-voxel rule is an upper bound: measured peaks are 0.25–0.65 of
    it (widths 4–8, depths 2–3, tiles 100³–160³, CPU).
    """
    per_px = 4 * (10 * geom.width + 4 * (geom.in_channels + 3 * geom.num_classes))
    return int(per_px * math.prod(int(v) for v in tile_hw) * max(int(batch), 1))


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
    """One tile in image coordinates of the frame it was planned in (flat rectangles, one
    (start, stop) pair per axis: ``(y0, y1, x0, x1)`` or ``(z0, z1, y0, y1, x0, x1)``).

    ``out``: the full output tile (may run past the image at the far ends); ``own``: the part
    this tile writes (inside the image); ``inp``: the input tile (may start before 0 and end
    after the image: mirror padding fills it).
    """

    out: tuple[int, ...]
    own: tuple[int, ...]
    inp: tuple[int, ...]


@dataclass(frozen=True)
class TilePlan:
    """All tiles covering an image of ``shape`` ((H, W) or (D, H, W)) with input tiles of
    ``tile_in`` per axis; ``margin`` as :attr:`TileGeometry.margin`."""

    shape: tuple[int, ...]
    tile_in: tuple[int, ...]
    tile_out: tuple[int, ...]
    margin: int | tuple[int, ...]
    tiles: tuple[Tile, ...]

    def __len__(self) -> int:
        return len(self.tiles)

    def __iter__(self) -> Iterator[Tile]:
        return iter(self.tiles)


def _axis_tile(geom: TileGeometry, size: int, requested: int | None, axis: int) -> int:
    """Input tile size along one axis for an image axis of ``size`` pixels."""
    cover = geom.smallest_input(size, axis)            # one tile covers the whole axis
    if requested is None or requested >= cover:
        return cover
    n = geom.largest_input_at_most(requested, axis)
    return n if n is not None else geom.smallest_input(geom.lattices[axis], axis)


def _per_axis(value, dims: int, what: str) -> tuple:
    """``value`` (None, an int, or one value per axis) as one value per axis."""
    if value is None or isinstance(value, (int, np.integer)):
        return (None if value is None else int(value),) * dims
    out = tuple(None if v is None else int(v) for v in value)
    if len(out) != dims:
        raise ValueError(f"{what} needs one size per spatial axis ({dims}), got {tuple(value)}")
    return out


def plan_tiles(geom: TileGeometry, shape: Sequence[int],
               tile_in: int | Sequence[int] | None) -> TilePlan:
    """Plan the tiles for an image of ``shape`` ((H, W), or (D, H, W) for a 3D network).

    ``tile_in``: requested input tile size (int or one per axis), or None for one tile per axis.
    A requested size is rounded *down* to the nearest valid input size whose output tile is at
    least one lattice step (never more memory than asked), and *down* to the smallest tile that
    covers the axis at once (no work on pixels beyond the image). Tiles are listed in raster
    order (last axis fastest).
    """
    dims = geom.spatial_dims
    shape = tuple(int(s) for s in shape)
    if len(shape) != dims or min(shape) < 1:
        raise ValueError(f"cannot tile an image of shape {shape} with a {dims}-D network"
                         if len(shape) != dims else
                         f"cannot tile an empty image of shape {shape}")
    req = _per_axis(tile_in, dims, "tile_in")
    t_in = tuple(_axis_tile(geom, shape[a], req[a], a) for a in range(dims))
    t_out = tuple(geom.out_size(t_in[a], a) for a in range(dims))
    per_axis = []
    for a in range(dims):
        starts = axis_starts(shape[a], t_out[a], geom.lattices[a])
        m = geom.margins[a]
        per_axis.append([((s, s + t_out[a]), (s, starts[i + 1] if i + 1 < len(starts) else
                                               shape[a]), (s - m, s - m + t_in[a]))
                         for i, s in enumerate(starts)])
    tiles = tuple(Tile(out=sum((c[0] for c in combo), ()), own=sum((c[1] for c in combo), ()),
                       inp=sum((c[2] for c in combo), ()))
                  for combo in itertools.product(*per_axis))
    return TilePlan(shape, t_in, t_out, geom.margin, tiles)


def choose_tile_size(geom: TileGeometry, shape: Sequence[int], batch: int = 1,
                     budget: int | None = None, square: bool = False) -> tuple[int, ...]:
    """The largest valid input tile (one size per axis) whose forward pass of ``batch`` tiles
    fits ``budget`` bytes (:func:`estimate_memory`; default :data:`DEFAULT_MEMORY_BUDGET` =
    1 GiB), no larger than needed to cover the image and than :data:`MAX_TILE`. Larger tiles
    waste less on the context. Tiles grow as squares/cubes (each axis the largest valid size
    up to a common side); when an axis is covered by a smaller tile, the others grow into the
    freed budget (e.g. long thin images, flat volumes), unless ``square``.
    """
    budget = DEFAULT_MEMORY_BUDGET if budget is None else int(budget)
    dims = geom.spatial_dims
    shape = tuple(int(s) for s in shape)
    cover = [geom.smallest_input(shape[a], a) for a in range(dims)]
    floor = [geom.smallest_input(geom.lattices[a], a) for a in range(dims)]
    limit = max(min(MAX_TILE, max(cover)), max(floor))
    valid = [[n for n in range(floor[a], limit + 1)
              if (o := geom.out_size(n, a)) is not None and o >= geom.lattices[a]]
             for a in range(dims)]
    sides = sorted(set(itertools.chain(*valid)))

    def at(s: int, a: int) -> int:          # the largest valid size <= s along axis a
        i = bisect.bisect_right(valid[a], s)
        return valid[a][i - 1] if i else floor[a]

    fixed: dict[int, int] = {}
    while True:
        def tile(s):
            return [fixed.get(a, at(s, a)) for a in range(dims)]

        fitting = [s for s in sides if estimate_memory(geom, tile(s), batch) <= budget]
        best = tile(fitting[-1] if fitting else sides[0])
        clipped = [a for a in range(dims) if a not in fixed and cover[a] < best[a]]
        result = tuple(int(min(best[a], cover[a])) for a in range(dims))
        if square or not clipped or len(fixed) + len(clipped) == dims:
            return result
        fixed.update((a, cover[a]) for a in clipped)


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


def read_padded(image, *ranges: tuple[int, int], lead: tuple[int, ...] = ()) -> np.ndarray:
    """``image[lead][..., r0, r1, ...]`` as float32, positions outside the image mirror-padded.

    ``ranges``: one (start, stop) pair per trailing spatial axis — (rows, cols) for an image,
    (planes, rows, cols) for a volume. ``image``: (..., *spatial) array-like supporting basic
    slicing (numpy, memmap, zarr, dask, h5py). ``lead`` indexes leading axes first (e.g. the
    slice of a stack), so only that part is read. Only the bounding box of the pixels needed
    is read (one basic slice), so lazily stored images stay lazy. Returns a new C-contiguous
    float32 array (..., *sizes).
    """
    n = len(ranges)
    sizes = [int(v) for v in image.shape[len(image.shape) - n:]]
    idx = [reflect_indices(int(r[0]), int(r[1]), s) for r, s in zip(ranges, sizes)]
    box = [(int(i.min()), int(i.max()) + 1) for i in idx]
    middle = (slice(None),) * (len(image.shape) - len(lead) - n)
    block = np.asarray(image[tuple(lead) + middle + tuple(slice(a, b) for a, b in box)])
    if all(r[0] >= 0 and r[1] <= s for r, s in zip(ranges, sizes)):
        return np.ascontiguousarray(block, dtype=np.float32)
    for k, (i, (a, _)) in enumerate(zip(idx, box)):
        block = np.take(block, i - a, axis=block.ndim - n + k)
    return np.ascontiguousarray(block, dtype=np.float32)


# ----------------------------------------------------------------------------- transforms
#: The 8 rotations/flips of the square (Sec. 3.1, "7 rotated versions" + the original), each as
#: (transpose, flip rows, flip columns), applied in that order. The identity comes first.
DIHEDRAL: tuple[tuple[bool, bool, bool], ...] = tuple(
    (t, fr, fc) for t in (False, True) for fr in (False, True) for fc in (False, True))


def from_dihedral(g: tuple[bool, bool, bool]) -> Transform:
    """The 2D triple (transpose, flip rows, flip columns) as a :data:`Transform`."""
    return ((1, 0) if g[0] else (0, 1), (bool(g[1]), bool(g[2])))


def tta_transforms(geom: TileGeometry, tta=True, spacing: Sequence[float] | None = None
                   ) -> tuple[Transform, ...]:
    """The transforms averaged by test-time augmentation, the identity first.

    ``tta``: False / 1 (the identity only); True (every transform the network admits: all
    flips × the axis permutations that keep each axis's pooling factors — and voxel
    ``spacing`` (one value per axis, physical units) when given: 8 in 2D, 48 for an isotropic
    3D network, 16 = 8 in-plane × z-flip when z pools differently or has another spacing); or
    a count: 8 (2D), 16 (3D: z stays z) or 48 (3D: every permutation), refused with a
    ``ValueError`` naming the reason when the network's pooling or the spacing does not admit
    it. In 2D the order is that of :data:`DIHEDRAL`.
    """
    dims = geom.spatial_dims
    flips = list(itertools.product((False, True), repeat=dims))
    identity = (tuple(range(dims)), (False,) * dims)
    if not tta or (not isinstance(tta, bool) and int(tta) == 1):
        return (identity,)
    if spacing is not None and len(spacing) != dims:
        raise ValueError(f"spacing needs one value per spatial axis ({dims}), got {spacing}")
    key = [(geom.axis_factors(a), None if spacing is None else float(spacing[a]))
           for a in range(dims)]
    alike = [p for p in itertools.permutations(range(dims))
             if all(key[p[i]] == key[i] for i in range(dims))]
    if tta is True:
        perms = alike
    else:
        n = int(tta)
        wanted = {math.factorial(dims) * 2 ** dims: list(itertools.permutations(range(dims)))}
        if dims == 3:
            wanted[16] = [(0, 1, 2), (0, 2, 1)]
        if n not in wanted:
            raise ValueError(f"tta: {n} transforms is not a group of this {dims}-D network; use "
                             f"True, False or one of {sorted(wanted)}")
        perms = wanted[n]
        bad = [p for p in perms if p not in alike]
        if bad:
            why = "pooling factors" if spacing is None else "pooling factors or spacing"
            raise ValueError(f"tta: {n} transforms would swap axes whose {why} differ "
                             f"(permutation {bad[0]}); use tta=True for the transforms this "
                             "network admits")
    return tuple((tuple(p), tuple(f)) for p in perms for f in flips)


def _is_np(a) -> bool:
    return isinstance(a, np.ndarray)


def apply_transform(a, g: Transform):
    """g(a) for a numpy array or torch tensor (..., *spatial): permute the trailing spatial
    axes by ``g[0]``, then flip the axes marked in ``g[1]``. A view where possible."""
    perm, flips = g
    n, lead = len(perm), a.ndim - len(perm)
    order = list(range(lead)) + [lead + p for p in perm]
    if order != list(range(a.ndim)):
        a = np.transpose(a, order) if _is_np(a) else a.permute(order)
    dims = [lead + i for i in range(n) if flips[i]]
    if dims:
        a = np.flip(a, axis=tuple(dims)) if _is_np(a) else a.flip(dims)
    return a


def invert_transform(a, g: Transform):
    """g⁻¹(a): undo :func:`apply_transform` (the flips first, then the inverse permutation)."""
    perm, flips = g
    n, lead = len(perm), a.ndim - len(perm)
    dims = [lead + i for i in range(n) if flips[i]]
    if dims:
        a = np.flip(a, axis=tuple(dims)) if _is_np(a) else a.flip(dims)
    inv = [perm.index(i) for i in range(n)]
    order = list(range(lead)) + [lead + p for p in inv]
    if order != list(range(a.ndim)):
        a = np.transpose(a, order) if _is_np(a) else a.permute(order)
    return a


def transform_shape(shape: Sequence[int], g: Transform) -> tuple[int, ...]:
    """The spatial shape of g(image) for an image of spatial ``shape``."""
    perm = g[0]
    shape = tuple(int(s) for s in shape[len(shape) - len(perm):])
    return tuple(shape[p] for p in perm)


def transform_rect_to_image(rect: Sequence[int], shape: Sequence[int], g: Transform
                            ) -> tuple[int, ...]:
    """Map a flat rectangle of g(image) back to image coordinates; ``shape`` is the image's
    spatial shape. Works for rectangles reaching outside the image too (mirror padding
    commutes with g)."""
    perm, flips = g
    gshape = transform_shape(shape, g)
    out: list[tuple[int, int]] = [(0, 0)] * len(perm)
    for i, p in enumerate(perm):
        lo, hi = int(rect[2 * i]), int(rect[2 * i + 1])
        if flips[i]:
            lo, hi = gshape[i] - hi, gshape[i] - lo
        out[p] = (lo, hi)
    return tuple(v for pair in out for v in pair)


def image_rect_to_transform(rect: Sequence[int], shape: Sequence[int], g: Transform
                            ) -> tuple[int, ...]:
    """Map a flat rectangle of the image to the coordinates of g(image) (the inverse of
    :func:`transform_rect_to_image`); ``shape`` is the image's spatial shape."""
    perm, flips = g
    shape = tuple(int(s) for s in shape[len(shape) - len(perm):])
    out = []
    for i, p in enumerate(perm):
        lo, hi = int(rect[2 * p]), int(rect[2 * p + 1])
        if flips[i]:
            lo, hi = shape[p] - hi, shape[p] - lo
        out += [lo, hi]
    return tuple(out)


def apply_dihedral(a, g: tuple[bool, bool, bool]):
    """g(a) for a numpy array or torch tensor (..., H, W): transpose the last two axes if
    g[0], then flip rows if g[1], columns if g[2]. Returns a view where possible."""
    return apply_transform(a, from_dihedral(g))


def invert_dihedral(a, g: tuple[bool, bool, bool]):
    """g⁻¹(a): undo :func:`apply_dihedral` (flips first, then the transpose)."""
    return invert_transform(a, from_dihedral(g))


def dihedral_shape(shape: Sequence[int], g: tuple[bool, bool, bool]) -> tuple[int, int]:
    """(H', W') of g(image) for an image of spatial ``shape`` (H, W)."""
    return transform_shape(shape, from_dihedral(g))


def dihedral_rect_to_image(rect: tuple[int, int, int, int], shape: Sequence[int],
                           g: tuple[bool, bool, bool]) -> tuple[int, int, int, int]:
    """Map a rectangle (y0, y1, x0, x1) of g(image) back to image coordinates. Works for
    rectangles reaching outside the image too (mirror padding commutes with g)."""
    return transform_rect_to_image(rect, shape, from_dihedral(g))
