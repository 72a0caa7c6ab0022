"""The bad-input matrix, through the real CLI.

One parametrised test per verb runs every bad input of that verb through ``unetlab.cli.main``
(in-process, for speed) and checks the contract of ``unetlab.cli``:

* exit code 2;
* stderr is exactly ONE line ``...error: ...`` naming the file or option (and a word of the
  problem), no traceback;
* no output that looks complete is left behind (only hidden temporaries may remain).

A few subprocess runs of ``python -m unetlab`` prove the same end to end (exit status, stderr),
plus what only a real process shows: ``--debug`` prints the traceback, a full disk
(``ulimit -f``, which makes writes fail with EFBIG: Python ignores SIGXFSZ) and Ctrl-C.

Unwritable output: the tests run as root, for whom ``chmod`` does not stop writes, so the
unwritable output is a path *below a regular file* (``a_file.txt/sub``): creating it fails
with ENOTDIR for every user.
"""
from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import (assert_clean_error, looks_complete, make_bad_files, run_cli,
                         run_subprocess, start_subprocess, tiny_model, write_tiff)

# a tiny network so that the cases which get as far as building one stay fast
TINY = ["--width", "4", "--depth", "1", "--tile", "36", "--iterations", "2", "--no-progress"]


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    f = make_bad_files(tmp_path_factory.mktemp("bad"))
    f["stack_lab"] = write_tiff(f["good_lab"].parent / "stack.tif",
                                np.stack([np.eye(8, dtype=np.uint8)] * 3), photometric="minisblack")
    return f


def _check(res, f, names, problem, out=None):
    """Resolve ``names`` (keys of ``f`` or literal strings), assert the one-line error, and that
    ``out`` holds nothing that looks complete."""
    resolved = [str(f[n]) if n in f else n for n in names]
    line = assert_clean_error(res, *resolved)
    if problem is not None:
        text = line
        for n in resolved:                       # the problem must be said, not just the name
            text = text.replace(n, "<name>")
        assert re.search(problem, text, re.IGNORECASE), f"{problem!r} not in: {line}"
    if out is not None:
        left = looks_complete(Path(out))
        assert not left, f"output left behind after the error: {left}"
    return line


def _cases(table):
    return [pytest.param(*row[1:], id=row[0]) for row in table]


# ------------------------------------------------------------------------------------ weights
WEIGHTS = [  # id, extra argv (keys of the file dict or literals), names in the message, problem
    ("missing-file", ["missing"], ["missing"], "no such file"),
    ("folder-not-file", ["empty_dir"], ["empty_dir"], "folder"),
    ("empty-file", ["empty_file"], ["empty_file"], "empty"),
    ("truncated-png", ["trunc_png"], ["trunc_png"], "truncated|cannot read"),
    ("truncated-tiff", ["trunc_tif"], ["trunc_tif"], "cannot read"),
    ("zero-sized", ["zero_tif"], ["zero_tif"], "zero|empty"),
    ("nan-pixels", ["nan_tif"], ["nan_tif"], "nan"),
    ("complex-dtype", ["complex_tif"], ["complex_tif"], "complex"),
    ("tiff-bomb", ["bomb_tif"], ["bomb_tif"], "limit"),
    ("png-bomb", ["bomb_png"], ["bomb_png"], "limit"),
    ("rgb-label", ["rgb_lab"], ["rgb_lab"], "rgb|colou?r"),
    ("float-label", ["float_lab"], ["float_lab"], "integer"),
    ("not-an-image", ["not_image"], ["not_image"], "not a valid|cannot read"),
    ("page-out-of-range", ["stack_lab", "--page", "5"], ["--page"], "pages"),
    ("sigma-zero", ["good_lab", "--sigma", "0"], ["--sigma"], None),
    ("sigma-nan", ["good_lab", "--sigma", "nan"], ["--sigma"], None),
    ("w0-infinite", ["good_lab", "--w0", "inf"], ["--w0"], None),
    ("unknown-cmap", ["good_lab", "--cmap", "nosuchmap"], ["--cmap"], None),
    ("mistyped-option", ["good_lab", "--sigam", "3"], ["--sigam"], "unrecognized"),
    ("tiff-unwritable", ["good_lab", "--tiff", "@unwritable/w.tif"], ["a_file.txt"], None),
]


