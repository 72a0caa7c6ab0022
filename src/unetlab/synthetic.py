"""Synthetic fluorescence-microscopy images of touching cells with instance labels.

The default data of ``make demo`` and of the tests on a fresh machine: no download needed, and
hard in the way the paper's data are (Sec. 3, Fig. 3): many cells touch with no gap or a
one-pixel gap, so the network must learn the separation borders that the weight map emphasises.

How an image is made (all sizes in pixels, every draw from one seeded generator):

1. **Layout**: cell centres on a jittered hexagonal lattice; a smooth random field keeps about
   half of them, in clumps (crowded clusters next to empty background).
2. **Shapes**: each cell is a star-shaped perturbed ellipse (random size, aspect ratio 1–1.7,
   orientation and low-order Fourier boundary harmonics). A pixel belongs to the cell whose
   normalised radius ``ρ/ρ_boundary(θ)`` is smallest, if that is < 1: overlapping cells meet
   along a curved contact line with no gap (like a power/Voronoi diagram clipped by the shapes).
3. **Gaps**: for a random ~35% of touching pairs, the contact line becomes a one-pixel
   background gap. Fragments of a cell cut off by its neighbours are dropped, so every
   instance is one 4-connected piece; ids are 1..K.
4. **Intensities**: per-cell brightness (log-normal), dimmer towards the edge, textured;
   blurred by a Gaussian PSF; added to a background with a gradient and slow variation; Poisson
   (shot) noise and Gaussian read noise; finally the 1st and 99.8th percentiles are mapped to 0
   and 1, as :func:`unetlab.data.normalize_image` does (values slightly outside [0, 1] remain).

``touching_cells_arrays`` returns plain arrays; ``touching_cells`` wraps them as
:class:`unetlab.data.Sample`. Image ``i`` of seed ``s`` is the same whatever ``n`` is.
A 2048×2048 image takes a few seconds.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

__all__ = ["touching_cells", "touching_cells_arrays", "touching_pairs", "touching_cells_3d"]


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Zero-mean, unit-std random field varying over ``scale`` pixels (float32), by linear
    upsampling of a coarse Gaussian grid (fast for any image size)."""
    h, w = shape
    gh, gw = int(math.ceil(h / scale)) + 2, int(math.ceil(w / scale)) + 2
    coarse = ndimage.gaussian_filter(rng.standard_normal((gh, gw)), 0.7, mode="wrap")
    ys = np.arange(h, dtype=np.float32) / scale + 0.5
    xs = np.arange(w, dtype=np.float32) / scale + 0.5
    y0 = np.minimum(ys.astype(np.int64), gh - 2)
    x0 = np.minimum(xs.astype(np.int64), gw - 2)
    fy = (ys - y0)[:, None].astype(np.float32)
    fx = (xs - x0)[None, :].astype(np.float32)
    c = coarse.astype(np.float32)
    top = c[y0][:, x0] * (1 - fx) + c[y0][:, x0 + 1] * fx
    bot = c[y0 + 1][:, x0] * (1 - fx) + c[y0 + 1][:, x0 + 1] * fx
    f = top * (1 - fy) + bot * fy
    f -= f.mean()
    f /= f.std() + 1e-12
    return f


def _layout(rng: np.random.Generator, h: int, w: int, spacing: float, keep: float
            ) -> np.ndarray:
    """Cell centres (N, 2) as (y, x): jittered hexagonal lattice thinned into clumps."""
    dy = spacing * math.sqrt(3) / 2
    rows = np.arange(-1, int(h / dy) + 2)
    cols = np.arange(-1, int(w / spacing) + 2)
    yy, xx = np.meshgrid(rows * dy, cols * spacing, indexing="ij")
    xx = xx + (rows[:, None] % 2) * spacing / 2
    pts = np.stack([yy.ravel(), xx.ravel()], axis=1)
    pts += rng.uniform(-0.22, 0.22, pts.shape) * spacing
    # clumps: keep lattice points where a smooth field is above its (1 - keep) quantile
    field = _smooth_noise(rng, (h + 2 * int(spacing) + 2, w + 2 * int(spacing) + 2),
                          scale=4.0 * spacing)
    iy = np.clip((pts[:, 0] + spacing).astype(np.int64), 0, field.shape[0] - 1)
    ix = np.clip((pts[:, 1] + spacing).astype(np.int64), 0, field.shape[1] - 1)
    v = field[iy, ix] + 0.35 * rng.standard_normal(len(pts))
    thr = np.quantile(v, 1.0 - keep) if len(v) else 0.0
    return pts[v > thr]


