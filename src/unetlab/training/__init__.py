"""Training the U-Net the paper's way (Ronneberger et al. 2015, Sec. 3): one large tile per
step, SGD with momentum 0.99, pixel-wise soft-max + cross-entropy weighted by Eq. 2's weight
map, elastic deformation (Sec. 3.1), He initialisation — with checkpoints that resume exactly.

Python API::

    from unetlab.training import TrainConfig, train
    run = train(TrainConfig(data="synthetic", out="runs/x", width=16, iterations=2000))

One concept per module: :mod:`.config` (:class:`TrainConfig`, TOML), :mod:`.build` (network,
optimiser, schedule, data, sampler), :mod:`.prefetch` (per-step randomness, background
tiles), :mod:`.trainer` (:class:`Trainer`: restore, step, validate, save, log),
:mod:`.validation` (whole-image validation scores), :mod:`.run_folder` (the files of a run),
:mod:`.signals` (Ctrl-C / SIGTERM). :func:`train` ties them together.

**Volumes.** With ``dims=3`` (``unetlab train --dims 3``) the same loop trains the 3D U-Net of
Çiçek et al. 2016 on (Z, Y, X) volumes: :func:`unetlab.data.read_dataset_3d` (or generated
touching cells), (z, y, x) tiles, 3D augmentation and weight map with the voxel aspect, sparse
annotation (unannotated voxels count nowhere), validation by foreground IoU and 3D SEG.

**Exact resume.** The randomness of iteration ``i`` (which image, where the tile is, the
augmentation, the dropout masks) is derived from ``SeedSequence([seed, rank, i])`` and from
nothing else. The trainer restores model, optimiser, iteration and log from ``checkpoint.pt``;
in fp32 on CPU a run interrupted at any iteration and resumed ends with weights bit-identical
to an uninterrupted run with the same seed.

**Robustness.** A run folder has one owner (:class:`unetlab.runlock.RunLock`); temporary files
of a write killed earlier are removed at the start. A non-finite loss stops training with a
one-line :class:`NonFiniteLossError` and leaves the last good checkpoint in place. Ctrl-C or
SIGTERM lets the current iteration finish, writes a checkpoint and raises
:class:`TrainingInterrupted`; a second signal aborts at once (the previous checkpoint stays).

**Distributed.** ``torchrun --nproc_per_node N -m unetlab train ...`` trains with PyTorch
``DistributedDataParallel`` (gloo on CPU, nccl on CUDA, one GPU per rank): gradients are
averaged over the ranks (an effective batch of N × ``batch`` tiles) and only rank 0 writes the
run folder and validates (docs/distributed.md).
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import fields
from pathlib import Path
from typing import Callable

from ..atomic import remove_stale_temps
from ..errors import UnetlabError
from .build import build_net, check_geometry, load_samples, lr_at, timing_step
from .config import TrainConfig, config_from_mapping, config_to_toml, load_config
from .run_folder import (CHECKPOINT_FORMAT, RUN_FILES, check_out_folder, describe_models,
                         load_checkpoint)
from .signals import NonFiniteLossError, TrainingInterrupted

__all__ = ["TrainConfig", "train", "Trainer", "NonFiniteLossError", "TrainingInterrupted",
           "lr_at", "load_config", "config_to_toml", "config_from_mapping", "CHECKPOINT_FORMAT",
           "validation_scores", "describe_models"]

#: options that ``--resume`` may change (the others must equal the run's)
RESUME_MAY_CHANGE = {"out", "iterations", "val_every", "checkpoint_every", "log_every",
                     "progress", "device", "prefetch", "val", "val_labels", "val_tta",
                     "precision", "threads", "data_as_given"}

def __getattr__(name: str):
    # torch and scipy load on first use, so that ``unetlab train --help`` starts fast
    if name == "Trainer":
        from .trainer import Trainer

        return Trainer
    if name == "validation_scores":
        from .validation import validation_scores

        return validation_scores
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _open_run(config: TrainConfig, resume: bool, overwrite: bool,
              inputs: tuple[str, ...]) -> dict | None:
    """The checkpoint to continue (``resume``) or None for a new run, after the checks that
    keep a run from overwriting another run or a user's files."""
    run = Path(config.out)
    ckpt_path = run / "checkpoint.pt"
    if resume and not ckpt_path.exists() and (run / "config.toml").exists():
        resume = False           # stopped before its first checkpoint: start it again
    if not resume:
        if ckpt_path.exists():
            raise UnetlabError(f"{run}: already holds a run (checkpoint.pt); continue it with "
                               f"--resume or choose another --out")
        check_out_folder(config, overwrite, inputs)
        return None
    ckpt = load_checkpoint(ckpt_path)
    stored = config_from_mapping(ckpt["config"], where=f"{ckpt_path}").with_absolute_paths()
    diff = [f.name for f in fields(config) if f.name not in RESUME_MAY_CHANGE
            and getattr(config, f.name) != getattr(stored, f.name)]
    if diff:
        k = diff[0]
        raise UnetlabError(f"--resume: option '{k}' = {getattr(config, k)!r} differs from the "
                           f"run's {getattr(stored, k)!r} in {ckpt_path} (options that may "
                           f"change: {', '.join(sorted(RESUME_MAY_CHANGE))})")
    done = int(ckpt["iteration"])
    if done > config.iterations:
        raise UnetlabError(f"--resume: {run} is already at iteration {done}, past --iterations "
                           f"{config.iterations}; give --iterations {done} or more")
    return ckpt