@pytest.mark.parametrize("argv,names,problem", _cases(WEIGHTS))
def test_weights_matrix(bad, tmp_path, capsys, argv, names, problem):
    out = tmp_path / "w"
    args = [_arg(bad, a) for a in argv]
    res = run_cli(["weights", *args, "--out", out / "w.png"], capsys)
    _check(res, bad, names, problem, out)


@pytest.mark.parametrize("out_key,names", [("unwritable", ["a_file.txt"]),
                                           ("empty_dir", ["empty_dir"])],
                         ids=["out-below-a-file", "out-is-a-folder"])
def test_weights_bad_output(bad, capsys, out_key, names):
    out = bad[out_key] / "w.png" if out_key == "unwritable" else bad[out_key]
    res = run_cli(["weights", bad["good_lab"], "--out", out], capsys)
    _check(res, bad, names, None)
    assert not looks_complete(bad["empty_dir"])


def _arg(f, a):
    """'key' → the file, '@key/rest' → the file / rest, anything else literally."""
    a = str(a)
    if a.startswith("@"):
        key, _, rest = a[1:].partition("/")
        return str(f[key] / rest)
    return str(f[a]) if a in f else a


# ------------------------------------------------------------------------------------ train
TRAIN = [
    ("missing-path", ["missing"], ["missing"], "no such file"),
    ("empty-folder", ["empty_dir"], ["empty_dir"], "empty"),
    ("image-without-label", ["ds_img_no_label"], ["@ds_img_no_label/image/im1.png"], "label"),
    ("label-without-image", ["ds_label_no_img"], ["@ds_label_no_img/label/im1.png"], "image"),
    ("shape-mismatch", ["ds_shape"], ["@ds_shape/label/im0.png"], r"size|shape"),
    ("rgb-label", ["ds_rgb_label"], ["@ds_rgb_label/label/im0.png"], "colou?r|rgb"),
    ("float-label", ["ds_float_label"], ["@ds_float_label/label/im0.tif"], "integer"),
    ("one-class-labels", ["ds_one_class"], ["ds_one_class"], r"no .*(cell|object|foreground)"),
    ("nan-pixels", ["ds_nan"], ["@ds_nan/image/im0.tif"], "nan"),
    ("truncated-png", ["ds_trunc"], ["@ds_trunc/image/im0.png"], "truncated|cannot read"),
    ("tiff-bomb", ["ds_bomb"], ["@ds_bomb/image/im0.tif"], "limit"),
    ("complex-dtype", ["ds_complex"], ["@ds_complex/image/im0.tif"], "complex"),
    ("mixed-channel-counts", ["ds_channels"], [], "channel"),
    ("single-file-no-labels", ["good_img"], ["good_img"], "labels"),
    ("tile-invalid", ["synthetic", "--tile", "45", "--depth", "2"], ["--tile"], "valid"),
    ("config-unknown-key", ["synthetic", "--config", "cfg_unknown"], ["cfg_unknown", "widht"],
     "unknown"),
    ("config-wrong-type", ["synthetic", "--config", "cfg_type"], ["cfg_type", "width"], None),
    ("config-not-toml", ["synthetic", "--config", "cfg_syntax"], ["cfg_syntax"], "toml"),
    ("config-table", ["synthetic", "--config", "cfg_table"], ["cfg_table"], "table"),
    ("config-missing", ["synthetic", "--config", "missing"], ["missing"], "no such"),
    ("mistyped-flag", ["synthetic", "--widht", "4"], ["--widht"], "unrecognized"),
    ("flag-not-a-number", ["synthetic", "--width", "four"], ["--width"], "invalid int"),
    ("lr-nan", ["synthetic", "--lr", "nan"], ["--lr"], "finite"),
    ("padding-unknown", ["synthetic", "--padding", "full"], ["--padding"], None),
    ("resume-without-run", ["--resume"], ["--resume"], None),
    ("no-data", [], ["DATA"], None),
    ("val-missing", ["synthetic", "--val", "missing"], ["missing"], "no such"),
]


@pytest.mark.parametrize("argv,names,problem", _cases(TRAIN))
def test_train_matrix(bad, tmp_path, capsys, argv, names, problem):
    out = tmp_path / "run"
    args = [_arg(bad, a) for a in argv]
    names = [_arg(bad, n) for n in names]
    res = run_cli(["train", *args, "--out", out, *_fill(TINY, args)], capsys)
    _check(res, bad, names, problem, out)


