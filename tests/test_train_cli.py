"""``unetlab train`` on the command line: --print-config / --config round trip and precedence,
one-line errors (exit code 2), a tiny complete run, --resume."""
from __future__ import annotations

import dataclasses
import tomllib

import pytest

from unetlab.cli import main
from unetlab.training import TrainConfig, load_config

TINY = ["--width", "4", "--depth", "1", "--tile", "44", "--iterations", "3", "--warmup", "1",
        "--no-progress", "--checkpoint-every", "2", "--threads", "1"]


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("unetlab: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def test_print_config_lists_every_default(capsys):
    assert main(["train", "--preset", "paper", "--print-config"]) == 0
    values = tomllib.loads(capsys.readouterr().out)
    assert values == dataclasses.asdict(TrainConfig())
    assert values["momentum"] == 0.99 and values["w0"] == 10.0 and values["sigma"] == 5.0
    assert values["optimizer"] == "sgd" and values["batch"] == 1 and values["augment"] is True


def test_config_file_round_trip_and_precedence(tmp_path, capsys):
    assert main(["train", "synthetic", "--width", "16", "--lr", "0.002", "--no-augment",
                 "--print-config"]) == 0
    cfg_file = tmp_path / "cfg.toml"
    cfg_file.write_text(capsys.readouterr().out)
    cfg = load_config(cfg_file)
    assert (cfg.width, cfg.lr, cfg.augment) == (16, 0.002, False)
    # flags override the file; the file overrides the defaults
    assert main(["train", "--config", str(cfg_file), "--width", "8", "--print-config"]) == 0
    values = tomllib.loads(capsys.readouterr().out)
    assert (values["width"], values["lr"], values["augment"]) == (8, 0.002, False)


@pytest.mark.parametrize("content, needle", [
    ("lrr = 0.1\n", "unknown option 'lrr' (did you mean 'lr'?)"),
    ("iterations = 'many'\n", "option 'iterations' must be an integer"),
    ("lr = -1.0\n", "lr (--lr): must be a finite number > 0"),
])
def test_bad_config_file_is_one_line_error(tmp_path, capsys, content, needle):
    p = tmp_path / "bad.toml"
    p.write_text(content)
    assert main(["train", "synthetic", "--config", str(p), "--out", str(tmp_path / "r")]) == 2
    assert needle in _one_line_error(capsys)
    assert not (tmp_path / "r").exists()


def test_cli_errors(tmp_path, capsys):
    assert main(["train", "synthetic", "--tile", "500", "--out", str(tmp_path / "r")]) == 2
    assert "nearest valid sizes: 492 or 508" in _one_line_error(capsys)
    assert main(["train", "--config", str(tmp_path / "nope.toml")]) == 2
    assert "no such configuration file" in _one_line_error(capsys)
    assert main(["train", "--out", str(tmp_path / "none"), "--resume"]) == 2
    assert "--resume" in _one_line_error(capsys)
    assert main(["train", str(tmp_path / "missing"), "--out", str(tmp_path / "r2")] + TINY) == 2
    assert "missing" in _one_line_error(capsys)
    assert main(["train", "--out", str(tmp_path / "r3")]) == 2
    assert "DATA" in _one_line_error(capsys)
    with pytest.raises(SystemExit) as e:                 # argparse: wrong type
        main(["train", "synthetic", "--width", "wide"])
    assert e.value.code == 2


def test_tiny_run_and_resume(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "synthetic", "--out", str(run), "--seed", "1"] + TINY
    assert main(args) == 0
    assert "trained" in capsys.readouterr().out
    for name in ("config.toml", "checkpoint.pt", "model.pt", "log.csv", "curves.png"):
        assert (run / name).is_file(), name
    cfg = load_config(run / "config.toml")
    assert (cfg.width, cfg.depth, cfg.tile, cfg.iterations, cfg.seed) == (4, 1, 44, 3, 1)
    # the same command again refuses to overwrite the run
    assert main(args) == 2
    assert "--resume" in _one_line_error(capsys)
    # --resume needs only the run folder; extending the iterations is allowed ...
    assert main(["train", "--out", str(run), "--resume", "--iterations", "4",
                 "--no-progress", "--threads", "1"]) == 0
    from unetlab.checkpoint import safe_load

    assert safe_load(run / "checkpoint.pt")["iteration"] == 4
    # ... changing the architecture is not
    assert main(["train", "--out", str(run), "--resume", "--width", "8"]) == 2
    assert "option 'width'" in _one_line_error(capsys)


# ------------------------------------------------------------------------------ never lose work
def test_empty_out_is_an_error_and_cwd_untouched(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.toml").write_text("mine = 1\n")
    assert main(["train", "synthetic", "--out", ""] + TINY) == 2
    assert "--out is empty" in _one_line_error(capsys)
    assert (tmp_path / "config.toml").read_text() == "mine = 1\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.toml"]


def test_non_empty_folder_needs_overwrite_and_inputs_are_never_overwritten(tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep")
    assert main(["train", "synthetic", "--out", str(folder)] + TINY) == 2
    assert "--overwrite" in _one_line_error(capsys)
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]
    # the --config file is the run's config.toml-to-be: refused even with --overwrite
    cfg = folder / "config.toml"
    cfg.write_text("width = 4\n")
    assert main(["train", "synthetic", "--config", str(cfg), "--out", str(folder),
                 "--overwrite"] + TINY) == 2
    assert "overwrite its own input" in _one_line_error(capsys)
    assert cfg.read_text() == "width = 4\n"
    cfg.unlink()
    assert main(["train", "synthetic", "--out", str(folder), "--overwrite"] + TINY) == 0
    assert (folder / "notes.txt").read_text() == "keep" and (folder / "model.pt").is_file()


@pytest.mark.parametrize("flags, needle", [
    (["--seed", "-1"], "seed (--seed): must be in 0"),
    (["--seed", str(2**64)], "seed (--seed): must be in 0"),
    (["--synthetic-seed", "-3"], "synthetic_seed (--synthetic-seed)"),
    (["--synthetic-size", "4"], "synthetic_size (--synthetic-size): must be at least"),
    (["--batch", "0"], "batch (--batch): must be ≥ 1"),
    (["--log-every", "0"], "log_every (--log-every): must be ≥ 1"),
    (["--threads", "-1"], "threads (--threads): must be ≥ 0"),
    (["--threads", "100000"], "threads (--threads): must be ≤ 1024"),
    (["--precision", "fp8"], "precision (--precision): must be one of auto, fp32, bf16, fp16"),
    (["--device", "tpu"], "device (--device)"),
])
def test_option_ranges_are_one_line_errors(tmp_path, capsys, flags, needle):
    out = tmp_path / "r"
    assert main(["train", "synthetic", "--out", str(out)] + TINY + flags) == 2
    err = _one_line_error(capsys)
    assert needle in err and "bug" not in err
    assert not out.exists()


def test_second_writer_is_refused_and_a_dead_owner_is_taken_over(tmp_path, capsys):
    import os
    import subprocess
    import sys

    run = tmp_path / "run"
    code = ("import sys, time; from unetlab.runlock import RunLock; "
            "l = RunLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(60)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    owner = subprocess.Popen([sys.executable, "-c", code, str(run)], stdout=subprocess.PIPE,
                             env=env, text=True)
    try:
        assert owner.stdout.readline().strip() == "locked"
        assert main(["train", "synthetic", "--out", str(run)] + TINY) == 2
        err = _one_line_error(capsys)
        assert f"in use by another unetlab process (pid {owner.pid})" in err
        assert main(["demo", "--quick", "--out", str(run), "--no-progress"]) == 2
        assert "in use by another unetlab process" in _one_line_error(capsys)
        assert not (run / "checkpoint.pt").exists()
    finally:
        owner.kill()                     # kill -9: the lock file stays, the kernel lock goes
        owner.wait()
    assert (run / ".lock").exists()
    assert main(["train", "synthetic", "--out", str(run)] + TINY) == 0
    assert (run / "model.pt").is_file() and not (run / ".lock").exists()


def test_resume_to_fewer_iterations_is_an_error_and_changes_nothing(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "synthetic", "--out", str(run)] + TINY) == 0
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    assert main(["train", "--out", str(run), "--resume", "--iterations", "1"]) == 2
    err = _one_line_error(capsys)
    assert "already at iteration 3, past --iterations 1" in err
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    # the same number of iterations: a no-op that keeps the files consistent
    assert main(["train", "--out", str(run), "--resume", "--iterations", "3"]) == 0
    assert load_config(run / "config.toml").iterations == 3


