"""Training within a wall-clock budget (``unetlab train --time``)."""
import numpy as np
import pytest
import torch

from unetlab.errors import UnetlabError
from unetlab.training import TrainConfig, load_config, train
from unetlab.training.budget import budget_iterations, parse_duration


@pytest.mark.parametrize("text, seconds", [("60m", 3600), ("90s", 90), ("1h30m", 5400),
                                           ("1.5h", 5400), ("45", 2700), ("2m30s", 150),
                                           (" 10 s ", 10)])
def test_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["", "abc", "10x", "0m", "1h30", "-5m", "m"])
def test_bad_durations_name_the_option(bad):
    with pytest.raises(UnetlabError, match="--time"):
        parse_duration(bad)


def test_budget_arithmetic_by_hand():
    # 100 s, 10 spent, validation 5 s every 10 steps (+1 at the end): (100-10-5) / (1.05+0.5)
    assert budget_iterations(100, 10, 1.0, 5.0, 10) == int(85 // 1.55) == 54
    assert budget_iterations(10, 20, 1.0, 0.0, 10) == 1            # no time left: one step
    # checkpoints of 2 s every 4 steps add 0.5 s per step
    assert budget_iterations(100, 10, 1.0, 5.0, 10, 2.0, 4) == int(85 // 2.05) == 41


TINY = dict(data="synthetic", synthetic_images=2, synthetic_size=64, width=2, depth=1, tile=36,
            val="synthetic", val_every=20, checkpoint_every=20, log_every=1, progress=False,
            threads=1, precision="fp32", seed=3)


def _weights(run):
    from unetlab.checkpoint import safe_load

    return safe_load(run / "model.pt")["state_dict"]


def test_time_fixes_the_iterations_and_resume_keeps_them(tmp_path, monkeypatch):
    import unetlab.training as training

    run = train(TrainConfig(out=str(tmp_path / "a"), time="8s", **TINY), say=lambda m: None)
    cfg = load_config(run / "config.toml")
    assert cfg.time == "8s" and cfg.iterations > 4 and cfg.warmup <= cfg.iterations // 4
    log = np.genfromtxt(run / "log.csv", delimiter=",", names=True)
    assert int(np.max(log["iteration"])) == cfg.iterations
    # the same configuration with the iterations written down trains the same weights
    fixed = TrainConfig(**{**TINY, "out": str(tmp_path / "b"), "iterations": cfg.iterations,
                           "warmup": cfg.warmup})
    again = train(fixed, say=lambda m: None)
    for a, b in zip(_weights(run).values(), _weights(again).values()):
        assert torch.equal(a, b)
    # --resume never measures again: the stored iterations stay
    monkeypatch.setattr(training, "_fit_budget", lambda *a, **k: pytest.fail("re-measured"))
    train(cfg, resume=True, say=lambda m: None)
    assert load_config(run / "config.toml").iterations == cfg.iterations


def test_time_through_the_cli(tmp_path, capsys):
    from unetlab.cli import main

    out = tmp_path / "run"
    assert main(["train", "synthetic", "--out", str(out), "--time", "3s", "--width", "2",
                 "--depth", "1", "--tile", "36", "--synthetic-size", "64", "--threads", "1",
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "--time 3s:" in printed and "iterations" in printed
    assert main(["train", "synthetic", "--out", str(tmp_path / "x"), "--time", "soon"]) == 2
    assert "--time" in capsys.readouterr().err
