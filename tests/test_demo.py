"""unetlab.demo: settings, the run folder, the evaluation, and `unetlab demo --quick` end to end."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from unetlab.cli import main
from unetlab.demo import (DEMO_MARKER, DemoSettings, _prepare_out, demo_settings,
                          evaluate_demo, format_summary, headline, isbi_pixel_rand,
                          training_budget, training_config)
from unetlab.errors import UnetlabError
from unetlab.metrics import isbi2012
from unetlab.synthetic import touching_cells_arrays, touching_pairs
from unetlab.weights import separate_instances


def test_settings_and_bad_options(capsys):
    q = demo_settings(quick=True)
    assert q.quick and q.size < 512 and q.iterations is not None
    s = demo_settings(iterations=7, size=300, train_minutes=1.5)
    assert (s.iterations, s.size, s.train_minutes) == (7, 300, 1.5)
    assert demo_settings().size >= 2048                     # the "at least 2048²"
    for kw, opt in [({"iterations": 0}, "--iterations"), ({"size": 10}, "--size"),
                    ({"train_minutes": -1.0}, "--train-minutes"), ({"preset": "fast"}, "--preset")]:
        with pytest.raises(UnetlabError, match=opt):
            demo_settings(**kw)
    assert main(["demo", "--iterations", "0", "--out", "unused"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--iterations" in err
    with pytest.raises(SystemExit) as e:
        main(["demo", "--size", "abc"])
    assert e.value.code == 2


def test_demo_trains_with_the_presets_of_unetlab_train(tmp_path):
    """Issue 14: the demo has no recipe of its own; it is unetlab train's preset for the device,
    on the generated cells."""
    from unetlab.training.presets import recipe

    s = demo_settings()
    for preset in ("cpu", "paper"):
        cfg = training_config(dataclasses.replace(s, preset=preset), tmp_path, "cpu")
        ref = recipe(preset, device="cpu")
        for name in ("width", "depth", "tile", "optimizer", "momentum", "schedule",
                     "precision", "channels_last", "w0", "sigma", "augment", "dropout"):
            assert getattr(cfg, name) == getattr(ref, name), (preset, name)
        assert (cfg.norm, cfg.lr) == ("batch", 0.003)    # the two options over the preset
        assert (cfg.data, cfg.synthetic_size, cfg.out) == ("synthetic", 256, str(tmp_path))
    auto = training_config(s, tmp_path, "cpu")
    assert (auto.preset, auto.width, auto.optimizer, auto.sigma) == ("cpu", 16, "adam", 3.0)
    plain = training_config(dataclasses.replace(s, options={}), tmp_path, "cpu")
    assert (plain.norm, plain.lr) == ("none", recipe("cpu", device="cpu").lr)
    quick = training_config(demo_settings(quick=True), tmp_path, "cpu", iterations=6)
    assert (quick.width, quick.depth, quick.tile, quick.iterations, quick.time) == (
        4, 2, 100, 6, "")


def test_demo_seed_height_splits_clumps_the_net_left_joined():
    """What the demo's instance step is for: after minutes of training the separation lines
    are only a dip of P(cell) above the threshold, so connected components merge the clumps.
    Idealised such map: 1 on cells, 0.65 on the separation lines, 0 elsewhere, blurred."""
    from scipy import ndimage

    from unetlab.metrics import matching
    from unetlab.postprocess import to_instances

    _, gt = touching_cells_arrays(1, 160, 3)[0]
    sep = separate_instances(gt)
    p = ndimage.gaussian_filter(np.where(sep, 1.0, np.where(gt > 0, 0.65, 0.0)), 0.7)

    def f1(lab):
        return next(r["f1"] for r in matching(gt, lab) if abs(r["threshold"] - 0.5) < 1e-9)

    comp = f1(to_instances(p, method="components"))
    ours = f1(to_instances(p, h=demo_settings().seed_h))
    h2 = f1(to_instances(p, h=2.0))
    assert comp < 0.2 and ours > 0.5 and ours > h2 + 0.1


def test_format_summary_names_the_report_time_and_every_headline_number(tmp_path):
    head = {"pixel error (ISBI)": 0.0471, "SEG": 0.7281, "F1 @ IoU 0.5": 0.8769,
            "merges / splits": "272 / 405"}
    text = format_summary({"report": tmp_path / "report.html", "headline": head,
                           "timing": {"total": 226.4, "training": 125.2,
                                      "prediction (overlap-tile, 8× TTA)": 64.7},
                           "iterations": 806})
    assert f"report: {(tmp_path / 'report.html').resolve()}" in text
    assert "226 s (3.8 min; training 125 s for 806 iterations, prediction 65 s)" in text
    for line in ("SEG", "0.7281"), ("F1 @ IoU 0.5", "0.8769"), ("merges / splits", "272 / 405"):
        assert any(all(w in ln for w in line) for ln in text.splitlines()), line


def test_training_gets_what_prediction_leaves_of_the_budget():
    s = DemoSettings(train_minutes=4.0, total_minutes=9.0, size=2048)
    assert training_budget(s, 0.05) == 240.0                # fast: the training cap
    slow = training_budget(s, 0.5)                         # prediction ~225 s: less training
    from unetlab.demo import _EVAL_S_PER_2048, _FIXED_S, _PREDICT_STEPS_PER_2048

    assert slow == pytest.approx(540 - (0.5 * _PREDICT_STEPS_PER_2048 + _EVAL_S_PER_2048
                                        + _FIXED_S))
    assert training_budget(s, 5.0) == 60.0                  # at least a minute
    assert training_budget(dataclasses.replace(s, size=4096), 0.2) < training_budget(s, 0.2)


def test_out_folder_rules(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "precious.txt").write_text("keep")
    with pytest.raises(UnetlabError, match="not written by unetlab demo"):
        _prepare_out(other)
    assert (other / "precious.txt").read_text() == "keep"
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(UnetlabError, match="not a folder"):
        _prepare_out(f)
    old = tmp_path / "demo"
    (old / "report_data").mkdir(parents=True)
    for name in (DEMO_MARKER, "checkpoint.pt", "log.csv", "report.html"):
        (old / name).write_text("old")
    (old / "notes.md").write_text("mine")
    _prepare_out(old)                                       # a previous demo: replaced
    assert sorted(p.name for p in old.iterdir()) == ["notes.md"]
    _prepare_out(tmp_path / "new" / "deep")
    assert (tmp_path / "new" / "deep").is_dir()


def test_isbi_pixel_rand_agrees_with_full_isbi2012():
    img, gt = touching_cells_arrays(1, 64, 4)[0]
    cells = separate_instances(gt)
    rng = np.random.default_rng(1)
    from scipy import ndimage

    prob = np.clip(ndimage.gaussian_filter(cells.astype(np.float32), 1.2)
                   + rng.normal(0, 0.15, cells.shape), 0, 1).astype(np.float32)
    ours = isbi_pixel_rand(cells, prob)
    ref = isbi2012(cells.astype(np.uint8), prob, classic=False)
    assert abs(ours["pixel_error"] - ref["pixel_error"]) < 1e-12
    assert abs(ours["rand_error"] - ref["rand_error"]) < 1e-12
    assert ours["rand_error"] > 0.01                       # the noise really costs something


def test_evaluate_perfect_and_merged_prediction():
    _, gt = touching_cells_arrays(1, 96, 2)[0]
    prob = separate_instances(gt).astype(np.float32)
    m = evaluate_demo(gt, prob, gt.copy())
    assert m["seg"] == 1.0 and m["isbi2012"]["pixel_error"] == 0.0
    assert m["isbi2012"]["rand_error"] == 0.0
    h = headline(m)
    assert h["F1 @ IoU 0.5"] == 1.0 and h["merges / splits"] == "0 / 0"
    merged = gt.copy()
    a, b = sorted(touching_pairs(gt))[0]
    merged[merged == b] = a
    m2 = evaluate_demo(gt, prob, merged)
    assert m2["split_merge"]["merges"] == 1 and m2["seg"] < 1.0
    json.dumps(m2)                                          # the report stores it as JSON


def test_demo_quick_end_to_end(tmp_path, capsys):
    from test_report import _images_of

    from unetlab.report import SECTIONS

    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    report = out / "report.html"
    assert f"report: {report.resolve()}" in printed
    assert "SEG" in printed and "Rand error" in printed and "F1 @ IoU 0.5" in printed
    assert "unetlab demo finished" in printed
    images, headings, text = _images_of(report)
    assert headings == [h for _, h in SECTIONS]
    assert len(images) == 6 and "could not draw" not in text
    for name in ("model.pt", "log.csv", "config.toml", "prediction/prob_cell.tif",
                 "prediction/instances.tif", "report_data/metrics.json"):
        assert (out / name).is_file(), name
    config = (out / "config.toml").read_text()              # the preset reached the trainer
    assert 'preset = "cpu"' in config and 'optimizer = "adam"' in config
    assert 'norm = "batch"' in config and 'lr = 0.003' in config
    assert 'width = 4' in config and 'synthetic_size = 96' in config
    metrics = json.loads((out / "report_data" / "metrics.json").read_text())
    assert 0.0 <= metrics["isbi2012"]["pixel_error"] <= 1.0 and 0.0 <= metrics["seg"] <= 1.0
    # a second run into the same folder replaces the first
    assert main(["demo", "--quick", "--out", str(out), "--no-progress", "--iterations", "3"]) == 0


@pytest.mark.parametrize("flags, needle", [
    (["--seed", "-1"], "--seed"),
    (["--seed", str(2**40)], "--seed"),
    (["--out", ""], "--out"),
    (["--device", "cuda"], "--device"),
    (["--iterations", "0"], "--iterations"),
])
def test_bad_option_keeps_the_previous_demo(tmp_path, capsys, flags, needle):
    import torch

    if "cuda" in flags and torch.cuda.is_available():
        pytest.skip("CUDA is usable here")
    old = tmp_path / "demo"
    (old / "report_data").mkdir(parents=True)
    for name in (DEMO_MARKER, "checkpoint.pt", "model.pt", "report.html"):
        (old / name).write_text("previous")
    argv = ["demo", "--quick", "--no-progress", "--out", str(old)] + flags
    try:
        rc = main(argv)
    except SystemExit as e:        # refused by the parser (e.g. --seed's type)
        rc = e.code
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err and "bug" not in err, err
    assert sorted(p.name for p in old.iterdir()) == sorted(
        [DEMO_MARKER, "checkpoint.pt", "model.pt", "report.html", "report_data"])
    assert (old / "model.pt").read_text() == "previous"


def test_format_summary_explains_each_number_and_flags_quick_runs(tmp_path):
    summary = {"report": tmp_path / "r.html", "headline": {"SEG": 0.1, "F1 @ IoU 0.5": 0.2},
               "timing": {"total": 9.0, "training": 4.0}, "iterations": 6, "quick": True}
    lines = format_summary(summary).splitlines()
    seg = next(ln for ln in lines if ln.strip().startswith("SEG"))
    assert "IoU" in seg                                       # a sentence next to the number
    assert any("not meaningful" in ln for ln in lines)
    summary["quick"] = False
    assert "not meaningful" not in format_summary(summary)
