"""Instance (cell) metrics: IoU, the Cell Tracking Challenge SEG score (the "IOU" of the paper's
Table 2), matching at IoU thresholds (precision, recall, F1, the DSB 2018 "AP", panoptic
quality) and the object-level split/merge map.

Every metric works on label arrays of any dimension: the overlap table (:func:`_pairs`) is
built on the flattened arrays. :func:`seg` and :func:`matching` read a 3-D array as a stack of
2D frames scored slice by slice (the Cell Tracking Challenge's 2D convention) unless
``volume=True``: then (Z, Y, X) is one volume whose objects are 3D (Çiçek et al. 2016; the
CTC's 3D data sets), and (S, Z, Y, X) a stack of volumes.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ..errors import UnetlabError
from .isbi import _as_stack

__all__ = ["iou", "iou_by_threshold", "best_iou_threshold", "seg", "matching",
           "DEFAULT_IOU_THRESHOLDS", "split_merge_map", "CATEGORY_MATCHED", "CATEGORY_MERGE",
           "CATEGORY_SPLIT", "CATEGORY_MISSED", "CATEGORY_FALSE_POSITIVE"]


def iou(gt_mask, pred_mask) -> float:
    """|A ∩ B| / |A ∪ B| of two binary masks (nonzero = foreground), any equal shapes.

    Both masks empty → 1.0 (perfect agreement).
    """
    a = np.asarray(gt_mask)
    b = np.asarray(pred_mask)
    if a.shape != b.shape:
        raise UnetlabError(f"prediction shape {b.shape} does not match ground truth shape "
                           f"{a.shape}")
    a, b = a != 0, b != 0
    union = int(np.count_nonzero(a | b))
    if union == 0:
        return 1.0
    return int(np.count_nonzero(a & b)) / union


def iou_by_threshold(prob, truth, thresholds, annotated=None) -> np.ndarray:
    """IoU of the masks ``prob > t`` and ``truth`` for each threshold ``t`` (float64, one per
    threshold), counted where ``annotated`` is true (default: everywhere).

    ``prob``: probabilities, e.g. P(cell), any shape; ``truth``: the true mask (nonzero =
    foreground), same shape. One sort of the annotated probabilities serves every threshold,
    so a fine sweep costs about one pass. An empty union gives 1.0, as :func:`iou` does."""
    p, t = np.asarray(prob), np.asarray(truth)
    if p.shape != t.shape:
        raise UnetlabError(f"probability shape {p.shape} does not match ground truth shape "
                           f"{t.shape}")
    keep = np.ones(p.shape, bool) if annotated is None else np.asarray(annotated, bool)
    if keep.shape != p.shape:
        raise UnetlabError(f"annotated mask shape {keep.shape} does not match probability "
                           f"shape {p.shape}")
    t = t != 0
    in_truth = np.sort(p[keep & t], axis=None)
    outside = np.sort(p[keep & ~t], axis=None)
    th = np.asarray(thresholds, dtype=np.float64)
    tp = in_truth.size - np.searchsorted(in_truth, th, side="right")
    fp = outside.size - np.searchsorted(outside, th, side="right")
    union = in_truth.size + fp                  # TP + FN + FP
    return np.where(union > 0, tp / np.maximum(union, 1), 1.0)


def best_iou_threshold(prob, truth, annotated=None, thresholds=None) -> tuple[float, float]:
    """(threshold, IoU) of the threshold on ``prob`` whose mask ``prob > threshold`` has the
    highest IoU with ``truth`` (:func:`iou_by_threshold`; default thresholds 0.05, 0.10 …
    0.95; the lowest one wins a tie).

    A network trained with the weighted loss of Eq. 1 (class balance and the border weights of
    Eq. 2) is not calibrated to 0.5: choose its threshold here on annotated data it will not be
    scored on (or on its training annotations, when nothing else is annotated), then pass it to
    ``unetlab predict --threshold``."""
    th = np.round(np.arange(0.05, 0.951, 0.05), 2) if thresholds is None else \
        np.asarray(thresholds, dtype=np.float64)
    scores = iou_by_threshold(prob, truth, th, annotated)
    k = int(np.argmax(scores))
    return float(th[k]), float(scores[k])


def _check_instances(gt, pred, what: str, volume: bool = False
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(gt, pred) as int64 stacks of frames: (S, H, W), or (S, Z, Y, X) with ``volume``."""
    gt = np.asarray(gt)
    pred = np.asarray(pred)
    if gt.shape != pred.shape:
        raise UnetlabError(f"{what}: prediction shape {pred.shape} does not match ground truth "
                           f"shape {gt.shape}")
    if volume and gt.ndim not in (3, 4):
        raise UnetlabError(f"{what}: instance volumes must be (Z, Y, X) or (S, Z, Y, X), got "
                           f"{gt.shape}")
    if not volume and gt.ndim not in (2, 3):
        raise UnetlabError(f"{what}: instance images must be (H, W) or (S, H, W), got {gt.shape}")
    for name, a in (("ground truth", gt), ("prediction", pred)):
        if not (np.issubdtype(a.dtype, np.integer) or a.dtype == bool):
            if not np.issubdtype(a.dtype, np.floating) or not np.all(np.isfinite(a)) \
                    or np.any(a != np.round(a)):
                raise UnetlabError(f"{what}: {name} must hold integer instance labels, got dtype "
                                   f"{a.dtype}")
        if np.any(a < 0):
            raise UnetlabError(f"{what}: {name} has negative labels")
    if volume:
        return (gt[None] if gt.ndim == 3 else gt).astype(np.int64), \
            (pred[None] if pred.ndim == 3 else pred).astype(np.int64)
    return _as_stack(gt.astype(np.int64)), _as_stack(pred.astype(np.int64))


