"""Training the U-Net the paper's way (Ronneberger et al. 2015, Sec. 3): one large tile per
step, SGD with momentum 0.99, pixel-wise soft-max + cross-entropy weighted by Eq. 2's weight
map, elastic deformation (Sec. 3.1), He initialisation — with checkpoints that resume exactly.

Python API::

    from unetlab.training import TrainConfig, train
    run = train(TrainConfig(data="synthetic", out="runs/x", width=16, iterations=2000))

The run folder (every file written atomically: a crash never leaves a broken file)::

    config.toml     the fully resolved configuration (``unetlab train --config`` reads it back)
    checkpoint.pt   model, optimiser, iteration, RNG state, best score, log — for ``--resume``
    model.pt        architecture + weights of the latest iteration (``unetlab.load_model``)
    best.pt         the same for the best validation score (with ``val``)
    log.csv         iteration, loss, lr, seconds, validation metrics
    curves.png      loss, learning rate and validation errors against iterations

**Exact resume.** The randomness of iteration ``i`` (which image, where the tile is, the
augmentation, the dropout masks) is derived from ``SeedSequence([seed, rank, i])`` and from
nothing else, so it does not depend on what ran before, on a background thread's timing or on
an interruption. The trainer restores model, optimiser, iteration and log from
``checkpoint.pt``; on CPU a run interrupted at any iteration and resumed ends with weights
bit-identical to an uninterrupted run with the same seed.

**Robustness.** A non-finite loss stops training with a one-line :class:`NonFiniteLossError`
and leaves the last good checkpoint in place (checkpoints are written only from finite
weights). Ctrl-C (SIGINT) lets the current iteration finish, writes a checkpoint and raises
:class:`TrainingInterrupted` (a ``KeyboardInterrupt``); a second Ctrl-C aborts at once (the
previous checkpoint stays). ``grad_clip`` > 0 clips the global gradient norm.

**Distributed.** ``torchrun --nproc_per_node N -m unetlab train ...`` trains with PyTorch
``DistributedDataParallel`` (gloo on CPU, nccl on CUDA, one GPU per rank): rank r draws its
tiles, augmentations and dropout masks of iteration i from ``SeedSequence([seed, r, i])``,
gradients are averaged over the ranks (an effective batch of N × ``batch`` tiles; the logged
loss is the mean over the ranks), and only rank 0 writes the run folder and validates. The loss
and the Ctrl-C flag are all-reduced before the backward pass, so all ranks stop at the same
iteration; ``--resume`` loads the same checkpoint on every rank (docs/distributed.md).

**Speed.** Weight maps are computed once per training image before the loop; tiles and their
augmentation are produced by a background thread ``prefetch`` iterations ahead (numpy, scipy
and torch release the GIL in their heavy parts). On CUDA the forward pass runs under autocast
(bfloat16 where supported, else float16 with gradient scaling); the loss is float32.
"""
from __future__ import annotations

import csv
import dataclasses
import difflib
import functools
import io
import math
import queue
import signal
import threading
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .atomic import atomic_path, atomic_torch_save, atomic_write_text
from .errors import UnetlabError

