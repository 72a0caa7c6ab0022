"""``unetlab evaluate``: files and folders in, the organisers' numbers out (JSON, CSV, pictures),
one-line errors for bad input."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from unetlab import metrics
from unetlab.cli import main
from unetlab.evaluation import to_probability

EXAMPLES = Path(__file__).resolve().parent / "data" / "fiji"  # the organisers' values


def _example(name):
    d = EXAMPLES / name
    return (np.load(d / "gt.npy"), np.load(d / "prob.npy"),
            json.loads((d / "expected_fiji.json").read_text()))


def _folders(tmp_path, cases=("em1_tradeoff_free", "em2_tradeoff"), stems=None):
    """The cases as a folder of float TIFF predictions and a folder of 8-bit PNG labels, one
    pair per case named by ``stems`` (default: the case names)."""
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir()
    gt.mkdir()
    for name, stem in zip(cases, stems or cases):
        g, p, _ = _example(name)
        tifffile.imwrite(pred / f"{stem}_prob.tif", p.astype(np.float32))
        iio.imwrite(gt / f"{stem}.png", (g * 255).astype(np.uint8))
    return pred, gt


def test_isbi_folders_reproduce_fiji_and_write_outputs(tmp_path, capsys):
    pred, gt = _folders(tmp_path)
    out = tmp_path / "out"
    assert main(["evaluate", str(pred), str(gt), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "warping error" in printed and "Rand error" in printed

    # the organisers' numbers: the stack's warping error per threshold is the sum of Fiji's
    # split + merge pixel counts of both 10×10 slices over their 200 pixels; the ISBI value is
    # the minimum over the thresholds 0.0 … 0.9
    _, _, e1 = _example("em1_tradeoff_free")
    g2, p2, e2 = _example("em2_tradeoff")
    key = "splits_mergers_pixel_count_per_threshold"
    warping = (np.array(e1[key]) + np.array(e2[key])) / 200
    res = json.loads((out / "metrics.json").read_text())
    assert res["warping_error"] == pytest.approx(warping[:10].min(), abs=1e-12)
    assert res["slices"] == ["em1_tradeoff_free", "em2_tradeoff"]
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert len(rows) == 11
    for row, w, th in zip(rows, warping, e1["thresholds"]):
        assert float(row["threshold"]) == pytest.approx(th, abs=1e-12)
        assert float(row["warping_error"]) == pytest.approx(w, abs=1e-12)
    assert float(rows[5]["rand_f"]) == pytest.approx(res["per_threshold"][5]["rand_f"])
    # pictures at the best warping threshold: cyan marks exactly where merges are, red where
    # splits are
    th = res["warping_threshold"]
    cls = metrics.warping_classes(g2, p2, th)
    pic = iio.imread(out / "slice_em2_tradeoff.png")
    assert pic.shape == (10, 10, 3)
    cyan = (pic == (0, 255, 255)).all(axis=2)
    red = (pic == (255, 0, 0)).all(axis=2)
    assert cyan.any() == bool((cls == metrics.WARP_MERGE).any())
    assert red.any() == bool((cls == metrics.WARP_SPLIT).any())
    assert not list(out.glob(".*tmp*"))  # atomic writes left no temporary files


def test_two_equal_slices_reproduce_fijis_values(tmp_path, capsys):
    """Every count of a stack of two copies of em2 doubles, so its pixel, Rand and warping
    errors are exactly the organisers' single-slice values."""
    pred, gt = _folders(tmp_path, ("em2_tradeoff", "em2_tradeoff"), ("a", "b"))
    out = tmp_path / "out"
    assert main(["evaluate", str(pred), str(gt), "--out", str(out), "--no-pictures"]) == 0
    _, _, exp = _example("em2_tradeoff")
    res = json.loads((out / "metrics.json").read_text())
    assert res["slices"] == ["a", "b"]
    for k in ("pixel_error", "rand_error", "warping_error"):
        assert res[k] == pytest.approx(exp[f"isbi2012_{k}"], abs=1e-12), k


