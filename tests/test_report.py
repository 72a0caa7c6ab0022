"""unetlab.report: pictures from arrays, the split/merge map, and the HTML page."""
from __future__ import annotations

import base64
import json
import io
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage.segmentation import find_boundaries

from unetlab.cli import main
from unetlab.errors import UnetlabError
from unetlab.metrics import split_merge_map
from unetlab.report import (SECTIONS, ReportData, build_report, load_report_data,
                            overlay, png_weight_map, read_log, save_report_data)
from unetlab.synthetic import touching_cells_arrays, touching_pairs
from unetlab.weights import training_targets
from unetlab.report.pictures import _boundaries


# ---------------------------------------------------------------------------- helpers
class _Imgs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs: list[str] = []
        self.h2: list[str] = []
        self._in_h2 = False

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.srcs.append(dict(attrs)["src"])
        self._in_h2 = tag == "h2"

    def handle_data(self, data):
        if self._in_h2:
            self.h2.append(data.strip())
            self._in_h2 = False


def _images_of(html_path: Path) -> tuple[list[Image.Image], list[str], str]:
    """Decode every <img> of the page (data: URI or file beside it); return (images, h2, text)."""
    text = html_path.read_text(encoding="utf-8")
    p = _Imgs()
    p.feed(text)
    images = []
    for src in p.srcs:
        if src.startswith("data:image/png;base64,"):
            raw = base64.b64decode(src.split(",", 1)[1], validate=True)
        else:
            f = html_path.parent / src
            assert f.is_file(), f"missing picture {f}"
            raw = f.read_bytes()
        im = Image.open(io.BytesIO(raw))
        im.load()
        assert im.format == "PNG" and min(im.size) > 50
        images.append(im)
    return images, p.h2, text


def _naive_split_merge(gt, pred, fraction=0.5):
    """Slow reference: loops over object pairs with boolean masks."""
    g_ids = [int(i) for i in np.unique(gt) if i > 0]
    p_ids = [int(i) for i in np.unique(pred) if i > 0]
    merges = splits = missed = fps = 0
    merged_set = set()
    for p in p_ids:
        pm = pred == p
        inside = [g for g in g_ids if np.sum(pm & (gt == g)) > fraction * np.sum(gt == g)]
        if len(inside) >= 2:
            merges += 1
            merged_set.update(inside)
        if np.sum(pm & (gt <= 0)) > fraction * np.sum(pm):
            fps += 1
    for g in g_ids:
        gm = gt == g
        pieces = [p for p in p_ids if np.sum(gm & (pred == p)) > fraction * np.sum(pred == p)]
        if len(pieces) >= 2:
            splits += 1
        if np.sum(gm & (pred <= 0)) > fraction * np.sum(gm):
            missed += 1
    return {"objects": len(g_ids), "predicted": len(p_ids), "merges": merges,
            "merged": len(merged_set), "splits": splits, "missed": missed,
            "false_positives": fps}


def _full_data(seed: int = 3) -> ReportData:
    train = touching_cells_arrays(2, 96, seed)
    img, gt = touching_cells_arrays(1, 160, seed + 1)[0]
    pred = gt.copy()
    a, b = sorted(touching_pairs(gt))[0]
    pred[pred == b] = a                              # one merge
    aug = []
    for im, lab in train:
        cls, w = training_targets(lab)
        aug.append((np.flipud(im), np.flipud(cls), np.flipud(w)))
    prob = (gt > 0).astype(np.float32) * 0.8 + 0.1
    return ReportData(title="test run", train_images=[t[0] for t in train],
                      train_instances=[t[1] for t in train], augmented=aug, pred_image=img,
                      pred_prob=prob, pred_instances=pred, gt_instances=gt,
                      metrics={"isbi2012": {"rand_error": 0.1, "per_threshold": [
                          {"threshold": 0.5, "rand_f": 0.9}]}, "seg": 0.75},
                      timing={"training": 12.5}, headline={"SEG": 0.75}, notes=["hello note"])


def _write_run(run: Path, validation: bool = True) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.toml").write_text("[model]\ndepth = 2\nwidth = 8 # <b>escaped</b>\n")
    lines = ["iteration,loss,lr,time" + (",val_rand_error" if validation else "")]
    for i in range(1, 41):
        v = ("," + (f"{1 / i:.3f}" if i % 10 == 0 else "")) if validation else ""
        lines.append(f"{i},{1.0 / i + 0.1},0.01,{i * 0.5}{v}")
    (run / "log.csv").write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------------------- split / merge
