"""Never lose a user's work, through the real CLI: no output may overwrite an input or a run's
own file, a bad option value is refused before anything is deleted, every bad value is one line
(exit 2, never "this is a bug"), and a file is read as what it says it is.

``FAILING_TODAY`` lists the cases that do not hold yet (strict: a fixed case fails the test
until its entry is removed).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import tifffile

from cli_helpers import (assert_clean_error, cells, run_cli, tiny_model, write_dataset,
                         write_png)

_PARSE_TIME = "not validated before use: 'unexpected ... this is a bug'"
#: test id → why it fails today
FAILING_TODAY: dict[str, str] = {}

TINY = ["--width", "4", "--depth", "1", "--tile", "36", "--iterations", "2", "--no-progress",
        "--val-every", "2"]


def _marks(test_id: str) -> list:
    if test_id in FAILING_TODAY:
        return [pytest.mark.xfail(strict=True, reason=FAILING_TODAY[test_id])]
    return []


def _xfail(name: str):
    """Decorator: the xfail mark of ``FAILING_TODAY[name]``, if any."""
    def deco(f):
        for m in _marks(name):
            f = m(f)
        return f
    return deco


def _params(test: str, rows: list[tuple], ids: list[str]) -> list:
    """``pytest.param`` rows, each with the xfail mark of ``FAILING_TODAY[test[id]]``."""
    return [pytest.param(*row, id=i, marks=_marks(f"{test}[{i}]")) for row, i in zip(rows, ids)]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _no_bug(res) -> None:
    assert "this is a bug" not in res.err and "Traceback" not in res.err, res.err


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("model") / "model.pt", depth=1, width=4)


# ------------------------------------------------------------- outputs that are inputs
@_xfail("test_export_onto_its_own_model_is_refused")
def test_export_onto_its_own_model_is_refused(tmp_path, capsys):
    m = tiny_model(tmp_path / "m.pt")
    before = _digest(m)
    res = run_cli(["export", m, "--out", m], capsys)
    assert_clean_error(res, str(m))
    assert _digest(m) == before


@_xfail("test_weights_tiff_onto_the_labels_is_refused")
def test_weights_tiff_onto_the_labels_is_refused(tmp_path, capsys):
    lab = tmp_path / "lab.tif"
    tifffile.imwrite(lab, cells(32)[1])
    before = _digest(lab)
    res = run_cli(["weights", lab, "--out", tmp_path / "w.png", "--tiff", lab], capsys)
    assert_clean_error(res, str(lab))
    assert _digest(lab) == before
    assert not (tmp_path / "w.png").exists()


@_xfail("test_report_onto_the_training_log_is_refused")
def test_report_onto_the_training_log_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    assert run_cli(["train", "synthetic", "--synthetic-size", "48", "--synthetic-images", "1",
                    "--out", run, *TINY], capsys).rc == 0
    log = run / "log.csv"
    before = _digest(log)
    res = run_cli(["report", run, "--out", log], capsys)
    assert_clean_error(res, str(log))
    assert _digest(log) == before


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Path:
    """A finished tiny training run (config.toml, model.pt, best.pt, checkpoint.pt, log.csv)."""
    from cli_helpers import run_subprocess

    run = tmp_path_factory.mktemp("run") / "run"
    res = run_subprocess(["train", "synthetic", "--synthetic-size", "48", "--synthetic-images",
                          "1", "--val", "synthetic", "--out", run, *TINY])
    assert res.rc == 0, res.err
    return run


@pytest.mark.parametrize("verb,name", _params("test_a_runs_own_files_are_never_an_output", [
    ("export", "best.pt"), ("export", "checkpoint.pt"), ("report", "config.toml"),
    ("report", "model.pt")], ["export-best", "export-checkpoint", "report-config",
                              "report-model"]))
def test_a_runs_own_files_are_never_an_output(run_folder, capsys, verb, name):
    target = run_folder / name
    before = _digest(target)
    argv = [run_folder / "model.pt"] if verb == "export" else [run_folder]
    res = run_cli([verb, *argv, "--out", target], capsys)
    assert_clean_error(res, str(target))
    assert _digest(target) == before


@_xfail("test_weights_picture_onto_png_labels_is_refused")
def test_weights_picture_onto_png_labels_is_refused(tmp_path, capsys):
    lab = write_png(tmp_path / "lab.png", cells(32)[1].astype(np.uint8))
    before = _digest(lab)
    res = run_cli(["weights", lab, "--out", lab], capsys)
    assert_clean_error(res, str(lab))
    assert _digest(lab) == before


@_xfail("test_predict_output_named_like_another_input_is_not_lost")
def test_predict_output_named_like_another_input_is_not_lost(tmp_path, capsys, model):
    """``a.tif`` would be predicted to ``a_prob.tif``, the name of another input."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    tifffile.imwrite(folder / "a.tif", cells(24, seed=1)[0])
    tifffile.imwrite(folder / "a_prob.tif", cells(24, seed=2)[0])
    before = _digest(folder / "a_prob.tif")
    res = run_cli(["predict", model, folder, "--out", folder, "--quiet", "--no-overlay"], capsys)
    _no_bug(res)
    assert _digest(folder / "a_prob.tif") == before


