"""unetlab.metrics: ISBI 2012 pixel/Rand/warping error exactly as Fiji, SEG, matching, IoU.

References: the organisers' own numbers (tests/data/fiji/*/expected_fiji.json, produced
by the unmodified Fiji classes), the slow step-by-step reference tests/reference/naive_metrics.py,
scikit-image's adapted_rand_error, and hand-computed cases.
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from reference import naive_metrics as nm
from unetlab import _isbi, metrics
from unetlab.errors import UnetlabError
from unetlab.metrics import WARP_MERGE, WARP_SPLIT

EXAMPLES = Path(__file__).resolve().parent / "data" / "fiji"  # the organisers' values
CASES = ["em1_tradeoff_free", "em2_tradeoff", "em3_constant"]
FOUR = ndimage.generate_binary_structure(2, 1)


def _case(name):
    d = EXAMPLES / name
    return (np.load(d / "gt.npy"), np.load(d / "prob.npy"),
            json.loads((d / "expected_fiji.json").read_text()))


# ------------------------------------------------------------------------------------------
# the organisers' numbers
# ------------------------------------------------------------------------------------------
def test_thresholds_are_java_double_accumulation():
    th = metrics.isbi_thresholds()
    assert th == [0.0, 0.1, 0.2, 0.30000000000000004, 0.4, 0.5, 0.6, 0.7, 0.7999999999999999,
                  0.8999999999999999, 0.9999999999999999]
    assert th != list(np.linspace(0, 1, 11))  # the obvious construction would be wrong


PER_THRESHOLD = [
    ("pixel_f", "pixel_fscore_per_threshold"),
    ("rand_f", "fg_restricted_rand_fscore_per_threshold"),
    ("classic_rand_error", "classic_rand_error_per_threshold"),
    ("warping_error", "splits_mergers_warping_error_per_threshold"),
    ("warping_error_classic", "classic_warping_error_per_threshold"),
    ("vrand", "vrand_thinned_per_threshold"),
    ("vinfo", "vinfo_thinned_per_threshold"),
]


@pytest.mark.parametrize("name", CASES)
def test_reproduces_fiji_expected_values(name):
    gt, prob, exp = _case(name)
    r = metrics.isbi2012(gt, prob, thinning=True)
    rows = r["per_threshold"]
    assert [row["threshold"] for row in rows] == exp["thresholds"]
    for ours, theirs in PER_THRESHOLD:
        np.testing.assert_allclose([row[ours] for row in rows], exp[theirs], rtol=0, atol=1e-9,
                                   err_msg=ours)
    assert [float(row["splits"] + row["mergers"]) for row in rows] == \
        exp["splits_mergers_pixel_count_per_threshold"]
    assert r["pixel_error"] == pytest.approx(exp["isbi2012_pixel_error"], abs=1e-9)
    assert r["rand_error"] == pytest.approx(exp["isbi2012_rand_error"], abs=1e-9)
    assert r["warping_error"] == pytest.approx(exp["isbi2012_warping_error"], abs=1e-9)
    assert r["vrand"] == pytest.approx(exp["isbi2012_max_vrand_thinned"], abs=1e-9)
    assert r["vinfo"] == pytest.approx(exp["isbi2012_max_vinfo_thinned"], abs=1e-9)


def test_border_thinning_keeps_cells_and_leaves_thin_dams():
    rng = np.random.default_rng(9)
    for _ in range(10):
        cell = ndimage.gaussian_filter(rng.random((30, 34)), 2) > 0.5
        comps, n = ndimage.label(cell, FOUR)
        thin = _isbi.thin_borders(cell.astype(np.uint8))
        # every cell component lies inside exactly one basin, distinct components in distinct ones
        ids = [set(np.unique(thin[comps == k]).tolist()) for k in range(1, n + 1)]
        assert all(len(i) == 1 and 0 not in i for i in ids)
        assert len({next(iter(i)) for i in ids}) == n
        # dams (label 0) are membrane pixels only; cells never shrink
        assert not (cell & (thin == 0)).any()
        assert (thin > 0).sum() >= cell.sum()
    # no cell at all: one basin covering the slice
    assert (_isbi.thin_borders(np.zeros((5, 6), np.uint8)) == 1).all()


def test_naive_reference_also_reproduces_fiji():
    # the slow reference is itself checked against the organisers' numbers
    for name in CASES:
        gt, prob, exp = _case(name)
        r = nm.isbi2012(gt, prob)
        np.testing.assert_allclose(r["warping"], exp["splits_mergers_warping_error_per_threshold"],
                                   atol=1e-12, rtol=0)
        np.testing.assert_allclose(r["rand_f"], exp["fg_restricted_rand_fscore_per_threshold"],
                                   atol=1e-12, rtol=0)
        np.testing.assert_allclose(r["pixel_f"], exp["pixel_fscore_per_threshold"], atol=1e-12,
                                   rtol=0)


def test_threshold_compared_in_float64_like_java():
    # 0.1f = 0.100000001 > 0.1 (double) is true in Java: the pixel is cell at th = 0.1
    gt = np.array([[1, 1, 0, 0]], dtype=np.uint8)
    prob = np.array([[0.1, 0.1, 0.05, 0.05]], dtype=np.float32)
    assert metrics.pixel_fscore(gt, prob, 0.1) == 1.0
    # a float32 comparison (NumPy 2 default) would call both pixels membrane → F = 0
    assert not (prob > np.float32(0.1)).any()


# ------------------------------------------------------------------------------------------
# fast kernels == slow reference
# ------------------------------------------------------------------------------------------
def test_simple_point_table_matches_patch_labelling():
    for code in range(256):
        patch = np.zeros((3, 3), dtype=bool)
        for k, (dy, dx) in enumerate(_isbi.NEIGHBOURS):
            patch[1 + dy, 1 + dx] = bool(code >> k & 1)
        for centre in (False, True):
            patch[1, 1] = centre
            assert nm.is_simple(patch) == bool(_isbi.SIMPLE[code]), (code, centre)
    # sanity: an isolated pixel and a pixel inside a full block are not simple; an edge pixel is
    assert not _isbi.SIMPLE[0] and not _isbi.SIMPLE[255]
    assert _isbi.SIMPLE[0b00000111]


def _random_case(rng, h, w):
    g = ndimage.gaussian_filter(rng.random((h, w)), 1.5)
    gt = (g > np.quantile(g, rng.uniform(0.25, 0.5))).astype(np.uint8)
    prob = np.clip(gt * 0.8 + 0.1 + rng.normal(0, 0.3, gt.shape), 0, 1)
    prob = (np.round(prob * 20) / 20).astype(np.float32)  # many exact ties in the sort key
    return gt, prob


def _naive_class_map(gt, prob, th, radius):
    warped, mism = nm.warp(gt, prob, th)
    out = np.zeros(gt.shape, dtype=np.uint8)
    for (y, x), c in zip(mism, nm.classify(warped, mism, radius)):
        out[y, x] = c
    return warped, out


def test_fast_warping_equals_naive_on_random_cases():
    rng = np.random.default_rng(7)
    n_split_local = 0
    for it in range(24):
        h, w = (int(v) for v in rng.integers(6, 26, 2))
        gt, prob = _random_case(rng, h, w)
        radius = int(rng.choice([1, 2, 3, 20]))
        for th in metrics.isbi_thresholds()[::2]:
            fast = metrics.warping_classes(gt, prob, th, radius=radius)
            warped, slow = _naive_class_map(gt, prob, th, radius)
            np.testing.assert_array_equal(fast, slow, err_msg=f"case {it} th {th} r {radius}")
            fw, _, _ = _isbi.warp_slice(gt, prob, th, _isbi.SIMPLE)
            np.testing.assert_array_equal(fw.astype(bool), warped)
            n_split_local += int(np.count_nonzero(slow == WARP_SPLIT))
    assert n_split_local > 0  # the cases exercise the split classification


def test_rand_counts_equal_explicit_pair_enumeration():
    rng = np.random.default_rng(3)
    for _ in range(20):
        g = ndimage.label(rng.random((12, 13)) > 0.35, FOUR)[0]
        p = ndimage.label(rng.random((12, 13)) > 0.3, FOUR)[0]
        assert metrics.rand_counts(g, p) == nm.rand_counts(g, p)


def test_isbi2012_equals_naive_on_small_random_stack():
    rng = np.random.default_rng(11)
    gt = np.stack([_random_case(rng, 18, 22)[0] for _ in range(3)])
    prob = np.stack([_random_case(rng, 18, 22)[1] for _ in range(3)])
    prob = np.clip(0.6 * prob + 0.4 * gt, 0, 1).astype(np.float32)
    fast = metrics.isbi2012(gt, prob)
    slow = nm.isbi2012(gt, prob)
    np.testing.assert_allclose([r["pixel_f"] for r in fast["per_threshold"]], slow["pixel_f"],
                               atol=1e-12, rtol=0)
    np.testing.assert_allclose([r["rand_f"] for r in fast["per_threshold"]], slow["rand_f"],
                               atol=1e-12, rtol=0)
    np.testing.assert_allclose([r["warping_error"] for r in fast["per_threshold"]],
                               slow["warping"], atol=1e-15, rtol=0)
    for k in ("pixel_error", "rand_error", "warping_error"):
        assert fast[k] == pytest.approx(slow[k], abs=1e-12)


def test_real_isbi_crop_fast_equals_naive(shared_file):
    import imageio.v3 as iio

    lab = iio.imread(shared_file("isbi2012", "train", "label", "00.png"))
    gt = (lab[100:160, 200:260] > 0).astype(np.uint8)
    rng = np.random.default_rng(0)
    prob = ndimage.gaussian_filter(gt.astype(np.float32), 1.2) + rng.normal(0, 0.2, gt.shape)
    prob = np.clip(prob, 0, 1).astype(np.float32)
    for th in (0.3, 0.5, 0.7):
        fast = metrics.warping_classes(gt, prob, th)
        _, slow = _naive_class_map(gt, prob, th, 20)
        np.testing.assert_array_equal(fast, slow)


# ------------------------------------------------------------------------------------------
# scikit-image where the conventions coincide
# ------------------------------------------------------------------------------------------
def test_rand_agrees_with_skimage_adapted_rand_error():
    """skimage.metrics.adapted_rand_error(gt, pred, ignore_labels=(0,)) drops GT-0 pixels like
    Fiji, but counts ordered pairs *without* self pairs (Σn² − n) and treats predicted label 0 as
    one ordinary segment. The two coincide when (a) every predicted-membrane pixel inside a GT
    cell gets its own label (Fiji's singletons) and (b) the n self pairs are added back:
    F_fiji = 2·TP / (2·TP + FP + FN) with TP_sk = TP − n etc."""
    from skimage.metrics import adapted_rand_error

    rng = np.random.default_rng(5)
    for _ in range(10):
        g = ndimage.label(rng.random((15, 17)) > 0.3, FOUR)[0]
        p = ndimage.label(rng.random((15, 17)) > 0.25, FOUR)[0]
        tp, fp, fn, n = metrics.rand_counts(g, p)
        # (a) singletons as explicit labels
        p1 = p.copy()
        holes = (g > 0) & (p == 0)
        p1[holes] = p.max() + 1 + np.arange(np.count_nonzero(holes))
        are, prec, rec = adapted_rand_error(g, p1, ignore_labels=(0,))
        # (b) skimage's counts are ours minus the self pairs
        f_no_self = 2 * (tp - n) / ((tp + fn - n) + (tp + fp - n))
        assert 1 - are == pytest.approx(f_no_self, abs=1e-12)
        # skimage's "precision" is Σp²/Σa² (= our recall without self pairs; scikit-image#6485)
        assert prec == pytest.approx((tp - n) / (tp + fn - n), abs=1e-12)
        # with singletons labelled, our own counts are unchanged
        assert metrics.rand_counts(g, p1) == (tp, fp, fn, n)


# ------------------------------------------------------------------------------------------
# behaviour on hand-made cases
# ------------------------------------------------------------------------------------------
def _two_cells(h=12, w=13, col=6):
    gt = np.ones((h, w), dtype=np.uint8)
    gt[:, col] = 0
    return gt


def test_prediction_equal_to_ground_truth_scores_zero():
    rng = np.random.default_rng(2)
    gt = np.stack([_random_case(rng, 20, 24)[0] for _ in range(2)])
    r = metrics.isbi2012(gt * 255, gt.astype(np.float32))
    assert r["pixel_error"] == 0 and r["rand_error"] == 0 and r["warping_error"] == 0
    assert all(row["splits"] == row["mergers"] == 0 for row in r["per_threshold"])


def test_one_pixel_bridge_is_a_merge():
    gt = _two_cells()
    prob = gt.astype(np.float32)
    prob[5, 6] = 1.0  # the membrane line is broken at one pixel
    cls = metrics.warping_classes(gt, prob, 0.5)
    assert cls[5, 6] == WARP_MERGE and np.count_nonzero(cls) == 1
    r = metrics.isbi2012(gt, prob)
    assert r["warping_error"] == pytest.approx(1 / gt.size)
    assert r["per_threshold"][5]["mergers"] == 1
    # two equal cells merged: P = 2·72² / 144² = 1/2, R = 1 → F = 2/3
    assert r["rand_error"] == pytest.approx(1 / 3, abs=1e-12)


def test_false_membrane_line_across_a_cell_is_one_split_pixel():
    gt = _two_cells()
    prob = gt.astype(np.float32)
    prob[7, :6] = 0.2  # cuts the left cell in two
    cls = metrics.warping_classes(gt, prob, 0.5)
    assert np.count_nonzero(cls == WARP_SPLIT) == 1 and np.count_nonzero(cls == WARP_MERGE) == 0
    assert np.count_nonzero(cls) == 1  # the other 5 pixels warped away as simple points


def test_one_pixel_boundary_shift_costs_no_warping_error():
    gt = _two_cells(col=6)
    prob = _two_cells(col=7).astype(np.float32)  # membrane moved one pixel to the right
    r = metrics.isbi2012(gt, prob)
    assert r["warping_error"] == 0.0
    assert all(row["warping_error_classic"] == 0 for row in r["per_threshold"][:10])
    assert r["pixel_error"] > 0 and r["rand_error"] > 0  # the other metrics do see it


def test_constant_map_has_zero_warping_error_but_high_rand_error():
    gt, prob, _ = _case("em3_constant")
    r = metrics.isbi2012(gt, prob)
    assert r["warping_error"] == 0.0 and r["rand_error"] > 0.4


# ------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("gt, prob, words", [
    (np.ones((4, 5)), np.ones((4, 6)), "shape"),
    (np.ones((4, 5)), np.full((4, 5), 1.5), "[0, 1]"),
    (np.ones((4, 5)), np.full((4, 5), -0.1), "[0, 1]"),
    (np.ones((4, 5)), np.where(np.eye(4, 5) > 0, np.nan, 0.5), "NaN"),
    (np.zeros((4, 5)), np.full((4, 5), 0.5), "no cell pixel"),
    (np.ones(5), np.ones(5), "(H, W)"),
])
def test_bad_input_raises_one_line_error(gt, prob, words):
    with pytest.raises(UnetlabError) as e:
        metrics.isbi2012(gt, prob)
    assert words in str(e.value) and "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------
# IoU, SEG, matching
# ------------------------------------------------------------------------------------------
def test_iou_hand_case():
    a = np.zeros((4, 4), bool)
    a[:2] = True            # 8 px
    b = np.zeros((4, 4), bool)
    b[1:3] = True           # 8 px, 4 shared
    assert metrics.iou(a, b) == pytest.approx(4 / 12)
    assert metrics.iou(a, a) == 1.0
    with pytest.raises(UnetlabError):
        metrics.iou(a, b[:3])


def test_iou_by_threshold_equals_iou_of_each_mask():
    """The sorted sweep against metrics.iou of each thresholded mask, restricted to the
    annotated pixels; thresholds equal to probabilities present test the strict '>'."""
    rng = np.random.default_rng(3)
    prob = np.round(rng.random((2, 9, 11)), 1)          # many ties with the thresholds
    truth = rng.random(prob.shape) < 0.4
    annotated = rng.random(prob.shape) < 0.7
    th = [0.0, 0.1, 0.25, 0.5, 0.7, 1.0]
    got = metrics.iou_by_threshold(prob, truth, th, annotated)
    want = [metrics.iou(truth[annotated], prob[annotated] > t) for t in th]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(metrics.iou_by_threshold(prob, truth, th),
                               [metrics.iou(truth, prob > t) for t in th], atol=1e-12)
    assert metrics.iou_by_threshold(np.zeros(4), np.zeros(4), [0.5])[0] == 1.0   # empty union
    with pytest.raises(UnetlabError, match="annotated mask shape"):
        metrics.iou_by_threshold(prob, truth, th, annotated[0])
    with pytest.raises(UnetlabError, match="does not match"):
        metrics.iou_by_threshold(prob[0], truth, th)


def test_best_iou_threshold_hand_case():
    """A map whose cells sit at 0.3-0.4 and background at 0.1-0.2 (a network the weighted loss
    left unsure): 0.5 finds nothing, the best threshold separates the two exactly."""
    truth = np.array([1, 1, 1, 0, 0, 0, 1, 0])
    prob = np.array([0.3, 0.4, 0.35, 0.1, 0.2, 0.15, 0.32, 0.9])
    annotated = np.array([1, 1, 1, 1, 1, 1, 1, 0], bool)    # the 0.9 pixel is unannotated
    assert metrics.iou(truth, prob > 0.5) == 0.0
    th, score = metrics.best_iou_threshold(prob, truth, annotated)
    assert th == pytest.approx(0.2) and score == 1.0         # lowest of the tied 0.20, 0.25
    th, score = metrics.best_iou_threshold(prob, truth, thresholds=[0.25, 0.5])
    assert (th, score) == (0.25, pytest.approx(4 / 5))       # the 0.9 pixel now counts


def test_seg_hand_case():
    gt = np.zeros((3, 10), np.int32)
    gt[0, 0:4] = 1          # R1: 4 px
    gt[1, 0:6] = 2          # R2: 6 px
    pred = np.zeros_like(gt)
    pred[0, 1:4] = 7        # 3 of R1 ...
    pred[2, 0] = 7          # ... plus 1 px elsewhere: |S| = 4, 3 > 0.5·4 → J = 3 / 5
    pred[1, 0:3] = 9        # exactly half of R2: not a match (strict >) → 0
    pred[2, 5:9] = 4        # a false positive: does not lower SEG
    assert metrics.seg(gt, pred) == pytest.approx((3 / 5 + 0) / 2)
    assert metrics.seg(gt, gt) == 1.0
    # pooled over slices (not a mean of per-slice means)
    stack_gt = np.stack([gt, np.where(gt == 1, 1, 0)])
    stack_pr = np.stack([pred, np.where(gt == 1, 1, 0)])
    assert metrics.seg(stack_gt, stack_pr) == pytest.approx((0.6 + 0 + 1) / 3)
    with pytest.raises(UnetlabError, match="no object"):
        metrics.seg(np.zeros((3, 3), int), np.zeros((3, 3), int))


def test_matching_hand_case():
    gt = np.zeros((1, 20), np.int32)
    gt[0, 0:10] = 1   # A, 10 px
    gt[0, 12:16] = 2  # B, 4 px
    gt[0, 17:20] = 3  # C, 3 px
    pr = np.zeros_like(gt)
    pr[0, 0:8] = 5    # IoU(A) = 0.8
    pr[0, 12:14] = 6  # IoU(B) = 0.5
    pr[0, 16:20] = 7  # IoU(C) = 0.75
    pr[0, 11] = 8     # false positive
    res = {round(r["threshold"], 2): r for r in metrics.matching(gt, pr)}
    r = res[0.5]
    assert (r["tp"], r["fp"], r["fn"]) == (3, 1, 0)
    assert r["precision"] == 0.75 and r["recall"] == 1.0 and r["accuracy"] == 0.75
    assert r["f1"] == pytest.approx(6 / 7)
    assert r["panoptic_quality"] == pytest.approx(2.05 / 3.5)
    assert r["mean_matched_iou"] == pytest.approx(2.05 / 3)
    r = res[0.55]
    assert (r["tp"], r["fp"], r["fn"]) == (2, 2, 1) and r["accuracy"] == pytest.approx(2 / 5)
    assert r["panoptic_quality"] == pytest.approx(1.55 / 3.5)
    assert (res[0.8]["tp"], res[0.85]["tp"]) == (1, 0)
    assert res[0.8]["accuracy"] == pytest.approx(1 / 6)


def test_matching_low_threshold_is_optimal_assignment():
    """Below IoU 0.5 one object can overlap several; the count of TP must be the maximum over all
    one-to-one assignments (brute force over permutations)."""
    rng = np.random.default_rng(4)
    for _ in range(15):
        gt = ndimage.label(rng.random((9, 9)) > 0.45, FOUR)[0]
        pr = ndimage.label(ndimage.binary_dilation(rng.random((9, 9)) > 0.6), FOUR)[0]
        gi = [i for i in np.unique(gt) if i]
        pi = [j for j in np.unique(pr) if j]
        if not gi or not pi or len(pi) > 7:
            continue
        ious = np.array([[metrics.iou(gt == i, pr == j) for j in pi] for i in gi])
        for t in (0.1, 0.3):
            best = 0
            small, large = (ious, len(pi)) if len(gi) <= len(pi) else (ious.T, len(gi))
            for perm in itertools.permutations(range(large), small.shape[0]):
                best = max(best, sum(small[k, perm[k]] >= t for k in range(small.shape[0])))
            assert metrics.matching(gt, pr, thresholds=[t])[0]["tp"] == best


# ------------------------------------------------------------------ sparse instance matching
def _dense_matching(gt, pred, thresholds):
    """Dense reference: the full (nG, nP) IoU matrix and one assignment per threshold."""
    from scipy.optimize import linear_sum_assignment

    gu, gi = np.unique(gt, return_inverse=True)
    pu, pi = np.unique(pred, return_inverse=True)
    table = np.zeros((gu.size, pu.size), np.int64)
    np.add.at(table, (gi.ravel(), pi.ravel()), 1)
    inter = table[1:, 1:]
    union = table.sum(1)[1:, None] + table.sum(0)[None, 1:] - inter
    ious = inter / np.maximum(union, 1)
    out = []
    for t in thresholds:
        cost = -(ious >= t).astype(float) - ious / (2 * min(ious.shape))
        r, c = linear_sum_assignment(cost)
        ok = ious[r, c] >= t
        out.append((int(ok.sum()), float(ious[r, c][ok].sum())))
    size_g = table.sum(1)[1:]
    j = inter.argmax(1)
    best = inter[np.arange(len(j)), j]
    seg = float(np.where(2 * best > size_g, best / union[np.arange(len(j)), j], 0).mean())
    return out, seg


def _crowd(seed, shape=(64, 72), n=40):
    """Instances with 0 background, touching neighbours, and a prediction that splits, merges,
    shifts and drops some of them (so groups of competing pairs exist at low thresholds)."""
    rng = np.random.default_rng(seed)
    pts = rng.uniform(0, 1, (n, 2)) * shape
    yy, xx = np.indices(shape)
    d = np.hypot(yy[..., None] - pts[:, 0], xx[..., None] - pts[:, 1])
    gt = (d.argmin(-1) + 1) * (d.min(-1) < 9)
    pred = np.roll(gt, (1, -1), (0, 1)).copy()
    pred[(pred % 5 == 0) & (xx % 2 == 0)] += 1000            # splits
    pred[pred % 7 == 0] = 7                                  # merges
    pred[pred % 11 == 0] = 0                                 # misses
    return gt.astype(np.int32), pred.astype(np.int32)


@pytest.mark.parametrize("seed", range(6))
def test_sparse_matching_equals_the_dense_reference(seed):
    gt, pred = _crowd(seed)
    ths = [0.1, 0.3, 0.5, 0.7, 0.9]
    rows = metrics.matching(gt, pred, thresholds=ths)
    dense, dense_seg = _dense_matching(gt, pred, ths)
    for r, (tp, s) in zip(rows, dense):
        assert r["tp"] == tp
        if r["threshold"] >= 0.5:   # the matching is unique: same pairs, same IoU
            assert r["mean_matched_iou"] * r["tp"] == pytest.approx(s, abs=1e-9)
        else:                       # among the largest matchings, the larger total IoU wins
            assert r["mean_matched_iou"] * r["tp"] >= s - 1e-9
    assert metrics.seg(gt, pred) == pytest.approx(dense_seg, abs=1e-12)


def test_matching_memory_follows_the_overlaps_not_objects_squared():
    """9,216 objects in 384² (one 4-pixel object each): the dense table would be 9216² int64
    (680 MB) per copy; the sparse one stays a few MB."""
    import tracemalloc

    gt = np.arange(384 * 384).reshape(384, 384) // 2
    gt = (gt // 384 // 2 * 192 + gt % 192 + 1).astype(np.int32)   # 2×2 blocks, 36,864 ids
    gt = np.where(gt <= 9216, gt, 0)
    tracemalloc.start()
    r = metrics.matching(gt, gt, thresholds=[0.5])[0]
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert r["tp"] == r["n_true"] == 9216
    assert peak < 100e6, f"peak {peak / 1e6:.0f} MB"
