"""Slow, obviously-correct reference for ``unetlab.augment`` (Sec. 3.1 elastic deformation).

The same formula as the fast path, computed independently:

* the displacement field with scipy's own cubic B-spline (``map_coordinates(order=3,
  mode="mirror")`` on the coarse lattice, one call per component, evaluated at every pixel's
  lattice coordinate ``(y·(g−1)/(H−1), x·(g−1)/(W−1))``) instead of the separable matrices;
* the resampling with explicit per-pixel Python loops over the taps: Keys cubic convolution
  (a = −0.75) for order 3, bilinear for order 1, round-half-to-even for order 0, every tap index
  mirrored (whole-sample symmetric) into the image.

Only for small images (tens of pixels a side).
"""
from __future__ import annotations

import math

import numpy as np
import scipy.ndimage as ndi

A = -0.75  # Keys' parameter, as torch/OpenCV bicubic


def keys(s: float) -> float:
    """Keys (1981) cubic convolution kernel with a = −0.75."""
    s = abs(s)
    if s <= 1:
        return (A + 2) * s ** 3 - (A + 3) * s ** 2 + 1
    if s < 2:
        return A * s ** 3 - 5 * A * s ** 2 + 8 * A * s - 4 * A
    return 0.0


def mirror(i: int, n: int) -> int:
    """Whole-sample symmetric index: ... 2 1 0 1 2 ... n-2 n-1 n-2 ..."""
    if n == 1:
        return 0
    p = 2 * (n - 1)
    i %= p
    return p - i if i >= n else i


def field(displacements: np.ndarray, h: int, w: int) -> np.ndarray:
    """(2, H, W) displacement in pixels from the (2, g, g) lattice (cubic B-spline, mirror)."""
    g0, g1 = displacements.shape[1:]
    yy, xx = np.meshgrid(np.arange(h) * (g0 - 1) / (h - 1), np.arange(w) * (g1 - 1) / (w - 1),
                         indexing="ij")
    return np.stack([ndi.map_coordinates(displacements[c].astype(np.float64), [yy, xx],
                                         order=3, mode="mirror") for c in range(2)])


def sample_pixel(img: np.ndarray, y: float, x: float, order: int):
    """Value of the 2-D ``img`` at source coordinate (y, x) with mirrored borders."""
    h, w = img.shape
    if order == 0:
        # Python's round() is round-half-to-even, like np.rint / torch nearbyint
        return img[mirror(int(round(y)), h), mirror(int(round(x)), w)]
    y0, x0 = math.floor(y), math.floor(x)
    ty, tx = y - y0, x - x0
    if order == 1:
        v = 0.0
        for dy, wy in ((0, 1 - ty), (1, ty)):
            for dx, wx in ((0, 1 - tx), (1, tx)):
                v += wy * wx * float(img[mirror(y0 + dy, h), mirror(x0 + dx, w)])
        return v
    if order == 3:
        v = 0.0
        for dy in (-1, 0, 1, 2):
            wy = keys(ty - dy)
            for dx in (-1, 0, 1, 2):
                v += wy * keys(tx - dx) * float(img[mirror(y0 + dy, h), mirror(x0 + dx, w)])
        return v
    raise ValueError(order)


def resample(array: np.ndarray, order: int, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Resample an (..., H, W) array at source coordinates (ys, xs), pixel by pixel."""
    a = np.asarray(array)
    lead = a.shape[:-2]
    h, w = a.shape[-2:]
    flat = a.reshape((-1, h, w))
    out = np.zeros(flat.shape, dtype=a.dtype if order == 0 else np.float64)
    for c in range(flat.shape[0]):
        for i in range(h):
            for j in range(w):
                out[c, i, j] = sample_pixel(flat[c], float(ys[i, j]), float(xs[i, j]), order)
    return out.reshape(lead + (h, w))


def elastic_deform(arrays, orders, displacements: np.ndarray):
    """Deform every array with the lattice ``displacements`` (2, g, g): output (y, x) takes the
    input at (y + d_y(y, x), x + d_x(y, x))."""
    h, w = np.asarray(arrays[0]).shape[-2:]
    f = field(displacements, h, w)
    ys = np.arange(h)[:, None] + f[0]
    xs = np.arange(w)[None, :] + f[1]
    return [resample(a, o, ys, xs) for a, o in zip(arrays, orders)]


def rotate_shift_elastic_coords(h, w, angle_deg, shift, displacements=None):
    """Source coordinates of rotation about the centre (counter-clockwise as displayed),
    shift and elastic field, written out pixel by pixel."""
    cy, cx = (h - 1) / 2, (w - 1) / 2
    th = math.radians(angle_deg)
    f = field(displacements, h, w) if displacements is not None else np.zeros((2, h, w))
    ys = np.zeros((h, w))
    xs = np.zeros((h, w))
    for i in range(h):
        for j in range(w):
            dy, dx = i - cy, j - cx
            ys[i, j] = cy + math.cos(th) * dy + math.sin(th) * dx + shift[0] + f[0, i, j]
            xs[i, j] = cx - math.sin(th) * dy + math.cos(th) * dx + shift[1] + f[1, i, j]
    return ys, xs