def _pairs(g: np.ndarray, p: np.ndarray):
    """The sparse overlap table of two label images of one shape: sorted ids ``gu``, ``pu``
    (background 0 included where present), the id index of every pixel ``gi``, ``pi`` (flat) and
    the overlapping index pairs ``(rows, cols, counts)`` — memory proportional to the pixels and
    the overlapping pairs, never to (objects × objects)."""
    gu, gi = np.unique(g.ravel(), return_inverse=True)
    pu, pi = np.unique(p.ravel(), return_inverse=True)
    gi, pi = gi.ravel(), pi.ravel()
    keys, counts = np.unique(gi.astype(np.int64) * pu.size + pi, return_counts=True)
    return gu, gi, pu, pi, keys // pu.size, keys % pu.size, counts


def _overlaps(g: np.ndarray, p: np.ndarray):
    """Sequential relabelling and the sparse overlap table of one frame (a 2-D slice or a
    volume), background left out.

    Returns (rows, cols, inter) of the overlapping object pairs (indices into the sorted non-zero
    ids) and the object sizes size_g (nG,), size_p (nP,) in pixels.
    """
    gu, gi, pu, pi, rows, cols, inter = _pairs(g, p)
    g0 = int(gu.size > 0 and gu[0] == 0)            # labels are ≥ 0: 0 sorts first
    p0 = int(pu.size > 0 and pu[0] == 0)
    size_g = np.bincount(gi, minlength=gu.size)[g0:]
    size_p = np.bincount(pi, minlength=pu.size)[p0:]
    keep = (rows >= g0) & (cols >= p0)
    return rows[keep] - g0, cols[keep] - p0, inter[keep], size_g, size_p


def _assign(rows: np.ndarray, cols: np.ndarray, ious: np.ndarray) -> tuple[int, float]:
    """Largest one-to-one matching among the candidate pairs, ties broken by the larger total
    IoU: (number of pairs, their summed IoU). Solved per connected group of candidates; a pair
    that shares its objects with no other candidate (every pair when the threshold is > 0.5)
    is matched directly."""
    if rows.size == 0:
        return 0, 0.0
    _, ri = np.unique(rows, return_inverse=True)
    _, ci = np.unique(cols, return_inverse=True)
    if ri.max() + 1 == rows.size and ci.max() + 1 == cols.size:
        return int(rows.size), float(ious.sum())
    from scipy.optimize import linear_sum_assignment
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    nr = int(ri.max()) + 1
    n = nr + int(ci.max()) + 1
    graph = coo_matrix((np.ones(rows.size), (ri, nr + ci)), shape=(n, n))
    comp = connected_components(graph, directed=False)[1][ri]
    sizes = np.bincount(comp)
    single = sizes[comp] == 1
    tp, total = int(np.count_nonzero(single)), float(ious[single].sum())
    for k in np.flatnonzero(sizes > 1):
        e = np.flatnonzero(comp == k)
        ur, r = np.unique(ri[e], return_inverse=True)
        uc, c = np.unique(ci[e], return_inverse=True)
        iou = np.zeros((ur.size, uc.size))
        iou[r, c] = ious[e]
        cost = np.zeros(iou.shape)
        cost[r, c] = -1.0 - ious[e] / (2 * min(iou.shape))   # count first, then total IoU
        a, b = linear_sum_assignment(cost)
        hit = cost[a, b] < 0
        tp += int(np.count_nonzero(hit))
        total += float(iou[a, b][hit].sum())
    return tp, total


