"""``unetlab train --preset auto|cpu|paper``: device-aware starting values, their precedence
(preset < --config < flags), the reasons --print-config prints, and resume keeping the stored
values."""
from __future__ import annotations

import dataclasses
import tomllib

import pytest

from unetlab.cli import main
from unetlab.errors import UnetlabError
from unetlab.training import TrainConfig
from unetlab.training import presets
from unetlab.training.config import resolve_config


def _print_config(capsys, *args) -> tuple[dict, str]:
    assert main(["train", *args, "--print-config"]) == 0
    text = capsys.readouterr().out
    return tomllib.loads(text), text


def test_auto_on_a_cpu_is_the_cpu_recipe_with_reasons(capsys):
    values, text = _print_config(capsys, "--device", "cpu")
    assert values["preset"] == "cpu"
    for name, (value, _) in presets.preset_values("cpu", values["channels_last"]).items():
        assert values[name] == value, name
    assert (values["width"], values["optimizer"], values["time"]) == (16, "adam", "60m")
    assert values["sigma"] == 3.0  # the ISBI 2012 hours on both splits (docs/isbi2012.md)
    assert values["dropout"] == 0.5  # kept: an hour without dropout was not better on both
    assert "# why (cpu preset): the paper's dropout 0.5" in text
    # one comment line saying why, above each option the preset chose
    why = [line for line in text.splitlines() if line.startswith("# why (cpu preset)")]
    assert len(why) == len(presets.preset_values("cpu"))
    assert "# why (cpu preset): Adam" in text


def test_auto_on_a_gpu_is_the_papers_recipe(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert presets.choose_preset("auto", "auto")[0] == "paper"
    assert presets.choose_preset("auto", "cpu")[0] == "cpu"
    cfg = resolve_config({"preset": None, "device": "cpu"})
    assert cfg.preset == "cpu"


def test_paper_preset_is_the_dataclass_default_everywhere(capsys):
    values, text = _print_config(capsys, "--preset", "paper", "--device", "cpu")
    assert values == dataclasses.asdict(TrainConfig(device="cpu"))
    assert (values["width"], values["tile"], values["optimizer"], values["momentum"]) == \
        (64, 0, "sgd", 0.99)
    assert "# why (paper preset): SGD with momentum 0.99" in text


def test_flags_and_config_file_override_the_preset(tmp_path, capsys):
    values, _ = _print_config(capsys, "--preset", "cpu", "--width", "32", "--norm", "batch")
    assert (values["width"], values["norm"], values["optimizer"]) == (32, "batch", "adam")
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text('optimizer = "sgd"\npreset = "cpu"\n')
    values, text = _print_config(capsys, "--config", str(cfg_file))
    assert (values["optimizer"], values["width"]) == ("sgd", 16)
    # the reason of an overridden value is not printed
    assert "# why (cpu preset): Adam" not in text     # nor of lr/momentum, which follow it
    # --preset on the command line beats the file's
    values, _ = _print_config(capsys, "--config", str(cfg_file), "--preset", "paper")
    assert (values["optimizer"], values["width"]) == ("sgd", 64)


def test_explicit_iterations_replace_the_preset_budget(capsys):
    values, _ = _print_config(capsys, "--preset", "cpu", "--iterations", "300")
    assert (values["iterations"], values["time"]) == (300, "")
    values, _ = _print_config(capsys, "--preset", "cpu", "--iterations", "300", "--time", "5m")
    assert (values["iterations"], values["time"]) == (300, "5m")


def test_channels_last_follows_bf16(monkeypatch):
    monkeypatch.setenv("UNETLAB_NO_NATIVE_BF16", "1")
    assert resolve_config({"preset": "cpu", "device": "cpu"}).channels_last is False
    assert resolve_config({"preset": "cpu", "device": "cpu",
                           "precision": "bf16"}).channels_last is True


def test_recipe_is_the_python_form():
    cfg = presets.recipe("cpu", data="synthetic", width=8, device="cpu")
    assert (cfg.preset, cfg.width, cfg.optimizer, cfg.time) == ("cpu", 8, "adam", "60m")
    assert presets.recipe("paper", device="cpu") == TrainConfig(device="cpu")
    assert presets.recipe("cpu", iterations=10, device="cpu").time == ""


def test_bad_preset_is_a_one_line_error(capsys):
    assert main(["train", "synthetic", "--preset", "laptop", "--print-config"]) == 2
    err = capsys.readouterr().err
    assert "--preset 'laptop'" in err and "Traceback" not in err
    with pytest.raises(UnetlabError, match="--preset"):
        presets.choose_preset("fast")


def test_resume_keeps_the_stored_values(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    from unetlab.training.config import TOML_HEADER, config_to_toml

    stored = dataclasses.replace(TrainConfig(), preset="cpu", width=8, out=str(run))
    (run / "config.toml").write_text(config_to_toml(stored))
    assert TOML_HEADER in (run / "config.toml").read_text()
    cfg = resolve_config({"out": str(run)}, resume=True)
    assert (cfg.width, cfg.optimizer, cfg.tile) == (8, "sgd", 0)   # stored, not the cpu preset's


def test_iterations_on_the_command_line_replace_the_files_budget(tmp_path, capsys):
    values, text = _print_config(capsys, "--preset", "cpu")
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text(text)                       # time = "60m" in the file
    values, _ = _print_config(capsys, "--config", str(cfg_file), "--iterations", "7")
    assert (values["iterations"], values["time"]) == (7, "")
    values, _ = _print_config(capsys, "--config", str(cfg_file))
    assert values["time"] == "60m"