def _fill(defaults, given):
    """The TINY flags not already in ``given``."""
    out, i = [], 0
    while i < len(defaults):
        flag = defaults[i]
        takes = i + 1 < len(defaults) and not defaults[i + 1].startswith("--")
        if flag not in given:
            out += defaults[i:i + 1 + takes]
        i += 1 + takes
    return out


def test_train_bad_outputs(bad, tmp_path, capsys):
    res = run_cli(["train", "synthetic", "--out", bad["unwritable"], *TINY], capsys)
    _check(res, bad, ["a_file.txt"], None)
    res = run_cli(["train", "--resume", "--out", tmp_path / "never_ran"], capsys)
    _check(res, bad, ["never_ran"], None)


# ------------------------------------------------------------------------------------ evaluate
EVALUATE = [
    ("missing-prediction", ["missing", "good_lab"], ["missing"], "no such"),
    ("missing-ground-truth", ["good_prob", "missing"], ["missing"], "no such"),
    ("empty-folders", ["empty_dir", "empty_dir"], ["empty_dir"], "no images|empty"),
    ("folder-vs-file", ["empty_dir", "good_lab"], ["empty_dir", "good_lab"], "folder"),
    ("prediction-without-gt", ["@ds_img_no_label/image", "@ds_img_no_label/label"], ["im1.png"],
     "no ground truth"),
    ("truncated-png", ["trunc_png", "good_lab"], ["trunc_png"], "truncated|cannot read"),
    ("truncated-tiff", ["good_prob", "trunc_tif"], ["trunc_tif"], "cannot read"),
    ("tiff-bomb", ["bomb_tif", "good_lab"], ["bomb_tif"], "limit"),
    ("png-bomb", ["good_prob", "bomb_png"], ["bomb_png"], "limit"),
    ("nan-probabilities", ["nan_tif", "good_lab"], ["nan_tif"], "nan"),
    ("inf-probabilities", ["inf_tif", "good_lab"], ["inf_tif"], "inf"),
    ("complex-dtype", ["complex_tif", "good_lab"], ["complex_tif"], "complex"),
    ("zero-sized", ["zero_tif", "good_lab"], ["zero_tif"], "zero"),
    ("empty-file", ["empty_file", "good_lab"], ["empty_file"], "empty"),
    ("not-an-image", ["not_image", "good_lab"], ["not_image"], "not a valid"),
    ("shape-mismatch", ["good_prob", "tiny_img"], ["good_prob", "tiny_img"], "shape"),
    ("rgb-ground-truth", ["good_prob", "rgb_lab"], ["rgb_lab"], "colou?r"),
    ("one-class-gt-isbi", ["good_prob", "one_class"], ["one_class"], "no cell"),
    ("one-class-gt-cells", ["good_prob", "one_class", "--metrics", "cells"], ["one_class"],
     "no object"),
    ("float-label-cells", ["good_prob", "float_lab", "--metrics", "cells"], ["float_lab"], None),
    ("64bit-labels-instances", ["good_prob", "uint64_lab", "--metrics", "instances"],
     ["uint64_lab"], "int32"),
    ("probabilities-out-of-range", ["float_lab", "good_lab"], ["float_lab"], r"\[0, 1\]"),
    ("channel-out-of-range", ["good_prob", "good_lab", "--channel", "3"], ["--channel"], None),
    ("radius-zero", ["good_prob", "good_lab", "--radius", "0"], ["--radius"], None),
    ("metrics-mistyped", ["good_prob", "good_lab", "--metrics", "isbii"], ["--metrics"],
     "invalid choice"),
    ("output-unwritable", ["good_prob", "good_lab", "--out", "@unwritable/eval"], ["a_file.txt"],
     None),
]


@pytest.mark.parametrize("argv,names,problem", _cases(EVALUATE))
def test_evaluate_matrix(bad, capsys, argv, names, problem):
    args = [_arg(bad, a) for a in argv]
    names = [_arg(bad, n) for n in names]
    res = run_cli(["evaluate", *args], capsys)
    _check(res, bad, names, problem)