__all__ = ["TrainConfig", "train", "NonFiniteLossError", "TrainingInterrupted", "lr_at",
           "load_config", "config_to_toml", "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = "unetlab-checkpoint"


def _opt(default, doc: str):
    return field(default=default, metadata={"doc": doc})


@dataclass
class TrainConfig:
    """Every option of ``unetlab train`` (the CLI flag is ``--name-with-dashes``).

    Defaults follow the paper (Sec. 3): the 2015 network (width 64, depth 4, unpadded, dropout
    0.5), one 572² tile per step, SGD with momentum 0.99, weight map w0 = 10, σ = 5 px with class
    balance, elastic deformation + rotations/flips/shifts/grey values, He initialisation.

    **Default learning rate 0.001.** With momentum 0.99 an SGD step is effectively
    lr/(1 − 0.99) = 100·lr. Measured on generated touching cells (width 8, depth 3, 124² tiles,
    augmentation on, poly decay, 20 warm-up steps, 300 steps, one CPU thread): lr 0.1 and 0.03
    never left the class-prior loss (≈ 1.1); 0.01 learnt for ~150 steps, then collapsed back to
    it; 0.003 and 0.001 learnt steadily (final mean loss 0.52 and 0.49). 0.001 is the fastest
    stable rate measured with a 10× margin to the unstable 0.01; wider networks have larger
    gradients, so the margin matters more for them. The poly decay and ``best.pt`` (selection by
    validation) address the plateau of a constant-rate loop.
    """
    # ---- data
    data: str = _opt("synthetic", "training data: a folder/stack that unetlab.data.read_dataset "
                     "reads, or 'synthetic' (generated touching cells)")
    labels: str = _opt("", "explicit labels for 'data' (folder or file); '' = found by layout")
    val: str = _opt("", "validation data (same forms as 'data'); '' = no validation")
    val_labels: str = _opt("", "explicit labels for 'val'; '' = found by layout")
    out: str = _opt("runs/train", "run folder (config.toml, checkpoint.pt, model.pt, best.pt, "
                    "log.csv, curves.png)")
    synthetic_images: int = _opt(8, "number of generated images when data is 'synthetic' "
                                 "(validation 'synthetic' uses 2 others)")
    synthetic_size: int = _opt(256, "side of the generated images (px)")
    synthetic_seed: int = _opt(0, "seed of the generated images (validation uses seed + 1)")
    # ---- network (unetlab.model.UNet)
    width: int = _opt(64, "channels of the first level (64 in the paper)")
    depth: int = _opt(4, "number of 2×2 max poolings (4 in the paper)")
    padding: str = _opt("valid", "'valid' (unpadded convolutions, the paper) or 'same'")
    norm: str = _opt("none", "normalisation after each 3×3 conv: none, batch, group, instance")
    dropout: float = _opt(0.5, "dropout probability at the end of the contracting path")
    upsampling: str = _opt("upconv", "'upconv' (2×2 up-convolution, the paper) or 'bilinear'")
    # ---- sampling
    tile: int = _opt(0, "input tile side (px); 0 = the valid size nearest ≥ 572 (the paper's "
                     "572 → 388 for depth 4)")
    batch: int = _opt(1, "tiles per step (the paper: 1 large tile)")
    iterations: int = _opt(5000, "number of optimiser steps")
    augment: bool = _opt(True, "random elastic deformation (3×3 grid, σ 10 px), rotation, "
                         "flips, shifts and grey values (Sec. 3.1)")
    # ---- targets (Eq. 2)
    w0: float = _opt(10.0, "border weight w0 of Eq. 2 (0 = no border term)")
    sigma: float = _opt(5.0, "border width σ of Eq. 2 (px)")
    balance: bool = _opt(True, "class-balance term w_c of Eq. 2")
    # ---- optimiser
    optimizer: str = _opt("sgd", "'sgd' (the paper) or 'adam'")
    lr: float = _opt(0.001, "peak learning rate (loss = weighted mean over labelled pixels); "
                     "with SGD momentum m the effective step is lr/(1−m) = 100·lr")
    momentum: float = _opt(0.99, "SGD momentum (0.99 in the paper); Adam's beta1")
    weight_decay: float = _opt(0.0, "L2 weight decay")
    schedule: str = _opt("poly", "learning-rate decay: 'poly' (lr·(1−t)^0.9), 'cosine' or "
                         "'constant'")
    warmup: int = _opt(200, "iterations of linear learning-rate warm-up from 0")
    grad_clip: float = _opt(0.0, "clip the global gradient norm to this value; 0 = off")
    # ---- validation, logging, checkpoints
    val_every: int = _opt(500, "validate every N iterations (and at the end)")
    val_tta: bool = _opt(False, "validate with 8-fold test-time augmentation")
    select: str = _opt("rand_error", "validation score for best.pt: rand_error, pixel_error "
                       "or loss (lower is better)")
    checkpoint_every: int = _opt(100, "write checkpoint.pt and model.pt every N iterations")
    log_every: int = _opt(10, "write a log.csv row (mean loss) every N iterations")
    # ---- execution
    seed: int = _opt(0, "seed of initialisation, tiles, augmentation and dropout")
    device: str = _opt("auto", "'auto' (cuda when available), 'cpu' or 'cuda'")
    amp: bool = _opt(True, "mixed precision (autocast) on CUDA; ignored on CPU")
    channels_last: bool = _opt(False, "channels_last memory format for training (NCHW was "
                               "faster for the training step on CPU)")
    prefetch: int = _opt(2, "tiles prepared ahead by a background thread; 0 = in the loop")
    threads: int = _opt(0, "CPU threads for torch; 0 = torch's default (use 1 on a CPU shared "
                        "with other jobs: oversubscribed threads slow every step down a lot)")
    progress: bool = _opt(True, "show a progress bar")

    # ------------------------------------------------------------------ checks
    def validate(self) -> "TrainConfig":
        """Check every value; raise :class:`UnetlabError` naming the option. Returns self."""
        def bad(name: str, what: str):
            raise UnetlabError(f"{name} (--{name.replace('_', '-')}): {what}, "
                               f"got {getattr(self, name)!r}")

        for f in fields(self):
            _check_type(f.name, getattr(self, f.name), f.type, "option")
        choices = {"padding": ("valid", "same"), "norm": ("none", "batch", "group", "instance"),
                   "upsampling": ("upconv", "bilinear"), "optimizer": ("sgd", "adam"),
                   "schedule": ("poly", "cosine", "constant"),
                   "select": ("rand_error", "pixel_error", "loss"),
                   "device": ("auto", "cpu", "cuda")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                bad(name, f"must be one of {', '.join(allowed)}")
        for name in ("width", "depth", "batch", "iterations", "val_every", "checkpoint_every",
                     "log_every", "synthetic_images", "synthetic_size"):
            if getattr(self, name) < 1:
                bad(name, "must be ≥ 1")
        if self.depth > 8:
            bad("depth", "must be ≤ 8")
        for name in ("warmup", "prefetch", "tile", "seed", "synthetic_seed", "threads"):
            if getattr(self, name) < 0:
                bad(name, "must be ≥ 0")
        for name in ("lr", "sigma"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                bad(name, "must be a finite number > 0")
        for name in ("w0", "weight_decay", "grad_clip"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                bad(name, "must be a finite number ≥ 0")
        if not 0 <= self.momentum < 1:
            bad("momentum", "must be in [0, 1)")
        if not 0 <= self.dropout <= 1:
            bad("dropout", "must be in [0, 1]")
        if not self.data:
            bad("data", "no training data given")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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
def config_to_toml(config: TrainConfig, comments: bool = True) -> str:
    """The configuration as TOML, every option with a comment saying what it is."""
    import tomli_w

    lines = ["# unetlab train configuration (unetlab train --config FILE reads it back)"]
    for f in fields(config):
        if comments:
            lines.append(f"# {f.metadata.get('doc', '')}")
        lines.append(tomli_w.dumps({f.name: getattr(config, f.name)}).rstrip("\n"))
    return "\n".join(lines) + "\n"


def config_from_mapping(values: dict[str, Any], base: TrainConfig | None = None,
                        where: str = "config") -> TrainConfig:
    """``base`` (default: the defaults) updated with ``values``; unknown keys and wrong types
    raise :class:`UnetlabError` naming the key (with a did-you-mean)."""
    names = [f.name for f in fields(TrainConfig)]
    types = {f.name: f.type for f in fields(TrainConfig)}
    out = dataclasses.replace(base) if base is not None else TrainConfig()
    for key, value in values.items():
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise UnetlabError(f"{where}: unknown option '{key}'{hint}")
        setattr(out, key, _check_type(key, value, types[key], f"{where}: option"))
    return out


def load_config(path: str | Path, base: TrainConfig | None = None) -> TrainConfig:
    """Read a TOML configuration written by ``--print-config`` (or any subset of it)."""
    import tomllib

    path = Path(path)
    if not path.is_file():
        raise UnetlabError(f"{path}: no such configuration file")
    try:
        values = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UnetlabError(f"{path}: not a valid TOML file ({e})") from None
    nested = [k for k, v in values.items() if isinstance(v, dict)]
    if nested:
        raise UnetlabError(f"{path}: unexpected table [{nested[0]}]; options are top-level keys")
    return config_from_mapping(values, base, where=str(path))


# ---------------------------------------------------------------------------- errors
class NonFiniteLossError(UnetlabError):
    """The loss (or the weights) became NaN or infinite; the last good checkpoint is kept."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training; ``run_dir`` and ``iteration`` say what was saved."""

    def __init__(self, run_dir: Path, iteration: int, saved: bool):
        super().__init__(f"interrupted at iteration {iteration}")
        self.run_dir = run_dir
        self.iteration = iteration
        self.saved = saved


# ---------------------------------------------------------------------------- schedule, seeds
def lr_at(config: TrainConfig, it: int) -> float:
    """Learning rate of step ``it`` (0-based): linear warm-up over ``warmup`` steps, then the
    decay ``schedule`` over the whole run (t = it / iterations)."""
    f = 1.0
    if config.warmup > 0 and it < config.warmup:
        f = (it + 1) / config.warmup
    t = min(max(it / max(config.iterations, 1), 0.0), 1.0)
    if config.schedule == "poly":
        f *= (1.0 - t) ** 0.9
    elif config.schedule == "cosine":
        f *= 0.5 * (1.0 + math.cos(math.pi * t))
    return config.lr * f


def _torch_seed(seed: int, rank: int, it: int) -> int:
    s = np.random.SeedSequence([seed, rank, it, 1]).generate_state(1, np.uint64)[0]
    return int(s) & ((1 << 63) - 1)


def _data_rng(seed: int, rank: int, it: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, rank, it, 0]))


# ---------------------------------------------------------------------------- data
def _read(path: str, labels: str, what: str):
    from .data import read_dataset

    try:
        return read_dataset(path, labels=labels or None)
    except UnetlabError as e:
        raise UnetlabError(f"{what}: {e}") from None


def _load_samples(config: TrainConfig):
    from .synthetic import touching_cells

    if config.data == "synthetic":
        train = touching_cells(config.synthetic_images, config.synthetic_size,
                               config.synthetic_seed)
    else:
        train = _read(config.data, config.labels, "data")
    val = []
    if config.val == "synthetic":
        val = touching_cells(2, config.synthetic_size, config.synthetic_seed + 1)
    elif config.val:
        val = _read(config.val, config.val_labels, "val")
    if not any((s.instances > 0).any() for s in train):
        raise UnetlabError(f"data: {config.data}: no label image contains a cell (every "
                           f"labelled pixel is background): there is nothing to learn")
    chans = {s.channels for s in train} | {s.channels for s in val}
    if len(chans) != 1:
        raise UnetlabError(f"data/val: images have different channel counts {sorted(chans)}")
    return train, val


class _Prefetcher:
    """Produces ``make(it)`` for it = start, start+1, … in a background thread, ``depth`` ahead.
    Each item depends only on ``it``, so the results do not depend on timing."""

    def __init__(self, make: Callable[[int], Any], start: int, stop: int, depth: int):
        self.make, self.next_it, self.stop_it = make, start, stop
        self.depth = depth
        self._q: queue.Queue = queue.Queue(maxsize=max(depth, 1))
        self._stop = threading.Event()
        self._thread = None
        if depth > 0 and stop > start:
            self._thread = threading.Thread(target=self._work, args=(start,), daemon=True,
                                            name="unetlab-prefetch")
            self._thread.start()

    def _work(self, it: int) -> None:
        while it < self.stop_it and not self._stop.is_set():
            try:
                item = (it, self.make(it), None)
            except BaseException as e:  # noqa: BLE001 - re-raised in the training thread
                item = (it, None, e)
            while not self._stop.is_set():
                try:
                    self._q.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if item[2] is not None:
                return
            it += 1

    def get(self, it: int):
        if self._thread is None:
            return self.make(it)
        while True:
            try:
                got, value, err = self._q.get(timeout=0.5)
                break
            except queue.Empty:
                if not self._thread.is_alive():
                    raise RuntimeError("the tile prefetch thread stopped unexpectedly") from None
        if err is not None:
            raise err
        assert got == it, (got, it)
        return value

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            while self._thread.is_alive():
                try:
                    self._q.get_nowait()
                except queue.Empty:
                    pass
                self._thread.join(timeout=0.05)


# ---------------------------------------------------------------------------- validation
def _predict(net, image: np.ndarray, device: torch.device, tta: bool) -> np.ndarray:
    """(K, H, W) probabilities of a whole image: overlap-tile prediction (unetlab.predict)."""
    from .predict import predict_tiled

    img = image[0] if image.shape[0] == 1 else image     # (H, W): one slice, not a stack
    prob = np.asarray(predict_tiled(net, img, tta=tta, device=device), dtype=np.float32)
    return prob[0] if prob.ndim == 4 else prob


def _val_metrics(prob_cell: list[np.ndarray], gt_cell: list[np.ndarray]) -> dict[str, float]:
    """ISBI pixel error and foreground-restricted Rand error: 1 − max F over the challenge's 11
    thresholds (unetlab.metrics), without the slow warping error. Counts are pooled over the
    images when they have one size (as the challenge does); otherwise F is averaged."""
    from .metrics import isbi_thresholds, pixel_fscore, rand_fscore

    same = len({g.shape for g in gt_cell}) == 1
    pairs = [(np.stack(gt_cell), np.stack(prob_cell))] if same else list(zip(gt_cell, prob_cell))
    best_px = best_rand = 0.0
    for th in isbi_thresholds():
        px = float(np.mean([pixel_fscore(g, p, th) for g, p in pairs]))
        rd = float(np.mean([rand_fscore(g, p, th) for g, p in pairs]))
        best_px, best_rand = max(best_px, px), max(best_rand, rd)
    return {"pixel_error": 1.0 - best_px, "rand_error": 1.0 - best_rand}


def validate(net, samples, targets, device: torch.device, tta: bool = False) -> dict[str, float]:
    """Whole-image validation: P(cell) by overlap-tile prediction, then pixel error, Rand error
    (on the cell class of the training targets: touching cells separated as in Fig. 3c) and the
    weighted cross-entropy of the probabilities (``loss``, same normalisation as training)."""
    was_training = net.training
    net.eval()
    probs, gts, num, den = [], [], 0.0, 0
    try:
        for s, (classes, weights) in zip(samples, targets):
            prob = _predict(net, s.image, device, tta)
            probs.append(np.clip(prob[1], 0.0, 1.0).astype(np.float32))
            gts.append(classes == 1)
            lab = classes != 255
            p_true = np.take_along_axis(prob, np.where(lab, classes, 0)[None].astype(np.int64),
                                        0)[0]
            nll = -np.log(np.clip(p_true, 1e-12, 1.0))
            num += float(np.sum(np.where(lab, nll * weights, 0.0)))
            den += int(lab.sum())
    finally:
        net.train(was_training)
    out = _val_metrics(probs, gts)
    out["loss"] = num / max(den, 1)
    return out


# ---------------------------------------------------------------------------- run folder
LOG_FIELDS = ("iteration", "loss", "lr", "seconds", "val_loss", "val_pixel_error",
              "val_rand_error")


def _write_log(run: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=LOG_FIELDS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else (f"{r[k]:.6g}" if isinstance(r[k], float)
                                                      else r[k])) for k in LOG_FIELDS})
    atomic_write_text(run / "log.csv", buf.getvalue())


