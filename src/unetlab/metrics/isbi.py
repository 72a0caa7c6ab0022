"""ISBI 2012 EM challenge metrics: pixel, Rand and warping error (U-Net paper Sec. 4, Table 1),
computed as the organisers' Fiji code (Trainable Segmentation ``metrics``) does.

Conventions of the ISBI metrics:

* ``ground_truth`` (H, W) or (S, H, W): cell (object) pixels > 0, membrane 0. Only ``> 0``
  matters (instance ids are binarised; a GT value strictly between 0 and 1 counts as cell, where
  Fiji's Rand code would compare it with the threshold).
* ``probability``: P(cell) = P(non-membrane) in [0, 1] — the ISBI submission convention (1 =
  certainly not membrane). Feed ``1 − P(membrane)``. It is converted to float32 (the submission
  format) and compared in float64: a pixel is cell iff ``value > th``.
* Thresholds are 0.0, 0.1, … by float64 accumulation (``th += 0.1``), exactly Java's loop:
  11 values up to 0.9999999999999999 for pixel/Rand, the first 10 for warping.
* Each metric works per 2-D slice with 4-connected cells; counts are pooled over slices.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from ..errors import UnetlabError
from .._isbi import WARP_MERGE, WARP_SPLIT

__all__ = ["isbi_thresholds", "isbi2012", "pixel_fscore", "rand_fscore", "rand_counts",
           "warping_classes", "WARPING_THRESHOLDS"]


_FOUR = ndimage.generate_binary_structure(2, 1)

#: Number of thresholds (0.0 … 0.9) over which the warping error is minimised; the challenge
#: leaves out the last threshold (0.9999999999999999) for this metric.
WARPING_THRESHOLDS = 10


def isbi_thresholds(minimum: float = 0.0, maximum: float = 1.0, step: float = 0.1) -> list[float]:
    """Thresholds of Fiji's ``for (th = min; th <= max; th += step)`` in float64.

    ``isbi_thresholds()`` → 0.0, 0.1, 0.2, 0.30000000000000004, …, 0.9999999999999999 (11).
    """
    out, th = [], float(minimum)
    while th <= maximum:
        out.append(th)
        th += step
    return out


def _fscore(tp: float, fp: float, fn: float) -> tuple[float, float, float]:
    """(precision, recall, F) with Fiji's ClassificationStatistics conventions."""
    precision = 1.0 if fp == 0 else tp / (tp + fp)
    recall = 1.0 if fn == 0 else tp / (tp + fn)
    f = 0.0 if precision + recall == 0 else 2.0 * precision * recall / (precision + recall)
    return precision, recall, f


def _as_stack(a: np.ndarray) -> np.ndarray:
    return a[None] if a.ndim == 2 else a


def _check_isbi_inputs(ground_truth, probability) -> tuple[np.ndarray, np.ndarray]:
    """Validate and return (gt bool (S, H, W), prob float32 (S, H, W)); UnetlabError otherwise."""
    gt = np.asarray(ground_truth)
    prob = np.asarray(probability)
    if gt.ndim not in (2, 3):
        raise UnetlabError(f"ground truth must be (H, W) or (S, H, W), got shape {gt.shape}")
    if prob.shape != gt.shape:
        raise UnetlabError(f"probability shape {prob.shape} does not match ground truth shape "
                           f"{gt.shape}")
    if gt.size == 0:
        raise UnetlabError("ground truth is empty (no pixels)")
    if not (np.issubdtype(gt.dtype, np.number) or gt.dtype == bool):
        raise UnetlabError(f"ground truth must be numeric, got dtype {gt.dtype}")
    if not (np.issubdtype(prob.dtype, np.number) or prob.dtype == bool):
        raise UnetlabError(f"probability must be numeric, got dtype {prob.dtype}")
    if np.issubdtype(gt.dtype, np.floating) and not np.isfinite(gt).all():
        raise UnetlabError("ground truth contains NaN or infinite values")
    prob32 = prob.astype(np.float32)
    if not np.isfinite(prob32).all():
        raise UnetlabError("probability contains NaN or infinite values")
    lo, hi = float(prob32.min()), float(prob32.max())
    if lo < 0.0 or hi > 1.0:
        raise UnetlabError(f"probability must lie in [0, 1] (P(cell), the ISBI convention), "
                           f"got values in [{lo:g}, {hi:g}]")
    gtb = gt > 0
    if not gtb.any():
        raise UnetlabError("ground truth has no cell pixel (all membrane/background): the ISBI "
                           "metrics are undefined")
    return _as_stack(gtb), _as_stack(prob32)


