"""Instance (cell) metrics: IoU, the Cell Tracking Challenge SEG score (the "IOU" of the paper's
Table 2), matching at IoU thresholds (precision, recall, F1, the DSB 2018 "AP", panoptic
quality) and the object-level split/merge map.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ..errors import UnetlabError
from .isbi import _as_stack

__all__ = ["iou", "seg", "matching", "DEFAULT_IOU_THRESHOLDS", "split_merge_map", "CATEGORY_MATCHED",
           "CATEGORY_MERGE", "CATEGORY_SPLIT", "CATEGORY_MISSED", "CATEGORY_FALSE_POSITIVE"]


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


def _check_instances(gt, pred, what: str) -> tuple[np.ndarray, np.ndarray]:
    gt = np.asarray(gt)
    pred = np.asarray(pred)
    if gt.shape != pred.shape:
        raise UnetlabError(f"{what}: prediction shape {pred.shape} does not match ground truth "
                           f"shape {gt.shape}")
    if gt.ndim not in (2, 3):
        raise UnetlabError(f"{what}: instance images must be (H, W) or (S, H, W), got {gt.shape}")
    for name, a in (("ground truth", gt), ("prediction", pred)):
        if not (np.issubdtype(a.dtype, np.integer) or a.dtype == bool):
            if not np.issubdtype(a.dtype, np.floating) or not np.all(np.isfinite(a)) \
                    or np.any(a != np.round(a)):
                raise UnetlabError(f"{what}: {name} must hold integer instance labels, got dtype "
                                   f"{a.dtype}")
        if np.any(a < 0):
            raise UnetlabError(f"{what}: {name} has negative labels")
    return _as_stack(gt.astype(np.int64)), _as_stack(pred.astype(np.int64))


def _overlaps(g: np.ndarray, p: np.ndarray):
    """Sequential relabelling and the overlap table of one 2-D slice.

    Returns (inter (nG, nP) int64, size_g (nG,), size_p (nP,)) without background.
    """
    gu, gi = np.unique(g, return_inverse=True)
    pu, pi = np.unique(p, return_inverse=True)
    gi = gi.reshape(-1)
    pi = pi.reshape(-1)
    table = np.zeros((gu.size, pu.size), dtype=np.int64)
    np.add.at(table, (gi, pi), 1)
    gsel = gu != 0
    psel = pu != 0
    size_g = table.sum(axis=1)[gsel]
    size_p = table.sum(axis=0)[psel]
    return table[np.ix_(gsel, psel)], size_g, size_p


def seg(gt_instances, pred_instances) -> float:
    """Cell Tracking Challenge SEG: mean Jaccard index over all reference objects.

    Reference object R and predicted object S match iff |R ∩ S| > 0.5·|R| (so each R has at most
    one match); J = |R ∩ S| / |R ∪ S|, unmatched R → 0. Pooled over all slices of (S, H, W)
    input (each slice = one annotated frame). False positives do not lower SEG. Labels:
    integers, 0 = background. Raises UnetlabError when the GT has no object.
    """
    gt, pred = _check_instances(gt_instances, pred_instances, "seg")
    total, count = 0.0, 0
    for s in range(gt.shape[0]):
        inter, size_g, size_p = _overlaps(gt[s], pred[s])
        count += size_g.size
        if size_g.size == 0 or size_p.size == 0:
            continue
        j = np.argmax(inter, axis=1)
        best = inter[np.arange(size_g.size), j]
        ok = 2 * best > size_g
        union = size_g + size_p[j] - best
        total += float(np.sum(np.where(ok, best / union, 0.0)))
    if count == 0:
        raise UnetlabError("seg: the ground truth has no object (all background)")
    return total / count


DEFAULT_IOU_THRESHOLDS = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


def matching(gt_instances, pred_instances,
             thresholds: Sequence[float] = DEFAULT_IOU_THRESHOLDS) -> list[dict]:
    """Instance matching at IoU thresholds (StarDist/DSB 2018 style).

    For each threshold t: optimal one-to-one assignment (``linear_sum_assignment`` maximising
    first the number of pairs with IoU ≥ t, then their total IoU); TP = assigned pairs with
    IoU ≥ t, FP = predictions − TP, FN = GT objects − TP; pooled over slices. Returns one dict per
    threshold: ``threshold, tp, fp, fn, precision = TP/(TP+FP), recall = TP/(TP+FN), f1,
    accuracy = TP/(TP+FP+FN)`` (the DSB "AP"), ``panoptic_quality = ΣIoU/(TP + FP/2 + FN/2)``,
    ``mean_matched_iou = ΣIoU/TP``, ``n_true, n_pred``. A ratio with a zero denominator is 0.
    """
    from scipy.optimize import linear_sum_assignment

    gt, pred = _check_instances(gt_instances, pred_instances, "matching")
    ths = [float(t) for t in thresholds]
    for t in ths:
        if not 0.0 <= t <= 1.0 or math.isnan(t):
            raise UnetlabError(f"matching: IoU thresholds must lie in [0, 1], got {t}")
    acc = {t: [0, 0, 0, 0.0] for t in ths}  # tp, n_true, n_pred, sum IoU
    for s in range(gt.shape[0]):
        inter, size_g, size_p = _overlaps(gt[s], pred[s])
        ng, np_ = size_g.size, size_p.size
        if ng and np_:
            union = size_g[:, None] + size_p[None, :] - inter
            ious = inter / np.maximum(union, 1)
        else:
            ious = np.zeros((ng, np_))
        for t in ths:
            a = acc[t]
            a[1] += ng
            a[2] += np_
            if ng == 0 or np_ == 0:
                continue
            n_min = min(ng, np_)
            cost = -(ious >= t).astype(np.float64) - ious / (2 * n_min)
            r, c = linear_sum_assignment(cost)
            m = ious[r, c]
            ok = m >= t
            a[0] += int(np.count_nonzero(ok))
            a[3] += float(np.sum(m[ok]))

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

    Returns ``(categories, counts)``: categories (H, W) uint8 — 0 nothing, 1 matched (pixels of
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
    g_ids, g_inv = np.unique(np.where(gt > 0, gt, 0), return_inverse=True)
    p_ids, p_inv = np.unique(np.where(pred > 0, pred, 0), return_inverse=True)
    g_inv = g_inv.reshape(gt.shape)
    p_inv = p_inv.reshape(pred.shape)
    # make index 0 background on both sides even when the image has none
    if g_ids[0] != 0:
        g_ids, g_inv = np.concatenate([[0], g_ids]), g_inv + 1
    if p_ids[0] != 0:
        p_ids, p_inv = np.concatenate([[0], p_ids]), p_inv + 1
    ng, npred = len(g_ids), len(p_ids)
    C = np.bincount((g_inv.astype(np.int64) * npred + p_inv).ravel(),
                    minlength=ng * npred).reshape(ng, npred)
    g_area = C.sum(1)
    p_area = C.sum(0)
    big_in_p = C[1:, 1:] > fraction * g_area[1:, None]   # g mostly inside p
    p_in_g = C[1:, 1:] > fraction * p_area[None, 1:]     # p mostly inside g
    merges = np.flatnonzero(big_in_p.sum(0) >= 2) + 1    # predicted indices
    merged_g = np.flatnonzero(big_in_p[:, merges - 1].any(1)) + 1 if merges.size else \
        np.zeros(0, np.int64)
    splits = np.flatnonzero(p_in_g.sum(1) >= 2) + 1      # true indices
    missed = np.flatnonzero(C[1:, 0] > fraction * g_area[1:]) + 1
    false_pos = np.flatnonzero(C[0, 1:] > fraction * p_area[1:]) + 1

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
