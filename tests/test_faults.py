"""Faults: training killed with SIGKILL (kill -9) at random moments — including in the middle of
a checkpoint write — resumes with ``unetlab train --resume`` and ends bit-identical (CPU) to an
uninterrupted run; prediction killed mid-way leaves nothing that looks complete and a re-run
finishes it.

Every run is a real process running the CLI entry point (``unetlab.cli.main``); to keep the
many restarts affordable the processes are forked from a fork server that has imported torch
and unetlab once (see ``cli_helpers.run_child``). Deterministic kills inside a checkpoint write
are made by the child itself (``die=``): half of the temp file written then SIGKILL, SIGKILL
just before the rename onto checkpoint.pt, and between the renames of checkpoint.pt and model.pt.
"""
from __future__ import annotations

import csv
import random
import time
from pathlib import Path

import pytest
import torch

from cli_helpers import looks_complete, run_child

KILLED = -9  # multiprocessing exit code of a child ended by SIGKILL


def _config(path: Path, iterations: int, checkpoint_every: int) -> Path:
    path.write_text(
        "width = 4\ndepth = 1\ntile = 36\nsynthetic_images = 2\nsynthetic_size = 64\n"
        f"iterations = {iterations}\ncheckpoint_every = {checkpoint_every}\nlog_every = 1\n"
        "warmup = 0\nprogress = false\nval = 'synthetic'\nval_every = 1000000\n"
        "dropout = 0.5\nseed = 3\nprecision = 'fp32'\n")
    return path


def _train_argv(cfg: Path, run: Path) -> list:
    return ["train", "synthetic", "--config", cfg, "--out", run]


def _resume_argv(cfg: Path, run: Path) -> list:
    """What the user types after a crash: --resume when the run folder has its config.toml,
    else the original command (the run had not started)."""
    if (run / "config.toml").exists():
        return ["train", "--out", run, "--resume"]
    return _train_argv(cfg, run)


def _losses(run: Path) -> list[tuple[str, str]]:
    with open(run / "log.csv") as f:
        return [(r["iteration"], r["loss"]) for r in csv.DictReader(f)]


def _assert_identical(a: Path, b: Path) -> None:
    ma = torch.load(a / "model.pt", weights_only=True)
    mb = torch.load(b / "model.pt", weights_only=True)
    assert ma["config"] == mb["config"]
    assert ma["state_dict"].keys() == mb["state_dict"].keys()
    for k in ma["state_dict"]:
        assert torch.equal(ma["state_dict"][k], mb["state_dict"][k]), f"weights differ: {k}"
    ca = torch.load(a / "checkpoint.pt", weights_only=True)
    cb = torch.load(b / "checkpoint.pt", weights_only=True)
    assert ca["iteration"] == cb["iteration"]
    for sa, sb in zip(ca["optimizer"]["state"].values(), cb["optimizer"]["state"].values()):
        assert sa.keys() == sb.keys() and sa                # SGD momentum / Adam moments
        for key in sa:
            assert torch.equal(torch.as_tensor(sa[key]), torch.as_tensor(sb[key])), key
    assert _losses(a) == _losses(b)
    ba = torch.load(a / "best.pt", weights_only=True)
    bb = torch.load(b / "best.pt", weights_only=True)
    for k in ba["state_dict"]:
        assert torch.equal(ba["state_dict"][k], bb["state_dict"][k]), f"best.pt differs: {k}"


