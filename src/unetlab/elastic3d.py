"""Elastic deformation of volumes: Sec. 3.1 of Ronneberger et al. (2015) carried to 3D as in
Çiçek et al. (2016): a coarse grid of random displacement vectors on every axis, a B-spline
interpolated dense field, rotation about z, shifts and one resampling.

Exactly what is computed here (the 2D conventions of :mod:`unetlab.elastic`, one axis more)
-----------------------------------------------------------------------------------------
*Convention.* A backward map: output voxel ``(z, y, x)`` takes the input's value at source
coordinates ``(z_s, y_s, x_s)``, in voxels, voxel centres at integers; ``z`` = axis −3,
``y`` = −2, ``x`` = −1.

*Elastic field.* ``D`` has shape ``(3, gz, gy, gx)`` (components along z, y, x); every entry
~ N(0, s_a²) with ``s_a = sigma · dx / spacing[a]`` voxels along axis ``a``: ``sigma`` is given
in in-plane (x) voxels and the physical displacement has the same spread on every axis, so with
``spacing = (dz, dy, dx)`` the z component is scaled by ``dx/dz`` (no spacing: isotropic).
Grid point ``(i, j, k)`` sits at voxel ``(i·(Z−1)/(gz−1), j·(Y−1)/(gy−1), k·(X−1)/(gx−1))``
and the per-voxel field is the interpolating cubic B-spline through the grid values with mirror
boundaries, tensor-product in z, y and x: ``d[c] = D[c] ×_z A_z ×_y A_y ×_x A_x`` with the
matrices of :func:`unetlab.elastic.bspline_upsampling_matrix` (= ``scipy.ndimage.
map_coordinates(D[c], coords, order=3, mode="mirror")`` at the voxels' grid coordinates).

*Rotation and shift* about the volume centre ``c``, in the (y, x) plane only (the axis of the
rotation is z, so anisotropic z sampling is never mixed into the plane):
``z_s = z + t_z + d_z``, ``(y_s, x_s) = c_yx + R(θ)·((y, x) − c_yx) + (t_y, t_x) + (d_y, d_x)``
with ``R`` as in 2D (positive θ turns the content counter-clockwise as displayed).

*Resampling*, input mirrored at the borders (``np.pad(mode="reflect")``): order 3 = tricubic
Keys cubic convolution (a = −0.75, 4×4×4 taps; images), order 1 = trilinear (weight maps),
order 0 = nearest, rounding half to even (labels: values copied bit for bit, never invented).
Single-threaded numba kernels, float64 coordinates and accumulation, float32 output (float64
input stays float64), as the 2D kernels.

Public API: :func:`elastic_deform_3d`, :func:`random_grid_3d`, :func:`elastic_field_3d`,
:func:`coordinates_3d`, :func:`resample_3d`.
"""
from __future__ import annotations

import math
from typing import Sequence

import numba
import numpy as np

from .elastic import _ORDERS, _UINT_OF_SIZE, _keys4, _mirror, _out_dtype, bspline_upsampling_matrix
from .elastic import make_rng
from .errors import UnetlabError

__all__ = ["elastic_deform_3d", "random_grid_3d", "elastic_field_3d", "coordinates_3d",
           "resample_3d"]


def _triple(v, what: str, kind=float) -> tuple:
    t = (v, v, v) if isinstance(v, (int, float, np.integer, np.floating)) else tuple(v)
    if len(t) != 3:
        raise UnetlabError(f"{what}: expected one number or (z, y, x), got {v!r}")
    return tuple(kind(x) for x in t)


def _axis_sigmas(sigma: float, spacing) -> np.ndarray:
    """Standard deviation (voxels) of the displacement along z, y, x: ``sigma · dx / s_a``."""
    if spacing is None:
        return np.full(3, float(sigma))
    sp = _triple(spacing, "spacing")
    if not all(math.isfinite(s) and s > 0 for s in sp):
        raise UnetlabError(f"spacing: voxel sizes must be finite numbers > 0, got {sp}")
    return float(sigma) * sp[2] / np.array(sp)


