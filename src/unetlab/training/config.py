"""The training configuration: :class:`TrainConfig` (every option of ``unetlab train``), its
checks, and its TOML form (``--print-config`` writes it, ``--config`` reads it back).

Defaults follow Ronneberger et al. 2015, Sec. 3 (the choice of the default learning rate is
recorded in docs/decisions.md).
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import UnetlabError
from ..hardware import PRECISIONS
from .presets import PRESETS

__all__ = ["TrainConfig", "config_to_toml", "config_from_mapping", "load_config",
           "resolve_config", "MAX_SEED", "check_seed", "TOML_HEADER", "SELECT",
           "HIGHER_IS_BETTER", "parse_pooling", "parse_spacing", "CHOICES"]

#: largest seed accepted (seeds are ≥ 0; derived seeds such as ``seed + 1000`` stay < 2**32)
MAX_SEED = 2**31 - 1


def check_seed(value, option: str = "--seed") -> int:
    """``value`` if it is an integer in 0 … :data:`MAX_SEED` (what torch's and numpy's seeding
    both accept), else a one-line :class:`UnetlabError` naming ``option``."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        raise UnetlabError(f"{option}: must be an integer in 0 … {MAX_SEED}, got {value!r}")
    return value

#: first line of every config.toml the trainer writes (marks a folder as a run folder)
TOML_HEADER = "# unetlab train configuration (unetlab train --config FILE reads it back)"


def _opt(default, doc: str):
    return field(default=default, metadata={"doc": doc})


#: the options that take one of a few names, and those names (``--help`` shows them as metavars)
CHOICES: dict[str, tuple[str, ...]] = {
    "padding": ("valid", "same"), "norm": ("none", "batch", "group", "instance"),
    "upsampling": ("upconv", "bilinear"), "optimizer": ("sgd", "adam", "adamw"),
    "schedule": ("poly", "cosine", "onecycle", "constant"), "channels": ("paper", "doubled"),
    "precision": PRECISIONS, "preset": PRESETS}


