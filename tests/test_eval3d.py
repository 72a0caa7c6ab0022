"""Evaluation of volumes: instances from (K, Z, Y, X) probabilities (components and the
watershed split of touching cells, voxel spacing honoured), and IoU / SEG / matching /
split-merge on 3D label volumes against naive per-object loops."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from unetlab import metrics
from unetlab.errors import UnetlabError
from unetlab.postprocess import to_instances


def _balls(shape, centres, radii, spacing=(1.0, 1.0, 1.0)) -> np.ndarray:
    """Label volume of balls (physical radii; later balls overwrite earlier ones)."""
    grid = np.indices(shape).astype(float)
    lab = np.zeros(shape, np.int32)
    for i, (c, r) in enumerate(zip(centres, radii), 1):
        d2 = sum(((grid[a] - c[a]) * spacing[a]) ** 2 for a in range(3))
        lab[d2 <= r * r] = i
    return lab


def _random_labels(rng, shape, n) -> np.ndarray:
    """Blobby random labels: a coarse random label grid, upsampled, some holes."""
    coarse = rng.integers(0, n + 1, tuple(-(-s // 3) for s in shape))
    lab = np.kron(coarse, np.ones((3, 3, 3), int))[tuple(slice(0, s) for s in shape)]
    lab[rng.random(shape) < 0.05] = 0
    return lab


# ----------------------------------------------------------------------------- naive references
def naive_seg(gt: np.ndarray, pred: np.ndarray) -> float:
    """CTC SEG by one loop over objects: R matches S iff |R ∩ S| > 0.5 |R|; J averaged."""
    total, count = 0.0, 0
    for r in np.unique(gt[gt > 0]):
        R = gt == r
        count += 1
        for s in np.unique(pred[R]):
            if s == 0:
                continue
            S = pred == s
            inter = np.count_nonzero(R & S)
            if inter > 0.5 * np.count_nonzero(R):
                total += inter / np.count_nonzero(R | S)
    return total / count


def naive_matching(gt: np.ndarray, pred: np.ndarray, t: float) -> tuple[int, float]:
    """(TP, ΣIoU) of the best one-to-one matching at IoU ≥ t by brute force over all
    assignments (most pairs first, then the largest total IoU): few objects only."""
    gs = [gt == g for g in np.unique(gt[gt > 0])]
    ps = [pred == p for p in np.unique(pred[pred > 0])]
    iou = np.array([[np.count_nonzero(a & b) / np.count_nonzero(a | b) for b in ps] for a in gs])
    ok = iou >= t
    best = (0, 0.0)
    small, large = (gs, ps) if len(gs) <= len(ps) else (ps, gs)
    for perm in itertools.permutations(range(len(large)), len(small)):
        pairs = [(i, j) if len(gs) <= len(ps) else (j, i) for i, j in enumerate(perm)]
        hits = [(i, j) for i, j in pairs if ok[i, j]]
        cand = (len(hits), float(sum(iou[i, j] for i, j in hits)))
        if cand[0] > best[0] or (cand[0] == best[0] and cand[1] > best[1] + 1e-12):
            best = cand
    return best


# ----------------------------------------------------------------------------- instances
def test_watershed_splits_touching_balls_in_3d():
    lab = _balls((20, 30, 40), [(10, 15, 12), (10, 15, 26)], [7, 7])
    fg = lab > 0
    prob = np.stack([1.0 - fg, fg]).astype(np.float32)          # (K, Z, Y, X)
    comps = to_instances(prob, "components", spatial_dims=3, min_size=1)
    assert comps.shape == fg.shape and comps.max() == 1           # touching: one component
    split = to_instances(prob, "watershed", spatial_dims=3, min_size=1, h=1.0)
    assert split.max() == 2
    assert metrics.seg(lab, split, volume=True) > 0.95
    # 2D slice by slice would not see 3D objects: a label volume is not a stack of frames
    assert to_instances(fg, "components", spatial_dims=3, min_size=1).max() == 1


def test_spacing_changes_the_distance_transform():
    """Touching balls of radius 8 µm on a grid with 3 µm z-steps: in physical units the
    centres lie ~4 µm above the neck, so seeds of dynamic h = 3.5 µm split them; in voxel
    units the z-thickness (< 3 voxels) caps the distance and the same h finds one seed."""
    sp = (3.0, 1.0, 1.0)
    lab = _balls((10, 30, 40), [(4.5, 15, 12), (4.5, 15, 26)], [8, 8], spacing=sp)
    prob = (lab > 0).astype(np.float32)
    got = to_instances(prob, spatial_dims=3, spacing=sp, h=3.5, min_size=1)
    assert got.max() == 2 and metrics.seg(lab, got, volume=True) > 0.9
    assert to_instances(prob, spatial_dims=3, h=3.5, min_size=1).max() == 1
    with pytest.raises(UnetlabError, match="spacing"):
        to_instances(prob, spatial_dims=3, spacing=(1.0, 1.0))


def test_min_size_connectivity_and_errors_in_3d():
    vol = np.zeros((6, 6, 6), bool)
    vol[1:3, 1:3, 1:3] = True                     # 8 voxels
    vol[4, 4, 4] = True
    vol[5, 5, 5] = True                           # touches (4,4,4) by a corner only
    assert to_instances(vol, "components", spatial_dims=3, min_size=1).max() == 3
    assert to_instances(vol, "components", spatial_dims=3, min_size=1, connectivity=3).max() == 2
    assert to_instances(vol, "components", spatial_dims=3, min_size=5).max() == 1
    with pytest.raises(UnetlabError, match="26-neighbours"):
        to_instances(vol, "components", spatial_dims=3, connectivity=4)
    with pytest.raises(UnetlabError, match="shape"):
        to_instances(np.zeros((2, 2, 4, 4, 4)), spatial_dims=3)
    with pytest.raises(UnetlabError, match="spatial_dims"):
        to_instances(vol, spatial_dims=4)
    # the 2D default is unchanged: a (K, H, W) map, not a volume
    assert to_instances(np.zeros((2, 5, 5), np.float32)).shape == (5, 5)


def test_border_seeds_in_3d():
    lab = _balls((12, 20, 30), [(6, 10, 8), (6, 10, 20)], [5, 5])
    fg = (lab > 0).astype(np.float32)
    from scipy import ndimage as ndi
    border = (ndi.binary_dilation(lab == 1) & (lab == 2)).astype(np.float32)
    prob = np.stack([1 - fg, fg - border, border])
    got = to_instances(prob, spatial_dims=3, seeds="border", border_class=2, min_size=1,
                       foreground_class=1, threshold=0.2)
    assert got.max() == 2
    with pytest.raises(UnetlabError, match=r"\(K, Z, Y, X\)"):
        to_instances(fg, spatial_dims=3, seeds="border", border_class=2)


# ----------------------------------------------------------------------------- metrics
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_seg_and_matching_on_volumes_equal_naive_loops(seed):
    rng = np.random.default_rng(seed)
    gt = _random_labels(rng, (7, 9, 8), 4)
    pred = gt.copy()
    pred[rng.random(gt.shape) < 0.2] = 0                       # eroded
    pred[:3][pred[:3] == 2] = 5                                # one object split in z
    pred[(pred == 3) & (rng.random(gt.shape) < 0.5)] = 1        # partly merged
    assert metrics.seg(gt, pred, volume=True) == pytest.approx(naive_seg(gt, pred), abs=1e-12)
    rows = metrics.matching(gt, pred, thresholds=(0.1, 0.3, 0.5, 0.7), volume=True)
    for row in rows:
        tp, s_iou = naive_matching(gt, pred, row["threshold"])
        assert row["tp"] == tp, row
        assert row["mean_matched_iou"] * row["tp"] == pytest.approx(s_iou, abs=1e-9)
    # a stack of volumes pools the counts of its volumes
    both = metrics.matching(np.stack([gt, gt]), np.stack([pred, pred]), (0.5,), volume=True)
    assert both[0]["tp"] == 2 * rows[2]["tp"] and both[0]["n_true"] == 2 * rows[2]["n_true"]


def test_volume_differs_from_slice_by_slice():
    """One 3D object seen per slice is several 2D objects: volume=True counts it once."""
    gt = np.zeros((4, 6, 6), int)
    gt[:, 1:5, 1:5] = 1
    pred = gt.copy()
    pred[2:] = 0                                     # half the cell in z
    assert metrics.seg(gt, pred, volume=True) == pytest.approx(0.0)     # 50 % ≯ 0.5
    assert metrics.seg(gt, pred) == pytest.approx(0.5)                  # 2 of 4 frames perfect
    assert metrics.matching(gt, pred, (0.4,), volume=True)[0]["n_true"] == 1
    assert metrics.matching(gt, pred, (0.4,))[0]["n_true"] == 4
    assert metrics.iou(gt, pred) == pytest.approx(0.5)
    with pytest.raises(UnetlabError, match=r"\(Z, Y, X\)"):
        metrics.seg(gt[0], pred[0], volume=True)


def test_split_merge_map_is_n_dimensional():
    gt = np.zeros((4, 8, 8), int)
    gt[:, :4, :] = 1
    gt[:, 4:, :] = 2
    gt[0, 0, 0] = 0
    merged = (gt > 0).astype(int)                    # one predicted object over both
    cat, counts = metrics.split_merge_map(gt, merged)
    assert cat.shape == gt.shape and counts["merges"] == 1 and counts["merged"] == 2
    split = gt.copy()
    split[2:][split[2:] == 1] = 7                    # object 1 split along z
    cat, counts = metrics.split_merge_map(gt, split)
    assert counts["splits"] == 1 and (cat[gt == 1] == metrics.CATEGORY_SPLIT).all()


# ----------------------------------------------------------------------------- unetlab evaluate
def test_evaluate_cli_scores_label_volumes_in_3d(tmp_path, capsys):
    import json

    import tifffile

    from unetlab.cli import main
    from unetlab.evaluation import evaluate

    gt = _balls((12, 20, 30), [(6, 10, 8), (6, 10, 17)], [5, 5])    # two touching cells
    pred = gt.copy()
    pred[:4] = 0                                             # the tops are missed
    tifffile.imwrite(tmp_path / "vol_gt.tif", gt)
    tifffile.imwrite(tmp_path / "vol_labels.tif", pred)
    out = tmp_path / "ev"
    assert main(["evaluate", str(tmp_path / "vol_labels.tif"), str(tmp_path / "vol_gt.tif"),
                 "--metrics", "cells", "--volume", "--out", str(out)]) == 0
    assert "1 volume(s)" in capsys.readouterr().out
    r = json.loads((out / "metrics.json").read_text())
    assert r["volume"] is True and r["n_true"] == 2
    assert r["seg"] == pytest.approx(metrics.seg(gt, pred, volume=True))
    assert r["seg"] != pytest.approx(metrics.seg(gt, pred))  # not frame by frame
    inst = evaluate(tmp_path / "vol_labels.tif", tmp_path / "vol_gt.tif", "instances",
                    volume=True)
    want = metrics.matching(gt, pred, volume=True)
    assert [row["tp"] for row in inst["per_threshold"]] == [row["tp"] for row in want]
    # a binary mask volume: its 6-connected components are the objects (here: one, touching)
    tifffile.imwrite(tmp_path / "mask.tif", (gt > 0).astype(np.uint8) * 255)
    r = evaluate(tmp_path / "mask.tif", tmp_path / "vol_gt.tif", "cells", volume=True)
    assert r["per_image"][0]["n_pred"] == 1
    # class probabilities (K, Z, Y, X) of a 3D model: --channel picks P(cell)
    prob = np.stack([1 - (pred > 0), (pred > 0) * 0.9 + 0.05]).astype(np.float32)
    tifffile.imwrite(tmp_path / "p4.tif", prob)
    r = evaluate(tmp_path / "p4.tif", tmp_path / "vol_gt.tif", "cells", volume=True, channel=1)
    assert r["seg"] == pytest.approx(metrics.seg(gt, (pred > 0).astype(int), volume=True))
    with pytest.raises(UnetlabError, match="--channel"):
        evaluate(tmp_path / "p4.tif", tmp_path / "vol_gt.tif", "cells", volume=True)
    with pytest.raises(UnetlabError, match="2D"):
        evaluate(tmp_path / "vol_labels.tif", tmp_path / "vol_gt.tif", "isbi", volume=True)


def test_evaluate_volume_folders(tmp_path):
    import tifffile

    from unetlab.evaluation import evaluate

    (tmp_path / "p").mkdir()
    (tmp_path / "g").mkdir()
    rng = np.random.default_rng(3)
    seg = []
    for name in ("a", "b"):
        gt = _random_labels(rng, (6, 9, 9), 3)
        pred = np.where(rng.random(gt.shape) < 0.1, 0, gt)
        tifffile.imwrite(tmp_path / "g" / f"{name}.tif", gt.astype(np.uint16))
        tifffile.imwrite(tmp_path / "p" / f"{name}_labels.tif", pred.astype(np.uint16))
        seg.append((metrics.seg(gt, pred, volume=True), len(np.unique(gt[gt > 0]))))
    r = evaluate(tmp_path / "p", tmp_path / "g", "cells", volume=True)
    assert [row["image"] for row in r["per_image"]] == ["a", "b"]
    pooled = sum(s * n for s, n in seg) / sum(n for _, n in seg)
    assert r["seg"] == pytest.approx(pooled)