def random_grid_3d(grid: int | Sequence[int] = 3, sigma: float = 10.0, rng=None,
                   spacing=None) -> np.ndarray:
    """Random displacements on the coarse lattice: ``(3, gz, gy, gx)`` float64 voxels
    (``[0]`` along z, ``[1]`` y, ``[2]`` x), each ~ N(0, s_a²), ``s_a = sigma · dx / spacing[a]``
    (``sigma`` in x voxels; isotropic without ``spacing``). Drawn as
    ``rng.standard_normal((3, gz, gy, gx))`` times the per-axis scale. Sec. 3.1: 3 points per
    axis, sigma 10."""
    g = _triple(grid, "grid", int)
    if min(g) < 2:
        raise UnetlabError(f"grid must be at least 2 points per axis, got {grid!r}")
    if not (math.isfinite(sigma) and sigma >= 0):
        raise UnetlabError(f"sigma must be a finite number ≥ 0 (voxels), got {sigma!r}")
    scale = _axis_sigmas(sigma, spacing)
    return make_rng(rng).standard_normal((3, *g)) * scale[:, None, None, None]


def _partial_field(d: np.ndarray, shape) -> tuple[np.ndarray, np.ndarray]:
    """``(P (3, Z, Y, gx), A_x (X, gx))``: the field contracted over z and y, so that
    ``field[c, z, y, x] = Σ_k P[c, z, y, k]·A_x[x, k]``."""
    z, y, x = (int(s) for s in shape)
    if d.ndim != 4 or d.shape[0] != 3:
        raise UnetlabError(f"displacements must have shape (3, gz, gy, gx), got {d.shape}")
    az = bspline_upsampling_matrix(z, d.shape[1])
    ay = bspline_upsampling_matrix(y, d.shape[2])
    ax = bspline_upsampling_matrix(x, d.shape[3])
    p = np.einsum("zi,cijk->czjk", az, d)
    p = np.ascontiguousarray(np.einsum("yj,czjk->czyk", ay, p))
    return p, np.array(ax)