def test_single_slice_example_matches_expected_json(tmp_path):
    g, p, exp = _example("em2_tradeoff")
    tifffile.imwrite(tmp_path / "prob.tif", p)
    tifffile.imwrite(tmp_path / "gt.tif", g.astype(np.uint8) * 255)
    out = tmp_path / "o"
    assert main(["evaluate", str(tmp_path / "prob.tif"), str(tmp_path / "gt.tif"),
                 "--out", str(out), "--no-pictures", "--thinning"]) == 0
    res = json.loads((out / "metrics.json").read_text())
    assert res["warping_error"] == pytest.approx(exp["isbi2012_warping_error"], abs=1e-9)
    assert res["rand_error"] == pytest.approx(exp["isbi2012_rand_error"], abs=1e-9)
    assert res["pixel_error"] == pytest.approx(exp["isbi2012_pixel_error"], abs=1e-9)
    assert res["vrand"] == pytest.approx(exp["isbi2012_max_vrand_thinned"], abs=1e-9)
    assert res["vinfo"] == pytest.approx(exp["isbi2012_max_vinfo_thinned"], abs=1e-9)
    assert not list(out.glob("*.png"))


def test_stacks_and_invert(tmp_path):
    g1, p1, _ = _example("em1_tradeoff_free")
    g2, p2, _ = _example("em2_tradeoff")
    gt = np.stack([g1, g2]).astype(np.uint8) * 255
    prob = np.stack([p1, p2]).astype(np.float32)
    tifffile.imwrite(tmp_path / "gt.tif", gt)
    tifffile.imwrite(tmp_path / "memb.tif", (1 - prob).astype(np.float32))
    out = tmp_path / "o"
    assert main(["evaluate", str(tmp_path / "memb.tif"), str(tmp_path / "gt.tif"), "--invert",
                 "--out", str(out)]) == 0
    res = json.loads((out / "metrics.json").read_text())
    expect = metrics.isbi2012(gt, (1 - (1 - prob)).astype(np.float32))
    assert res["rand_error"] == pytest.approx(expect["rand_error"], abs=1e-12)
    assert len(list(out.glob("slice_*.png"))) == 2


def test_8bit_prediction_is_scaled_by_255():
    a = np.array([[0, 51, 255]], dtype=np.uint8)
    np.testing.assert_allclose(to_probability(a, Path("x.png")), [[0, 0.2, 1]], atol=1e-7)
    with pytest.raises(Exception, match="16|uint16|dtype"):
        to_probability(np.array([[0, 1000]], dtype=np.uint16), Path("x.tif"))


def test_cells_and_instances(tmp_path, capsys):
    gt = np.zeros((3, 10), np.uint16)
    gt[0, 0:4] = 1
    gt[1, 0:6] = 2
    pr = np.zeros_like(gt)
    pr[0, 1:4] = 7
    pr[2, 0] = 7
    pr[1, 0:3] = 9
    (tmp_path / "p").mkdir()
    (tmp_path / "g").mkdir()
    tifffile.imwrite(tmp_path / "p" / "a_pred.tif", pr)
    tifffile.imwrite(tmp_path / "g" / "a.tif", gt)
    out = tmp_path / "o"
    assert main(["evaluate", str(tmp_path / "p"), str(tmp_path / "g"), "--metrics", "cells",
                 "--out", str(out)]) == 0
    res = json.loads((out / "metrics.json").read_text())
    assert res["seg"] == pytest.approx(0.3)
    assert res["iou"] == pytest.approx(metrics.iou(gt > 0, pr > 0))
    out2 = tmp_path / "o2"
    assert main(["evaluate", str(tmp_path / "p"), str(tmp_path / "g"), "--metrics",
                 "instances", "--out", str(out2)]) == 0
    res2 = json.loads((out2 / "metrics.json").read_text())
    ref = metrics.matching(gt, pr)
    assert [r["tp"] for r in res2["per_threshold"]] == [r["tp"] for r in ref]
    assert res2["mean_accuracy"] == pytest.approx(np.mean([r["accuracy"] for r in ref]))
    assert "mean accuracy" in capsys.readouterr().out