# ------------------------------------------------------------------------------------ augment
AUGMENT = [
    ("missing-path", ["missing"], ["missing"], "no such"),
    ("empty-folder", ["empty_dir"], ["empty_dir"], "empty"),
    ("image-without-label", ["ds_img_no_label"], ["@ds_img_no_label/image/im1.png"], "label"),
    ("label-without-image", ["ds_label_no_img"], ["@ds_label_no_img/label/im1.png"], "image"),
    ("shape-mismatch", ["ds_shape"], ["@ds_shape/label/im0.png"], "size"),
    ("rgb-label", ["ds_rgb_label"], ["@ds_rgb_label/label/im0.png"], "colou?r|rgb"),
    ("float-label", ["ds_float_label"], ["@ds_float_label/label/im0.tif"], "integer"),
    ("nan-pixels", ["ds_nan"], ["@ds_nan/image/im0.tif"], "nan"),
    ("truncated-png", ["ds_trunc"], ["@ds_trunc/image/im0.png"], "truncated|cannot read"),
    ("tiff-bomb", ["ds_bomb"], ["@ds_bomb/image/im0.tif"], "limit"),
    ("complex-dtype", ["ds_complex"], ["@ds_complex/image/im0.tif"], "complex"),
    ("labels-missing", ["good_img", "--labels", "missing"], ["missing"], "no such"),
    ("labels-shape", ["good_img", "--labels", "tiny_img"], ["tiny_img"], "size"),
    ("n-zero", ["synthetic", "--n", "0"], ["--n"], None),
    ("sigma-nan", ["synthetic", "--sigma", "nan"], ["--sigma"], None),
    ("rotation-infinite", ["synthetic", "--rotation", "inf"], ["--rotation"], None),
    ("tile-too-small", ["synthetic", "--tile", "4"], ["--tile"], None),
    ("tile-larger-than-memory", ["synthetic", "--size", "32", "--tile", "100000"], ["--tile"],
     None),
]


@pytest.mark.parametrize("argv,names,problem", _cases(AUGMENT))
def test_augment_matrix(bad, tmp_path, capsys, argv, names, problem):
    out = tmp_path / "aug"
    args = [_arg(bad, a) for a in argv]
    names = [_arg(bad, n) for n in names]
    extra = [] if "--n" in args else ["--n", "1"]
    res = run_cli(["augment", *args, "--out", out, *extra], capsys)
    _check(res, bad, names, problem, out)


def test_augment_bad_outputs(bad, capsys):
    res = run_cli(["augment", "synthetic", "--n", "1", "--out", bad["unwritable"]], capsys)
    _check(res, bad, ["a_file.txt"], None)
    res = run_cli(["augment", "synthetic", "--n", "1", "--out", bad["a_file"]], capsys)
    _check(res, bad, ["a_file"], "not a folder")


# ------------------------------------------------------------------------------------ export
EXPORT = [
    ("missing-model", ["missing"], ["missing"], "no such"),
    ("folder-not-model", ["empty_dir"], ["empty_dir"], "folder"),
    ("text-not-checkpoint", ["not_checkpoint"], ["not_checkpoint"], None),
    ("image-not-checkpoint", ["good_img"], ["good_img"], None),
    ("empty-file", ["empty_file"], ["empty_file"], None),
    ("foreign-torch-file", ["foreign_pt"], ["foreign_pt"], "not a unetlab model"),
    ("other-architecture", ["model_other_arch"], ["model_other_arch"], "architecture"),
    ("crafted-pickle", ["evil_pt"], ["evil_pt"], "refused"),
    ("format-unknown", ["model", "--format", "tflite"], ["--format"], "unknown"),
    ("trace-size-negative", ["model", "--trace-size", "-3"], ["--trace-size"], None),
    ("trace-size-huge", ["model", "--trace-size", "100000"], ["--trace-size"], None),
]


@pytest.mark.parametrize("argv,names,problem", _cases(EXPORT))
def test_export_matrix(bad, tmp_path, capsys, argv, names, problem):
    out = tmp_path / "m.ts"
    args = [_arg(bad, a) for a in argv]
    res = run_cli(["export", *args, "--out", out], capsys)
    line = _check(res, bad, names, problem, tmp_path)
    assert "\x1b" not in line, f"terminal escape codes in the message: {line!r}"
    assert not bad["evil_target"].exists(), "unpickling the crafted file created a file"


def test_export_bad_outputs(bad, tmp_path, capsys):
    res = run_cli(["export", bad["model"], "--out", bad["unwritable"] / "m.ts"], capsys)
    _check(res, bad, ["a_file.txt"], None)
    res = run_cli(["export", bad["model"], "--out", bad["empty_dir"]], capsys)
    _check(res, bad, ["empty_dir"], "folder")
    assert not looks_complete(bad["empty_dir"])


