"""From probabilities to instance labels: connected components of the foreground, or a seeded
watershed that splits touching cells.

The U-Net separates touching cells by predicting the thin background between them (the border
weights of Sec. 3, Eq. 2, Fig. 3); where that gap is closed in the prediction, the components
merge. The watershed variant splits them again, seeded either from the distance transform's
h-maxima (one seed per "bulge" of the foreground, robust to shallow bumps of less than ``h``
pixels) or from the foreground with the border probability subtracted (for 3-class nets that
predict a border class).

Conventions: class 1 is the cell/foreground class of a 2-class net (class 0 the background or
membrane); labels are int32, 0 = background, 1..N the instances numbered in raster order of
their first pixel.

Volumes (``spatial_dims=3``, the output of a 3D network, Çiçek et al. 2016): the same steps in
3D — (K, Z, Y, X) probabilities, 6/18/26-connected components, the Euclidean distance transform
in physical units when the voxel ``spacing`` (dz, dy, dx) is given (anisotropic stacks: a
z-step of 3 µm is three times an x-step of 1 µm), ``h`` in those units, ``min_size`` in voxels.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from .errors import UnetlabError

__all__ = ["to_instances", "foreground_mask", "remove_small", "relabel"]


def foreground_mask(prob, threshold: float = 0.5, foreground_class: int = 1,
                    spatial_dims: int = 2) -> np.ndarray:
    """Boolean (H, W) foreground from probabilities (K, H, W) (``prob[foreground_class] >
    threshold``), a probability map (H, W) (``> threshold``) or a boolean mask (as is);
    with ``spatial_dims=3`` the same for (K, Z, Y, X), (Z, Y, X) → (Z, Y, X)."""
    a = np.asarray(prob)
    n = _check_dims(spatial_dims)
    axes = "(H, W)" if n == 2 else "(Z, Y, X)"
    if a.dtype == bool:
        if a.ndim != n:
            raise UnetlabError(f"foreground mask must be {axes}, got shape {a.shape}")
        return a
    if a.ndim == n + 1:
        if not 0 <= foreground_class < a.shape[0]:
            raise UnetlabError(f"foreground_class {foreground_class} is not a class of a "
                               f"{a.shape[0]}-class probability map")
        a = a[foreground_class]
    elif a.ndim != n:
        raise UnetlabError(f"probabilities must be (K, {axes[1:]} or {axes}, got shape "
                           f"{a.shape}")
    return a > threshold


def _check_dims(spatial_dims) -> int:
    if spatial_dims not in (2, 3):
        raise UnetlabError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    return int(spatial_dims)


def relabel(labels: np.ndarray) -> np.ndarray:
    """Renumber the nonzero labels 1..N in raster order of their first pixel (int32)."""
    labels = np.asarray(labels)
    flat = labels.ravel()
    nz = flat != 0
    uniq, first = np.unique(flat[nz], return_index=True)
    order = uniq[np.argsort(first, kind="stable")]
    lut_keys = np.sort(order)
    new_ids = np.empty(len(order), dtype=np.int32)
    new_ids[np.searchsorted(lut_keys, order)] = np.arange(1, len(order) + 1, dtype=np.int32)
    out = np.zeros(flat.shape, dtype=np.int32)
    out[nz] = new_ids[np.searchsorted(lut_keys, flat[nz])]
    return out.reshape(labels.shape)


def remove_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Set instances with fewer than ``min_size`` pixels to 0 (labels are not renumbered)."""
    labels = np.asarray(labels)
    if min_size <= 1 or labels.max(initial=0) == 0:
        return labels.copy()
    sizes = np.bincount(labels.ravel())
    small = sizes < min_size
    small[0] = False
    out = labels.copy()
    out[small[labels]] = 0
    return out


def _structure(connectivity: int, ndim: int = 2) -> np.ndarray:
    if connectivity not in range(1, ndim + 1):
        names = "1 (4-neighbours) or 2 (8-neighbours)" if ndim == 2 else \
            "1 (6-neighbours), 2 (18-neighbours) or 3 (26-neighbours)"
        raise UnetlabError(f"connectivity must be {names}, got {connectivity!r}")
    return ndi.generate_binary_structure(ndim, connectivity)