@pytest.mark.parametrize("argv", _params("test_an_empty_out_is_refused_by_every_verb", [
    (["demo", "--quick"],), (["augment", "synthetic"],), (["predict", "@model", "@image"],),
    (["evaluate", "@image", "@image"],), (["weights", "@labels"],), (["export", "@model"],),
    (["report", "@run"],)], ["demo", "augment", "predict", "evaluate", "weights", "export",
                             "report"]))
def test_an_empty_out_is_refused_by_every_verb(tmp_path, capsys, monkeypatch, model, argv):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run").mkdir()
    image = tmp_path / "image.tif"
    tifffile.imwrite(image, cells(24)[1].astype(np.uint8))
    files = {"@model": model, "@image": image, "@labels": image, "@run": tmp_path / "run"}
    res = run_cli([files.get(a, a) for a in argv] + ["--out", ""], capsys)
    assert_clean_error(res, "--out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.tif", "run"]


@_xfail("test_train_with_an_empty_out_is_refused")
def test_train_with_an_empty_out_is_refused(tmp_path, capsys, monkeypatch):
    """``--out "$UNSET"``: must not train into (and overwrite files of) the current folder."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.toml").write_text("# the user's own file\n")
    res = run_cli(["train", "synthetic", "--synthetic-size", "48", "--out", "", *TINY], capsys)
    assert_clean_error(res, "--out")
    assert (tmp_path / "config.toml").read_text() == "# the user's own file\n"
    assert not (tmp_path / "model.pt").exists()


def _old_demo(folder: Path) -> dict[str, str]:
    from unetlab.demo import DEMO_MARKER

    folder.mkdir()
    (folder / DEMO_MARKER).write_text("{}")
    tiny_model(folder / "model.pt")
    (folder / "report.html").write_text("<html>the old demo</html>")
    return {p.name: _digest(p) for p in folder.iterdir()}


@pytest.mark.parametrize("bad", _params(
    "test_demo_with_a_bad_option_keeps_the_old_demo",
    [(["--device", "bogus"],), (["--seed", "-1"],), (["--size", "4"],)], ["device", "seed", "size"]))
def test_demo_with_a_bad_option_keeps_the_old_demo(tmp_path, capsys, bad):
    out = tmp_path / "demo"
    before = _old_demo(out)
    res = run_cli(["demo", "--out", out, "--quick", "--no-progress", *bad], capsys)
    assert_clean_error(res, bad[0])
    assert {p.name: _digest(p) for p in out.iterdir()} == before


@_xfail("test_demo_on_an_unusable_device_keeps_the_old_demo")
def test_demo_on_an_unusable_device_keeps_the_old_demo(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is usable here")
    out = tmp_path / "demo"
    before = _old_demo(out)
    res = run_cli(["demo", "--out", out, "--quick", "--no-progress", "--device", "cuda"], capsys)
    assert_clean_error(res, "cuda")
    assert {p.name: _digest(p) for p in out.iterdir()} == before


@_xfail("test_inputs_with_the_same_sanitised_name_keep_every_result")
def test_inputs_with_the_same_sanitised_name_keep_every_result(tmp_path, capsys, model):
    """``a b.png``, ``a_b.png``, ``a_b_2.png`` and ``x/a_b.png`` all sanitise towards ``a_b``."""
    names = ["a b.png", "a_b.png", "a_b_2.png", "a?b.png"]
    for k, n in enumerate(names):
        write_png(tmp_path / "in" / n, cells(24, seed=k)[0])
    write_png(tmp_path / "x" / "a_b.png", cells(24, seed=9)[0])
    out = tmp_path / "out"
    res = run_cli(["predict", model, tmp_path / "in", tmp_path / "x", "--out", out, "--quiet",
                   "--no-overlay"], capsys)
    assert res.rc == 0, res.err
    probs = sorted(out.glob("*_prob.tif"))
    assert len(probs) == len(names) + 1, [p.name for p in probs]
    assert len({_digest(p) for p in probs}) == len(probs)      # five different results


@_xfail("test_predict_into_its_input_folder_does_not_predict_its_outputs")
def test_predict_into_its_input_folder_does_not_predict_its_outputs(tmp_path, capsys, model):
    folder = tmp_path / "imgs"
    write_png(folder / "a.png", cells(24)[0])
    for _ in range(2):
        res = run_cli(["predict", model, folder, "--out", folder, "--quiet"], capsys)
        _no_bug(res)
        assert res.rc in (0, 2), res.err
    assert not list(folder.glob("*_prob_prob*")), sorted(p.name for p in folder.iterdir())


# ------------------------------------------------------------- option ranges
@pytest.mark.parametrize("argv,name", _params("test_out_of_range_values_are_one_line", [
    (["train", "synthetic", "--seed", "-1"], "--seed"),
    (["train", "synthetic", "--seed", str(2 ** 64)], "--seed"),
    (["train", "synthetic", "--synthetic-size", "4"], "--synthetic-size"),
    (["augment", "synthetic", "--seed", "-1"], "--seed"),
    (["demo", "--quick", "--seed", str(2 ** 64)], "--seed"),
    (["train", "synthetic", "--synthetic-seed", "-1"], "--synthetic-seed"),
    (["train", "synthetic", "--synthetic-images", "0"], "--synthetic-images"),
    (["augment", "synthetic", "--size", "4"], "--size"),
    (["augment", "synthetic", "--n", "0"], "--n"),
], ["train-seed-negative", "train-seed-huge", "synthetic-size-4", "augment-seed-negative",
    "demo-seed-huge", "synthetic-seed-negative", "synthetic-images-0", "augment-size-4",
    "augment-n-0"]))
def test_out_of_range_values_are_one_line(tmp_path, capsys, argv, name):
    res = run_cli([*argv, "--out", tmp_path / "o", *(TINY if argv[0] == "train" else [])],
                  capsys)
    assert_clean_error(res, name)
    _no_bug(res)


# ------------------------------------------------------------- read what the file says
@_xfail("test_samples_last_tiff_is_read_as_channels")
def test_samples_last_tiff_is_read_as_channels(tmp_path, capsys):
    """A (H, W, 5) TIFF with the samples last (tifffile axes YXS) is one 5-channel image."""
    image = np.random.default_rng(0).random((40, 44, 5), dtype=np.float32)
    tifffile.imwrite(tmp_path / "five.tif", image, photometric="minisblack",
                     planarconfig="contig")
    model = tiny_model(tmp_path / "m5.pt", in_channels=5)
    out = tmp_path / "out"
    res = run_cli(["predict", model, tmp_path / "five.tif", "--out", out, "--quiet",
                   "--no-overlay"], capsys)
    assert res.rc == 0, res.err
    prob = tifffile.imread(out / "five_prob.tif")
    assert prob.shape[-2:] == (40, 44) and prob.ndim <= 3, prob.shape


@_xfail("test_finite_float32_extremes_give_finite_probabilities")
def test_finite_float32_extremes_give_finite_probabilities(tmp_path, capsys, model):
    image = np.zeros((40, 40), np.float32)
    image[:20] = 3e38
    image[20:, :20] = -3e38
    tifffile.imwrite(tmp_path / "x.tif", image)
    out = tmp_path / "out"
    res = run_cli(["predict", model, tmp_path / "x.tif", "--out", out, "--quiet",
                   "--no-overlay"], capsys)
    assert res.rc == 0, res.err
    prob = tifffile.imread(out / "x_prob.tif")
    assert np.isfinite(prob).all() and prob.min() >= 0 and prob.max() <= 1


@_xfail("test_training_on_finite_float32_extremes_works")
def test_training_on_finite_float32_extremes_works(tmp_path, capsys):
    data = write_dataset(tmp_path / "ds", n=1, size=48, ext=".tif")
    img = next((data / "image").iterdir())
    image = tifffile.imread(img).astype(np.float32)
    tifffile.imwrite(img, np.where(image > image.mean(), 3e38, -3e38).astype(np.float32))
    res = run_cli(["train", data, "--out", tmp_path / "run", *TINY], capsys)
    assert res.rc == 0, res.err
    assert (tmp_path / "run" / "model.pt").is_file()


@_xfail("test_weights_refuses_jpeg_labels_like_train")
def test_weights_refuses_jpeg_labels_like_train(tmp_path, capsys):
    import imageio.v3 as iio

    iio.imwrite(tmp_path / "lab.jpg", (cells(48)[1] > 0).astype(np.uint8) * 255)
    res = run_cli(["weights", tmp_path / "lab.jpg", "--out", tmp_path / "w.png"], capsys)
    assert_clean_error(res, "lab.jpg")
    assert not (tmp_path / "w.png").exists()


@_xfail("test_jpeg_ground_truth_is_refused_by_evaluate_like_train")
def test_jpeg_ground_truth_is_refused_by_evaluate_like_train(tmp_path, capsys):
    import imageio.v3 as iio

    image, labels = cells(48)
    gt = (labels > 0).astype(np.uint8) * 255
    iio.imwrite(tmp_path / "gt.jpg", gt)
    tifffile.imwrite(tmp_path / "pred.tif", (labels > 0).astype(np.float32))
    res = run_cli(["evaluate", tmp_path / "pred.tif", tmp_path / "gt.jpg"], capsys)
    assert_clean_error(res, "gt.jpg")
    # train says the same about JPEG labels
    data = write_dataset(tmp_path / "ds", n=1, size=48)
    lab = next((data / "label").iterdir())
    lab.unlink()
    iio.imwrite(lab.with_suffix(".jpg"), gt)
    res = run_cli(["train", data, "--out", tmp_path / "run", *TINY], capsys)
    assert_clean_error(res, "jpg")


def test_every_failing_today_entry_names_a_test():
    names = {n for n in globals() if n.startswith("test_")}
    for key in FAILING_TODAY:
        assert key.split("[")[0] in names, f"stale FAILING_TODAY entry: {key}"
