"""Closing the gaps of a membrane map (EM neurite segmentation, the paper's ISBI 2012 task).

A 2-class U-Net for EM predicts P(cell) per pixel; where a membrane is faint the predicted
membrane has a one-pixel gap, and two cells merge — the errors the Rand and warping errors of
Table 1 count. :func:`close_membranes` turns the map into closed regions and writes their
boundaries back into it:

1. the membrane probability ``1 − P(cell)``, smoothed by a Gaussian of ``sigma`` px, is flooded
   from its h-minima of depth ≥ ``h`` (``skimage.morphology.h_minima`` +
   ``skimage.segmentation.watershed``): every region is closed by construction;
2. neighbouring regions whose shared boundary has a mean membrane probability below ``merge``
   are joined (region adjacency graph, ``skimage.graph.rag_boundary`` + ``cut_threshold``),
   which undoes the splits of a cell that has two minima;
3. the pixels on the boundary between two remaining regions get P(cell) = 0; every other pixel
   keeps its probability, so the map still thresholds like a probability map.

It is the kind of post-processing the later ISBI 2012 entries used on top of a pixel classifier
(watershed + region merging); docs/isbi2012.md has its figures.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from .errors import UnetlabError

__all__ = ["close_membranes", "region_boundaries"]


def region_boundaries(labels: np.ndarray) -> np.ndarray:
    """Boolean map of the pixels whose right or lower 4-neighbour has another label: a
    one-pixel-thick boundary between the regions of ``labels`` (H, W)."""
    lab = np.asarray(labels)
    edge = np.zeros(lab.shape, bool)
    edge[:, :-1] |= lab[:, :-1] != lab[:, 1:]
    edge[:-1, :] |= lab[:-1, :] != lab[1:, :]
    return edge


def _close_one(p: np.ndarray, sigma: float, h: float, merge: float) -> np.ndarray:
    from skimage import graph
    from skimage.morphology import h_minima
    from skimage.segmentation import watershed

    membrane = 1.0 - p.astype(np.float64)
    relief = ndi.gaussian_filter(membrane, sigma) if sigma > 0 else membrane
    markers, n = ndi.label(h_minima(relief, h))
    if n < 2:
        return p.copy()
    regions = watershed(relief, markers)
    if merge > 0:
        rag = graph.rag_boundary(regions, membrane)
        regions = graph.cut_threshold(regions, rag, merge, in_place=False)
    return np.where(region_boundaries(regions), 0.0, p).astype(p.dtype)


def close_membranes(prob, sigma: float = 1.0, h: float = 0.05,
                    merge: float = 0.5) -> np.ndarray:
    """``prob`` (H, W) or a stack (S, H, W) of P(cell) in [0, 1] with the boundaries of closed
    watershed regions set to 0 (see the module docstring; each slice separately).

    ``sigma``: Gaussian smoothing of the membrane probability, px (0 = none); ``h``: minimum
    depth of a basin, in probability; ``merge``: regions whose shared boundary has a mean
    membrane probability below this are joined (0 = no merging). Returns float32."""
    p = np.asarray(prob)
    if p.ndim not in (2, 3) or p.size == 0:
        raise UnetlabError(f"close_membranes: expected P(cell) of shape (H, W) or (S, H, W), "
                           f"got {p.shape}")
    p = p.astype(np.float32, copy=False)
    if not np.isfinite(p).all() or p.min() < 0 or p.max() > 1:
        raise UnetlabError("close_membranes: probabilities must be finite and in [0, 1]")
    for name, value in (("sigma", sigma), ("h", h), ("merge", merge)):
        if not (np.isfinite(value) and value >= 0):
            raise UnetlabError(f"close_membranes: {name} must be a number ≥ 0, got {value!r}")
    if p.ndim == 2:
        return _close_one(p, sigma, h, merge)
    return np.stack([_close_one(s, sigma, h, merge) for s in p])