def _write_curves(run: Path, rows: list[dict], config: TrainConfig) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.4), dpi=100)
    a1, a2, a3 = fig.subplots(1, 3)
    tr = [(r["iteration"], r["loss"]) for r in rows if r.get("loss") is not None]
    vl = [(r["iteration"], r["val_loss"]) for r in rows if r.get("val_loss") is not None]
    if tr:
        a1.plot(*zip(*tr), lw=1, label="training")
    if vl:
        a1.plot(*zip(*vl), "o-", ms=3, label="validation")
    if tr or vl:
        a1.set_yscale("log")
        a1.legend(fontsize=8)
    a1.set_title("weighted cross-entropy")
    a1.set_xlabel("iteration")
    lr = [(r["iteration"], r["lr"]) for r in rows if r.get("lr") is not None]
    if lr:
        a2.plot(*zip(*lr), lw=1)
    a2.set_title(f"learning rate ({config.optimizer}, {config.schedule})")
    a2.set_xlabel("iteration")
    for key, lab in (("val_pixel_error", "pixel error"), ("val_rand_error", "Rand error")):
        pts = [(r["iteration"], r[key]) for r in rows if r.get(key) is not None]
        if pts:
            a3.plot(*zip(*pts), "o-", ms=3, label=lab)
    a3.set_title("validation (ISBI metrics)")
    a3.set_xlabel("iteration")
    if a3.lines:
        a3.legend(fontsize=8)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.15, top=0.9, wspace=0.3)
    with atomic_path(run / "curves.png", suffix=".png") as tmp:
        fig.savefig(tmp, format="png")