def _assert_run_folder_sane(run: Path) -> None:
    """Every file that looks complete is complete (loads); leftovers are hidden temporaries
    and the lock file of the killed owner (the kernel released its lock)."""
    for p in looks_complete(run):
        if p.suffix == ".pt":
            obj = torch.load(p, weights_only=True)
            assert obj["format"].startswith("unetlab"), p
        elif p.suffix == ".csv":
            rows = list(csv.DictReader(open(p)))
            assert all(r["iteration"] for r in rows), p
    for p in run.iterdir():
        if p.name not in {"config.toml", "checkpoint.pt", "model.pt", "best.pt", "log.csv",
                          "curves.png", ".lock"}:
            assert p.name.startswith(".") and ".tmp" in p.name, f"unexpected file {p}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """``reference(n, every)``: config and folder of an uninterrupted run of n iterations
    (checkpoint every ``every``) that the interrupted runs must match."""
    root = tmp_path_factory.mktemp("ref")
    refs = {}

    def get(n: int, every: int):
        if n not in refs:
            cfg = _config(root / f"cfg{n}.toml", n, every)
            run = root / f"run{n}"
            t0 = time.monotonic()
            assert run_child(_train_argv(cfg, run), log=str(root / "log.txt")) == 0, \
                (root / "log.txt").read_text()[-2000:]
            refs[n] = (cfg, run, time.monotonic() - t0)
        return refs[n]

    return get


def test_kill_inside_checkpoint_writes_then_resume_is_bit_identical(reference, tmp_path):
    cfg, ref, _ = reference(30, 2)
    run = tmp_path / "run"
    log = str(tmp_path / "log.txt")
    faults = [
        ("rename", 1),   # iteration-0 checkpoint never lands: config.toml but no checkpoint.pt
        ("write", 3),    # half of checkpoint.pt's temp file written, then SIGKILL
        ("rename", 2),   # a complete temp file, killed before the rename onto checkpoint.pt
        ("model", 2),    # checkpoint.pt renamed, model.pt still the previous one
    ]
    for die in faults:
        rc = run_child(_resume_argv(cfg, run), die=die, log=log)
        assert rc == KILLED, (die, rc, Path(log).read_text()[-2000:])
        _assert_run_folder_sane(run)
        if (run / "checkpoint.pt").exists():
            assert torch.load(run / "checkpoint.pt", weights_only=True)["iteration"] < 30
    # one kill at a random moment, then resume to the end
    rc = run_child(_resume_argv(cfg, run), kill_after=random.Random(1).uniform(0.3, 2.0),
                   log=log)
    assert rc in (0, KILLED), Path(log).read_text()[-2000:]
    rc = run_child(_resume_argv(cfg, run), log=log)
    assert rc == 0, Path(log).read_text()[-2000:]
    _assert_run_folder_sane(run)
    _assert_identical(run, ref)
    # the half-written temporary of the "write" kill and the dead owner's lock are gone
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]


@pytest.mark.slow
def test_ten_random_kills_then_resume_is_bit_identical(reference, tmp_path):
    """kill -9 at 10 random moments (checkpoint written every iteration, so many land inside
    a write); after each, resume; the end equals the uninterrupted run bit for bit."""
    cfg, ref, seconds = reference(200, 1)
    train_s = float(list(csv.DictReader(open(ref / "log.csv")))[-1]["seconds"])
    run = tmp_path / "run"
    log = str(tmp_path / "log.txt")
    rng = random.Random(20150518)
    kills, iterations_seen = 0, []
    t0 = time.monotonic()
    while kills < 10:
        # moments from the fork (start-up, data, first checkpoint) to T/8 of training time
        rc = run_child(_resume_argv(cfg, run), kill_after=rng.uniform(0.05, 0.3 + train_s / 8),
                       log=log)
        if rc == 0:      # it finished before the kill came
            break
        assert rc == KILLED, Path(log).read_text()[-3000:]
        kills += 1
        _assert_run_folder_sane(run)
        ck = run / "checkpoint.pt"
        iterations_seen.append(torch.load(ck, weights_only=True)["iteration"]
                               if ck.exists() else None)
    rc = run_child(_resume_argv(cfg, run), log=log)
    assert rc == 0, Path(log).read_text()[-3000:]
    _assert_identical(run, ref)
    temps = [p.name for p in run.iterdir() if ".tmp" in p.name]   # kills inside a write
    print(f"\n{kills} kills (uninterrupted run {seconds:.1f} s, of which training "
          f"{train_s:.1f} s); checkpoint iteration after each kill: {iterations_seen}; "
          f"{len(temps)} kill(s) landed inside a file write (temporaries left: {temps}); "
          f"{time.monotonic() - t0:.0f} s")
    assert kills == 10, f"the run finished after only {kills} kills"


# ------------------------------------------------------------------------------ prediction
def _check_predictions(out: Path, shape) -> dict:
    """Every visible probability output is complete; returns name → P(cell) array."""
    import numpy as np
    import tifffile
    import zarr

    found = {}
    for p in sorted(out.iterdir()):
        if p.name.startswith("."):
            continue                                   # hidden temporaries of a killed run
        if p.name.endswith("_prob.tif"):
            a = tifffile.imread(p)
        elif p.name.endswith("_prob.zarr"):
            z = zarr.open(str(p), mode="r")
            assert z.attrs["unetlab"]["complete"] is True, f"{p} is not marked complete"
            a = np.asarray(z[1])
        else:
            continue
        assert a.shape == shape and np.isfinite(a).all(), p
        assert 0.0 <= a.min() and a.max() <= 1.0 and a.std() > 0, p
        found[p.name.split("_prob")[0]] = a
    return found


@pytest.mark.parametrize("fmt", ["tif", "zarr"])
def test_prediction_killed_midway_then_rerun_finishes(tmp_path, fmt):
    """SIGKILL in the middle of the second of three images (a forward pass): the first image's
    output is complete, nothing else looks complete (tif: temp + rename; zarr: temp folder +
    rename + the 'complete' attribute); re-running the same command finishes the job with the
    same numbers as an uninterrupted run."""
    import numpy as np

    from cli_helpers import cells, tiny_model, write_png

    model = tiny_model(tmp_path / "model.pt", depth=2, width=4)
    for k in range(3):
        write_png(tmp_path / "images" / f"im{k}.png", cells(128, seed=k)[0])
    log = str(tmp_path / "log.txt")
    argv = ["predict", model, tmp_path / "images", "--tile", "92", "--quiet", "--no-overlay",
            "--format", fmt]
    assert run_child([*argv, "--out", tmp_path / "ref"], log=log) == 0, Path(log).read_text()
    ref = _check_predictions(tmp_path / "ref", (128, 128))
    assert sorted(ref) == ["im0", "im1", "im2"]
    out = tmp_path / "out"
    rc = run_child([*argv, "--out", out], die=("forward", 9 + 5), log=log)   # 9 tiles an image
    assert rc == KILLED, Path(log).read_text()[-2000:]
    partial = _check_predictions(out, (128, 128))
    assert sorted(partial) == ["im0"], sorted(partial)
    assert run_child([*argv, "--out", out], log=log) == 0, Path(log).read_text()[-2000:]
    done = _check_predictions(out, (128, 128))
    assert sorted(done) == sorted(ref)
    for k in ref:
        np.testing.assert_array_equal(done[k], ref[k])