def test_split_merge_hand_cases():
    gt = np.zeros((10, 20), np.int32)
    gt[1:5, 1:5], gt[1:5, 5:9] = 1, 2            # two touching cells ...
    gt[6:9, 1:9] = 3                              # ... one long cell ...
    gt[1:4, 12:15] = 4                            # ... one missed cell
    pred = np.zeros_like(gt)
    pred[1:4, 1:9] = 7                            # merges 1 and 2 (3/4 of each)
    pred[6:9, 1:5], pred[6:9, 5:9] = 8, 9         # splits 3
    pred[6:9, 15:19] = 5                          # a false positive
    cat, counts = split_merge_map(gt, pred)
    assert counts == {"objects": 4, "predicted": 4, "merges": 1, "merged": 2, "splits": 1,
                      "missed": 1, "false_positives": 1}
    assert np.all(cat[1:5, 1:9] == 2) and np.all(cat[6:9, 1:9] == 3)
    assert np.all(cat[1:4, 12:15] == 4) and np.all(cat[6:9, 15:19] == 5)
    assert np.all(cat[gt + pred == 0] == 0)
    same, c2 = split_merge_map(gt, gt * 3)        # identical up to ids: all matched
    assert c2["merges"] == c2["splits"] == c2["missed"] == c2["false_positives"] == 0
    assert np.array_equal(same, (gt > 0).astype(np.uint8))


def test_split_merge_matches_naive_reference():
    rng = np.random.default_rng(0)
    img, gt = touching_cells_arrays(1, 64, 5)[0]
    pred = gt.copy()
    pairs = sorted(touching_pairs(gt))
    for a, b in pairs[:3]:
        pred[pred == b] = a
    ids = np.unique(gt[gt > 0])
    for g in rng.choice(ids, 3, replace=False):  # split a few cells in two
        ys, xs = np.nonzero(gt == g)
        pred[ys[xs > np.median(xs)], xs[xs > np.median(xs)]] = 1000 + g
    pred[gt == ids[-1]] = 0                       # a missed cell
    pred[:4, :4] = 999                            # maybe a false positive
    _, counts = split_merge_map(gt, pred)
    assert counts == _naive_split_merge(gt, pred)
    assert counts["merges"] >= 1 and counts["splits"] >= 1 and counts["missed"] >= 1
    with pytest.raises(UnetlabError, match="differ in shape"):
        split_merge_map(gt, pred[:-1])


def test_boundaries_and_overlay_against_skimage():
    _, lab = touching_cells_arrays(1, 48, 2)[0]
    assert np.array_equal(_boundaries(lab), find_boundaries(lab, mode="inner", connectivity=1)
                          & (lab > 0))
    img = np.linspace(0, 1, lab.size, dtype=np.float32).reshape(lab.shape)
    rgb = overlay(img, lab)
    bg = lab == 0
    assert rgb.shape == lab.shape + (3,)
    assert np.allclose(rgb[bg][:, 0], rgb[bg][:, 1]) and np.allclose(rgb[bg][:, 1], rgb[bg][:, 2])
    edge = _boundaries(lab)
    assert np.ptp(rgb[edge], axis=1).min() > 0.2   # outlines are coloured, not grey


def test_weight_map_picture_uses_jet_colours():
    _, lab = touching_cells_arrays(1, 64, 1)[0]
    _, w = training_targets(lab)
    im = np.asarray(Image.open(io.BytesIO(png_weight_map(lab > 0, lab, w))).convert("RGB"),
                    np.int32)
    red = (im[..., 0] > 180) & (im[..., 1] < 80) & (im[..., 2] < 80)       # jet's top end
    blue = (im[..., 2] > 180) & (im[..., 0] < 80) & (im[..., 1] < 120)     # jet's low end
    assert red.sum() > 20 and blue.sum() > 1000


# ---------------------------------------------------------------------------- the page
def test_full_report_builds_and_every_picture_decodes(tmp_path):
    run = tmp_path / "run"
    _write_run(run)
    save_report_data(run, _full_data())
    out = build_report(run)
    assert out == run / "report.html"
    images, headings, text = _images_of(out)
    assert headings == [h for _, h in SECTIONS]
    assert len(images) == 6                       # samples, weights, augmented, curves, pred, errors
    assert "could not draw" not in text
    assert text.count('class="note"') == 1        # only the "hello note"
    assert "&lt;b&gt;escaped&lt;/b&gt;" in text and "<b>escaped</b>" not in text
    assert "0.75" in text and "rand_f" in text and "12.5 s" in text
    assert [p.name for p in run.iterdir() if p.name.startswith(".")] == []  # no temp leftovers


def test_report_with_pictures_beside_it(tmp_path):
    run = tmp_path / "run"
    _write_run(run, validation=False)
    data = _full_data()
    data.augmented, data.pred_image, data.pred_prob = [], None, None
    out = build_report(run, data=data, embed=False)
    images, headings, text = _images_of(out)      # reads report_files/*.png
    assert headings == [h for _, h in SECTIONS] and len(images) == 4
    assert len(list((run / "report_files").glob("*.png"))) == 4
    assert "data:image" not in text
    assert "no validation metrics" in text and "No prediction was saved" in text
    assert "No augmented samples" in text


def test_empty_run_builds_with_notes(tmp_path):
    run = tmp_path / "bare"
    run.mkdir()
    out = build_report(run, out=tmp_path / "r.html")
    images, headings, text = _images_of(out)
    assert headings == [h for _, h in SECTIONS]
    assert images == []
    assert text.count('class="note"') >= 8


