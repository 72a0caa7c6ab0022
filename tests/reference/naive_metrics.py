"""Slow, straightforward reference of the ISBI 2012 metrics (pixel, Rand and warping error).

Written step by step the way the organisers' Fiji code works, with no lookup tables and no
compiled code: the simple-point test labels the 3×3 patch with ``scipy.ndimage.label`` (Fiji's
``topo``), the warping sweeps are Python loops over a Python-sorted list, the ``|U| = 2``
classification copies the (2r+1)² window (or the whole slice), flips the pixel and relabels it,
and the Rand counts enumerate all ordered pixel pairs. Only for small images (≲ 40×40).
Used by tests/test_metrics.py and benchmarks/bench_metrics.py.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

FOUR = ndimage.generate_binary_structure(2, 1)
EIGHT = ndimage.generate_binary_structure(2, 2)

MERGE, SPLIT, HOLE_ADDITION, OBJECT_DELETION, OBJECT_ADDITION, HOLE_DELETION = (
    0x1, 0x2, 0x4, 0x8, 0x10, 0x20)


def thresholds(maximum: float = 1.0) -> list[float]:
    out, th = [], 0.0
    while th <= maximum:
        out.append(th)
        th = th + 0.1
    return out


def topo(patch: np.ndarray, adjacency: int) -> int:
    """Number of components of the 3×3 ``patch`` (bool) with the centre removed (Fiji ``topo``);
    for adjacency 4 only components that contain a 4-neighbour of the centre count."""
    p = patch.copy()
    p[1, 1] = False
    lab, _ = ndimage.label(p, structure=FOUR if adjacency == 4 else EIGHT)
    if adjacency == 4:
        lab = lab.copy()
        for (y, x) in ((0, 0), (0, 2), (1, 1), (2, 0), (2, 2)):
            lab[y, x] = 0
    return len(set(lab.ravel().tolist()) - {0})


def is_simple(patch: np.ndarray) -> bool:
    """(4,8) simple point: T4(cells) == 1 and T8(membrane) == 1 (Fiji ``simple2D(im, 4)``)."""
    patch = np.asarray(patch, dtype=bool)
    return topo(patch, 4) == 1 and topo(~patch, 8) == 1


def warp(gt: np.ndarray, prob: np.ndarray, th: float):
    """Simple-point warping of binary ``gt`` (H, W) onto ``prob > th``: (warped, mismatches).

    ``mismatches`` is the list of (y, x) still different, in the order of the last sweep.
    """
    h, w = gt.shape
    src = np.zeros((h + 2, w + 2), dtype=bool)
    src[1:-1, 1:-1] = gt > 0
    real = np.zeros((h + 2, w + 2), dtype=np.float64)
    real[1:-1, 1:-1] = np.asarray(prob, dtype=np.float32).astype(np.float64)
    tgt = real > th
    prev = None
    mism: list = []
    while True:
        diff = int(np.count_nonzero(src != tgt))
        if diff == 0:
            mism = []
            break
        if diff == prev:
            break
        prev = diff
        items = []
        for x in range(1, w + 1):          # x-major, like Fiji
            for y in range(1, h + 1):
                if src[y, x] != tgt[y, x]:
                    items.append((float(np.float32(abs(real[y, x] - th))), y, x))
        items = sorted(items, key=lambda t: -t[0])   # stable, descending
        for _, y, x in items:
            if is_simple(src[y - 1:y + 2, x - 1:x + 2]):
                src[y, x] = not src[y, x]
        mism = [(y - 1, x - 1) for _, y, x in items]
    warped = src[1:-1, 1:-1].copy()
    mism = [(y, x) for (y, x) in mism if warped[y, x] != tgt[y + 1, x + 1]]
    return warped, mism


def neighbourhood(img: np.ndarray, y: int, x: int) -> list:
    h, w = img.shape
    return [int(img[j, i]) for j in range(y - 1, y + 2) for i in range(x - 1, x + 2)
            if (i != x or j != y) and 0 <= j < h and 0 <= i < w]


def classify(warped: np.ndarray, mismatches: list, radius: int = 20) -> list[int]:
    """Fiji ``classifyMismatches2d`` with full relabelling per ``|U| = 2`` cell pixel."""
    h, w = warped.shape
    r = radius if (1 <= radius <= w and radius <= h) else -1
    byte = warped.astype(np.uint8) * 255 if not warped.all() else np.zeros_like(warped, np.uint8)
    comp, _ = ndimage.label(byte > 0, structure=FOUR)
    out = []
    for (y, x) in mismatches:
        u = set(neighbourhood(comp, y, x))
        centre = comp[y, x]
        if u == {0}:
            out.append(OBJECT_DELETION if centre else OBJECT_ADDITION)
        elif len(u) == 1:
            out.append(HOLE_ADDITION if centre else HOLE_DELETION)
        elif len(u) == 2:
            if centre == 0:
                out.append(HOLE_ADDITION)
                continue
            if r == -1:
                win = byte.copy()
                cy, cx = y, x
            else:
                win = np.zeros((2 * r + 1, 2 * r + 1), dtype=np.uint8)
                for j in range(y - r, y + r + 1):
                    for i in range(x - r, x + r + 1):
                        if 0 <= j < h and 0 <= i < w and warped[j, i]:
                            win[j - (y - r), i - (x - r)] = 255
                cy, cx = r, r
            win[cy, cx] = 0
            comp2, _ = ndimage.label(win > 0, structure=FOUR)
            u2 = set(neighbourhood(comp2, cy, cx))
            out.append(SPLIT if len(u2) > 2 else HOLE_DELETION)
        else:
            out.append(MERGE if centre == 0 else SPLIT)
    return out


def warping_counts(gt: np.ndarray, prob: np.ndarray, th: float, radius: int = 20):
    """(splits, mergers, all remaining mismatches) of one slice at one threshold."""
    warped, mism = warp(gt, prob, th)
    cls = classify(warped, mism, radius)
    return cls.count(SPLIT), cls.count(MERGE), len(mism)


def rand_counts(gt_labels: np.ndarray, pred_labels: np.ndarray):
    """Ordered pixel pairs (self pairs included) over GT-cell pixels; predicted 0 = singleton.

    Returns (TP, FP, FN, n) by explicit enumeration of all n² pairs.
    """
    keep = gt_labels.ravel() > 0
    g = gt_labels.ravel()[keep]
    p = pred_labels.ravel()[keep]
    n = g.size
    same_g = g[:, None] == g[None, :]
    same_p = (p[:, None] == p[None, :]) & (p[:, None] > 0)
    same_p |= np.eye(n, dtype=bool)
    tp = int(np.count_nonzero(same_g & same_p))
    fp = int(np.count_nonzero(same_p & ~same_g))
    fn = int(np.count_nonzero(same_g & ~same_p))
    return tp, fp, fn, n


def fscore(tp, fp, fn) -> float:
    p = 1.0 if fp == 0 else tp / (tp + fp)
    r = 1.0 if fn == 0 else tp / (tp + fn)
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def isbi2012(gt: np.ndarray, prob: np.ndarray, radius: int = 20) -> dict:
    """All three ISBI 2012 numbers and per-threshold lists, the slow way."""
    gt = np.asarray(gt)
    prob = np.asarray(prob, dtype=np.float32)
    if gt.ndim == 2:
        gt, prob = gt[None], prob[None]
    s_, h, w = gt.shape
    pix_f, rand_f, warp_e = [], [], []
    for th in thresholds(1.0):
        tp = fp = fn = 0
        rtp = rfp = rfn = 0
        sm = 0
        for s in range(s_):
            g = gt[s] > 0
            pr = prob[s].astype(np.float64) > th
            tp += int(np.sum(g & pr))
            fp += int(np.sum(~g & pr))
            fn += int(np.sum(g & ~pr))
            c = rand_counts(ndimage.label(g, FOUR)[0], ndimage.label(pr, FOUR)[0])
            rtp, rfp, rfn = rtp + c[0], rfp + c[1], rfn + c[2]
            sp, me, _ = warping_counts(gt[s], prob[s], th, radius)
            sm += sp + me
        pix_f.append(fscore(tp, fp, fn))
        rand_f.append(fscore(rtp, rfp, rfn))
        warp_e.append(sm / (s_ * h * w))
    return {"pixel_error": 1 - max(pix_f), "rand_error": 1 - max(rand_f),
            "warping_error": min(warp_e[:10]), "pixel_f": pix_f, "rand_f": rand_f,
            "warping": warp_e}