def _rasterise(rng: np.random.Generator, h: int, w: int, centres: np.ndarray,
               r_mean: float) -> tuple[np.ndarray, np.ndarray]:
    """Label each pixel with the cell of smallest normalised radius (< 1). Returns
    ``(labels int32, rho float32)`` with rho = normalised radius (1 outside every cell)."""
    n = len(centres)
    lab = np.zeros((h, w), np.int32)
    rho = np.ones((h, w), np.float32)
    radius = r_mean * rng.lognormal(0.0, 0.16, n)
    aspect = rng.uniform(1.0, 1.7, n)
    angle = rng.uniform(0.0, math.pi, n)
    nh = 4                                             # boundary harmonics k = 2..5
    amp = rng.normal(0.0, 1.0, (n, nh)) * (0.07 / np.arange(2, 2 + nh))[None, :]
    phase = rng.uniform(0.0, 2 * math.pi, (n, nh))
    coef = amp * np.exp(1j * phase)                    # f(θ) = 1 + Re Σ c_k e^{ikθ}
    for i in range(n):
        cy, cx = centres[i]
        a = radius[i] * math.sqrt(aspect[i])           # semi-axes a ≥ b, area πr²
        b = radius[i] / math.sqrt(aspect[i])
        ext = a * (1.0 + np.abs(amp[i]).sum()) + 1.0
        y0, y1 = max(0, int(cy - ext)), min(h, int(cy + ext) + 2)
        x0, x1 = max(0, int(cx - ext)), min(w, int(cx + ext) + 2)
        if y0 >= y1 or x0 >= x1:
            continue
        dy = (np.arange(y0, y1, dtype=np.float32) - np.float32(cy))[:, None]
        dx = (np.arange(x0, x1, dtype=np.float32) - np.float32(cx))[None, :]
        c, s = math.cos(angle[i]), math.sin(angle[i])
        u = (dx * c + dy * s) / a
        v = (dy * c - dx * s) / b
        r = np.sqrt(u * u + v * v)
        z = (u + 1j * v) / np.maximum(r, 1e-6)         # e^{iθ}
        zk = z * z
        f = np.ones_like(r)
        for k in range(nh):
            f += (coef[i, k] * zk).real
            zk = zk * z
        d = r / np.maximum(f, 0.3)
        win_rho = rho[y0:y1, x0:x1]
        better = d < win_rho
        win_rho[better] = d[better]
        lab[y0:y1, x0:x1][better] = i + 1
    return lab, rho


def _contact_gaps(rng: np.random.Generator, lab: np.ndarray, fraction: float) -> None:
    """Turn the contact line of a random ``fraction`` of touching pairs into a one-pixel gap
    (in place): for such pairs, the pixels of the larger id that face the smaller id become 0.
    Any number of dimensions (face neighbours)."""
    u = rng.uniform(0.0, 1.0, int(lab.max()) + 1)
    gap = np.zeros(lab.shape, bool)
    for ax in range(lab.ndim):
        lo = [slice(None)] * lab.ndim
        hi = [slice(None)] * lab.ndim
        lo[ax] = slice(0, -1)
        hi[ax] = slice(1, None)
        a, b = lab[tuple(lo)], lab[tuple(hi)]
        pair = (np.modf(u[a] + u[b])[0] < fraction) & (a > 0) & (b > 0)
        gap[tuple(lo)] |= pair & (b < a)
        gap[tuple(hi)] |= pair & (a < b)
    lab[gap] = 0