def seg(gt_instances, pred_instances, *, volume: bool = False) -> float:
    """Cell Tracking Challenge SEG: mean Jaccard index over all reference objects.

    Reference object R and predicted object S match iff |R ∩ S| > 0.5·|R| (so each R has at most
    one match); J = |R ∩ S| / |R ∪ S|, unmatched R → 0. Pooled over all slices of (S, H, W)
    input (each slice = one annotated frame). False positives do not lower SEG. Labels:
    integers, 0 = background. Raises UnetlabError when the GT has no object. ``volume``: a
    3-D input is one volume (objects and |·| in voxels), a 4-D one a stack of volumes.
    """
    gt, pred = _check_instances(gt_instances, pred_instances, "seg", volume)
    total, count = 0.0, 0
    for s in range(gt.shape[0]):
        rows, cols, inter, size_g, size_p = _overlaps(gt[s], pred[s])
        count += size_g.size
        ok = 2 * inter > size_g[rows]           # at most one such S per R
        union = size_g[rows[ok]] + size_p[cols[ok]] - inter[ok]
        total += float(np.sum(inter[ok] / union))
    if count == 0:
        raise UnetlabError("seg: the ground truth has no object (all background)")
    return total / count


DEFAULT_IOU_THRESHOLDS = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


def matching(gt_instances, pred_instances,
             thresholds: Sequence[float] = DEFAULT_IOU_THRESHOLDS, *,
             volume: bool = False) -> list[dict]:
    """Instance matching at IoU thresholds (StarDist/DSB 2018 style).

    For each threshold t: optimal one-to-one assignment (``linear_sum_assignment`` maximising
    first the number of pairs with IoU ≥ t, then their total IoU); TP = assigned pairs with
    IoU ≥ t, FP = predictions − TP, FN = GT objects − TP; pooled over slices. Returns one dict per
    threshold: ``threshold, tp, fp, fn, precision = TP/(TP+FP), recall = TP/(TP+FN), f1,
    accuracy = TP/(TP+FP+FN)`` (the DSB "AP"), ``panoptic_quality = ΣIoU/(TP + FP/2 + FN/2)``,
    ``mean_matched_iou = ΣIoU/TP``, ``n_true, n_pred``. A ratio with a zero denominator is 0.
    ``volume``: a 3-D input is one volume of 3D objects (4-D: a stack of volumes).
    """
    gt, pred = _check_instances(gt_instances, pred_instances, "matching", volume)
    ths = [float(t) for t in thresholds]
    for t in ths:
        if not 0.0 <= t <= 1.0 or math.isnan(t):
            raise UnetlabError(f"matching: IoU thresholds must lie in [0, 1], got {t}")
    acc = {t: [0, 0, 0, 0.0] for t in ths}  # tp, n_true, n_pred, sum IoU
    for s in range(gt.shape[0]):
        rows, cols, inter, size_g, size_p = _overlaps(gt[s], pred[s])
        ious = inter / (size_g[rows] + size_p[cols] - inter)
        for t in ths:
            cand = ious >= t
            if t == 0.0:        # IoU 0 "matches" too: any pairing of the objects
                tp = min(size_g.size, size_p.size)
                s_iou = _assign(rows, cols, ious)[1]
            else:
                tp, s_iou = _assign(rows[cand], cols[cand], ious[cand])
            a = acc[t]
            a[0] += tp
            a[1] += size_g.size
            a[2] += size_p.size
            a[3] += s_iou

    def div(x, y):
        return x / y if y else 0.0

    out = []
    for t in ths:
        tp, n_true, n_pred, s_iou = acc[t]
        fp, fn = n_pred - tp, n_true - tp
        out.append({
            "threshold": t, "tp": tp, "fp": fp, "fn": fn,
            "precision": div(tp, tp + fp), "recall": div(tp, tp + fn),
            "f1": div(2 * tp, 2 * tp + fp + fn), "accuracy": div(tp, tp + fp + fn),
            "panoptic_quality": div(s_iou, tp + fp / 2 + fn / 2),
            "mean_matched_iou": div(s_iou, tp),
            "n_true": n_true, "n_pred": n_pred,
        })
    return out

#: Object-level error categories of :func:`split_merge_map` (values of its category image).
CATEGORY_MATCHED, CATEGORY_MERGE, CATEGORY_SPLIT, CATEGORY_MISSED, CATEGORY_FALSE_POSITIVE = (
    1, 2, 3, 4, 5)