def test_cells_of_probability_maps_name_the_best_threshold(tmp_path, capsys):
    """Two P(cell) volumes of a network sure of nothing above 0.45: 0.5 finds no cell, the
    best threshold is the one metrics.best_iou_threshold finds on the pooled voxels; label
    predictions get no threshold line."""
    rng = np.random.default_rng(0)
    (tmp_path / "p").mkdir()
    (tmp_path / "g").mkdir()
    probs, gts = [], []
    for name in ("a", "b"):
        gt = np.zeros((4, 12, 12), np.uint16)
        gt[1:3, 2:7, 2:7], gt[1:4, 7:11, 6:11] = 1, 2
        prob = np.where(gt > 0, 0.3 + 0.15 * rng.random(gt.shape),
                        0.35 * rng.random(gt.shape)).astype(np.float32)
        tifffile.imwrite(tmp_path / "p" / f"{name}_prob.tif", prob)
        tifffile.imwrite(tmp_path / "g" / f"{name}.tif", gt)
        probs.append(prob.ravel())
        gts.append(gt.ravel() > 0)
    out = tmp_path / "o"
    assert main(["evaluate", str(tmp_path / "p"), str(tmp_path / "g"), "--metrics", "cells",
                 "--volume", "--out", str(out)]) == 0
    res = json.loads((out / "metrics.json").read_text())
    t, best = metrics.best_iou_threshold(np.concatenate(probs), np.concatenate(gts))
    assert res["iou"] == 0.0 and 0.3 <= t < 0.45 and best > 0.5
    assert res["best_threshold"] == {"threshold": pytest.approx(t), "iou": pytest.approx(best)}
    assert f"P(cell) > {t:.2f} gives the best foreground IoU" in capsys.readouterr().out
    for name in ("a", "b"):                  # labels: no threshold to choose
        tifffile.imwrite(tmp_path / "p" / f"{name}_prob.tif",
                         tifffile.imread(tmp_path / "g" / f"{name}.tif"))
    assert main(["evaluate", str(tmp_path / "p"), str(tmp_path / "g"), "--metrics", "cells",
                 "--volume"]) == 0
    assert "best foreground IoU" not in capsys.readouterr().out


