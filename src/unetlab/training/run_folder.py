"""The run folder: what a training run writes, how a folder is recognised as a run, and the
checks that keep a run from overwriting anything else.

Every file is written atomically (:mod:`unetlab.atomic`)::

    config.toml     the fully resolved configuration (``unetlab train --config`` reads it back)
    checkpoint.pt   model, optimiser, iteration, RNG state, best score, log — for ``--resume``
    model.pt        architecture + weights of the latest iteration (``unetlab.load_model``)
    best.pt         the same for the best validation score (with ``validation`` in its meta)
    log.csv         iteration, loss, lr, seconds, validation metrics
    curves.png      loss and validation errors against iterations (report.png_curves)
"""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_torch_save, atomic_write_bytes, atomic_write_text
from ..errors import UnetlabError
from .config import TOML_HEADER, TrainConfig

__all__ = ["CHECKPOINT_FORMAT", "RUN_FILES", "LOG_FIELDS", "LOG_FIELDS_3D", "write_log",
           "write_curves", "write_checkpoint", "load_checkpoint", "is_run_folder",
           "check_out_folder", "describe_models"]

CHECKPOINT_FORMAT = "unetlab-checkpoint"
RUN_FILES = ("config.toml", "checkpoint.pt", "model.pt", "best.pt", "log.csv", "curves.png")
LOG_FIELDS = ("iteration", "loss", "lr", "seconds", "val_loss", "val_pixel_error",
              "val_rand_error")
#: the columns of a volume run (validation by foreground IoU and SEG, no Rand error)
LOG_FIELDS_3D = ("iteration", "loss", "lr", "seconds", "val_loss", "val_iou", "val_seg")


def write_log(run: Path, rows: list[dict], fields: tuple[str, ...] = LOG_FIELDS) -> None:
    """``run/log.csv``: one row per logged iteration (columns ``fields``), blank where a value
    is missing."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else (f"{r[k]:.6g}" if isinstance(r[k], float)
                                                      else r[k])) for k in fields})
    atomic_write_text(run / "log.csv", buf.getvalue())


def write_curves(run: Path, rows: list[dict], fields: tuple[str, ...] = LOG_FIELDS) -> bool:
    """``run/curves.png`` drawn by :func:`unetlab.report.png_curves`; False (nothing written)
    while the log has no loss yet. A matplotlib figure holds reference cycles that only a full
    garbage collection frees; without one, each drawing kept ~2 MB for the rest of the run."""
    import gc

    from ..report import png_curves

    log = {k: np.array([np.nan if r.get(k) is None else float(r[k]) for r in rows])
           for k in fields}
    try:
        png = png_curves(log)
    except ValueError:            # no loss logged yet
        return False
    finally:
        gc.collect()
    atomic_write_bytes(run / "curves.png", png)
    return True


def model_dict(net, meta: dict) -> dict:
    """The ``model.pt`` dictionary of :mod:`unetlab.checkpoint` (weights copied to the CPU)."""
    from ..checkpoint import MODEL_FORMAT

    state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
    return {"format": MODEL_FORMAT, "version": 1, "config": net.config(), "state_dict": state,
            "meta": meta}


def to_cpu(obj):
    """Tensors inside nested dicts/lists/tuples copied to the CPU."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def rng_state() -> dict[str, Any]:
    import torch

    st: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = [s for s in torch.cuda.get_rng_state_all()]
    return st


def restore_cuda_rng(states) -> bool:
    """Put back the per-GPU RNG states that :func:`rng_state` saved, where this machine has
    the same number of GPUs (a checkpoint moved to another machine keeps the fresh states:
    each step re-seeds every device anyway). Returns whether they were restored."""
    import torch

    if not states or not torch.cuda.is_available() or len(states) != torch.cuda.device_count():
        return False
    torch.cuda.set_rng_state_all(states)
    return True


def write_checkpoint(run: Path, checkpoint: dict, rows: list[dict],
                     fields: tuple[str, ...] = LOG_FIELDS) -> None:
    """``checkpoint.pt``, then ``model.pt`` (its model) and ``log.csv``, each atomically."""
    atomic_torch_save(checkpoint, run / "checkpoint.pt")
    atomic_torch_save(checkpoint["model"], run / "model.pt")
    write_log(run, rows, fields)


def load_checkpoint(path: Path) -> dict:
    """A training checkpoint; one-line :class:`UnetlabError` for a missing or foreign file."""
    from ..checkpoint import safe_load

    if not path.exists():
        raise UnetlabError(f"--resume: {path}: no checkpoint to resume from")
    ck = safe_load(path)
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise UnetlabError(f"{path}: not a unetlab training checkpoint")
    return ck


def is_run_folder(folder: Path) -> bool:
    """True when ``folder`` holds a training run: a checkpoint, or a config.toml that the
    trainer wrote (a run stopped before its first checkpoint)."""
    if (folder / "checkpoint.pt").is_file():
        return True
    try:
        with open(folder / "config.toml", encoding="utf-8") as f:
            return f.readline().rstrip("\n") == TOML_HEADER
    except (OSError, UnicodeDecodeError):
        return False


def _same_file(a: Path, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_out_folder(config: TrainConfig, overwrite: bool = False,
                     inputs: tuple[str, ...] = ()) -> None:
    """Refuse (one line, before anything is written) a run folder that would lose a user's
    work: a file in its place; a non-empty folder that is not a run (unless ``overwrite``); a
    run file (config.toml, …) that is one of the ``inputs`` (e.g. the ``--config`` file) or of
    the configuration's data paths."""
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise UnetlabError(f"--out {out}: exists and is not a folder")
    if not out.is_dir():
        return
    used = [p for p in (config.data, config.labels, config.val, config.val_labels, *inputs)
            if p and p != "synthetic"]
    for name in RUN_FILES:
        for p in used:
            if _same_file(out / name, p):
                raise UnetlabError(f"--out {out}: the run would overwrite its own input {p}; "
                                   f"choose another --out")
    visible = [e for e in out.iterdir() if not e.name.startswith(".")]
    if visible and not overwrite and not is_run_folder(out):
        raise UnetlabError(f"--out {out}: folder is not empty and holds no unetlab run "
                           f"({visible[0].name}, …); choose another --out, or add --overwrite "
                           f"to write the run files into it")


def describe_models(run: Path) -> list[str]:
    """Lines saying which model file to use: ``best.pt`` (its iteration and validation score)
    and ``model.pt`` (the last iteration)."""
    from ..checkpoint import safe_load

    lines = []
    best = run / "best.pt"
    if best.is_file():
        meta = safe_load(best).get("meta", {})
        select = meta.get("train", {}).get("select", "rand_error")
        score = meta.get("validation", {}).get(select)
        where = f"{select} {score:.4f}" if isinstance(score, float) else "best validation"
        lines.append(f"best model: {best} (iteration {meta.get('iteration')}, {where}) — "
                     f"use this one")
    last = run / "model.pt"
    if last.is_file():
        it = safe_load(last).get("meta", {}).get("iteration")
        lines.append(f"last model: {last} (iteration {it})")
    return lines