def _rng_state() -> dict[str, Any]:
    st: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = [s for s in torch.cuda.get_rng_state_all()]
    return st


def _all_finite(net) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in net.parameters())


def _model_dict(net, meta: dict) -> dict:
    from .checkpoint import MODEL_FORMAT

    state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
    return {"format": MODEL_FORMAT, "version": 1, "config": net.config(), "state_dict": state,
            "meta": meta}


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


# ---------------------------------------------------------------------------- the trainer
_RESUME_MAY_CHANGE = {"out", "iterations", "val_every", "checkpoint_every", "log_every",
                      "progress", "device", "prefetch", "val", "val_labels", "val_tta", "amp",
                      "threads"}


# a second SIGINT within this many seconds of the first is the same Ctrl-C under torchrun
_SIGINT_GRACE_S = 3.0


def _resolve_device(name: str) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise UnetlabError("device (--device): cuda requested but no CUDA GPU is available")
        return torch.device("cuda")
    return torch.device("cpu")


def _build_net(config: TrainConfig, in_channels: int):
    from .model import GeometryError, UNet

    net = UNet(in_channels=in_channels, num_classes=2, depth=config.depth, width=config.width,
               padding=config.padding, norm=None if config.norm == "none" else config.norm,
               dropout=config.dropout, upsampling=config.upsampling)
    tile = config.tile or net.valid_input_size(572)
    try:
        out = net.output_size(tile)
    except GeometryError as e:
        raise UnetlabError(f"tile (--tile): {e}") from None
    return net, tile, out