def split_merge_map(gt: np.ndarray, pred: np.ndarray, fraction: float = 0.5
                    ) -> tuple[np.ndarray, dict[str, int]]:
    """Where a predicted segmentation merges or splits the true objects.

    With C[g, p] the number of pixels shared by true object g and predicted object p (0 =
    background on either side) and |·| object areas:

    * predicted p is a **merge** when ≥ 2 true objects g have C[g, p] > fraction·|g|
      (p holds most of each of several cells);
    * true g is **split** when ≥ 2 predicted objects p have C[g, p] > fraction·|p|
      (several predicted pieces lie mostly inside g);
    * true g is **missed** when C[g, 0] > fraction·|g| (mostly predicted background);
    * predicted p is a **false positive** when C[0, p] > fraction·|p|;
    * every other true object is **matched**.

    Any dimension: images (H, W), stacks and volumes (Z, Y, X) alike (objects are the labels
    of the whole array).

    Returns ``(categories, counts)``: categories (H, W) (the input's shape) uint8 — 0 nothing, 1 matched (pixels of
    g), 2 merge (pixels of p and of the true cells it swallows), 3 split (pixels of g), 4 missed
    (pixels of g), 5 false positive (pixels of p), later ones painted over earlier ones in the
    order matched, missed, false positive, split, merge — and counts {"objects", "predicted", "merges" (predicted objects),
    "merged" (true objects inside merges), "splits" (true objects), "missed",
    "false_positives"}. Labels ≤ 0 count as background.
    """
    gt = np.asarray(gt)
    pred = np.asarray(pred)
    if gt.shape != pred.shape:
        raise UnetlabError(f"ground truth {gt.shape} and prediction {pred.shape} differ in shape")
    g_ids, g_inv, p_ids, p_inv, rows, cols, C = _pairs(np.where(gt > 0, gt, 0),
                                                      np.where(pred > 0, pred, 0))
    # make index 0 background on both sides even when the image has none
    if g_ids.size == 0 or g_ids[0] != 0:
        g_ids, g_inv, rows = np.concatenate([[0], g_ids]), g_inv + 1, rows + 1
    if p_ids.size == 0 or p_ids[0] != 0:
        p_ids, p_inv, cols = np.concatenate([[0], p_ids]), p_inv + 1, cols + 1
    g_inv, p_inv = g_inv.reshape(gt.shape), p_inv.reshape(pred.shape)
    ng, npred = len(g_ids), len(p_ids)
    g_area = np.bincount(rows, C, minlength=ng)
    p_area = np.bincount(cols, C, minlength=npred)
    obj = (rows > 0) & (cols > 0)
    big_in_p = obj & (C > fraction * g_area[rows])        # g mostly inside p
    p_in_g = obj & (C > fraction * p_area[cols])          # p mostly inside g
    merges = np.flatnonzero(np.bincount(cols[big_in_p], minlength=npred) >= 2)
    is_merge = np.zeros(npred, bool)
    is_merge[merges] = True
    merged_g = np.unique(rows[big_in_p & is_merge[cols]])
    splits = np.flatnonzero(np.bincount(rows[p_in_g], minlength=ng) >= 2)
    missed = rows[(cols == 0) & (rows > 0) & (C > fraction * g_area[rows])]
    false_pos = cols[(rows == 0) & (cols > 0) & (C > fraction * p_area[cols])]

    g_cat = np.zeros(ng, np.uint8)
    g_cat[1:] = CATEGORY_MATCHED
    g_cat[missed] = CATEGORY_MISSED
    g_cat[splits] = CATEGORY_SPLIT
    g_cat[merged_g] = CATEGORY_MERGE                 # true cells swallowed by a merge
    p_cat = np.zeros(npred, np.uint8)
    p_cat[false_pos] = CATEGORY_FALSE_POSITIVE
    p_cat[merges] = CATEGORY_MERGE
    cat = g_cat[g_inv]                      # matched / missed / split, on true pixels
    pc = p_cat[p_inv]
    cat[pc == CATEGORY_FALSE_POSITIVE] = CATEGORY_FALSE_POSITIVE
    cat[g_cat[g_inv] == CATEGORY_SPLIT] = CATEGORY_SPLIT
    cat[(pc == CATEGORY_MERGE) | (g_cat[g_inv] == CATEGORY_MERGE)] = CATEGORY_MERGE
    counts = {"objects": ng - 1, "predicted": npred - 1, "merges": int(merges.size),
              "merged": int(merged_g.size), "splits": int(splits.size),
              "missed": int(missed.size), "false_positives": int(false_pos.size)}
    return cat, counts