def _clean(lab: np.ndarray, min_area: int) -> np.ndarray:
    """Keep the largest 4-connected (face-connected in 3D) piece of each id, drop cells under
    ``min_area`` px, relabel 1..K in raster order of first appearance (int32)."""
    from skimage.measure import label as cc_label

    cc = cc_label(lab, connectivity=1, background=0)
    ncc = int(cc.max())
    if ncc == 0:
        return np.zeros(lab.shape, np.int32)
    size = np.bincount(cc.ravel(), minlength=ncc + 1)
    owner = np.zeros(ncc + 1, np.int64)
    owner[cc.ravel()] = lab.ravel()
    comps = np.arange(1, ncc + 1)
    # for each owner id keep the component with the largest size
    order = np.lexsort((-size[comps], owner[comps]))
    first = np.ones(len(order), bool)
    first[1:] = owner[comps][order][1:] != owner[comps][order][:-1]
    keep = np.zeros(ncc + 1, bool)
    keep[comps[order][first]] = True
    keep &= size >= min_area
    keep[0] = False
    new = np.zeros(ncc + 1, np.int32)
    new[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return new[cc]


def _render(rng: np.random.Generator, lab: np.ndarray, rho: np.ndarray) -> np.ndarray:
    """Fluorescence-like image (float32) of the labelled cells: see the module docstring."""
    h, w = lab.shape
    k = int(lab.max())
    bright = rng.lognormal(0.0, 0.35, k + 1).astype(np.float32)
    bright[0] = 0.0
    texture = ndimage.gaussian_filter(rng.standard_normal((h, w)).astype(np.float32),
                                      rng.uniform(1.0, 2.0))
    texture /= texture.std() + 1e-12
    profile = 1.0 - 0.45 * np.minimum(rho, 1.0) ** 2
    cells = bright[lab] * profile * (1.0 + rng.uniform(0.12, 0.3) * texture)
    cells[lab == 0] = 0.0
    cells = ndimage.gaussian_filter(cells, rng.uniform(0.8, 1.6))          # PSF
    yy = np.linspace(-0.5, 0.5, h, dtype=np.float32)[:, None]
    xx = np.linspace(-0.5, 0.5, w, dtype=np.float32)[None, :]
    g = rng.uniform(-1.0, 1.0, 2) * rng.uniform(0.0, 0.5)
    base = rng.uniform(0.08, 0.2)
    background = base * (1.0 + g[0] * yy + g[1] * xx
                         + 0.15 * _smooth_noise(rng, (h, w), scale=max(h, w) / 4))
    signal = np.maximum(cells + background, 0.0)
    photons = rng.uniform(40.0, 250.0)                  # photons per unit intensity
    img = rng.poisson(signal * photons).astype(np.float32) / np.float32(photons)
    img += rng.normal(0.0, rng.uniform(0.005, 0.02), (h, w)).astype(np.float32)
    lo, hi = np.percentile(img, (1.0, 99.8))
    img -= lo
    img /= max(hi - lo, 1e-6)
    return img.astype(np.float32, copy=False)


def touching_cells_arrays(n: int = 4, size: int | tuple[int, int] = 256, seed: int = 0, *,
                          cell_radius: float | tuple[float, float] = (8.0, 13.0),
                          gap_fraction: float = 0.35, min_area: int = 12
                          ) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` synthetic images: list of ``(image float32 (H, W) ≈ [0, 1], instances int32 (H, W))``.

    ``size``: H = W, or (H, W). ``cell_radius``: mean cell radius in pixels, or a range from
    which each image draws its own. ``gap_fraction``: share of touching pairs separated by a
    one-pixel gap instead of touching directly. Instances are 1..K (0 = background), each one
    4-connected piece of at least ``min_area`` pixels. Deterministic: image ``i`` depends only
    on ``(seed, i)`` and the options.
    """
    if isinstance(size, (int, np.integer)):
        h = w = int(size)
    else:
        h, w = (int(s) for s in size)
    if h < 8 or w < 8:
        raise ValueError(f"size must be at least 8×8 pixels, got {h}×{w}")
    if n < 0:
        raise ValueError(f"n must be ≥ 0, got {n}")
    out = []
    for i in range(n):
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), i]))
        if isinstance(cell_radius, (int, float)):
            r = float(cell_radius)
        else:
            r = float(rng.uniform(*cell_radius))
        spacing = 1.85 * r
        centres = _layout(rng, h, w, spacing, keep=float(rng.uniform(0.45, 0.65)))
        lab, rho = _rasterise(rng, h, w, centres, r)
        _contact_gaps(rng, lab, gap_fraction)
        lab = _clean(lab, min_area)
        img = _render(rng, lab, rho)
        out.append((img, lab))
    return out


def touching_pairs(instances: np.ndarray) -> set[tuple[int, int]]:
    """Pairs (a, b), 0 < a < b, of instances that touch (4-adjacent pixels; face-adjacent
    voxels of a (Z, Y, X) volume)."""
    pairs: set[tuple[int, int]] = set()
    for ax in range(instances.ndim):
        lo = [slice(None)] * instances.ndim
        hi = [slice(None)] * instances.ndim
        lo[ax] = slice(0, -1)
        hi[ax] = slice(1, None)
        a, b = instances[tuple(lo)].ravel(), instances[tuple(hi)].ravel()
        m = (a > 0) & (b > 0) & (a != b)
        if m.any():
            p = np.unique(np.stack([np.minimum(a[m], b[m]), np.maximum(a[m], b[m])], 1), axis=0)
            pairs.update(map(tuple, p.tolist()))
    return pairs


def touching_cells(n: int = 4, size: int | tuple[int, int] = 256, seed: int = 0, **options):
    """``n`` synthetic samples as :class:`unetlab.data.Sample` (image (1, H, W) float32,
    normalised by :func:`unetlab.data.normalize_image`, instances (H, W) int32, name ``synthetic-s{seed}-{i:03d}``, path None). Options as in
    :func:`touching_cells_arrays`."""
    from .data import Sample, normalize_image

    return [Sample(image=normalize_image(img), instances=lab, name=f"synthetic-s{seed}-{i:03d}",
                   path=None)
            for i, (img, lab) in enumerate(touching_cells_arrays(n, size, seed, **options))]


# --------------------------------------------------------------------------------------------
# 3D: touching cells in a volume (Çiçek et al. 2016 train on such stacks)
# --------------------------------------------------------------------------------------------
def _as_triple(v, what: str) -> tuple:
    t = (v, v, v) if isinstance(v, (int, float, np.integer, np.floating)) else tuple(v)
    if len(t) != 3:
        raise ValueError(f"{what} must be one number or (z, y, x), got {v!r}")
    return t


def _voronoi_cells(rng: np.random.Generator, shape: tuple, spacing: tuple, cells: int,
                   fill: float) -> np.ndarray:
    """Instance volume (int32): every voxel joins its nearest centre (physical distance) if it
    lies within that cell's radius, a smoothly varying ``fill`` share of the mean spacing of the
    centres; so cells touch along flat faces, with background where a cell ends early."""
    centres = (rng.uniform(0, 1, (cells, 3)) * np.array(shape)).astype(np.int64)
    seeds = np.zeros(shape, np.int32)
    seeds[tuple(centres.T)] = np.arange(1, cells + 1, dtype=np.int32)
    # duplicates: a later centre on the same voxel replaces an earlier one; ids stay valid
    dist, idx = ndimage.distance_transform_edt(seeds == 0, sampling=spacing, return_indices=True)
    lab = seeds[tuple(idx)]
    del idx
    volume = float(np.prod(np.array(shape) * np.array(spacing)))
    mean_gap = (volume / cells) ** (1.0 / 3.0)
    radius = mean_gap * fill * rng.lognormal(0.0, 0.12, cells + 1)
    wobble = 1.0 + 0.12 * _smooth_noise_3d(rng, shape, max(shape) / 6)
    lab[dist > radius[lab] * wobble] = 0
    return lab


def _smooth_noise_3d(rng: np.random.Generator, shape: tuple, scale: float) -> np.ndarray:
    """Zero-mean, unit-std random field (float32) varying over ``scale`` voxels."""
    coarse = [int(math.ceil(n / scale)) + 2 for n in shape]
    c = ndimage.gaussian_filter(rng.standard_normal(coarse), 0.7, mode="wrap")
    f = ndimage.zoom(c, [n / g for n, g in zip(shape, coarse)], order=1, grid_mode=True,
                     mode="nearest")[tuple(slice(0, n) for n in shape)].astype(np.float32)
    f -= f.mean()
    f /= f.std() + 1e-12
    return f


def _render_3d(rng: np.random.Generator, lab: np.ndarray, spacing: tuple) -> np.ndarray:
    """Cells brighter than their membranes and the background: per-cell brightness, a dark
    one-voxel rim on every cell surface, blur by a PSF 1.5× longer along z than in-plane
    (physical units), background, Poisson and Gaussian noise; the 1st and 99.8th percentiles
    mapped to 0 and 1."""
    k = int(lab.max())
    bright = rng.lognormal(0.0, 0.3, k + 1).astype(np.float32)
    bright[0] = 0.0
    rim = np.zeros(lab.shape, bool)
    for ax in range(3):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[ax], hi[ax] = slice(0, -1), slice(1, None)
        diff = lab[tuple(lo)] != lab[tuple(hi)]
        rim[tuple(lo)] |= diff
        rim[tuple(hi)] |= diff
    cells = bright[lab] * np.where(rim, 0.3, 1.0).astype(np.float32)
    cells[lab == 0] = 0.0
    psf = float(rng.uniform(0.7, 1.2))
    cells = ndimage.gaussian_filter(cells, [psf * 1.5 / s if i == 0 else psf / s
                                            for i, s in enumerate(spacing)])
    background = rng.uniform(0.05, 0.15) * (1.0 + 0.2 * _smooth_noise_3d(rng, lab.shape,
                                                                          max(lab.shape) / 3))
    photons = rng.uniform(40.0, 200.0)
    img = rng.poisson(np.maximum(cells + background, 0.0) * photons).astype(np.float32)
    img /= np.float32(photons)
    img += rng.normal(0.0, 0.01, lab.shape).astype(np.float32)
    lo, hi = np.percentile(img, (1.0, 99.8))
    return ((img - lo) / max(hi - lo, 1e-6)).astype(np.float32)


def touching_cells_3d(n: int = 1, size: int | tuple[int, int, int] = 64, seed: int = 0, *,
                      cells: int | None = None, spacing=(1.0, 1.0, 1.0), fill: float = 0.8,
                      gap_fraction: float = 0.3, min_size: int = 27
                      ) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` synthetic volumes: list of ``(image float32 (Z, Y, X) ≈ [0, 1], instances int32
    (Z, Y, X))`` of touching cells, for 3D training (Çiçek et al. 2016) and benchmarks.

    ``size``: one side or (Z, Y, X) voxels. ``cells``: number of random centres per volume
    (default one per 21 000 physical voxel units, i.e. about 100 in 128³). ``spacing``: voxel size
    (dz, dy, dx) in physical units; cells are round in physical space, so with dz > dx they are
    flat in voxels. Every voxel joins its nearest centre (a Voronoi tessellation: flat contact
    faces) if it lies within the cell's radius, ``fill`` × the mean centre distance (with a
    smooth wobble), else it is background. ``gap_fraction`` of the touching pairs are separated
    by a one-voxel gap instead. Each instance is one face-connected piece of at least
    ``min_size`` voxels; ids 1..K. Images: cells brighter than their one-voxel membranes and
    the background, blurred, with shot and read noise. Deterministic: volume ``i`` depends only
    on ``(seed, i)`` and the options. 128³ with 100 cells takes about a second.
    """
    z, y, x = (int(s) for s in _as_triple(size, "size"))
    spacing = tuple(float(s) for s in _as_triple(spacing, "spacing"))
    if min(z, y, x) < 4:
        raise ValueError(f"size must be at least 4 voxels per axis, got {(z, y, x)}")
    if min(spacing) <= 0 or not all(math.isfinite(s) for s in spacing):
        raise ValueError(f"spacing must be finite and > 0, got {spacing}")
    if n < 0:
        raise ValueError(f"n must be ≥ 0, got {n}")
    if cells is None:
        cells = max(2, round(z * y * x * float(np.prod(spacing)) / 21000))
    if cells < 1:
        raise ValueError(f"cells must be ≥ 1, got {cells}")
    out = []
    for i in range(n):
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), i, 3]))
        lab = _voronoi_cells(rng, (z, y, x), spacing, int(cells), fill)
        _contact_gaps(rng, lab, gap_fraction)
        lab = _clean(lab, min_size)
        out.append((_render_3d(rng, lab, spacing), lab))
    return out
