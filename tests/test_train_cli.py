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
    assert main(["train", "--print-config"]) == 0
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