def elastic_field_3d(displacements: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Per-voxel displacement field ``(3, Z, Y, X)`` float64 (voxels) from lattice displacements
    ``(3, gz, gy, gx)`` by tricubic (interpolating cubic B-spline, mirror) upsampling; equal to
    the grid values at the grid voxels (module docstring)."""
    p, ax = _partial_field(np.asarray(displacements, dtype=np.float64), shape)
    out = np.empty((3, *(int(s) for s in shape)))
    _coords3_kernel(1.0, 0.0, 0.0, 0.0, 0.0, 0.0, p, ax, out[0], out[1], out[2], True)
    return out


def coordinates_3d(shape, displacements=None, angle: float = 0.0,
                   shift=(0.0, 0.0, 0.0)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source coordinates ``(zs, ys, xs)``, each (Z, Y, X) float64 voxels: rotation by ``angle``
    degrees about the z axis through the centre, ``shift`` (tz, ty, tx) voxels and the elastic
    field of lattice ``displacements`` (3, gz, gy, gx), in one pass."""
    z, y, x = (int(s) for s in shape)
    cy, cx = (y - 1) / 2.0, (x - 1) / 2.0
    if angle % 90 == 0:
        c, s = [(1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (0.0, -1.0)][int(angle % 360) // 90]
    else:
        th = math.radians(angle)
        c, s = math.cos(th), math.sin(th)
    tz, ty, tx = _triple(shift, "shift")
    oy = cy + ty - c * cy - s * cx
    ox = cx + tx + s * cy - c * cx
    if displacements is not None:
        p, ax = _partial_field(np.asarray(displacements, dtype=np.float64), (z, y, x))
    else:
        p, ax = np.zeros((3, z, y, 0)), np.zeros((x, 0))
    zs, ys, xs = np.empty((z, y, x)), np.empty((z, y, x)), np.empty((z, y, x))
    _coords3_kernel(c, s, oy, ox, tz, 0.0, p, ax, zs, ys, xs, False)
    return zs, ys, xs


@numba.njit(cache=True, nogil=True)
def _coords3_kernel(c, s, oy, ox, tz, _unused, p, ax, zs, ys, xs, field_only):
    """zs = z + tz + Σ_k p[0]·ax; ys = c·y + s·x + oy + Σ_k p[1]·ax; xs = −s·y + c·x + ox + …
    (``field_only``: the displacement alone, no identity/rotation/shift)."""
    nz, ny, nx = zs.shape
    g = ax.shape[1]
    for i in range(nz):
        for j in range(ny):
            for k in range(nx):
                a0 = 0.0
                a1 = 0.0
                a2 = 0.0
                for q in range(g):
                    w = ax[k, q]
                    a0 += p[0, i, j, q] * w
                    a1 += p[1, i, j, q] * w
                    a2 += p[2, i, j, q] * w
                if field_only:
                    zs[i, j, k], ys[i, j, k], xs[i, j, k] = a0, a1, a2
                else:
                    zs[i, j, k] = i + tz + a0
                    ys[i, j, k] = c * j + s * k + oy + a1
                    xs[i, j, k] = -s * j + c * k + ox + a2


@numba.njit(inline="always")
def _taps(v, m, r, w):
    """The four mirrored tap indices ``r`` and Keys weights ``w`` of coordinate ``v`` on an
    axis of ``m`` voxels."""
    f = np.floor(v)
    b = int(f)
    w[0], w[1], w[2], w[3] = _keys4(v - f)
    for t in range(4):
        r[t] = _mirror(b - 1 + t, m)


@numba.njit(cache=True, nogil=True)
def _cubic3_kernel(src, zs, ys, xs, out):
    """Tricubic (Keys, a = −0.75) resampling of every channel of ``src`` (C, Z, Y, X)."""
    n, nz, ny, nx = src.shape
    rz = np.empty(4, np.int64)
    ry = np.empty(4, np.int64)
    rx = np.empty(4, np.int64)
    wz = np.empty(4)
    wy = np.empty(4)
    wx = np.empty(4)
    for i in range(nz):
        for j in range(ny):
            for k in range(nx):
                _taps(zs[i, j, k], nz, rz, wz)
                _taps(ys[i, j, k], ny, ry, wy)
                _taps(xs[i, j, k], nx, rx, wx)
                for ch in range(n):
                    acc = 0.0
                    for a in range(4):
                        sa = 0.0
                        for bb in range(4):
                            row = src[ch, rz[a], ry[bb]]
                            sa += wy[bb] * (wx[0] * row[rx[0]] + wx[1] * row[rx[1]]
                                            + wx[2] * row[rx[2]] + wx[3] * row[rx[3]])
                        acc += wz[a] * sa
                    out[ch, i, j, k] = acc


@numba.njit(cache=True, nogil=True)
def _linear3_kernel(src, zs, ys, xs, out):
    """Trilinear resampling of every channel of ``src`` (C, Z, Y, X), mirrored borders."""
    n, nz, ny, nx = src.shape
    for i in range(nz):
        for j in range(ny):
            for k in range(nx):
                fz, fy, fx = np.floor(zs[i, j, k]), np.floor(ys[i, j, k]), np.floor(xs[i, j, k])
                tz, ty, tx = zs[i, j, k] - fz, ys[i, j, k] - fy, xs[i, j, k] - fx
                z0, y0, x0 = int(fz), int(fy), int(fx)
                z1, y1, x1 = _mirror(z0 + 1, nz), _mirror(y0 + 1, ny), _mirror(x0 + 1, nx)
                z0, y0, x0 = _mirror(z0, nz), _mirror(y0, ny), _mirror(x0, nx)
                for ch in range(n):
                    s = src[ch]
                    a = (1 - ty) * ((1 - tx) * s[z0, y0, x0] + tx * s[z0, y0, x1]) \
                        + ty * ((1 - tx) * s[z0, y1, x0] + tx * s[z0, y1, x1])
                    b = (1 - ty) * ((1 - tx) * s[z1, y0, x0] + tx * s[z1, y0, x1]) \
                        + ty * ((1 - tx) * s[z1, y1, x0] + tx * s[z1, y1, x1])
                    out[ch, i, j, k] = (1 - tz) * a + tz * b


@numba.njit(cache=True, nogil=True)
def _nearest3_kernel(src, zs, ys, xs, out):
    n, nz, ny, nx = src.shape
    for i in range(nz):
        for j in range(ny):
            for k in range(nx):
                a = _mirror(int(np.rint(zs[i, j, k])), nz)      # rint: round half to even
                b = _mirror(int(np.rint(ys[i, j, k])), ny)
                c = _mirror(int(np.rint(xs[i, j, k])), nx)
                for ch in range(n):
                    out[ch, i, j, k] = src[ch, a, b, c]


def _check_arrays_3d(arrays, orders):
    if isinstance(arrays, np.ndarray):
        raise UnetlabError("arrays must be a list of arrays (wrap a single array as [array])")
    arrays = [np.asarray(a) for a in arrays]
    orders = [int(orders)] * len(arrays) if isinstance(orders, (int, np.integer)) \
        else list(orders)
    if not arrays or len(orders) != len(arrays):
        raise UnetlabError(f"orders must give one interpolation order per array: "
                           f"{len(arrays)} arrays but {len(orders)} orders")
    shape = None
    for i, (a, o) in enumerate(zip(arrays, orders)):
        if o not in _ORDERS:
            raise UnetlabError(f"orders[{i}] must be 0 (nearest, labels), 1 (linear, weights) "
                               f"or 3 (cubic, images), got {o!r}")
        if a.ndim < 3:
            raise UnetlabError(f"arrays[{i}] must have shape (..., Z, Y, X), got {a.shape}")
        shape = a.shape[-3:] if shape is None else shape
        if a.shape[-3:] != shape:
            raise UnetlabError(f"all arrays must have the same (Z, Y, X): arrays[0] is "
                               f"{shape} but arrays[{i}] is {a.shape[-3:]}")
        if min(a.shape[-3:]) < 2:
            raise UnetlabError(f"arrays[{i}]: volumes must be at least 2 voxels per axis to "
                               f"resample, got {a.shape[-3:]}")
        if o != 0 and not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
            raise UnetlabError(f"arrays[{i}] has dtype {a.dtype}, which cannot be interpolated")
    return arrays, orders, tuple(int(s) for s in shape)


def _nearest_3d(a: np.ndarray, zs, ys, xs) -> np.ndarray:
    src = np.ascontiguousarray(a).reshape((-1, *a.shape[-3:]))
    view = _UINT_OF_SIZE.get(src.dtype.itemsize) if src.dtype.kind in "biufcmM" else None
    if view is None:
        raise UnetlabError(f"labels of dtype {a.dtype} cannot be resampled")
    out = np.empty(src.shape, dtype=view)
    _nearest3_kernel(src.view(view), zs, ys, xs, out)      # bit copies: exact for any dtype
    return out.view(src.dtype).reshape(a.shape)


def resample_3d(arrays: Sequence[np.ndarray], orders: Sequence[int] | int, zs: np.ndarray,
                ys: np.ndarray, xs: np.ndarray) -> list[np.ndarray]:
    """Sample every ``(..., Z, Y, X)`` array at source coordinates ``(zs, ys, xs)`` (each
    (Z, Y, X) float64 voxels), input mirrored at the borders, each with its order (0 nearest,
    1 trilinear, 3 tricubic Keys a = −0.75). Order 0 keeps the dtype and copies values; orders 1
    and 3 give float32 (float64 stays float64), accumulated in float64."""
    arrays, orders, shape = _check_arrays_3d(arrays, orders)
    coords = [np.ascontiguousarray(v, dtype=np.float64) for v in (zs, ys, xs)]
    if any(v.shape != shape for v in coords):
        raise UnetlabError(f"coordinate maps must have shape {shape}, got "
                           f"{[v.shape for v in coords]}")
    if not all(np.isfinite(v).all() for v in coords):
        raise UnetlabError("coordinate maps contain NaN or infinite values")
    out = []
    for a, order in zip(arrays, orders):
        if order == 0:
            out.append(_nearest_3d(a, *coords))
            continue
        dt = _out_dtype(a, order)
        src = np.ascontiguousarray(a, dtype=dt).reshape((-1, *shape))
        r = np.empty(src.shape, dtype=dt)
        (_cubic3_kernel if order == 3 else _linear3_kernel)(src, *coords, r)
        out.append(r.reshape(a.shape))
    return out


def elastic_deform_3d(arrays: Sequence[np.ndarray], orders: Sequence[int] | int,
                      grid: int | Sequence[int] = 3, sigma: float = 10.0, rng=None,
                      spacing=None) -> list[np.ndarray]:
    """Random elastic deformation of volumes (Sec. 3.1 in 3D), the same one for every array.

    arrays: ``(..., Z, Y, X)`` arrays with the same (Z, Y, X) (leading axes, e.g. channels, are
        deformed identically). orders: one per array (or one int): 3 tricubic (images),
        0 nearest (labels: values never invented), 1 trilinear (weight maps).
    grid: lattice points per axis (paper: 3); sigma: std of each lattice displacement in x
        voxels (paper: 10); spacing: (dz, dy, dx) voxel size, scaling the z (and y) component so
        the physical spread is the same on every axis (:func:`random_grid_3d`).
    rng: seed or Generator. ``sigma = 0`` returns exact copies. Returns new arrays.
    """
    arrays, orders, shape = _check_arrays_3d(arrays, orders)
    d = random_grid_3d(grid, sigma, rng, spacing)
    if sigma == 0:
        return [np.array(a, dtype=_out_dtype(a, o), copy=True) for a, o in zip(arrays, orders)]
    return resample_3d(arrays, orders, *coordinates_3d(shape, d))