def _choose_threads(config: TrainConfig, net, tile: int, device, precision: str):
    """(threads, one-line reason, seconds per step or None): ``config.threads`` when ≥ 1, else
    the faster of 1 thread and all cores, measured on a copy of the network
    (:func:`unetlab.hardware.fastest_threads`); the step time is then returned too, so that a
    ``--time`` budget need not measure it again."""
    from ..hardware import fastest_threads, thread_count

    if config.threads == 0 and device.type == "cpu":
        n, step_s, why = fastest_threads(timing_step(net, config.optimizer, tile, device,
                                                     precision, config.batch))
        return n, why, step_s
    n, why = thread_count(config.threads or None, None, device)
    return n, why, None


def train(config: TrainConfig, resume: bool = False, *, overwrite: bool = False,
          inputs: tuple[str, ...] = (), callback: Callable[[int, float], None] | None = None,
          rank: int = 0, world_size: int = 1, device: str | None = None,
          say: Callable[[str], None] | None = None) -> Path:
    """Train a U-Net; return the run folder (``config.out``).

    ``resume``: continue the run in ``config.out`` from its ``checkpoint.pt``; only the options
    in :data:`RESUME_MAY_CHANGE` may differ from the run's (changing ``iterations`` changes the
    schedule, so the result is then no longer identical to an uninterrupted run; fewer
    iterations than the run has done is an error). ``overwrite``: write into a non-empty folder
    that holds no run. ``inputs``: other files the caller read (e.g. a ``--config`` file) that
    the run must not overwrite. ``callback(iteration, loss)`` after every step (1-based).
    ``rank``/``world_size``: distributed data-parallel training (the process group must
    already be initialised, :func:`unetlab.ddp.init_distributed`). ``device``
    overrides ``config.device`` (e.g. the rank's ``cuda:LOCAL_RANK``). ``say`` prints the
    information lines (device, precision, threads, validation); default: stdout.
    """
    from ..hardware import resolve_device, resolve_precision
    from ..runlock import RunLock

    started = time.monotonic()
    config = dataclasses.replace(config).check().with_absolute_paths()
    check_geometry(config)
    dev = resolve_device(device if device is not None else config.device)
    precision = resolve_precision(config.precision, dev)
    say = say or (lambda msg: print(msg, flush=True))
    with RunLock(config.out) if rank == 0 else contextlib.nullcontext():
        if rank == 0:
            remove_stale_temps(config.out, RUN_FILES)
        ckpt = _open_run(config, resume, overwrite, inputs)
        if world_size > 1:
            from ..ddp import barrier

            barrier()        # every rank has looked at the folder before rank 0 writes
        train_samples, val_samples = load_samples(config)
        return _train(config, ckpt, train_samples, val_samples, dev, precision, callback,
                      rank, world_size, say if rank == 0 else (lambda msg: None),
                      started=started, fix_budget=bool(config.time) and not resume)


def _fit_budget(config: TrainConfig, net, tile: int, dev, precision: str, val_samples,
                started: float, say, step_s: float | None = None) -> TrainConfig:
    """``config`` with ``iterations`` set from ``config.time`` (:mod:`.budget`): the step time
    of a copy of the network and one validation pass are measured here."""
    from .budget import (budget_iterations, curves_seconds, median_seconds, parse_duration,
                         save_seconds)
    from .validation import validation_scores, validation_targets

    if step_s is None:       # not measured by the thread choice
        step_s = median_seconds(timing_step(net, config.optimizer, tile, dev, precision,
                                            config.batch))
    save_s = save_seconds(net)
    val_s = 0.0
    if val_samples:      # scores, then best.pt, a checkpoint and curves.png
        targets = validation_targets(val_samples, config.w0, config.sigma, config.balance)
        val_s = median_seconds(lambda: validation_scores(net, val_samples, targets, dev,
                                                         config.val_tta, precision), 1)
        val_s += 2 * save_s + curves_seconds()
    seconds = parse_duration(config.time)
    n = budget_iterations(seconds, time.monotonic() - started, step_s, val_s, config.val_every,
                          save_s, config.checkpoint_every)
    say(f"--time {config.time}: {step_s:.3g} s per step, {val_s:.3g} s per validation "
        f"(every {config.val_every}), {save_s:.2g} s per checkpoint → {n} iterations")
    return dataclasses.replace(config, iterations=n, warmup=min(config.warmup, n // 4))


def _train(config, ckpt, train_samples, val_samples, dev, precision, callback, rank,
           world_size, say, started: float, fix_budget: bool = False) -> Path:
    import torch

    from ..hardware import describe_precision
    from .trainer import Trainer

    default_threads = torch.get_num_threads()
    try:
        with torch.random.fork_rng(devices=[dev.index or 0] if dev.type == "cuda" else []):
            torch.manual_seed(config.seed)
            net, tile, out_size = build_net(config, train_samples[0].channels)
            threads, why, step_s = _choose_threads(config, net, tile, dev, precision)
            torch.set_num_threads(threads)
            if fix_budget:
                config = _fit_budget(config, net, tile, dev, precision, val_samples, started,
                                     say, step_s)
            resolved = (f"resolved: device = {dev}, precision = {precision}, threads = "
                        f"{threads}")
            say(f"training on {dev}, precision {describe_precision(precision, dev)}, CPU "
                f"threads: {why}")
            trainer = Trainer(config, Path(config.out), net, tile, out_size, train_samples,
                              val_samples, dev, precision, rank, world_size, resolved, say)
            if ckpt is not None:
                trainer.restore(ckpt)
            return trainer.fit(callback)
    finally:
        torch.set_num_threads(default_threads)