def test_report_data_round_trip(tmp_path):
    d = _full_data()
    save_report_data(tmp_path, d)
    e = load_report_data(tmp_path)
    assert e.title == d.title and e.metrics == d.metrics and e.headline == d.headline
    for a, b in zip(e.train_instances, d.train_instances):
        assert np.array_equal(a, b)
    assert np.array_equal(e.gt_instances, d.gt_instances)
    assert np.abs(e.pred_prob - d.pred_prob).max() < 1e-3        # stored as float16
    assert len(e.augmented) == 2 and e.augmented[0][1].dtype == np.uint8


def test_read_log_and_bad_log(tmp_path):
    f = tmp_path / "log.csv"
    f.write_text("iteration,loss,val_x\n1,0.5,\n2,0.25,0.1\n")
    log = read_log(f)
    assert np.array_equal(log["loss"], [0.5, 0.25]) and np.isnan(log["val_x"][0])
    f.write_text("")
    with pytest.raises(UnetlabError, match="log.csv"):
        read_log(f)
    run = tmp_path
    out = build_report(run)                      # a broken log is a note, not a crash
    assert "empty training log" in out.read_text()


def test_cli_report(tmp_path, capsys):
    run = tmp_path / "run"
    _write_run(run)
    assert main(["report", str(run)]) == 0
    assert str(run / "report.html") in capsys.readouterr().out
    assert main(["report", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no such run folder" in err
    assert main(["report", str(run), "--out", str(tmp_path / "missing" / "r.html")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_plain_training_run_rereads_its_data(tmp_path):
    """A run written by `unetlab train` alone (no report_data/): the report regenerates the
    training images named in config.toml, their weight map and augmented samples."""
    run = tmp_path / "train_run"
    _write_run(run)
    (run / "config.toml").write_text('data = "synthetic"\nsynthetic_images = 2\n'
                                     'synthetic_size = 64\nsynthetic_seed = 5\nw0 = 10.0\n'
                                     'sigma = 5.0\nseed = 0\n')
    images, _, text = _images_of(build_report(run))
    assert len(images) == 4                        # samples, weights, augmented, curves
    assert "No training samples" not in text and "No augmented samples" not in text
    (run / "config.toml").write_text(f'data = "{tmp_path / "gone"}"\n')
    images, _, text = _images_of(build_report(run))
    assert "could not re-read the training data" in text and len(images) == 1   # curves only


# ---------------------------------------------------------------------------- damaged runs
def test_damaged_inputs_become_notes_and_run_files_are_never_overwritten(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "report_data").mkdir(parents=True)
    (run / "log.csv").write_bytes(b"\xff\xfe garbage \x00")
    (run / "config.toml").write_text("data = [unclosed")
    (run / "report_data" / "summary.json").write_text("[1, 2, 3]")
    (run / "report_data" / "timing.json").write_text('{"training": "soon"}')
    (run / "report_data" / "metrics.json").write_text("{not json")
    (run / "report_data" / "train.npz").write_bytes(b"PK\x03\x04 truncated")
    np.savez(run / "report_data" / "prediction.npz", image=np.zeros((8, 8)),
             prob=np.array(["a", "b"]))
    log_before = (run / "log.csv").read_bytes()
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    for name in ("summary.json", "metrics.json", "train.npz", "prediction.npz", "log.csv"):
        assert name in page, name
    # the report refuses to write over the run's own files, but replaces an earlier report
    for target in ("log.csv", "config.toml"):
        assert main(["report", str(run), "--out", str(run / target)]) == 2
        err = capsys.readouterr().err.strip()
        assert target in err and "not a unetlab report" in err and "\n" not in err
    assert (run / "log.csv").read_bytes() == log_before
    assert main(["report", str(run)]) == 0


def test_summary_shows_validation_and_evaluate_numbers_with_their_meaning(tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    (run / "log.csv").write_text("iteration,loss,lr,seconds,val_loss,val_pixel_error,"
                                 "val_rand_error\n10,0.5,0.01,1.0,,,\n"
                                 "20,0.4,0.01,2.0,0.35,0.09,0.125\n30,0.3,0.01,3.0,,,\n")
    (run / "eval").mkdir()
    (run / "eval" / "metrics.json").write_text(json.dumps(
        {"metrics": "isbi2012", "warping_error": 0.00123, "rand_error": 0.0456,
         "pixel_error": 0.078}))
    out = build_report(run)
    page = out.read_text()
    assert "No headline numbers" not in page
    assert "val_rand_error (last)" in page and "0.125" in page
    assert "eval: warping_error" in page and "0.0456" in page
    assert "the paper&#x27;s ISBI 2012 entry reached 0.0382" in page
    # data paths of config.toml are found from any working directory (recorded cwd)
    data = tmp_path / "data"
    (data / "image").mkdir(parents=True)
    (data / "label").mkdir()
    img = np.zeros((32, 32), np.uint8)
    img[4:14, 4:14] = 200
    Image.fromarray(img).save(data / "image" / "a.png")
    Image.fromarray((img > 0).astype(np.uint8) * 255).save(data / "label" / "a.png")
    (run / "config.toml").write_text(f'data = "data"\ncwd = "{tmp_path}"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    page = build_report(run).read_text()
    assert "could not re-read the training data" not in page
    assert "No training samples" not in page