def _check_geometry(config: TrainConfig) -> None:
    """Fail fast (before reading data) on a tile size the network cannot take; the geometry
    does not depend on the width, so a width-1 network answers."""
    from .model import GeometryError, UNet

    probe = UNet(depth=config.depth, width=1, padding=config.padding)
    if config.tile:
        try:
            probe.output_size(config.tile)
        except GeometryError as e:
            raise UnetlabError(f"tile (--tile): {e}") from None


def _make_optimizer(config: TrainConfig, params):
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    return torch.optim.Adam(params, lr=config.lr, betas=(config.momentum, 0.999),
                            weight_decay=config.weight_decay)


def train(config: TrainConfig, resume: bool = False, *,
          callback: Callable[[int, float], None] | None = None,
          rank: int = 0, world_size: int = 1, device: str | None = None) -> Path:
    """Train a U-Net; return the run folder (``config.out``).

    ``resume``: continue the run in ``config.out`` from its ``checkpoint.pt``; the stored
    configuration is used, and only the options in ``_RESUME_MAY_CHANGE`` (e.g.
    ``iterations``, ``val``) may differ (changing ``iterations`` changes the schedule, so the
    result is then no longer identical to an uninterrupted run).
    ``callback(iteration, loss)`` is called after every completed step (1-based iteration).
    ``rank``/``world_size``: distributed data-parallel training (``torchrun``; the process group
    must already be initialised, :func:`unetlab.distributed.init_distributed`). Each rank draws
    its own tiles, augmentations and dropout masks from ``SeedSequence([seed, rank, i])``, the
    network is wrapped in ``DistributedDataParallel`` (gradients averaged over the ranks: an
    effective batch of ``world_size × batch`` tiles), and only rank 0 writes the run folder and
    validates. ``device`` overrides ``config.device`` (a torch device string, e.g. the rank's
    ``cuda:LOCAL_RANK``).
    """
    config = dataclasses.replace(config).validate()
    run = Path(config.out)
    ckpt_path = run / "checkpoint.pt"
    ckpt = None
    if resume and not ckpt_path.exists() and (run / "config.toml").exists():
        resume = False           # stopped before its first checkpoint: start it again
    if resume:
        ckpt = _load_checkpoint(ckpt_path)
        stored = config_from_mapping(ckpt["config"], where=f"{ckpt_path}")
        diff = [f.name for f in fields(config)
                if getattr(config, f.name) != getattr(stored, f.name)
                and f.name not in _RESUME_MAY_CHANGE]
        if diff:
            k = diff[0]
            raise UnetlabError(f"--resume: option '{k}' = {getattr(config, k)!r} differs from the "
                               f"run's {getattr(stored, k)!r} in {ckpt_path} (options that may "
                               f"change: {', '.join(sorted(_RESUME_MAY_CHANGE))})")
    elif ckpt_path.exists():
        raise UnetlabError(f"{run}: already holds a run (checkpoint.pt); continue it with "
                           f"--resume or choose another --out")
    if rank == 0:
        run.mkdir(parents=True, exist_ok=True)
    if world_size > 1:
        # every rank has looked at the run folder (the "already holds a run" check above)
        # before rank 0 writes its first checkpoint into it
        from .distributed import barrier

        barrier()
    device = torch.device(device) if device is not None else _resolve_device(config.device)
    _check_geometry(config)

    train_samples, val_samples = _load_samples(config)
    in_channels = train_samples[0].channels

    threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
            torch.manual_seed(config.seed)
            net, tile, out_size = _build_net(config, in_channels)
            return _train_loop(config, run, net, tile, out_size, train_samples, val_samples,
                               device, ckpt, callback, rank, world_size)
    finally:
        torch.set_num_threads(threads)


