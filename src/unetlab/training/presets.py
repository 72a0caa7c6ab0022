"""Device-aware training recipes (``unetlab train --preset auto|cpu|paper``).

A preset gives the starting values of the options a user does not set: ``paper`` is Sec. 3 of
Ronneberger et al. 2015 exactly (width 64, 572² tiles, SGD with momentum 0.99); ``cpu`` is the
recipe that learns within an hour on a laptop CPU (docs/isbi2012.md has the ablations that chose
it). ``auto`` (the command line's default) picks ``paper`` on a GPU and ``cpu`` on a CPU.
Options are resolved as: preset < ``--config FILE`` < command-line flags; every value a preset
sets carries a reason, which ``--print-config`` prints above the option.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from ..errors import UnetlabError

__all__ = ["PRESETS", "preset_values", "choose_preset", "apply_preset", "preset_reasons",
           "recipe"]

#: the names ``--preset`` accepts
PRESETS = ("auto", "cpu", "paper")

#: the paper's recipe (Sec. 3): (value, reason) per option
_PAPER: dict[str, tuple[Any, str]] = {
    "width": (64, "the paper's network: 64 channels in the first level (Fig. 1)"),
    "depth": (4, "the paper's network: 4 poolings, 23 conv layers (Fig. 1)"),
    "norm": ("none", "the paper's network has no normalisation layers"),
    "tile": (0, "572² input tiles → 388² output, as in Fig. 1"),
    "optimizer": ("sgd", "SGD with momentum 0.99 (Sec. 3)"),
    "momentum": (0.99, "high momentum: many earlier samples decide each update (Sec. 3)"),
    "lr": (0.001, "fastest stable SGD rate measured at width 64 (docs/decisions.md)"),
    "iterations": (5000, "a fixed number of steps; use --time to give a wall-clock budget"),
    "time": ("", "no wall-clock budget: the run makes --iterations steps"),
    "warmup": (200, "200 steps of warm-up protect the first SGD steps at momentum 0.99"),
    "channels_last": (False, "NCHW: the faster layout for the fp32 training step"),
}

#: the CPU recipe: (value, reason) per option; the ablations of docs/isbi2012.md chose it
_CPU: dict[str, tuple[Any, str]] = {
    "width": (16, "16 channels in the first level: 16× fewer operations per pixel than the "
              "paper's 64, so many more steps fit in a CPU hour (docs/isbi2012.md)"),
    "depth": (4, "4 poolings keep the paper's context: each output pixel sees 184 px more "
              "input than the output tile"),
    "norm": ("none", "no normalisation, as in the paper (docs/isbi2012.md, ablations)"),
    "tile": (380, "380² tiles (196² output): steps 2× cheaper than 572², so more of them"),
    "optimizer": ("adam", "Adam learns within a CPU budget where SGD 0.99 at a safe rate does "
                  "not (docs/isbi2012.md)"),
    "momentum": (0.9, "Adam's beta1 = 0.9 (its usual value)"),
    "lr": (0.001, "Adam's usual rate; poly decay to 0 by the end of the budget"),
    "time": ("60m", "a one-hour wall-clock budget: iterations are set from the step time "
             "measured on this machine so the schedule ends when the hour does"),
    "warmup": (200, "200 steps of warm-up"),
}


def preset_values(name: str, bf16: bool = False) -> dict[str, tuple[Any, str]]:
    """The (value, reason) of each option that preset ``name`` ('cpu' or 'paper') sets;
    ``bf16`` says whether bf16 will run (then the CPU recipe trains channels_last, its fastest
    layout with bf16)."""
    if name == "paper":
        return dict(_PAPER)
    if name == "cpu":
        values = dict(_CPU)
        values["channels_last"] = (
            (True, "channels_last: with bf16 the fastest training layout on a CPU "
                   "(docs/decisions.md)") if bf16 else
            (False, "NCHW: without bf16 the faster layout for the fp32 training step"))
        return values
    raise UnetlabError(f"--preset {name!r}: use one of {', '.join(PRESETS)}")


def choose_preset(name: str, device: str = "auto") -> tuple[str, str]:
    """(``'cpu'`` or ``'paper'``, the reason) for ``--preset name`` on ``--device device``.
    ``auto`` is 'paper' where training runs on a GPU and 'cpu' otherwise."""
    name = str(name).strip().lower()
    if name not in PRESETS:
        raise UnetlabError(f"--preset {name!r}: use one of {', '.join(PRESETS)}")
    if name != "auto":
        return name, f"--preset {name}"
    from ..hardware import resolve_device

    dev = resolve_device(device)
    if dev.type == "cuda":
        return "paper", "--preset auto on a GPU: the paper's recipe"
    return "cpu", "--preset auto on a CPU: the recipe that learns within an hour on a CPU"


def apply_preset(config, name: str, device: str = "auto", precision: str = "auto"):
    """(``config`` with the values of preset ``name`` put in, ``{option: reason}``).
    The returned config's ``preset`` field is the resolved name ('cpu' or 'paper')."""
    from ..hardware import resolve_device, resolve_precision

    chosen, why = choose_preset(name, device)
    bf16 = resolve_precision(precision, resolve_device(device)) == "bf16"
    values = preset_values(chosen, bf16)
    new = dataclasses.replace(config, preset=chosen,
                              **{k: v for k, (v, _) in values.items()})
    reasons = {k: r for k, (_, r) in values.items()}
    reasons["preset"] = why
    return new, reasons


def preset_reasons(config) -> dict[str, str]:
    """{option: reason} for each option of ``config`` whose value is the one its preset
    (``config.preset``, 'cpu' or 'paper') chose; the comments of ``--print-config``."""
    if config.preset not in ("cpu", "paper"):
        return {}
    values = preset_values(config.preset, bf16=bool(config.channels_last))
    same = {k for k, (v, _) in values.items() if getattr(config, k) == v}
    # a reason that speaks of another option holds only while that one is the preset's too
    return {k: values[k][1] for k in same if _DEPENDS.get(k, k) in same}


#: options whose preset reason depends on another option's value
_DEPENDS = {"lr": "optimizer", "momentum": "optimizer", "warmup": "optimizer"}


def recipe(preset: str = "auto", **options):
    """A :class:`~unetlab.training.TrainConfig` of preset ``preset`` ('auto', 'cpu' or
    'paper') with ``options`` (TrainConfig fields) on top: the Python form of ``unetlab train
    --preset P --option value``. ``TrainConfig()`` alone is the paper's recipe."""
    from .config import TrainConfig, config_from_mapping

    probe = config_from_mapping({k: options[k] for k in ("device", "precision")
                                 if k in options}).check()
    base = apply_preset(TrainConfig(), preset, probe.device, probe.precision)[0]
    if "iterations" in options and "time" not in options:
        base.time = ""
    return config_from_mapping(options, base, where="recipe").check()
