"""Device-aware training recipes (``unetlab train --preset auto|cpu|paper``).

A preset gives the starting values of the options a user does not set: ``paper`` is Sec. 3 of
Ronneberger et al. 2015 exactly (width 64, 572² tiles, SGD with momentum 0.99); ``cpu`` is the
recipe that learns within an hour on a laptop CPU (docs/isbi2012.md has the ablations that chose
it). ``auto`` (the command line's default) picks ``paper`` on a GPU and ``cpu`` on a CPU.
Options are resolved as: preset < ``--config FILE`` < command-line flags; every value a preset
sets carries a reason, which ``--print-config`` prints above the option.

With ``--dims 3`` (volumes) each preset has a 3D form: ``paper`` is the 3D U-Net of Çiçek et
al. 2016 (Sec. 2: width 32, three poolings, batch norm, channels doubled before each pooling,
132×132×116 tiles); ``cpu`` is a small network (width 8, depth 3, batch norm, 132³ tiles,
Adam at lr 0.003) whose step fits a CPU. Both select ``best.pt`` by SEG (the Rand error is 2D-only).
"""
from __future__ import annotations

import dataclasses
from typing import Any

from ..errors import UnetlabError

__all__ = ["PRESETS", "preset_values", "choose_preset", "apply_preset", "preset_reasons",
           "recipe"]

#: the names ``--preset`` accepts
PRESETS = ("auto", "cpu", "paper")

#: how long both paper recipes (2D and 3D) train: a fixed number of SGD steps
_PAPER_STEPS: dict[str, tuple[Any, str]] = {
    "iterations": (5000, "a fixed number of steps; use --time to give a wall-clock budget"),
    "time": ("", "no wall-clock budget: the run makes --iterations steps"),
    "warmup": (200, "200 steps of warm-up protect the first SGD steps at momentum 0.99"),
}

#: how long both CPU recipes (2D and 3D) train: Adam for an hour of wall-clock time
_CPU_HOUR: dict[str, tuple[Any, str]] = {
    "momentum": (0.9, "Adam's beta1 = 0.9 (its usual value)"),
    "time": ("60m", "a one-hour wall-clock budget: iterations are set from the step time "
             "measured on this machine so the schedule ends when the hour does"),
    "warmup": (200, "200 steps of warm-up"),
}

#: the paper's recipe (Sec. 3): (value, reason) per option
_PAPER: dict[str, tuple[Any, str]] = {
    "width": (64, "the paper's network: 64 channels in the first level (Fig. 1)"),
    "depth": (4, "the paper's network: 4 poolings, 23 conv layers (Fig. 1)"),
    "norm": ("none", "the paper's network has no normalisation layers"),
    "tile": (0, "572² input tiles → 388² output, as in Fig. 1"),
    "optimizer": ("sgd", "SGD with momentum 0.99 (Sec. 3)"),
    "momentum": (0.99, "high momentum: many earlier samples decide each update (Sec. 3)"),
    "lr": (0.001, "fastest stable SGD rate measured at width 64 (docs/decisions.md)"),
    **_PAPER_STEPS,
    "channels_last": (False, "NCHW: the faster layout for the fp32 training step"),
}

#: the CPU recipe: (value, reason) per option; the ablations of docs/isbi2012.md chose it
_CPU: dict[str, tuple[Any, str]] = {
    "width": (16, "16 channels in the first level: 16× fewer operations per pixel than the "
              "paper's 64, so many more steps fit in a CPU hour (docs/isbi2012.md)"),
    "depth": (4, "4 poolings keep the paper's context: each output pixel sees 184 px more "
              "input than the output tile"),
    "norm": ("none", "no normalisation, as in the paper: with batch normalisation the hour on "
             "ISBI 2012 ended at Rand error 0.154 against 0.0695 (docs/isbi2012.md)"),
    "tile": (380, "380² tiles (196² output): steps 2× cheaper than 572², so more of them"),
    "optimizer": ("adam", "Adam learns within a CPU budget where SGD 0.99 at a safe rate does "
                  "not (docs/isbi2012.md)"),
    "lr": (0.001, "Adam's usual rate; poly decay to 0 by the end of the budget"),
    "sigma": (3.0, "a 3 px border band (Eq. 2; the paper: 5): over the hour on both ISBI 2012 "
              "splits the Rand error fell (0.0597 → 0.0502 and 0.0544 → 0.0491) with the other "
              "errors within run-to-run spread, and the demo's SEG rose (0.759 → 0.769); "
              "docs/isbi2012.md"),
    "dropout": (0.5, "the paper's dropout 0.5: an hour without it was not better on both "
                "ISBI 2012 splits (Rand error 0.0502 → 0.0512 and 0.0491 → 0.0613); "
                "docs/isbi2012.md"),
    **_CPU_HOUR,
}