# ------------------------------------------------------------------------------------ predict
PREDICT = [  # MODEL, IMAGES, extra
    ("missing-model", ["missing", "good_img"], ["missing"], "no such"),
    ("text-not-checkpoint", ["not_checkpoint", "good_img"], ["not_checkpoint"], None),
    ("crafted-pickle", ["evil_pt", "good_img"], ["evil_pt"], "refused"),
    ("other-architecture", ["model_other_arch", "good_img"], ["model_other_arch"],
     "architecture"),
    ("missing-image", ["model", "missing"], ["missing"], "no such"),
    ("empty-folder", ["model", "empty_dir"], ["empty_dir"], "no images|empty"),
    ("truncated-png", ["model", "trunc_png"], ["trunc_png"], "truncated|cannot read"),
    ("truncated-tiff", ["model", "trunc_tif"], ["trunc_tif"], "cannot read"),
    ("empty-file", ["model", "empty_file"], ["empty_file"], "empty"),
    ("zero-sized", ["model", "zero_tif"], ["zero_tif"], "zero"),
    ("nan-pixels", ["model", "nan_tif"], ["nan_tif"], "nan"),
    ("complex-dtype", ["model", "complex_tif"], ["complex_tif"], "complex"),
    ("tiff-bomb", ["model", "bomb_tif"], ["bomb_tif"], "limit"),
    ("png-bomb", ["model", "bomb_png"], ["bomb_png"], "limit"),
    ("wrong-channel-count", ["model_rgb", "good_img"], ["good_img"], "channel"),
    ("not-an-image", ["model", "not_image"], ["not_image"], "not a valid|cannot read"),
    ("tile-zero", ["model", "good_img", "--tile", "0"], ["--tile"], None),
    ("batch-zero", ["model", "good_img", "--batch", "0"], ["--batch"], None),
    ("threshold-out-of-range", ["model", "good_img", "--threshold", "2"], ["--threshold"], None),
    ("format-mistyped", ["model", "good_img", "--format", "tiff"], ["--format"],
     "invalid choice"),
]


@pytest.mark.parametrize("argv,names,problem", _cases(PREDICT))
def test_predict_matrix(bad, tmp_path, capsys, argv, names, problem):
    out = tmp_path / "pred"
    args = [_arg(bad, a) for a in argv]
    res = run_cli(["predict", *args, "--out", out], capsys)
    _check(res, bad, names, problem, out)
    assert not bad["evil_target"].exists()


def test_predict_bad_outputs(bad, capsys):
    res = run_cli(["predict", bad["model"], bad["good_img"], "--out", bad["unwritable"]], capsys)
    _check(res, bad, ["a_file.txt"], None)
    res = run_cli(["predict", bad["model"], bad["good_img"], "--out", bad["a_file"]], capsys)
    _check(res, bad, ["a_file"], "not a folder")


def test_matrix_size():
    """At least 25 distinct bad inputs across the verbs, 100 cases in all."""
    ids = {row[0] for table in (WEIGHTS, TRAIN, EVALUATE, AUGMENT, EXPORT, PREDICT)
           for row in table}
    assert len(ids) >= 25
    assert sum(len(t) for t in (WEIGHTS, TRAIN, EVALUATE, AUGMENT, EXPORT, PREDICT)) >= 100


# ------------------------------------------------------------------------------------ real process
def test_subprocess_one_line_and_debug_traceback(bad):
    """End to end: exit status 2, one line, no traceback; --debug shows the traceback."""
    res = run_subprocess(["weights", bad["bomb_tif"], "--out", bad["empty_dir"] / "w.png"])
    _check(res, bad, ["bomb_tif"], "limit")
    assert res.out == ""
    dbg = run_subprocess(["weights", bad["missing"], "--out", bad["empty_dir"] / "w.png",
                          "--debug"])
    assert dbg.rc != 0 and "Traceback" in dbg.err and "UnetlabError" in dbg.err, dbg.err
    assert not looks_complete(bad["empty_dir"])


@pytest.mark.slow
def test_subprocess_train_bad_data(bad, tmp_path):
    res = run_subprocess(["train", bad["ds_img_no_label"], "--out", tmp_path / "r", *TINY])
    _check(res, bad, [str(bad["ds_img_no_label"] / "image" / "im1.png")], "label")
    assert not (tmp_path / "r" / "model.pt").exists()


