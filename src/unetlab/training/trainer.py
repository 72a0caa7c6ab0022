"""The training loop of Ronneberger et al. 2015, Sec. 3, as one object: :class:`Trainer`
(restore, step, validate, save, log) over a run folder.

Each step draws its tiles from :mod:`.prefetch` (randomness fixed by the seed, rank and
iteration only), runs the forward pass under the resolved precision (``hardware.autocast``;
weights stay fp32), computes the pixel-wise soft-max + cross-entropy weighted by Eq. 2's map in
fp32 (:func:`unetlab.loss.weighted_cross_entropy`) and updates the weights. Under torchrun the
network is wrapped in ``DistributedDataParallel``; the loss and the stop flag are all-reduced
before the backward pass, so every rank stops at the same iteration, and only rank 0 writes the
run folder and validates.
"""
from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Callable

import torch

from .build import lr_at, make_optimizer, make_sampler
from .config import HIGHER_IS_BETTER, TrainConfig, config_to_toml
from .prefetch import Prefetcher, sample_batch, torch_seed
from .run_folder import (CHECKPOINT_FORMAT, LOG_FIELDS, LOG_FIELDS_3D, model_dict,
                         restore_cuda_rng, rng_state, to_cpu, write_checkpoint, write_curves,
                         write_log)
from .signals import NonFiniteLossError, StopRequest, TrainingInterrupted
from .validation import validation_scores, validation_targets

__all__ = ["Trainer", "reduce_step"]


def reduce_step(value: float, stop: bool, world_size: int) -> tuple[float, bool]:
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


def _all_finite(net) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in net.parameters())