def to_instances(prob, method: str = "watershed", threshold: float = 0.5, min_size: int = 16,
                 *, foreground_class: int = 1, seeds: str = "distance", h: float = 2.0,
                 border_class: int | None = None, connectivity: int = 1,
                 spatial_dims: int = 2, spacing=None) -> np.ndarray:
    """Instance labels (H, W) — or (Z, Y, X) — int32 from class probabilities.

    Parameters
    ----------
    prob : (K, H, W) probabilities, (H, W) foreground probability, or (H, W) bool mask; with
        ``spatial_dims=3``: (K, Z, Y, X), (Z, Y, X) or a (Z, Y, X) bool mask.
    method : "components" — connected components of the foreground;
        "watershed" — watershed of the negated distance transform inside the foreground, from
        seeds, so that touching cells joined by a narrow neck are split along it.
    threshold : foreground is ``P(foreground) > threshold``.
    min_size : instances smaller than this (pixels) are removed; the rest renumbered 1..N.
    foreground_class : the cell class of ``prob`` (1 for the 2-class nets).
    seeds : "distance" — regional maxima of the Euclidean distance transform whose dynamic
        (height above the saddle to a higher maximum) is at least ``h`` pixels
        (``skimage.morphology.h_maxima``); "border" — connected components of
        ``P(foreground) − P(border_class) > threshold`` (needs a border class, e.g. 3-class nets
        with cell / border / background).
    h : minimum dynamic of a distance-transform seed, pixels (units of ``spacing`` if given).
    border_class : the class index of the cell border (for ``seeds="border"``).
    connectivity : 1 (4-neighbours) or 2 (8-neighbours) for components and the watershed;
        volumes: 1, 2 or 3 (6, 18 or 26 neighbours).
    spatial_dims : 2 (images) or 3 (volumes of a 3D network).
    spacing : pixel/voxel size per axis for the distance transform (default 1 on every axis).

    A foreground component that receives no seed keeps one label of its own.
    """
    nd = _check_dims(spatial_dims)
    st = _structure(connectivity, nd)
    fg = foreground_mask(prob, threshold, foreground_class, nd)
    if spacing is not None and (len(spacing) != nd or not all(float(v) > 0 for v in spacing)):
        raise UnetlabError(f"spacing must be {nd} positive sizes (one per axis), got {spacing!r}")
    if method == "components":
        labels, _ = ndi.label(fg, structure=st)
    elif method == "watershed":
        from skimage.morphology import h_maxima
        from skimage.segmentation import watershed

        dist = ndi.distance_transform_edt(fg, sampling=spacing)
        if seeds == "distance":
            peaks = h_maxima(dist, h) > 0 if fg.any() else np.zeros_like(fg)
            markers, _ = ndi.label(peaks & fg, structure=np.ones((3,) * nd, bool))
        elif seeds == "border":
            a = np.asarray(prob)
            if a.ndim != nd + 1 or border_class is None or not 0 <= border_class < a.shape[0]:
                raise UnetlabError("seeds='border' needs (K, H, W) probabilities and a valid "
                                   "border_class" if nd == 2 else "seeds='border' needs (K, Z, "
                                   "Y, X) probabilities and a valid border_class")
            core = (a[foreground_class] - a[border_class]) > threshold
            markers, _ = ndi.label(core & fg, structure=st)
        else:
            raise UnetlabError(f"seeds must be 'distance' or 'border', got {seeds!r}")
        labels = watershed(-dist, markers, mask=fg, connectivity=connectivity)
        # foreground components without any seed become instances of their own
        comp, n = ndi.label(fg & (labels == 0), structure=st)
        if n:
            labels = np.where(comp > 0, comp + labels.max(), labels)
    else:
        raise UnetlabError(f"method must be 'watershed' or 'components', got {method!r}")
    labels = remove_small(labels.astype(np.int32, copy=False), int(min_size))
    return relabel(labels)