def _label4(mask: np.ndarray) -> np.ndarray:
    """4-connected component labels of a 2-D bool mask (0 = background), int32."""
    return ndimage.label(mask, structure=_FOUR)[0]


def _pixel_counts(gt: np.ndarray, pred: np.ndarray) -> tuple[int, int, int]:
    """(TP, FP, FN) with positives = cells, over whole arrays of bools."""
    tp = int(np.count_nonzero(gt & pred))
    fp = int(np.count_nonzero(pred & ~gt))
    fn = int(np.count_nonzero(gt & ~pred))
    return tp, fp, fn


def _pair_counts(g: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Counts n_ij of the (g, p) label pairs present (int64, order unspecified)."""
    width = int(p.max()) + 1
    span = (int(g.max()) + 1) * width
    key = g * width + p
    if span <= 8 * g.size + 1024:
        counts = np.bincount(key, minlength=0)
        return counts[counts > 0].astype(np.int64)
    return np.unique(key, return_counts=True)[1].astype(np.int64)


def rand_counts(gt_labels: np.ndarray, pred_labels: np.ndarray) -> tuple[int, int, int, int]:
    """Foreground-restricted Rand pair counts of one slice.

    ``gt_labels``, ``pred_labels``: (H, W) integer segment ids, 0 = membrane. Pixels with
    ``gt_labels == 0`` are dropped; predicted-membrane pixels are singletons; ordered pairs with
    self-pairs (n² normalisation). Returns (TP, FP, FN, n) as Python ints:
    TP = Σ_{j≥1} n_ij² + n_0, FP = Σ_{j≥1} b_j² + n_0 − TP, FN = Σ_i a_i² − TP.
    """
    keep = gt_labels > 0
    g = gt_labels[keep].astype(np.int64)
    p = pred_labels[keep].astype(np.int64)
    n = int(g.size)
    if n == 0:
        return 0, 0, 0, 0
    on = p > 0
    n0 = int(n - np.count_nonzero(on))
    a = np.bincount(g)
    sum_a2 = int(np.dot(a, a))
    gp, pp = g[on], p[on]
    if gp.size:
        b = np.bincount(pp)
        sum_b2 = int(np.dot(b, b))
        nij = _pair_counts(gp, pp)
        sum_nij2 = int(np.dot(nij, nij))
    else:
        sum_b2 = sum_nij2 = 0
    tp = sum_nij2 + n0
    fp = sum_b2 + n0 - tp
    fn = sum_a2 - tp
    return tp, fp, fn, n


def _classic_rand_error_slice(gt_labels: np.ndarray, pred_labels: np.ndarray) -> float:
    """Fiji's ``RandError.getMetricValue`` slice term: 1 − classic Rand index over all pixel
    pairs (unordered, no self pairs; label 0 is one segment), *including* Fiji's quirk of
    returning 0.0 when the proposal has no cell pixel. Not a leaderboard metric: it is
    the textbook formula, which reproduces Fiji on the shared examples; Fiji's own code sizes
    its contingency table from the display range and can fail (and report 0) elsewhere."""
    if not (pred_labels > 0).any():
        return 0.0
    g = gt_labels.ravel().astype(np.int64)
    p = pred_labels.ravel().astype(np.int64)
    n = g.size
    nij = _pair_counts(g, p)
    a = np.bincount(g)
    b = np.bincount(p)
    s_nij = float(np.dot(nij, nij) - n) / 2
    s_a = float(np.dot(a, a) - n) / 2
    s_b = float(np.dot(b, b) - n) / 2
    pairs = n * (n - 1) / 2
    agree = pairs + 2 * s_nij - s_a - s_b
    return 1.0 - agree / pairs


def _vinfo_slice(gt_labels: np.ndarray, pred_labels: np.ndarray) -> float:
    """Foreground-restricted information-theoretic score of one slice: 2·I/(H(G)+H(P))
    over GT-cell pixels, predicted 0 (dams) = singletons; H(P) = 0 → 0; H(G) = 0 → 0."""
    keep = gt_labels > 0
    g = gt_labels[keep].astype(np.int64)
    p = pred_labels[keep].astype(np.int64)
    n = g.size
    if n == 0:
        return 0.0
    on = p > 0
    n0 = n - int(np.count_nonzero(on))

    def ent(counts: np.ndarray, singles: int) -> float:
        q = counts[counts > 0] / n
        return float(-(q * np.log(q)).sum()) + (singles * math.log(n) / n if singles else 0.0)

    h_g = ent(np.bincount(g), 0)
    h_p = ent(np.bincount(p[on]) if on.any() else np.zeros(0, np.int64), n0)
    h_gp = ent(_pair_counts(g[on], p[on]) if on.any() else np.zeros(0, np.int64), n0)
    mi = h_g + h_p - h_gp
    if h_p == 0:
        precision, recall = 1.0, 0.0
    elif h_g == 0:
        precision, recall = 0.0, 1.0
    else:
        precision, recall = mi / h_p, mi / h_g
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def pixel_fscore(ground_truth, probability, threshold: float) -> float:
    """Pixel F-score at one threshold: positives = cells, counts pooled over slices."""
    gt, prob = _check_isbi_inputs(ground_truth, probability)
    pred = prob.astype(np.float64) > float(threshold)
    return _fscore(*_pixel_counts(gt, pred))[2]


def rand_fscore(ground_truth, probability, threshold: float) -> float:
    """Foreground-restricted Rand F-score at one threshold, counts pooled over slices."""
    gt, prob = _check_isbi_inputs(ground_truth, probability)
    tp = fp = fn = 0
    for s in range(gt.shape[0]):
        c = rand_counts(_label4(gt[s]), _label4(prob[s].astype(np.float64) > float(threshold)))
        tp, fp, fn = tp + c[0], fp + c[1], fn + c[2]
    return _fscore(tp, fp, fn)[2]


def _warp_and_classify(gt_slice: np.ndarray, prob_slice: np.ndarray, th: float, radius: int):
    """One slice at one threshold → (warped uint8, ys, xs, flags)."""
    from .. import _isbi

    warped, ys, xs = _isbi.warp_slice(gt_slice.astype(np.uint8), prob_slice, float(th),
                                      _isbi.SIMPLE)
    if ys.size == 0:
        return warped, ys, xs, np.zeros(0, dtype=np.int64)
    if warped.all():  # Fiji: convertToByte(true) of a constant image is all 0 → no cell label
        comp = np.zeros(warped.shape, dtype=np.int64)
    else:
        comp = _label4(warped).astype(np.int64)
    flags = _isbi.classify_mismatches(warped, comp, ys, xs, int(radius))
    return warped, ys, xs, flags


def warping_classes(ground_truth, probability, threshold: float, radius: int = 20) -> np.ndarray:
    """Classified warping mismatches at one threshold: (S, H, W) or (H, W) uint8 flags.

    0 = no mismatch after warping the GT onto ``probability > threshold``; otherwise one of
    :data:`WARP_MERGE` (1), :data:`WARP_SPLIT` (2), HOLE_ADDITION (4), OBJECT_DELETION (8),
    OBJECT_ADDITION (16), HOLE_DELETION (32) — Fiji's ``classifyMismatches2d``. Only
    WARP_MERGE and WARP_SPLIT pixels count in the ISBI warping error.
    """
    ndim = np.asarray(ground_truth).ndim
    gt, prob = _check_isbi_inputs(ground_truth, probability)
    out = np.zeros(gt.shape, dtype=np.uint8)
    for s in range(gt.shape[0]):
        _, ys, xs, flags = _warp_and_classify(gt[s], prob[s], threshold, radius)
        out[s][ys, xs] = flags
    return out if ndim == 3 else out[0]


def isbi2012(ground_truth, probability, thinning: bool = False, radius: int = 20,
             classic: bool = True) -> dict:
    """ISBI 2012 challenge metrics exactly as the organisers computed them (Table 1 of the paper).

    ``ground_truth`` (H, W) or (S, H, W), cells > 0 and membrane 0; ``probability`` of the same
    shape, P(cell) in [0, 1] (float; converted to float32). Returns a dict:

    * ``pixel_error`` = 1 − max_th F_pixel (11 thresholds);
    * ``rand_error`` = 1 − max_th F_rand, foreground-restricted, n² pairs, predicted membrane
      inside GT cells = singletons (11 thresholds);
    * ``warping_error`` = min_th (#split + #merge pixels) / (S·H·W) after simple-point warping of
      the GT onto the thresholded map (10 thresholds 0.0…0.9, radius 20);
    * ``pixel_threshold``, ``rand_threshold``, ``warping_threshold``: the first threshold
      reaching the optimum;
    * ``per_threshold``: for each of the 11 thresholds a dict with ``threshold``, ``pixel_f``,
      ``rand_f``, ``warping_error`` (splits + mergers), ``splits``, ``mergers`` (pixel
      counts, all slices), ``warping_error_classic`` (all remaining mismatches / pixels, mean over
      slices) and, with ``classic``, ``classic_rand_error`` (Fiji's 1 − Rand index incl.
      background, not a leaderboard number);
    * with ``thinning=True`` also ``vrand`` and ``vinfo`` (higher is better; the 2016 ISBI
      leaderboard, not the U-Net paper): the proposal is border-thinned by Fiji's watershed
      flooding, then the foreground-restricted Rand F (dams = singletons) and the information
      theoretic F = 2I/(H(G)+H(P)) are averaged over slices and maximised over the 11
      thresholds; per threshold ``vrand``/``vinfo`` are added to the rows.

    Raises :class:`UnetlabError` for shape mismatch, probabilities outside [0, 1] or NaN, and a
    ground truth without any cell pixel.
    """
    gt, prob = _check_isbi_inputs(ground_truth, probability)
    if int(radius) != radius:
        raise UnetlabError(f"radius must be an integer, got {radius!r}")
    gt_labels = [_label4(g) for g in gt]
    prob64 = prob.astype(np.float64)
    rows = [_threshold_row(gt, gt_labels, prob, prob64 > th, th, thinning, classic, radius)
            for th in isbi_thresholds(0.0, 1.0, 0.1)]
    return _summary(rows, gt.shape, thinning)


def _threshold_row(gt: np.ndarray, gt_labels: list[np.ndarray], prob: np.ndarray,
                   pred: np.ndarray, th: float, thinning: bool, classic: bool,
                   radius: int) -> dict:
    """All ISBI figures of one threshold ``th`` (``pred`` = prob > th), pooled over the slices
    of (S, H, W) ``gt``."""
    n_slices, h, w = gt.shape
    px = _fscore(*_pixel_counts(gt, pred))
    tp = fp = fn = splits = mergers = 0
    classic_err = classic_warp = vrand = vinfo = 0.0
    for s in range(n_slices):
        pl = _label4(pred[s])
        if thinning:
            from .. import _isbi

            thin = _isbi.thin_borders(pred[s].astype(np.uint8))
            vrand += _fscore(*rand_counts(gt_labels[s], thin)[:3])[2]
            vinfo += _vinfo_slice(gt_labels[s], thin)
        c = rand_counts(gt_labels[s], pl)
        tp, fp, fn = tp + c[0], fp + c[1], fn + c[2]
        if classic:
            classic_err += _classic_rand_error_slice(gt_labels[s], pl)
        _, ys, _, flags = _warp_and_classify(gt[s], prob[s], th, radius)
        splits += int(np.count_nonzero(flags == WARP_SPLIT))
        mergers += int(np.count_nonzero(flags == WARP_MERGE))
        classic_warp += ys.size / (h * w)
    rf = _fscore(tp, fp, fn)
    row = {
        "threshold": th,
        "pixel_f": px[2], "pixel_precision": px[0], "pixel_recall": px[1],
        "rand_f": rf[2], "rand_precision": rf[0], "rand_recall": rf[1],
        "warping_error": (splits + mergers) / (n_slices * h * w),
        "splits": splits, "mergers": mergers,
        "warping_error_classic": classic_warp / n_slices,
    }
    if classic:
        row["classic_rand_error"] = classic_err / n_slices
    if thinning:
        row["vrand"] = vrand / n_slices
        row["vinfo"] = vinfo / n_slices
    return row


def _first_best(rows: list[dict], key: str, better) -> tuple[float | None, float | None]:
    """(best value, first threshold reaching it) of ``key`` over ``rows`` in order."""
    best, arg = None, None
    for row in rows:
        if best is None or better(row[key], best):
            best, arg = row[key], row["threshold"]
    return best, arg


def _summary(rows: list[dict], shape: tuple[int, int, int], thinning: bool) -> dict:
    """The challenge's numbers from the per-threshold rows: best F over all 11 thresholds, least
    warping error over the first 10 (the last threshold is excluded, as in the challenge)."""
    # Fiji: max F starts at 0 with strict '>'; min warping starts at +inf with strict '<'
    best_px, th_px = _first_best(rows, "pixel_f", lambda a, b: a > b)
    best_rd, th_rd = _first_best(rows, "rand_f", lambda a, b: a > b)
    best_wp, th_wp = _first_best(rows[:WARPING_THRESHOLDS], "warping_error", lambda a, b: a < b)
    extra = {}
    if thinning:
        extra = {"vrand": max(0.0, *(r["vrand"] for r in rows)),
                 "vinfo": max(0.0, *(r["vinfo"] for r in rows))}
    return {
        **extra,
        "pixel_error": 1.0 - max(best_px, 0.0),
        "rand_error": 1.0 - max(best_rd, 0.0),
        "warping_error": best_wp,
        "pixel_threshold": th_px,
        "rand_threshold": th_rd,
        "warping_threshold": th_wp,
        "n_slices": shape[0],
        "shape": list(shape),
        "per_threshold": rows,
    }