class Trainer:
    """One training run into ``run``: ``restore(checkpoint)`` (optional), then ``fit()``.

    ``net`` is the plain module that is saved, validated and clipped; ``tile``/``out_size``
    are the input/output tile sides (px); ``precision`` the resolved "fp32", "bf16" or
    "fp16" (with loss scaling, ``torch.amp.GradScaler``);
    ``resolved`` a line recorded in config.toml (device, precision, threads); ``say`` prints
    information lines (rank 0)."""

    def __init__(self, config: TrainConfig, run: Path, net, tile: int, out_size: int,
                 train_samples, val_samples, device: torch.device, precision: str = "fp32",
                 rank: int = 0, world_size: int = 1, resolved: str = "",
                 say: Callable[[str], None] | None = None):
        self.config, self.run_dir, self.net = config, Path(run), net
        self.tile, self.out_size, self.device, self.precision = tile, out_size, device, precision
        self.rank, self.world_size, self.resolved = rank, world_size, resolved
        self._say = say or (lambda msg: print(msg, flush=True))
        self.sampler = make_sampler(config, train_samples, tile, out_size)
        self.has_val = bool(val_samples)        # the same on every rank; rank 0 validates
        self.val_samples = val_samples if rank == 0 else []
        self.val_targets = validation_targets(self.val_samples, config.w0, config.sigma,
                                              config.balance)
        self.fmt = torch.contiguous_format
        if config.channels_last:
            self.fmt = torch.channels_last_3d if config.dims == 3 else torch.channels_last
        self.log_fields = LOG_FIELDS_3D if config.dims == 3 else LOG_FIELDS
        net.to(device=device, memory_format=self.fmt)
        self.opt = make_optimizer(config, net.parameters())
        # fp16 gradients underflow without loss scaling; for fp32/bf16 the scaler is a no-op
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        self.model = net
        self.start = self.iteration = self.saved_iteration = 0
        self.rows: list[dict] = []
        self.best: dict = {"score": None, "iteration": None}
        self.loss_sum, self.loss_n = 0.0, 0
        self.elapsed0 = 0.0
        self.fresh = True
        self.bar = None
        self._consistent = True          # False while the optimiser is changing the weights
        self._t0 = time.perf_counter()

    # ------------------------------------------------------------------ state
    def restore(self, ckpt: dict) -> None:
        """Continue from a training checkpoint: weights, optimiser, iteration, log, best score,
        loss accumulator, elapsed time and the torch RNG."""
        from ..checkpoint import model_from_state

        loaded = model_from_state(ckpt["model"], self.run_dir / "checkpoint.pt")
        self.net.load_state_dict(loaded.state_dict())
        self.opt.load_state_dict(ckpt["optimizer"])
        self.start = self.iteration = self.saved_iteration = int(ckpt["iteration"])
        self.rows = [dict(r) for r in ckpt.get("log", [])]
        self.best = dict(ckpt.get("best", self.best))
        acc = ckpt.get("accumulator", {"sum": 0.0, "n": 0})
        self.loss_sum, self.loss_n = float(acc["sum"]), int(acc["n"])
        self.elapsed0 = float(ckpt.get("seconds", 0.0))
        torch.set_rng_state(ckpt["rng"]["torch"])
        restore_cuda_rng(ckpt["rng"].get("cuda"))
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.fresh = False

    def seconds(self) -> float:
        """Training time of the run so far (s), over all its sessions."""
        return self.elapsed0 + time.perf_counter() - self._t0

    def _meta(self, iteration: int, **extra) -> dict:
        return {"iteration": iteration, "tile": self.tile, "out_size": self.out_size,
                "precision": self.precision, **extra,
                "train": dataclasses.asdict(self.config)}

    # ------------------------------------------------------------------ step
    def _batch(self, it: int):
        x, c, w = sample_batch(self.sampler, self.config.batch, self.config.seed, self.rank, it)
        if self.device.type == "cuda":
            x, c, w = x.pin_memory(), c.pin_memory(), w.pin_memory()
        return x, c, w

    def step(self, batch, stop_requested: bool = False) -> tuple[float, float, bool]:
        """One optimiser step on ``batch`` (x, classes, weights) at ``self.iteration``; returns
        (mean loss over the ranks, learning rate, whether every rank stops here)."""
        from .. import loss as loss_mod
        from ..hardware import autocast

        cfg, it = self.config, self.iteration
        x, c, w = (t.to(self.device, non_blocking=True) for t in batch)
        x = x.contiguous(memory_format=self.fmt)
        torch.manual_seed(torch_seed(cfg.seed, self.rank, it))
        lr = lr_at(cfg, it)
        for g in self.opt.param_groups:
            g["lr"] = lr
        self.opt.zero_grad(set_to_none=True)
        with autocast(self.precision, self.device):
            logits = self.model(x)
        loss = loss_mod.weighted_cross_entropy(logits.float(), c, w)
        if cfg.cldice > 0:
            loss = loss + cfg.cldice * loss_mod.cldice_loss(logits, c)
        value, stop = reduce_step(float(loss.detach()), stop_requested, self.world_size)
        if not math.isfinite(value):
            raise NonFiniteLossError(
                f"non-finite loss ({value}) at iteration {it + 1} (lr {lr:.3g}): training "
                f"stopped; {self.run_dir / 'checkpoint.pt'} keeps the last good state "
                f"(iteration {self.saved_iteration}); lower --lr or set --grad-clip")
        self.scaler.scale(loss).backward()
        del loss, logits
        if cfg.grad_clip > 0:
            self.scaler.unscale_(self.opt)
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), cfg.grad_clip)
        self._consistent = False
        self.scaler.step(self.opt)       # skips the update when fp16 gradients overflowed
        self.scaler.update()
        self.iteration += 1
        self.loss_sum += value
        self.loss_n += 1
        self._consistent = True
        return value, lr, stop

    # ------------------------------------------------------------------ log, validate, save
    def _row(self, iteration: int) -> dict:
        if self.rows and self.rows[-1]["iteration"] == iteration:
            return self.rows[-1]
        r = {"iteration": iteration}
        self.rows.append(r)
        return r

    def log(self, lr: float) -> None:
        """A log.csv row at the current iteration: mean loss since the last row, lr, time."""
        self._row(self.iteration).update(loss=self.loss_sum / max(self.loss_n, 1), lr=lr,
                                         seconds=self.seconds())
        self.loss_sum, self.loss_n = 0.0, 0
        if self.rank == 0:
            write_log(self.run_dir, self.rows, self.log_fields)

    def validate(self) -> None:
        """Validation scores at the current iteration into the log; ``best.pt`` when the
        selected score improved (lower is better, except for SEG and IoU). Rank 0 only."""
        if not self.val_samples:
            return
        it = self.iteration
        m = validation_scores(self.net, self.val_samples, self.val_targets, self.device,
                              self.config.val_tta, self.precision)
        self._row(it).update({f"val_{k}": v for k, v in m.items()}, seconds=self.seconds())
        score, best = m[self.config.select], self.best["score"]
        sign = -1.0 if self.config.select in HIGHER_IS_BETTER else 1.0
        if math.isfinite(score) and (best is None or sign * score < sign * best):
            from ..atomic import atomic_torch_save

            self.best.update(score=float(score), iteration=it)
            meta = self._meta(it, validation={k: float(v) for k, v in m.items()})
            atomic_torch_save(model_dict(self.net, meta), self.run_dir / "best.pt")
        if self.config.dims == 3:
            self.say(f"iteration {it}: validation loss {m['loss']:.4f}, foreground IoU "
                     f"{m['iou']:.4f}, SEG {m['seg']:.4f}")
        else:
            self.say(f"iteration {it}: validation loss {m['loss']:.4f}, pixel error "
                     f"{m['pixel_error']:.4f}, Rand error {m['rand_error']:.4f}")

    def save(self) -> None:
        """checkpoint.pt, model.pt and log.csv at the current iteration (rank 0), from finite
        weights only (else :class:`NonFiniteLossError`; the previous checkpoint stays)."""
        it = self.iteration
        if not _all_finite(self.net):     # the same weights on every rank: the same decision
            raise NonFiniteLossError(
                f"non-finite weights after iteration {it}: training stopped; "
                f"{self.run_dir / 'checkpoint.pt'} keeps the last good state; lower --lr or set "
                f"--grad-clip")
        if self.rank != 0:
            return
        cfg = dataclasses.asdict(self.config)
        ck = {"format": CHECKPOINT_FORMAT, "version": 1,
              "model": model_dict(self.net, self._meta(it)),
              "optimizer": to_cpu(self.opt.state_dict()), "iteration": it, "config": cfg,
              "rng": rng_state(), "best": dict(self.best), "log": [dict(r) for r in self.rows],
              "accumulator": {"sum": self.loss_sum, "n": self.loss_n},
              "seconds": self.seconds(), "seed": self.config.seed, "precision": self.precision,
              "rank": self.rank, "world_size": self.world_size,
              "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None}
        write_checkpoint(self.run_dir, ck, self.rows, self.log_fields)
        self.saved_iteration = it

    def say(self, msg: str) -> None:
        """An information line from rank 0 (above the progress bar when there is one)."""
        if self.rank == 0:
            (self.bar.write if self.bar is not None else self._say)(msg)

    # ------------------------------------------------------------------ the loop
    def _after_step(self, value: float, lr: float) -> None:
        cfg, it = self.config, self.iteration
        end = it == cfg.iterations
        if it % cfg.log_every == 0 or end:
            self.log(lr)
        at_val = self.has_val and (it % cfg.val_every == 0 or end)
        if at_val:
            self.validate()
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{value:.4f}", lr=f"{lr:.2g}", refresh=False)
        if it % cfg.checkpoint_every == 0 or end or at_val:
            self.save()
            if self.rank == 0 and (it % cfg.val_every == 0 or end):
                write_curves(self.run_dir, self.rows, self.log_fields)
            at_val = True
        if self.world_size > 1 and at_val:
            from ..ddp import barrier

            barrier()        # the other ranks wait for rank 0's validation and files

    def _begin(self) -> None:
        if self.rank == 0:
            from ..atomic import atomic_write_text

            atomic_write_text(self.run_dir / "config.toml",
                              config_to_toml(self.config, footer=self.resolved))
        if self.config.progress and self.rank == 0:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.config.iterations, initial=self.start, desc="train",
                            unit="it", dynamic_ncols=True, leave=True)
        if self.fresh:
            self.save()
        if self.world_size > 1:
            from ..ddp import barrier, wrap_ddp

            # same weights on every rank here (same seed or same checkpoint); DDP averages
            # the gradients in backward()
            self.model = wrap_ddp(self.net, self.device)
            barrier()

    def _stop(self, synced: bool, signum: int) -> TrainingInterrupted:
        saved = False
        if self._consistent:
            self.save()
            if self.rank == 0:
                write_curves(self.run_dir, self.rows, self.log_fields)
            saved = True
        if synced:
            from ..ddp import barrier

            barrier()        # no rank exits (and makes torchrun stop the others) before the save
        return TrainingInterrupted(self.run_dir, self.iteration, saved, signum)

    def fit(self, callback: Callable[[int, float], None] | None = None) -> Path:
        """Train up to ``config.iterations``; ``callback(iteration, loss)`` after each step.
        Ctrl-C / SIGTERM: finish the step, save, raise :class:`TrainingInterrupted`."""
        self._begin()
        distributed = self.world_size > 1
        prefetch = Prefetcher(self._batch, self.start, self.config.iterations,
                              self.config.prefetch)
        try:
            with StopRequest(self.say, distributed) as stop:
                synced = False
                try:
                    while self.iteration < self.config.iterations:
                        value, lr, all_stop = self.step(prefetch.get(self.iteration),
                                                        stop.requested)
                        self._after_step(value, lr)
                        if callback is not None:
                            callback(self.iteration, value)
                        if all_stop if distributed else stop.requested:
                            synced = distributed
                            raise KeyboardInterrupt
                except KeyboardInterrupt:
                    raise self._stop(synced, stop.signum) from None
        finally:
            prefetch.close()
            if self.bar is not None:
                self.bar.close()
                self.bar = None
        if self.rank == 0 and self.start >= self.config.iterations:   # nothing ran
            write_curves(self.run_dir, self.rows, self.log_fields)
        return self.run_dir