def _load_checkpoint(path: Path) -> dict:
    from .checkpoint import safe_load

    if not path.exists():
        raise UnetlabError(f"--resume: {path}: no checkpoint to resume from")
    ck = safe_load(path)
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise UnetlabError(f"{path}: not a unetlab training checkpoint")
    return ck


def _make_sampler(config: TrainConfig, train_samples, tile: int, out_size: int):
    """The training :class:`unetlab.data.TileSampler` (targets of Eq. 2, augmentation of
    Sec. 3.1 when ``config.augment``), every sample's targets precomputed."""
    from .augment import Augment
    from .data import TileSampler
    from .weights import training_targets

    targets_fn = functools.partial(training_targets, w0=config.w0, sigma=config.sigma,
                                   balance=config.balance)
    augment = Augment.paper() if config.augment else None
    return TileSampler(train_samples, tile, out_size, targets_fn, augment).precompute()


def _sample_batch(sampler, config: TrainConfig, rank: int, it: int):
    """The tiles of step ``it`` (0-based) on ``rank``: CPU tensors x (B, C, T, T) float32,
    classes (B, O, O) uint8, weights (B, O, O) float32, drawn from ``SeedSequence([seed, rank,
    it, 0])`` only (so resuming, prefetching and other ranks cannot change them)."""
    rng = _data_rng(config.seed, rank, it)
    tiles = [sampler.sample(rng) for _ in range(config.batch)]
    x = torch.from_numpy(np.stack([t[0] for t in tiles]))
    c = torch.from_numpy(np.stack([t[1] for t in tiles]))
    w = torch.from_numpy(np.stack([t[2] for t in tiles]))
    return x, c, w


def _reduce_step(value: float, stop: bool, world_size: int) -> tuple[float, bool]:
    """(mean loss over the ranks, whether any rank asked to stop) — one all-reduce, so that
    every rank takes the same decision at the same iteration (a non-finite loss or a Ctrl-C on
    one rank stops all of them there; otherwise ranks would wait for each other forever in
    DDP's gradient all-reduce). Identity in a single process."""
    if world_size <= 1:
        return value, stop
    import torch.distributed as dist

    dev = "cuda" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([value, 1.0 if stop else 0.0], dtype=torch.float64, device=dev)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    total, flags = t.tolist()
    return total / world_size, flags > 0