def test_run_folder_is_self_contained_and_names_the_model_to_use(tmp_path, capsys,
                                                                monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--data", "cells"]) == 0
    assert "wrote 9 files into cells" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "cells").iterdir()) == ["big.tif", "demo_data.json",
                                                                      "images",
                                                                      "labels"]
    assert main(["train", "cells", "--out", "runs/c", "--val", "cells"] + TINY) == 0
    out = capsys.readouterr().out
    assert "best model:" in out and "best.pt (iteration 3, rand_error" in out
    assert "last model:" in out and "model.pt (iteration 3)" in out
    cfg = load_config(tmp_path / "runs" / "c" / "config.toml")
    assert cfg.data == str(tmp_path / "cells") and cfg.data_as_given == "cells"
    assert cfg.val == str(tmp_path / "cells")
    text = (tmp_path / "runs" / "c" / "config.toml").read_text()
    assert "# resolved: device = cpu, precision = " in text
    # the same folder again is refused: --data never overwrites
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "cells").rglob("*")}
    assert main(["demo", "--data", "cells"]) == 0            # the same dataset: left in place
    assert "cells already holds this dataset (9 files)" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "cells").rglob("*")} == before
    assert main(["demo", "--data", "cells", "--seed", "1"]) == 2    # another one: refused
    assert "not an empty folder" in _one_line_error(capsys)
    assert main(["demo", "--data", "runs"]) == 2                   # any other content: refused
    assert "not an empty folder" in _one_line_error(capsys)