@dataclass
class TrainConfig:
    """Every option of ``unetlab train`` (the CLI flag is ``--name-with-dashes``).

    Defaults follow the paper (Sec. 3): the 2015 network (width 64, depth 4, unpadded, dropout
    0.5), one 572² tile per step, SGD with momentum 0.99, weight map w0 = 10, σ = 5 px with class
    balance, elastic deformation + rotations/flips/shifts/grey values, He initialisation. The
    default learning rate 0.001 (an effective SGD step of lr/(1 − 0.99) = 100·lr) is the fastest
    stable rate measured; see docs/decisions.md.
    """
    # ---- data
    data: str = _opt("synthetic", "training data: a folder/stack that unetlab.data.read_dataset "
                     "reads, or 'synthetic' (generated touching cells); stored as an absolute "
                     "path")
    data_as_given: str = _opt("", "'data' as it was given (before it was made absolute)")
    labels: str = _opt("", "explicit labels for 'data' (folder or file); '' = found by layout")
    val: str = _opt("", "validation data (same forms as 'data'); '' = no validation")
    val_labels: str = _opt("", "explicit labels for 'val'; '' = found by layout")
    out: str = _opt("runs/train", "run folder (config.toml, checkpoint.pt, model.pt, best.pt, "
                    "log.csv, curves.png)")
    synthetic_images: int = _opt(8, "number of generated images when data is 'synthetic' "
                                 "(validation 'synthetic' uses 2 others)")
    synthetic_size: int = _opt(256, "side of the generated images (px) or volumes (voxels, "
                               "every axis; the 3D presets choose 128); at least the network's "
                               "smallest valid input tile")
    synthetic_seed: int = _opt(0, "seed of the generated images (validation uses seed + 1)")
    dims: int = _opt(2, "spatial dimensions: 2 (images) or 3 (volumes: TIFF stacks or zarr, "
                     "image/ + label/ folders or a CTC 3D folder; the 3D U-Net of Çiçek et al. "
                     "2016)")
    spacing: str = _opt("", "voxel size 'dz,dy,dx' of the volumes (dims 3; any unit, only the "
                        "ratios count: sigma, the elastic deformation and the shifts are in "
                        "x-voxels, z scaled by dz/dx); '' = as each file declares it (1,1,1 "
                        "when it does not and for generated volumes)")
    unlabelled: int = _opt(-1, "label value that marks voxels nobody annotated (dims 3, e.g. "
                           "65535): they count in no loss, weight or score (sparse annotation, "
                           "Çiçek et al. 2016); -1 = none (CTC slice annotations are sparse "
                           "already)")
    preset: str = _opt("paper", "starting values of the options not given: 'auto' (cpu on a "
                       "CPU, paper on a GPU), 'cpu' (learns within an hour on a CPU) or "
                       "'paper' (Sec. 3 exactly); TrainConfig() is 'paper'")
    # ---- network (unetlab.model.UNet)
    width: int = _opt(64, "channels of the first level (64 in the paper)")
    depth: int = _opt(4, "number of 2×2 max poolings (4 in the paper)")
    padding: str = _opt("valid", "'valid' (unpadded convolutions, the paper) or 'same'")
    norm: str = _opt("none", "normalisation after each 3×3 conv: none, batch, group, instance")
    dropout: float = _opt(0.5, "dropout probability at the end of the contracting path")
    upsampling: str = _opt("upconv", "'upconv' (2×2 up-convolution, the paper) or 'bilinear'")
    channels: str = _opt("paper", "'paper' (2015: both convolutions of level i give width·2^i "
                         "channels) or 'doubled' (Çiçek et al. 2016: the second one doubles "
                         "them, before each pooling)")
    pooling: str = _opt("", "max-pooling factors of volumes (dims 3), 1 or 2 per axis 'z,y,x' "
                        "(e.g. 1,2,2: no pooling along a coarse z), or one such triple per "
                        "level joined by ';' (e.g. 1,2,2;2,2,2;2,2,2); '' = 2 on every axis")
    # ---- sampling
    tile: int = _opt(0, "input tile side (px); 0 = the valid size nearest ≥ 572 (the paper's "
                     "572 → 388 for depth 4); volumes: the in-plane side, 0 = the valid size "
                     "nearest ≥ 132 (Çiçek et al. 2016)")
    tile_z: int = _opt(0, "z side of the input tile of volumes (dims 3); 0 = the smallest "
                       "valid size ≥ the in-plane tile")
    batch: int = _opt(1, "tiles per step (the paper: 1 large tile)")
    iterations: int = _opt(5000, "number of optimiser steps (set from --time when that is "
                           "given)")
    time: str = _opt("", "wall-clock budget, e.g. 60m, 90s, 1h30m: a new run measures its step "
                     "time and sets iterations so that the learning-rate schedule ends when the "
                     "time does; '' = use iterations")
    augment: bool = _opt(True, "random elastic deformation (3×3 grid, σ --elastic-sigma px), "
                         "rotation, flips, shifts and grey values (Sec. 3.1)")
    elastic_sigma: float = _opt(10.0, "strength of the elastic deformation: standard deviation "
                                "of the displacements on its coarse grid (px; 10 in Sec. 3.1); "
                                "0 = none (the other augmentations stay)")
    # ---- targets (Eq. 2)
    w0: float = _opt(10.0, "border weight w0 of Eq. 2 (0 = no border term)")
    sigma: float = _opt(5.0, "border width σ of Eq. 2 (px)")
    balance: bool = _opt(True, "class-balance term w_c of Eq. 2")
    cldice: float = _opt(0.0, "weight λ of a clDice term (Shit et al. 2021) on class 0, the "
                         "membranes of EM maps, added to the weighted cross-entropy: a "
                         "topology term for thin structures (docs/isbi2012.md); 0 = off")
    # ---- optimiser
    optimizer: str = _opt("sgd", "'sgd' (the paper), 'adam' or 'adamw' (Adam with decoupled "
                          "--weight-decay, Loshchilov & Hutter 2019)")
    lr: float = _opt(0.001, "peak learning rate (loss = weighted mean over labelled pixels); "
                     "with SGD momentum m the effective step is lr/(1−m) = 100·lr")
    momentum: float = _opt(0.99, "SGD momentum (0.99 in the paper); Adam's and AdamW's beta1")
    weight_decay: float = _opt(0.0, "weight decay: an L2 term in the gradient for sgd and adam, "
                               "decoupled for adamw")
    schedule: str = _opt("poly", "learning-rate decay: 'poly' (lr·(1−t)^0.9), 'cosine', "
                         "'onecycle' (cosine from lr/25 up to lr over the first 30 % of the "
                         "steps, then down to lr/(25·10⁴); Smith & Topin 2019; --warmup is "
                         "not used) or 'constant'")
    warmup: int = _opt(200, "iterations of linear learning-rate warm-up from 0 (not with "
                       "--schedule onecycle, which has its own)")
    grad_clip: float = _opt(0.0, "clip the global gradient norm to this value; 0 = off")
    # ---- validation, logging, checkpoints
    val_every: int = _opt(500, "validate every N iterations (and at the end)")
    val_tta: bool = _opt(False, "validate with 8-fold test-time augmentation")
    select: str = _opt("rand_error", "validation score for best.pt: images: rand_error, "
                       "pixel_error or loss (lower is better); volumes (dims 3): seg (Cell "
                       "Tracking Challenge SEG), iou (foreground voxel IoU; both higher is "
                       "better) or loss — the Rand error is 2D-only")
    checkpoint_every: int = _opt(100, "write checkpoint.pt and model.pt every N iterations")
    log_every: int = _opt(10, "write a log.csv row (mean loss) every N iterations")
    # ---- execution
    seed: int = _opt(0, "seed of initialisation, tiles, augmentation and dropout")
    device: str = _opt("auto", "'auto' (cuda when available), 'cpu', 'cuda' or 'cuda:N'")
    precision: str = _opt("auto", "forward-pass precision: 'auto' (bf16 where the CPU/GPU "
                          "computes it natively, fp16 on a GPU without bf16, else fp32), "
                          "'fp32', 'bf16' or 'fp16' (with loss scaling); weights and loss "
                          "stay fp32")
    channels_last: bool = _opt(False, "channels_last memory format for training (on a CPU "
                               "the faster layout with bf16; NCHW is faster with fp32)")
    prefetch: int = _opt(2, "tiles prepared ahead by a background thread; 0 = in the loop")
    threads: int = _opt(0, "CPU threads for torch; 0 = measure the first steps with 1 thread "
                        "and with all cores and keep the faster")
    progress: bool = _opt(True, "show a progress bar")

    # ------------------------------------------------------------------ checks
    def check(self) -> "TrainConfig":
        """Check every value; raise :class:`UnetlabError` naming the option. Returns self."""
        for f in fields(self):
            _check_type(f.name, getattr(self, f.name), f.type, "option")
        self._check_choices()
        self._check_ranges()
        self._check_dims()
        return self

    def _bad(self, name: str, what: str):
        raise UnetlabError(f"{name} (--{name.replace('_', '-')}): {what}, "
                           f"got {getattr(self, name)!r}")

    def _check_choices(self) -> None:
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                self._bad(name, f"must be one of {', '.join(allowed)}")
        dev = self.device.strip().lower()
        if not (dev in ("auto", "cpu", "cuda") or
                (dev.startswith("cuda:") and dev[5:].isdigit())):
            self._bad("device", "must be auto, cpu, cuda or cuda:N")
        if not self.data:
            self._bad("data", "no training data given")
        if not self.out.strip():
            self._bad("out", "empty run folder name (an unset shell variable?)")
        if self.time:
            from .budget import parse_duration

            parse_duration(self.time)

    def _check_dims(self) -> None:
        """``dims`` and the options that depend on it (:data:`SELECT`, the 3D-only ones)."""
        if self.dims not in (2, 3):
            self._bad("dims", "must be 2 (images) or 3 (volumes)")
        if self.select not in SELECT[self.dims]:
            what = "images" if self.dims == 2 else "volumes (--dims 3)"
            self._bad("select", f"for {what} must be one of {', '.join(SELECT[self.dims])}"
                      + ("" if self.dims == 2 else " (the Rand error is 2D-only)"))
        if self.dims == 2:
            for name, unset in (("pooling", ""), ("tile_z", 0), ("spacing", ""),
                                ("unlabelled", -1)):
                if getattr(self, name) != unset:
                    self._bad(name, "is an option of volumes; add --dims 3")
            return
        try:
            parse_pooling(self.pooling, self.depth)
        except UnetlabError as e:
            self._bad("pooling", str(e))
        try:
            parse_spacing(self.spacing)
        except UnetlabError as e:
            self._bad("spacing", str(e))
        if self.unlabelled < -1:
            self._bad("unlabelled", "must be a label value ≥ 0, or -1 for none")

    def _check_ranges(self) -> None:
        for name in ("width", "depth", "batch", "iterations", "val_every", "checkpoint_every",
                     "log_every", "synthetic_images", "synthetic_size"):
            if getattr(self, name) < 1:
                self._bad(name, "must be ≥ 1")
        if self.depth > 8:
            self._bad("depth", "must be ≤ 8")
        if self.threads > 1024:
            self._bad("threads", "must be ≤ 1024 (0 = choose by measurement)")
        for name in ("warmup", "prefetch", "tile", "tile_z", "threads"):
            if getattr(self, name) < 0:
                self._bad(name, "must be ≥ 0")
        for name in ("seed", "synthetic_seed"):
            if not 0 <= getattr(self, name) <= MAX_SEED:
                self._bad(name, f"must be in 0 … {MAX_SEED}")
        for name in ("lr", "sigma"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                self._bad(name, "must be a finite number > 0")
        for name in ("w0", "weight_decay", "grad_clip", "cldice", "elastic_sigma"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                self._bad(name, "must be a finite number ≥ 0")
        if not 0 <= self.momentum < 1:
            self._bad("momentum", "must be in [0, 1)")
        if not 0 <= self.dropout <= 1:
            self._bad("dropout", "must be in [0, 1]")

    def with_absolute_paths(self) -> "TrainConfig":
        """A copy whose data paths (``data``, ``labels``, ``val``, ``val_labels``) are absolute,
        so that a run folder is usable from any working folder; ``data_as_given`` keeps the
        original ``data`` string. 'synthetic' and '' stay as they are."""
        new = dataclasses.replace(self)
        for name in ("data", "labels", "val", "val_labels"):
            value = getattr(self, name)
            if value and value != "synthetic":
                absolute = str(Path(value).expanduser().absolute())
                if name == "data" and absolute != value and not self.data_as_given:
                    new.data_as_given = value
                setattr(new, name, absolute)
        return new

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: the validation scores ``select`` may name, per ``dims``; :data:`HIGHER_IS_BETTER` says which
#: of them grow with quality (the others are errors or losses)
SELECT = {2: ("rand_error", "pixel_error", "loss"), 3: ("seg", "iou", "loss")}
HIGHER_IS_BETTER = frozenset({"seg", "iou"})


def parse_pooling(text: str, depth: int) -> int | tuple:
    """``pooling`` as :class:`unetlab.UNet` takes it: ``''`` → 2; ``'z,y,x'`` → one factor per
    axis (every level); ``'z,y,x;z,y,x;…'`` → one triple per level (``depth`` of them).
    Factors are 1 or 2; raises :class:`UnetlabError` saying what is wrong."""
    text = str(text).strip().replace(" ", "")
    if not text:
        return 2
    try:
        levels = [tuple(int(v) for v in part.split(",")) for part in text.split(";")]
    except ValueError:
        raise UnetlabError("give factors 'z,y,x' such as 1,2,2, or one triple per level "
                           "joined by ';'") from None
    if any(len(v) != 3 or any(f not in (1, 2) for f in v) for v in levels):
        raise UnetlabError("each level needs three factors 'z,y,x', each 1 or 2")
    if len(levels) == 1:
        return levels[0]
    if len(levels) != depth:
        raise UnetlabError(f"{len(levels)} levels given, the network has depth {depth}")
    return tuple(levels)


def parse_spacing(text: str) -> tuple[float, float, float] | None:
    """``spacing`` 'dz,dy,dx' as three finite numbers > 0, or None for ''."""
    text = str(text).strip()
    if not text:
        return None
    try:
        values = tuple(float(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise UnetlabError("give the voxel size as three numbers > 0 'dz,dy,dx', e.g. 2,0.5,0.5")
    return values  # type: ignore[return-value]


_TYPE_WORDS = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false"}


def _check_type(name: str, value: Any, typ: Any, where: str) -> Any:
    t = typ if isinstance(typ, str) else getattr(typ, "__name__", str(typ))
    ok = {"int": isinstance(value, int) and not isinstance(value, bool),
          "float": isinstance(value, (int, float)) and not isinstance(value, bool),
          "str": isinstance(value, str),
          "bool": isinstance(value, bool)}.get(t, True)
    if not ok:
        raise UnetlabError(f"{where} '{name}' must be {_TYPE_WORDS.get(t, t)}, got {value!r}")
    return float(value) if t == "float" else value


# ---------------------------------------------------------------------------- config files
def config_to_toml(config: TrainConfig, comments: bool = True, footer: str = "") -> str:
    """The configuration as TOML, every option with a comment saying what it is (and, where the
    value is its preset's, why the preset chose it); ``footer``
    (comment lines, e.g. the resolved device and precision) is appended."""
    import tomli_w

    from .presets import preset_reasons

    why = preset_reasons(config) if comments else {}
    lines = [TOML_HEADER]
    for f in fields(config):
        if comments:
            lines.append(f"# {f.metadata.get('doc', '')}")
            if f.name in why:
                lines.append(f"# why ({config.preset} preset): {why[f.name]}")
        lines.append(tomli_w.dumps({f.name: getattr(config, f.name)}).rstrip("\n"))
    lines.extend(f"# {line}" for line in footer.splitlines())
    return "\n".join(lines) + "\n"


#: options of earlier versions: old name → function of its value giving (new name, new value)
_RENAMED = {"amp": lambda on: ("precision", "auto" if on else "fp32")}


def config_from_mapping(values: dict[str, Any], base: TrainConfig | None = None,
                        where: str = "config") -> TrainConfig:
    """``base`` (default: the defaults) updated with ``values``; unknown keys and wrong types
    raise :class:`UnetlabError` naming the key (with a did-you-mean). The old ``amp`` option
    is read as ``precision`` (true → 'auto', false → 'fp32')."""
    names = [f.name for f in fields(TrainConfig)]
    types = {f.name: f.type for f in fields(TrainConfig)}
    out = dataclasses.replace(base) if base is not None else TrainConfig()
    for key, value in values.items():
        if key in _RENAMED and key not in names:
            _check_type(key, value, "bool", f"{where}: option")
            key, value = _RENAMED[key](value)
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise UnetlabError(f"{where}: unknown option '{key}'{hint}")
        setattr(out, key, _check_type(key, value, types[key], f"{where}: option"))
    return out


def _toml():
    """The TOML reader: ``tomllib`` (Python ≥ 3.11) or the ``tomli`` package it came from."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:                                    # pragma: no cover - exercised on Python 3.10
        import tomli as tomllib
    return tomllib


def load_config(path: str | Path, base: TrainConfig | None = None) -> TrainConfig:
    """Read a TOML configuration written by ``--print-config`` (or any subset of it)."""
    return config_from_mapping(_read_toml(path), base, where=str(path))


def _read_toml(path: str | Path) -> dict[str, Any]:
    """The top-level keys of the TOML file ``path``; a clear error when it is not one."""
    toml = _toml()
    path = Path(path)
    if not path.is_file():
        raise UnetlabError(f"{path}: no such configuration file")
    try:
        values = toml.loads(path.read_text(encoding="utf-8"))
    except (toml.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UnetlabError(f"{path}: not a valid TOML file ({e})") from None
    nested = [k for k, v in values.items() if isinstance(v, dict)]
    if nested:
        raise UnetlabError(f"{path}: unexpected table [{nested[0]}]; options are top-level keys")
    return values


def resolve_config(flags: dict[str, Any], config_file: str | None = None,
                   resume: bool = False) -> TrainConfig:
    """The configuration of a command line: preset < ``config_file`` < ``flags`` (option name
    → value, None = not given); the preset is ``preset`` of the flags or the file, else 'auto'
    (:mod:`unetlab.training.presets`: 'cpu' on a CPU, 'paper' on a GPU; their 3D forms when
    ``dims`` is 3). With ``resume`` the run's own stored configuration
    (``OUT/config.toml``, or its checkpoint when the run stopped before writing it) replaces
    the defaults; the trainer then checks that only the options that may change did."""
    flags = {k: v for k, v in flags.items() if v is not None}
    if resume:
        out = flags.get("out") or (load_config(config_file).out if config_file else None)
        if out is None:
            raise UnetlabError("--resume: give the run folder with --out RUN")
        cfg = _stored_config(Path(out))
    else:
        from .presets import apply_preset

        given = _read_toml(config_file) if config_file else {}
        given.update(flags)
        pick = {k: given.get(k, "auto") for k in ("preset", "device", "precision")}
        cfg = config_from_mapping({k: pick[k] for k in ("device", "precision")}).check()
        dims = config_from_mapping({"dims": given.get("dims", 2)}).dims   # type checked
        cfg = apply_preset(TrainConfig(), pick["preset"], cfg.device, cfg.precision, dims)[0]
        if "iterations" in given and "time" not in given:
            cfg.time = ""           # an explicit number of steps replaces the preset's budget
    if config_file:
        cfg = load_config(config_file, cfg)
    if not resume and "iterations" in flags and "time" not in flags:
        flags = {**flags, "time": ""}  # --iterations on the command line replaces any budget
    return config_from_mapping(flags, cfg, where="command line").check()


def _stored_config(run: Path) -> TrainConfig:
    stored, ckpt = run / "config.toml", run / "checkpoint.pt"
    if stored.is_file():
        return load_config(stored)
    if ckpt.is_file():          # stopped between the checkpoint and config.toml writes
        from ..checkpoint import safe_load

        return config_from_mapping(dict(safe_load(ckpt).get("config", {})), where=str(ckpt))
    raise UnetlabError(f"--resume: {stored}: no such file (is {run} a run folder?)")