def _train_loop(config, run, net, tile, out_size, train_samples, val_samples, device, ckpt,
                callback, rank, world_size) -> Path:
    from .distributed import barrier, wrap_ddp
    from .loss import weighted_cross_entropy
    from .weights import training_targets

    targets_fn = functools.partial(training_targets, w0=config.w0, sigma=config.sigma,
                                   balance=config.balance)
    sampler = _make_sampler(config, train_samples, tile, out_size)
    # only rank 0 validates
    val_targets = [targets_fn(s.instances) for s in val_samples] if rank == 0 else []
    val_targets = [(np.where(s.instances < 0, 255, c).astype(np.uint8),
                    np.where(s.instances < 0, 0, w).astype(np.float32))
                   for s, (c, w) in zip(val_samples, val_targets)]

    fmt = torch.channels_last if config.channels_last else torch.contiguous_format
    net.to(device=device, memory_format=fmt)
    opt = _make_optimizer(config, net.parameters())
    use_amp = config.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    start = 0
    rows: list[dict] = []
    best = {"score": None, "iteration": None}
    acc = {"sum": 0.0, "n": 0}
    elapsed0 = 0.0
    if ckpt is not None:
        from .checkpoint import model_from_state

        loaded = model_from_state(ckpt["model"], run / "checkpoint.pt")
        net.load_state_dict(loaded.state_dict())
        opt.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler") and scaler.is_enabled():
            scaler.load_state_dict(ckpt["scaler"])
        start = int(ckpt["iteration"])
        rows = [dict(r) for r in ckpt.get("log", [])]
        best = dict(ckpt.get("best", best))
        acc = dict(ckpt.get("accumulator", acc))
        elapsed0 = float(ckpt.get("seconds", 0.0))
        torch.set_rng_state(ckpt["rng"]["torch"])

    # every rank holds the same weights and optimiser state here (fresh: same seed; resumed:
    # the same checkpoint); DDP broadcasts rank 0's anyway. ``model`` is what the training
    # forward pass runs through (it averages the gradients over the ranks in backward());
    # ``net``, the plain module, is what is saved, validated and clipped.
    distributed = world_size > 1
    model = wrap_ddp(net, device) if distributed else net

    def make_batch(it: int):
        x, c, w = _sample_batch(sampler, config, rank, it)
        if device.type == "cuda":
            x, c, w = x.pin_memory(), c.pin_memory(), w.pin_memory()
        return x, c, w

    t_start = time.perf_counter()

    def seconds() -> float:
        return elapsed0 + time.perf_counter() - t_start

    saved_at = {"iteration": start}

    def save(iteration: int) -> None:
        # the weights are the same on every rank, so every rank takes this decision alike
        if not _all_finite(net):
            raise NonFiniteLossError(
                f"non-finite weights after iteration {iteration}: training stopped; "
                f"{run / 'checkpoint.pt'} keeps the last good state; lower --lr or set "
                f"--grad-clip")
        if rank != 0:
            return
        meta = {"iteration": iteration, "tile": tile, "out_size": out_size,
                "train": dataclasses.asdict(config)}
        ck = {"format": CHECKPOINT_FORMAT, "version": 1, "model": _model_dict(net, meta),
              "optimizer": _to_cpu(opt.state_dict()),
              "scaler": scaler.state_dict() if scaler.is_enabled() else {},
              "iteration": iteration, "config": dataclasses.asdict(config),
              "rng": _rng_state(), "best": dict(best), "log": [dict(r) for r in rows],
              "accumulator": dict(acc), "seconds": seconds(), "seed": config.seed,
              "rank": rank, "world_size": world_size}
        atomic_torch_save(ck, run / "checkpoint.pt")
        atomic_torch_save(ck["model"], run / "model.pt")
        _write_log(run, rows)
        saved_at["iteration"] = iteration

    def row_for(iteration: int) -> dict:
        if rows and rows[-1]["iteration"] == iteration:
            return rows[-1]
        r = {"iteration": iteration}
        rows.append(r)
        return r

    def run_validation(iteration: int) -> None:
        if not val_samples or rank != 0:
            return
        m = validate(net, val_samples, val_targets, device, config.val_tta)
        r = row_for(iteration)
        r.update(val_loss=m["loss"], val_pixel_error=m["pixel_error"],
                 val_rand_error=m["rand_error"], seconds=seconds())
        score = m[config.select]
        if best["score"] is None or score < best["score"]:
            best.update(score=float(score), iteration=iteration)
            meta = {"iteration": iteration, "tile": tile, "out_size": out_size,
                    "validation": {k: float(v) for k, v in m.items()},
                    "train": dataclasses.asdict(config)}
            atomic_torch_save(_model_dict(net, meta), run / "best.pt")
        if bar is not None:
            bar.write(f"iteration {iteration}: validation loss {m['loss']:.4f}, pixel error "
                      f"{m['pixel_error']:.4f}, Rand error {m['rand_error']:.4f}")

    if rank == 0:
        atomic_write_text(run / "config.toml", config_to_toml(config))
    bar = None
    if config.progress and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.iterations, initial=start, desc="train", unit="it",
                   dynamic_ncols=True, leave=True)
    if ckpt is None:
        save(0)
    if distributed:
        barrier()

    interrupt = {"requested": False, "at": 0.0}
    old_handler = None
    if threading.current_thread() is threading.main_thread():
        def on_sigint(signum, frame):
            if interrupt["requested"]:
                # under torchrun a Ctrl-C reaches each rank twice: from the terminal and
                # forwarded by torchrun's agent; only a later second Ctrl-C aborts at once
                if distributed and time.monotonic() - interrupt["at"] < _SIGINT_GRACE_S:
                    return
                raise KeyboardInterrupt
            interrupt["requested"] = True
            interrupt["at"] = time.monotonic()
            msg = ("\nCtrl-C: finishing this iteration and saving a checkpoint "
                   "(Ctrl-C again to stop at once)")
            if rank == 0:
                (bar.write if bar is not None else print)(msg)
        old_handler = signal.signal(signal.SIGINT, on_sigint)

    prefetch = _Prefetcher(make_batch, start, config.iterations, config.prefetch)
    it = start               # completed iterations
    consistent = True        # False while the optimiser is changing the weights
    synced_stop = False      # True: every rank stops at this same iteration (Ctrl-C)
    try:
        while it < config.iterations:
            x, c, w = prefetch.get(it)
            x = x.to(device, non_blocking=True).contiguous(memory_format=fmt)
            c = c.to(device, non_blocking=True)
            w = w.to(device, non_blocking=True)
            torch.manual_seed(_torch_seed(config.seed, rank, it))
            lr = lr_at(config, it)
            for g in opt.param_groups:
                g["lr"] = lr
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                logits = model(x)
            loss = weighted_cross_entropy(logits, c, w)
            # mean over the ranks (the loss of the effective batch) and the Ctrl-C flag: all
            # ranks stop together, before DDP's gradient all-reduce in backward()
            value, stop = _reduce_step(float(loss.detach()), interrupt["requested"], world_size)
            if not math.isfinite(value):
                raise NonFiniteLossError(
                    f"non-finite loss ({value}) at iteration {it + 1} (lr {lr:.3g}): training "
                    f"stopped; {run / 'checkpoint.pt'} keeps the last good state (iteration "
                    f"{saved_at['iteration']}); lower --lr or set --grad-clip")
            scaler.scale(loss).backward()
            if config.grad_clip > 0:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(net.parameters(), config.grad_clip)
            consistent = False
            scaler.step(opt)
            scaler.update()
            it += 1
            acc["sum"] += value
            acc["n"] += 1
            consistent = True
            if it % config.log_every == 0 or it == config.iterations:
                r = row_for(it)
                r.update(loss=acc["sum"] / max(acc["n"], 1), lr=lr, seconds=seconds())
                acc = {"sum": 0.0, "n": 0}
                if rank == 0:
                    _write_log(run, rows)
            sync = bool(val_samples) and (it % config.val_every == 0 or it == config.iterations)
            if sync:
                run_validation(it)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{value:.4f}", lr=f"{lr:.2g}", refresh=False)
            if it % config.checkpoint_every == 0 or it == config.iterations or \
                    (val_samples and it % config.val_every == 0):
                save(it)
                if rank == 0 and (it % config.val_every == 0 or it == config.iterations):
                    _write_curves(run, rows, config)
                sync = True
            if distributed and sync:
                barrier()        # the other ranks wait for rank 0's validation and files
            if callback is not None:
                callback(it, value)
            if stop if distributed else interrupt["requested"]:
                synced_stop = distributed
                raise KeyboardInterrupt
    except KeyboardInterrupt:
        saved = False
        if consistent:
            save(it)
            if rank == 0:
                _write_curves(run, rows, config)
            saved = True
        if synced_stop:
            barrier()        # no rank exits (and makes torchrun stop the others) before the save
        raise TrainingInterrupted(run, it, saved) from None
    finally:
        prefetch.close()
        if old_handler is not None:
            signal.signal(signal.SIGINT, old_handler)
        if bar is not None:
            bar.close()
    if rank == 0 and start >= config.iterations:      # nothing ran: still leave a picture
        _write_curves(run, rows, config)
    return run