#: what both 3D presets set beyond their 2D form
_VOLUMES: dict[str, tuple[Any, str]] = {
    "select": ("seg", "volumes have no Rand error here (it is 2D-only): SEG, the Cell Tracking "
               "Challenge score (mean Jaccard index of the matched cells), picks best.pt"),
    "synthetic_size": (128, "generated volumes of 128³ voxels (about 100 cells each); 8 of "
                       "256³ would hold 1.7 GB of images, labels and weights"),
    "channels_last": (False, "NCDHW: channels_last_3d has not been measured faster for 3D "
                      "training"),
}

#: the 3D U-Net of Çiçek et al. 2016 (Sec. 2 and 3): (value, reason) per option
_PAPER_3D: dict[str, tuple[Any, str]] = {
    **_VOLUMES,
    "width": (32, "the 3D U-Net: 32 channels in the first convolution (Çiçek et al. 2016, "
              "Fig. 1)"),
    "depth": (3, "the 3D U-Net: three 2×2×2 poolings (Çiçek et al. 2016, Fig. 1)"),
    "norm": ("batch", "batch normalisation before each ReLU (Çiçek et al. 2016, Sec. 2)"),
    "channels": ("doubled", "channels doubled before each pooling, to avoid bottlenecks "
                 "(Çiçek et al. 2016, Sec. 2)"),
    "dropout": (0.0, "no dropout in the 3D U-Net (it has batch normalisation)"),
    "tile": (132, "132×132 in-plane input tiles → 44×44 output (Çiçek et al. 2016, Sec. 2)"),
    "tile_z": (116, "116 slices in z → 28 output slices (Çiçek et al. 2016, Sec. 2)"),
    "optimizer": ("sgd", "SGD with momentum 0.99, the 2015 recipe the 3D U-Net builds on"),
    "momentum": (0.99, "high momentum: many earlier samples decide each update"),
    "lr": (0.001, "the 2D recipe's rate (not tuned for volumes)"),
    **_PAPER_STEPS,
}

#: the 3D CPU recipe: (value, reason) per option
_CPU_3D: dict[str, tuple[Any, str]] = {
    **_VOLUMES,
    "width": (8, "8 channels in the first level: a 3×3×3 convolution costs 3× a 3×3 one per "
              "voxel and a 132³ tile holds 2.3 M voxels; at width 8 a step needs about 1 GB "
              "and 9 s on one (shared) core, less with more cores"),
    "depth": (3, "3 poolings as in Çiçek et al. 2016: each output voxel sees 44 voxels of "
              "context on every side"),
    "norm": ("batch", "batch normalisation, as Çiçek et al.: after 100 steps on generated "
             "volumes (the data of benchmarks/sparse3d.py --small: width 4, depth 2, Adam, no "
             "dropout) it reached foreground IoU 0.63 at lr 0.001 and 0.79 at lr 0.003, where "
             "no normalisation reached 0.08 and 0.40"),
    "channels": ("paper", "the 2015 channel rule (no doubling): about half the operations of "
                 "'doubled'"),
    "dropout": (0.0, "no dropout, as Çiçek et al. (and the measurement above)"),
    "tile": (132, "132² in-plane (→ 44² output): 3.9× the output voxels of a 116 tile for "
             "1.4× its step time (measured at width 8 on one core)"),
    "tile_z": (0, "z as the in-plane tile (132 → 44 output slices); lower it for thin stacks "
               "or with --pooling 1,2,2"),
    "optimizer": ("adam", "Adam learns within a CPU budget where SGD 0.99 at a safe rate does "
                  "not (the 2D ablations, docs/isbi2012.md)"),
    "lr": (0.003, "3× Adam's usual rate: with batch normalisation it learned fastest in the "
           "measurement above; poly decay to 0 by the end of the budget"),
    **_CPU_HOUR,
}


def preset_values(name: str, bf16: bool = False, dims: int = 2) -> dict[str, tuple[Any, str]]:
    """The (value, reason) of each option that preset ``name`` ('cpu' or 'paper') sets;
    ``bf16`` says whether bf16 will run (then the 2D CPU recipe trains channels_last, its
    fastest layout with bf16); ``dims`` 3 gives the volume forms (module docstring)."""
    if name in ("cpu", "paper") and dims == 3:
        return dict(_CPU_3D if name == "cpu" else _PAPER_3D)
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


def apply_preset(config, name: str, device: str = "auto", precision: str = "auto",
                 dims: int = 2):
    """(``config`` with the values of preset ``name`` put in, ``{option: reason}``).
    The returned config's ``preset`` field is the resolved name ('cpu' or 'paper'); ``dims``
    3 puts in the volume form and sets ``dims``."""
    from ..hardware import resolve_device, resolve_precision

    chosen, why = choose_preset(name, device)
    bf16 = resolve_precision(precision, resolve_device(device)) == "bf16"
    values = preset_values(chosen, bf16, dims)
    if dims == 3:
        config = dataclasses.replace(config, dims=3)
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
    values = preset_values(config.preset, bf16=bool(config.channels_last), dims=config.dims)
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
    dims = config_from_mapping({"dims": options.get("dims", 2)}).dims
    base = apply_preset(TrainConfig(), preset, probe.device, probe.precision, dims)[0]
    if "iterations" in options and "time" not in options:
        base.time = ""
    return config_from_mapping(options, base, where="recipe").check()