def test_full_disk_is_one_line(bad, tmp_path):
    """``ulimit -f`` makes every write past the limit fail with EFBIG (SIGXFSZ is ignored by
    Python): the verb must end with one line naming the file, and leave no complete-looking
    file — checkpoints, models and pictures are written via temp + rename."""
    model = tiny_model(tmp_path / "big.pt", depth=2, width=32)     # ~1.9 MB
    out = tmp_path / "exp"
    out.mkdir()
    res = run_subprocess(["export", model, "--out", out / "m.ts"], shell_prefix="ulimit -f 100")
    _check(res, bad, [str(out / "m.ts")], "too large|no space|cannot write")
    assert not looks_complete(out)


@pytest.mark.slow
def test_full_disk_during_training_is_one_line(bad, tmp_path):
    """A checkpoint (~0.5 MB for width 16) larger than ``ulimit -f 100`` (100 KiB)."""
    run = tmp_path / "run"
    res = run_subprocess(["train", "synthetic", "--out", run, "--width", "16", "--depth", "2",
                          "--tile", "44", "--iterations", "2", "--no-progress"],
                         shell_prefix="ulimit -f 100")
    _check(res, bad, [str(run / "checkpoint.pt")], "too large|no space|cannot write")
    assert not (run / "checkpoint.pt").exists() and not (run / "model.pt").exists()
    assert not [p for p in run.iterdir() if ".tmp" in p.name], list(run.iterdir())


@pytest.mark.slow
def test_ctrl_c_saves_and_exits_cleanly(tmp_path):
    """SIGINT during training: the current iteration finishes, a checkpoint is written, exit
    code 130 (the shell's code for SIGINT), no traceback; --resume can continue from it."""
    import torch

    run = tmp_path / "run"
    p = start_subprocess(["train", "synthetic", "--out", run, "--width", "4", "--depth", "1",
                          "--tile", "36", "--iterations", "100000", "--no-progress",
                          "--checkpoint-every", "100000", "--warmup", "0"])
    try:
        deadline = time.monotonic() + 120
        while not (run / "checkpoint.pt").exists():       # the iteration-0 checkpoint
            assert p.poll() is None, p.communicate()
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.2)
        time.sleep(1.0)
        os.kill(p.pid, signal.SIGINT)
        out, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, (p.returncode, err)
    assert "Traceback" not in err, err
    m = re.search(r"interrupted at iteration (\d+)", err)
    assert m, err
    ck = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ck["iteration"] == int(m.group(1)) > 0
    assert not [n for n in os.listdir(run) if ".tmp" in n], os.listdir(run)


def test_predict_output_names_stay_inside_out(bad, tmp_path, capsys):
    """Output names derived from input names cannot escape --out (nor hide in it)."""
    from cli_helpers import cells, write_png

    src = tmp_path / "in"
    names = ["a..b.png", "-rf.png", "a\nb.png", "ü ber;rm -rf ~.png", "%2e%2e%2Fx.png",
             "x" * 240 + ".png"]                 # NAME_MAX is 255: the suffixes must fit
    for n in names:
        write_png(src / n, cells(24)[0])
    out = tmp_path / "out"
    res = run_cli(["predict", bad["model"], src, "--out", out, "--quiet"], capsys)
    assert res.rc == 0, res.err
    made = sorted(p.name for p in out.iterdir())
    assert len(made) == 2 * len(names), made          # NAME_prob.tif + NAME_overlay.png
    for n in made:
        assert (out / n).resolve().parent == out.resolve()
        assert not n.startswith(".") and "/" not in n and "\n" not in n, n
    assert [p for p in tmp_path.rglob("*_prob.tif") if p.parent != out] == []


def test_images_smaller_than_the_context_work(bad, tmp_path, capsys):
    """Not an error: an image smaller than the network's context (3×3 px; the depth-1 network
    sees 12 px per side) is mirror-padded as in the paper's Fig. 2, in training and prediction."""
    import tifffile

    out = tmp_path / "pred"
    res = run_cli(["predict", bad["model"], bad["tiny_img"], "--out", out, "--quiet"], capsys)
    assert res.rc == 0, res.err
    prob = tifffile.imread(out / "tiny_prob.tif")
    assert prob.shape == (3, 3) and np.isfinite(prob).all()
    res = run_cli(["train", bad["ds_tiny"], "--out", tmp_path / "run", *TINY], capsys)
    assert res.rc == 0, res.err
    assert (tmp_path / "run" / "model.pt").is_file()
