"""Elastic deformation, rotation and shift as one backward coordinate map, and the resampling of
images, labels and weight maps through it (the augmentation of the paper's Sec. 3.1).

Exactly what is computed here
-----------------------------
*Convention.* A transform is a backward map: output pixel ``(y, x)`` takes the value of the input
at source coordinates ``(y_s, x_s)``. Coordinates are in pixels, pixel centres at integers,
``y`` = row (axis −2, downwards), ``x`` = column (axis −1). The displacement field ``d`` has two
components, ``d[0]`` along y and ``d[1]`` along x.

*Elastic field.* ``D`` has shape ``(2, grid, grid)``, every entry ~ N(0, sigma²) pixels, drawn as
``rng.standard_normal((2, grid, grid)) * sigma``. Grid point ``(i, j)`` sits at pixel
``(i·(H−1)/(grid−1), j·(W−1)/(grid−1))``: the corners of the lattice are the centres of the corner
pixels, and for the 3×3 grid the middle grid point is the image centre. The per-pixel field is
the **interpolating cubic B-spline** through the grid values, tensor-product in y and x, with
mirror (whole-sample symmetric) boundary conditions — i.e. exactly what
``scipy.ndimage.map_coordinates(D[c], coords, order=3, mode="mirror")`` (equivalently
``scipy.ndimage.zoom(D[c], (H/grid, W/grid), order=3, mode="mirror", grid_mode=False)``)
returns. The interpolation is linear in ``D`` and separable, so it is computed as
``d[c] = A_y · D[c] · A_xᵀ`` with precomputed ``(H, grid)`` and ``(W, grid)`` matrices
(:func:`bspline_upsampling_matrix`, cached). At grid points the field equals ``D`` exactly.

*Resampling* of each array with its interpolation order, the input mirrored at the borders
(whole-sample symmetric about the centres of the first and last pixel: ``…, a2, a1, a0, a1, a2,
…``, scipy's ``mode="mirror"``, numpy's ``np.pad(mode="reflect")``):

* order 3 — bicubic **cubic convolution** (Keys 1981, a = −0.75, 4×4 taps), the kernel of
  ``torch.nn.functional.grid_sample(mode="bicubic")``, OpenCV and most image tools. It
  interpolates (exact at integer coordinates), needs no prefilter and is slightly sharper than a
  B-spline, but reproduces only linear functions (error ≈ ½·|f''| per px²). It is *not* the cubic
  B-spline of scipy's ``order=3``, so images differ slightly from scipy/elasticdeform.
* order 1 — bilinear (weight maps: no overshoot, stays within the input's range).
* order 0 — nearest neighbour, rounding half to even (labels: values are copied bit for bit,
  never invented; any dtype, including int32 instance ids beyond 2^24).

The resampling runs in fused, single-threaded numba kernels (``cache=True``; the first call in a
fresh installation compiles for a few seconds) with float64 source coordinates and float64
accumulation; outputs are float32 (float64 input stays float64). Single-threaded on purpose:
training parallelises over worker processes, and a 572² tile takes a few milliseconds.

*Rotation and shift* are folded into the same coordinate map, so an image is resampled once:
``(y_s, x_s) = c + R(θ)·((y, x) − c) + t + d(y, x)`` with ``c`` the image centre
``((H−1)/2, (W−1)/2)``, ``t`` the shift, and ``R(θ)`` such that a positive angle turns the image
content counter-clockwise as displayed (θ = 90° gives ``np.rot90``). *Flips and quarter turns*
are exact re-indexings applied after the resampling; together with rotations in ±45° they give
all angles.

Public API: :func:`elastic_deform`, :func:`random_grid`, :func:`elastic_field`,
:func:`bspline_upsampling_matrix`, :func:`resample`, :func:`make_rng`.
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import numba
import numpy as np

from .errors import UnetlabError
from .tiling import reflect_indices

__all__ = [
    "elastic_deform", "random_grid", "elastic_field", "bspline_upsampling_matrix", "resample",
    "make_rng",
]


_ORDERS = (0, 1, 3)


def make_rng(rng=None) -> np.random.Generator:
    """``None`` → a fresh unseeded Generator; an int (seed) → ``default_rng(seed)``; a Generator
    is returned as is (and advanced by the caller's draws)."""
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or isinstance(rng, (int, np.integer)):
        return np.random.default_rng(rng)
    if isinstance(rng, np.random.SeedSequence):
        return np.random.default_rng(rng)
    raise UnetlabError(f"rng must be None, an integer seed or a numpy.random.Generator, "
                       f"got {type(rng).__name__}")


def _bspline3(t: np.ndarray) -> np.ndarray:
    """The cubic B-spline basis function β³(t) (support |t| < 2)."""
    a = np.abs(t)
    return np.where(a < 1, 2.0 / 3.0 - a * a + 0.5 * a ** 3,
                    np.where(a < 2, (2.0 - a) ** 3 / 6.0, 0.0))


@functools.lru_cache(maxsize=64)
def bspline_upsampling_matrix(n_out: int, grid: int) -> np.ndarray:
    """The ``(n_out, grid)`` float64 matrix ``A`` with ``A @ v`` = the interpolating cubic B-spline
    through ``v`` (``grid`` samples), mirror boundary, evaluated at ``i·(grid−1)/(n_out−1)`` for
    ``i = 0 … n_out−1`` (so the first and last output samples are ``v[0]`` and ``v[−1]``).

    Derivation: the mirror-extended samples are periodic with period ``P = 2(grid−1)``; the spline
    coefficients ``c`` solve the circulant system ``(c[k−1] + 4c[k] + c[k+1])/6 = v[k mod P]``
    (always invertible), and ``s(t) = Σ_k c[k]·β³(t − k)``. Equal to
    ``scipy.ndimage.map_coordinates(v, [t], order=3, mode="mirror")`` (tested to 1e-12).
    Cached per ``(n_out, grid)``; the result is read-only.
    """
    if grid < 2:
        raise UnetlabError(f"grid must be at least 2 (points per axis of the elastic lattice), "
                           f"got {grid}")
    if n_out < 1:
        raise UnetlabError(f"image size must be at least 1 pixel, got {n_out}")
    period = 2 * (grid - 1)
    # circulant system for the coefficients over one period
    m = np.zeros((period, period))
    for k in range(period):
        m[k, k] += 4.0 / 6.0
        m[k, (k - 1) % period] += 1.0 / 6.0
        m[k, (k + 1) % period] += 1.0 / 6.0
    extend = np.zeros((period, grid))                     # mirror extension of the samples
    extend[np.arange(period), reflect_indices(0, period, grid)] = 1.0
    coef = np.linalg.solve(m, extend)                      # (period, grid): coefficients per sample
    t = np.arange(n_out) * ((grid - 1) / max(n_out - 1, 1))
    k0 = np.floor(t).astype(np.int64)
    a = np.zeros((n_out, grid))
    for off in (-1, 0, 1, 2):
        k = k0 + off
        w = _bspline3(t - k)
        a += w[:, None] * coef[np.mod(k, period)]
    a.setflags(write=False)
    return a


def random_grid(grid: int = 3, sigma: float = 10.0, rng=None) -> np.ndarray:
    """Random displacements on the coarse lattice: ``(2, grid, grid)`` float64, every entry
    ~ N(0, sigma²) in pixels (``[0]`` along y, ``[1]`` along x). Sec. 3.1: grid 3, sigma 10."""
    _check_grid_sigma(grid, sigma)
    return make_rng(rng).standard_normal((2, grid, grid)) * float(sigma)


def elastic_field(displacements: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Per-pixel displacement field ``(2, H, W)`` float64 (pixels) from lattice displacements
    ``(2, gy, gx)`` by bicubic (interpolating cubic B-spline) upsampling, corners on the corner
    pixel centres (see the module docstring). ``field[c] = A_y · D[c] · A_xᵀ``."""
    d = np.asarray(displacements, dtype=np.float64)
    if d.ndim != 3 or d.shape[0] != 2:
        raise UnetlabError(f"displacements must have shape (2, grid_y, grid_x), got {d.shape}")
    h, w = int(shape[0]), int(shape[1])
    ay = bspline_upsampling_matrix(h, d.shape[1])
    ax = bspline_upsampling_matrix(w, d.shape[2])
    out = np.empty((2, h, w))
    # the numba kernel with a zero affine part computes exactly ay·D[c]·axᵀ (no BLAS threads)
    _coords_kernel(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, np.ascontiguousarray(ay @ d[0]),
                   np.ascontiguousarray(ay @ d[1]), np.array(ax), out[0], out[1])
    return out


def _check_grid_sigma(grid, sigma) -> None:
    if not isinstance(grid, (int, np.integer)) or grid < 2:
        raise UnetlabError(f"grid must be an integer ≥ 2 (points per axis of the elastic "
                           f"lattice), got {grid!r}")
    if not np.isfinite(sigma) or sigma < 0:
        raise UnetlabError(f"sigma must be a finite number ≥ 0 (pixels), got {sigma!r}")


def _check_arrays(arrays, orders) -> tuple[list[np.ndarray], list[int], tuple[int, int]]:
    if isinstance(arrays, np.ndarray):
        raise UnetlabError("arrays must be a list of arrays (wrap a single array as [array])")
    arrays = [np.asarray(a) for a in arrays]
    if isinstance(orders, (int, np.integer)):
        orders = [int(orders)] * len(arrays)
    orders = list(orders)
    if len(orders) != len(arrays):
        raise UnetlabError(f"orders must give one interpolation order per array: "
                           f"{len(arrays)} arrays but {len(orders)} orders")
    if not arrays:
        raise UnetlabError("arrays is empty: nothing to deform")
    for i, o in enumerate(orders):
        if o not in _ORDERS:
            raise UnetlabError(f"orders[{i}] must be 0 (nearest, labels), 1 (linear, weights) "
                               f"or 3 (bicubic, images), got {o!r}")
    shape = None
    for i, a in enumerate(arrays):
        if a.ndim < 2:
            raise UnetlabError(f"arrays[{i}] must have shape (..., H, W), got {a.shape}")
        if shape is None:
            shape = a.shape[-2:]
        elif a.shape[-2:] != shape:
            raise UnetlabError(f"all arrays must have the same height and width: arrays[0] is "
                               f"{shape[0]}×{shape[1]} but arrays[{i}] is "
                               f"{a.shape[-2]}×{a.shape[-1]}")
        if a.size == 0:
            raise UnetlabError(f"arrays[{i}] is empty (shape {a.shape})")
        if orders[i] != 0 and not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
            raise UnetlabError(f"arrays[{i}] has dtype {a.dtype}, which cannot be interpolated")
    return arrays, orders, (int(shape[0]), int(shape[1]))


def _out_dtype(a: np.ndarray, order: int) -> np.dtype:
    if order == 0:
        return a.dtype
    return a.dtype if a.dtype in (np.float32, np.float64) else np.dtype(np.float32)


@numba.njit(inline="always")
def _mirror(k, n):
    """Whole-sample symmetric index into range(n), n ≥ 2: the rule of
    :func:`unetlab.tiling.reflect_indices` for one index, jit-compiled because numba kernels cannot
    call that numpy function."""
    if 0 <= k < n:
        return k
    p = 2 * (n - 1)
    k %= p
    if k < 0:
        k += p
    return p - k if k >= n else k


@numba.njit(inline="always")
def _floor_frac(v):
    """(floor(v) as int, v − floor(v)) of a float64 source coordinate."""
    f = np.floor(v)
    return int(f), v - f


@numba.njit(inline="always")
def _keys(s):
    """Keys cubic convolution kernel, a = −0.75 (as torch / OpenCV bicubic)."""
    s = abs(s)
    if s <= 1.0:
        return (1.25 * s - 2.25) * s * s + 1.0
    if s < 2.0:
        return ((-0.75 * s + 3.75) * s - 6.0) * s + 3.0
    return 0.0


@numba.njit(inline="always")
def _keys4(t):
    """The four Keys weights (a = −0.75) of the taps at −1, 0, 1, 2 for a fraction t in [0, 1),
    branch-free: _keys(t + 1), _keys(t), _keys(1 − t), _keys(2 − t)."""
    u = 1.0 - t
    w0 = ((-0.75 * t + 1.5) * t - 0.75) * t            # a·t·(1 − t)²
    w1 = (1.25 * t - 2.25) * t * t + 1.0
    w2 = (1.25 * u - 2.25) * u * u + 1.0
    w3 = ((-0.75 * u + 1.5) * u - 0.75) * u
    return w0, w1, w2, w3


@numba.njit(cache=True, nogil=True)
def _coords_kernel(m00, m01, oy, m10, m11, ox, py, px, ax, ys, xs):
    """ys[i, j] = m00·i + m01·j + oy + Σ_k py[i, k]·ax[j, k], likewise xs with m1*, ox, px."""
    h, w = ys.shape
    g = ax.shape[1]
    for i in range(h):
        by = m00 * i + oy
        bx = m10 * i + ox
        for j in range(w):
            a = 0.0
            b = 0.0
            for k in range(g):
                a += py[i, k] * ax[j, k]
                b += px[i, k] * ax[j, k]
            ys[i, j] = by + m01 * j + a
            xs[i, j] = bx + m11 * j + b


@numba.njit(cache=True, nogil=True)
def _cubic_kernel(src, ys, xs, out):
    """Bicubic (Keys) resampling of every channel of ``src`` (C, H, W) at ``ys``/``xs``,
    mirrored borders; the coordinates and weights of a pixel are shared by its channels."""
    n, h, w = src.shape
    for i in range(h):
        for j in range(w):
            y = ys[i, j]
            x = xs[i, j]
            fy = np.floor(y)
            fx = np.floor(x)
            ty = y - fy
            tx = x - fx
            y0 = int(fy)
            x0 = int(fx)
            wy0, wy1, wy2, wy3 = _keys4(ty)
            wx0, wx1, wx2, wx3 = _keys4(tx)
            if 1 <= y0 and y0 + 2 < h and 1 <= x0 and x0 + 2 < w:
                r0, r1, r2, r3 = y0 - 1, y0, y0 + 1, y0 + 2
                c0, c1, c2, c3 = x0 - 1, x0, x0 + 1, x0 + 2
            else:
                r0, r1, r2, r3 = (_mirror(y0 - 1, h), _mirror(y0, h), _mirror(y0 + 1, h),
                                  _mirror(y0 + 2, h))
                c0, c1, c2, c3 = (_mirror(x0 - 1, w), _mirror(x0, w), _mirror(x0 + 1, w),
                                  _mirror(x0 + 2, w))
            for c in range(n):
                s = src[c]
                v0 = wx0 * s[r0, c0] + wx1 * s[r0, c1] + wx2 * s[r0, c2] + wx3 * s[r0, c3]
                v1 = wx0 * s[r1, c0] + wx1 * s[r1, c1] + wx2 * s[r1, c2] + wx3 * s[r1, c3]
                v2 = wx0 * s[r2, c0] + wx1 * s[r2, c1] + wx2 * s[r2, c2] + wx3 * s[r2, c3]
                v3 = wx0 * s[r3, c0] + wx1 * s[r3, c1] + wx2 * s[r3, c2] + wx3 * s[r3, c3]
                out[c, i, j] = wy0 * v0 + wy1 * v1 + wy2 * v2 + wy3 * v3


@numba.njit(cache=True, nogil=True)
def _linear_kernel(src, ys, xs, out):
    """Bilinear resampling of every channel of ``src`` (C, H, W) at ``ys``/``xs``, mirrored
    borders."""
    n, h, w = src.shape
    for c in range(n):                  # channels outermost: weight maps have one
        s = src[c]
        for i in range(h):
            for j in range(w):
                r0, ty = _floor_frac(ys[i, j])
                c0, tx = _floor_frac(xs[i, j])
                if 0 <= r0 and r0 + 1 < h and 0 <= c0 and c0 + 1 < w:
                    r1, c1 = r0 + 1, c0 + 1
                else:
                    r0, r1 = _mirror(r0, h), _mirror(r0 + 1, h)
                    c0, c1 = _mirror(c0, w), _mirror(c0 + 1, w)
                out[c, i, j] = ((1.0 - ty) * ((1.0 - tx) * s[r0, c0] + tx * s[r0, c1])
                                + ty * ((1.0 - tx) * s[r1, c0] + tx * s[r1, c1]))


@numba.njit(cache=True, nogil=True)
def _nearest_kernel(src, ys, xs, out):
    n, h, w = src.shape
    for i in range(h):
        for j in range(w):
            r = _mirror(int(np.rint(ys[i, j])), h)    # rint: round half to even
            q = _mirror(int(np.rint(xs[i, j])), w)
            for c in range(n):
                out[c, i, j] = src[c, r, q]


_UINT_OF_SIZE = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def _nearest(a: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Nearest-neighbour copy of the values of ``a`` (any dtype), mirrored borders."""
    h, w = a.shape[-2:]
    src = np.ascontiguousarray(a).reshape((-1, h, w))
    view = _UINT_OF_SIZE.get(src.dtype.itemsize) if src.dtype.kind in "biufcmM" else None
    if view is None:
        # rare dtypes (complex128, object, strings): index arithmetic, then numpy take
        idx = np.empty((1, h, w), dtype=np.int64)
        _nearest_kernel(np.arange(h * w, dtype=np.int64).reshape(1, h, w), ys, xs, idx)
        return np.take(src.reshape(src.shape[0], -1), idx[0], axis=-1).reshape(a.shape)
    out = np.empty(src.shape, dtype=view)
    _nearest_kernel(src.view(view), ys, xs, out)  # copying the bits: exact for every dtype
    return out.view(src.dtype).reshape(a.shape)


def resample(arrays: Sequence[np.ndarray], orders: Sequence[int], ys: np.ndarray,
             xs: np.ndarray) -> list[np.ndarray]:
    """Sample every array at source coordinates ``(ys, xs)`` (each (H, W), pixels, float64),
    input mirrored at the borders; arrays ``(..., H, W)``, each with its order (0 nearest,
    1 bilinear, 3 bicubic Keys a = −0.75). Returns new arrays ``(..., H, W)``: order 0 keeps the
    dtype and copies values; orders 1 and 3 give float32 (float64 input stays float64),
    accumulated in float64.
    """
    arrays, orders, (h, w) = _check_arrays(arrays, orders)
    ys = np.ascontiguousarray(ys, dtype=np.float64)
    xs = np.ascontiguousarray(xs, dtype=np.float64)
    if ys.shape != (h, w) or xs.shape != (h, w):
        raise UnetlabError(f"coordinate maps must have shape {(h, w)}, got {ys.shape} and "
                           f"{xs.shape}")
    if h < 2 or w < 2:
        raise UnetlabError(f"images must be at least 2×2 pixels to resample, got {h}×{w}")
    if not (np.isfinite(ys).all() and np.isfinite(xs).all()):
        raise UnetlabError("coordinate maps contain NaN or infinite values")
    out = []
    for a, order in zip(arrays, orders):
        if order == 0:
            out.append(_nearest(a, ys, xs))
            continue
        dt = _out_dtype(a, order)
        src = np.ascontiguousarray(a, dtype=dt).reshape((-1, h, w))
        r = np.empty(src.shape, dtype=dt)
        (_cubic_kernel if order == 3 else _linear_kernel)(src, ys, xs, r)
        out.append(r.reshape(a.shape))
    return out


def _identity_copy(arrays, orders) -> list[np.ndarray]:
    return [np.array(a, dtype=_out_dtype(a, o), copy=True) for a, o in zip(arrays, orders)]


def elastic_deform(arrays: Sequence[np.ndarray], orders: Sequence[int] | int, grid: int = 3,
                   sigma: float = 10.0, rng=None) -> list[np.ndarray]:
    """Random elastic deformation of Sec. 3.1, the same one for every array.

    arrays: list of ``(..., H, W)`` arrays with the same H and W (leading axes, e.g. channels,
        are deformed identically). orders: one per array (or one int for all): 3 bicubic
        (images), 0 nearest (labels: values never invented), 1 bilinear (weight maps).
    grid: points per axis of the coarse lattice (paper: 3); sigma: standard deviation of each
        displacement component at the lattice points, in pixels (paper: 10).
    rng: seed or ``numpy.random.Generator``; the same seed gives the same result.

    Returns a list of new arrays of the same shapes; order 0 keeps the dtype, orders 1 and 3 give
    float32 (float64 stays float64). ``sigma = 0`` returns exact copies. See the module docstring
    for the exact interpolation and border conventions.
    """
    arrays, orders, (h, w) = _check_arrays(arrays, orders)
    _check_grid_sigma(grid, sigma)
    d = random_grid(grid, sigma, rng)
    if sigma == 0:
        return _identity_copy(arrays, orders)
    ys, xs = _coordinates((h, w), d)
    return resample(arrays, orders, ys, xs)


def _coordinates(shape, displacements=None, angle=0.0, shift=(0.0, 0.0)):
    """Source coordinates (ys, xs), (H, W) float64: rotation by ``angle`` degrees about the
    centre, ``shift`` (ty, tx) px and the elastic field of lattice ``displacements``, one pass."""
    h, w = int(shape[0]), int(shape[1])
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    if angle % 90 == 0:          # exact cos/sin for quarter turns
        c, s = [(1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (0.0, -1.0)][int(angle % 360) // 90]
    else:
        th = math.radians(angle)
        c, s = math.cos(th), math.sin(th)
    # y_s = cy + c·(y − cy) + s·(x − cx) + ty + d_y
    # x_s = cx − s·(y − cy) + c·(x − cx) + tx + d_x
    oy = cy + shift[0] - c * cy - s * cx
    ox = cx + shift[1] + s * cy - c * cx
    if displacements is not None:
        d = np.asarray(displacements, dtype=np.float64)
        if d.ndim != 3 or d.shape[0] != 2:
            raise UnetlabError(f"displacements must have shape (2, grid_y, grid_x), got {d.shape}")
        ay = bspline_upsampling_matrix(h, d.shape[1])
        ax = bspline_upsampling_matrix(w, d.shape[2])
        py = np.ascontiguousarray(ay @ d[0])
        px = np.ascontiguousarray(ay @ d[1])
    else:
        ax = np.zeros((w, 0))
        py = px = np.zeros((h, 0))
    ys = np.empty((h, w))
    xs = np.empty((h, w))
    _coords_kernel(c, s, oy, -s, c, ox, py, px, np.array(ax), ys, xs)
    return ys, xs