def test_old_amp_option_reads_as_precision(tmp_path):
    p = tmp_path / "old.toml"
    p.write_text("amp = false\nwidth = 4\n")
    assert load_config(p).precision == "fp32"
    p.write_text("amp = true\n")
    assert load_config(p).precision == "auto"


def test_sigterm_through_the_cli_saves_and_exits_143(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from unetlab.checkpoint import safe_load

    run = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), OMP_NUM_THREADS="1")
    argv = [sys.executable, "-m", "unetlab", "train", "synthetic", "--out", str(run),
            "--width", "4", "--depth", "1", "--tile", "44", "--iterations", "100000",
            "--checkpoint-every", "5", "--no-progress", "--threads", "1", "--precision", "fp32"]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 120
        while not (run / "log.csv").exists() or (run / "log.csv").read_text().count("\n") < 3:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("interrupted at iteration ") and "--resume" in last, err
    stopped = int(last.split("iteration ")[1].split(":")[0])
    assert safe_load(run / "checkpoint.pt")["iteration"] == stopped > 0
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]


def test_finite_extreme_images_train(tmp_path, capsys):
    import numpy as np
    import tifffile

    from unetlab.synthetic import touching_cells_arrays

    _, lab = touching_cells_arrays(1, 64, 0)[0]
    (tmp_path / "d" / "images").mkdir(parents=True)
    (tmp_path / "d" / "labels").mkdir()
    tifffile.imwrite(tmp_path / "d" / "images" / "a.tif",
                     np.where(lab > 0, 3e38, -3e38).astype(np.float32))
    tifffile.imwrite(tmp_path / "d" / "labels" / "a.tif", lab.astype(np.int32))
    assert main(["train", str(tmp_path / "d"), "--out", str(tmp_path / "r")] + TINY) == 0