@pytest.mark.parametrize("case, words", [
    ("shape", "does not match"),
    ("range", "[0, 1]"),
    ("nan", "NaN"),
    ("empty_gt", "no cell pixel"),
    ("unpaired", "no prediction for ground truth"),
    ("missing", "no such file"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, case, words):
    p, g = _pred_gt_dirs(tmp_path)
    gt = np.full((8, 9), 255, np.uint8)
    gt[:, 4] = 0
    prob = np.full((8, 9), 0.7, np.float32)
    if case == "shape":
        prob = prob[:, :8]
    elif case == "range":
        prob[0, 0] = 1.5
    elif case == "nan":
        prob[0, 0] = np.nan
    elif case == "empty_gt":
        gt[:] = 0
    tifffile.imwrite(p / "x.tif", prob)
    iio.imwrite(g / ("y.png" if case == "unpaired" else "x.png"), gt)
    target = str(tmp_path / "nope") if case == "missing" else str(g)
    assert main(["evaluate", str(p), target]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("unetlab: error:") and words in err and "\n" not in err


def test_prediction_folder_of_unetlab_predict_pairs_by_metric(tmp_path):
    """`unetlab predict --instances` writes NAME_prob.tif, NAME_labels.tif and NAME_overlay.png
    side by side: isbi reads the probabilities, cells/instances read the labels."""
    import imageio.v3 as iio
    import tifffile

    from unetlab.cli import main as cli_main
    from unetlab.evaluation import load_pairs

    gt = np.zeros((20, 20), np.uint8)
    gt[2:9, 2:9] = 255
    gt[11:18, 11:18] = 255
    preds, gts = tmp_path / "preds", tmp_path / "gt"
    preds.mkdir()
    gts.mkdir()
    iio.imwrite(gts / "a.png", gt)
    tifffile.imwrite(preds / "a_prob.tif", (gt > 0).astype(np.float32))
    labels = np.zeros((20, 20), np.int32)
    labels[2:9, 2:9] = 1
    labels[11:18, 11:18] = 2
    tifffile.imwrite(preds / "a_labels.tif", labels)
    iio.imwrite(preds / "a_overlay.png", np.zeros((20, 20, 3), np.uint8))
    (p_isbi,), missing = load_pairs(preds, gts, prefer=("_prob",))
    assert p_isbi.pred_path.name == "a_prob.tif" and missing == []
    (p_cells,), _ = load_pairs(preds, gts, prefer=("_labels",))
    assert p_cells.pred_path.name == "a_labels.tif"
    assert cli_main(["evaluate", str(preds), str(gts)]) == 0
    assert cli_main(["evaluate", str(preds), str(gts), "--metrics", "cells"]) == 0


def _pred_gt_dirs(tmp_path):
    """Empty PRED and GT folders ``p/`` and ``g/``."""
    p, g = tmp_path / "p", tmp_path / "g"
    p.mkdir()
    g.mkdir()
    return p, g


def _small_pair(folder_p, folder_g, name):
    gt = np.full((12, 13), 255, np.uint8)
    gt[:, 6] = 0
    tifffile.imwrite(folder_p / f"{name}_prob.tif", (gt / 255.0).astype(np.float32))
    iio.imwrite(folder_g / f"{name}.png", gt)


def test_missing_predictions_are_named_and_the_rest_scored(tmp_path, capsys):
    p, g = _pred_gt_dirs(tmp_path)
    _small_pair(p, g, "a")
    _small_pair(p, g, "b")
    (p / "b_prob.tif").unlink()
    assert main(["evaluate", str(p), str(g), "--out", str(tmp_path / "o")]) == 0
    printed = capsys.readouterr().out
    line = [ln for ln in printed.splitlines() if "without a prediction" in ln]
    assert len(line) == 1 and "b.png" in line[0] and "a.png" not in line[0]
    res = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert res["slices"] == ["a"] and res["missing_predictions"] == ["b.png"]
    # the threshold left out of the warping minimum (the 11th, 1.0) is marked in the table
    rows = [ln for ln in printed.splitlines() if ln.strip().startswith(("0.9", "1 "))]
    assert rows[-1].rstrip().split()[3].endswith("*") and not rows[0].split()[3].endswith("*")
    assert "not part of the warping-error minimum" in printed


def test_out_never_overwrites_an_input_and_needs_overwrite(tmp_path, capsys):
    p, g = _pred_gt_dirs(tmp_path)
    _small_pair(p, g, "a")
    out = tmp_path / "o"
    assert main(["evaluate", str(p), str(g), "--out", str(out)]) == 0
    before = (out / "metrics.json").read_bytes()
    capsys.readouterr()
    assert main(["evaluate", str(p), str(g), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "metrics.json" in err and "--overwrite" in err and "\n" not in err
    assert (out / "metrics.json").read_bytes() == before
    assert main(["evaluate", str(p), str(g), "--out", str(out), "--overwrite"]) == 0
    # an input named like an output is refused even with --overwrite
    (g / "metrics.json").write_text("{}")
    gt_file = g / "a.png"
    data = gt_file.read_bytes()
    assert main(["evaluate", str(p), str(g), "--out", str(g), "--overwrite"]) == 2
    err = capsys.readouterr().err.strip()
    assert "is the input" in err and "metrics.json" in err
    assert (g / "metrics.json").read_text() == "{}" and gt_file.read_bytes() == data


@pytest.mark.parametrize("case, words", [
    ("jpeg", "JPEG is lossy"),
    ("ilastik", "no background"),
])
def test_evaluate_reads_labels_by_the_train_rule(tmp_path, capsys, case, words):
    p, g = _pred_gt_dirs(tmp_path)
    lab = np.zeros((16, 16), np.uint8)
    lab[2:7, 2:7], lab[9:14, 9:14] = 1, 2
    iio.imwrite(p / "x.png", lab)
    if case == "jpeg":
        iio.imwrite(g / "x.jpg", lab * 100)
    else:
        iio.imwrite(g / "x.png", lab + 1)
    assert main(["evaluate", str(p), str(g), "--metrics", "cells"]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and "x." in err and "\n" not in err
