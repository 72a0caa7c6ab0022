"""``unetlab demo``: the whole method on synthetic touching cells, end to end, in minutes on a CPU.

What it does (each step the paper's, at a size a laptop can run):

1. **Data** — generated touching cells (:func:`unetlab.synthetic.touching_cells`): a handful of
   training images, two validation images, and one large test image (2048×2048 by default).
2. **Training** (Sec. 3) — a small U-Net (depth 3, width 16, unpadded convolutions, dropout at
   the end of the contracting path) trained by :func:`unetlab.training.train` as in the paper
   — one large tile per step, cross-entropy weighted by Eq. 2's weight map (w0 = 10,
   σ = 5 px), elastic deformation and the other augmentations, He initialisation — with two
   changes for a budget of minutes instead of the paper's hours: Adam (lr 0.003,
   β = (0.9, 0.999), poly decay) instead of SGD with momentum 0.99, and batch normalisation
   after each convolution. Measured on this 2-core machine (300 steps, 252² tiles, a 512² test
   image without TTA, watershed seeds h = 1 px; SEG / F1@0.5 / merges of 461 cells):

   ====================================  =====  ======  ======
   training                               SEG    F1      merges
   ====================================  =====  ======  ======
   SGD lr 0.005, momentum 0.99, clip 1    0.57   0.71    14 (67 splits)
   Adam lr 0.001                          0.56   0.69    61
   Adam lr 0.003                          0.68   0.83    42
   Adam lr 0.003 + batch norm             0.76   0.89    18
   ====================================  =====  ======  ======

   (SGD at lr 0.01 collapsed to "all background".) Only batch norm taught the net to draw the
   separation lines between touching cells below P(cell) = 0.5 (mean P(cell) on those lines
   0.54 against 0.84 inside cells; 0.65 / 0.76 without it). On the whole demo (2048² test
   image, 8-fold TTA, 7250 cells) the change took SEG from 0.46 to 0.73, F1@0.5 from 0.52 to
   0.88, AP@0.5 from 0.35 to 0.78 and merges from 1426 to 272 (splits 167 → 405; pixel error
   0.057 → 0.047). ``unetlab train`` keeps the paper's SGD and no normalisation as its
   defaults.
   Unless ``iterations`` is given, the number of steps is chosen to fit a time budget
   (``train_minutes``) from a short timing of one training step on this machine, so the demo
   ends in time on a slow or busy CPU (with fewer steps) and trains longer on a fast one; the
   training budget shrinks when the estimated prediction time would overrun ``total_minutes``.
   The timing also picks the CPU thread count (1 or torch's default): on a machine with more
   runnable processes than cores, one thread was up to 50× faster (measured).
3. **Prediction** (Sec. 2, Fig. 2; Sec. 4) — overlap-tile prediction of the large image with
   8-fold test-time averaging (:func:`unetlab.predict.predict_tiled`).
4. **Instances** — :func:`unetlab.postprocess.to_instances`: P(cell) > 0.5, then a watershed of
   the distance transform seeded by its h-maxima with h = 1 px. After minutes of training the
   network draws the separation lines between touching cells as a dip of P(cell) that mostly
   stays above 0.5, so connected components merge almost every clump (F1@0.5 ≈ 0.13) and the
   shape-based split does the work; h = 1 px beat h = 2 (fewer merges: F1 0.83 against 0.72)
   and h = 0.5 oversplits at other thresholds (measured on the same 512² image).
5. **Evaluation** — ISBI 2012 pixel error and foreground-restricted Rand error (1 − best F over
   the challenge's 11 thresholds, :mod:`unetlab.metrics`) against the ground truth with touching
   cells separated as in Fig. 3c; on a 512×512 crop also the warping error; cell metrics SEG and
   instance matching (precision/recall/F1 at IoU 0.5 … 0.95); split/merge counts.
6. **Report** — ``OUT/report.html`` (:func:`unetlab.report.build_report`), plus the probability
   map and the instance labels as TIFF files in ``OUT/prediction/``.

The run folder ``OUT`` is a normal training run (config.toml, model.pt, best.pt, log.csv, ...)
plus ``report_data/``, ``prediction/`` and ``report.html``. Running the demo again into the same
folder replaces a previous demo's files; a folder holding anything else is refused.
"""
from __future__ import annotations

import dataclasses
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import UnetlabError

__all__ = ["DemoSettings", "demo_settings", "run_demo", "DEMO_MARKER"]

#: file marking a folder as written by the demo (so a rerun may replace it)
DEMO_MARKER = "demo.json"

#: files and folders the demo (and the trainer inside it) writes into OUT
_DEMO_FILES = ("config.toml", "checkpoint.pt", "model.pt", "best.pt", "log.csv", "curves.png",
               "report.html", DEMO_MARKER)
_DEMO_DIRS = ("report_data", "prediction", "report_files")


@dataclass
class DemoSettings:
    """Sizes of one demo run (pixels, counts, seconds)."""
    train_images: int = 8          # generated training images
    train_size: int = 256          # their side (px)
    size: int = 2048               # side of the large predicted image (px)
    width: int = 16                # U-Net width (channels of the first level)
    depth: int = 3                 # U-Net depth (poolings)
    tile: int = 252                # training input tile (valid for depth 3: 252 → 164)
    norm: str = "batch"            # batch normalisation after each conv (see the docstring)
    optimizer: str = "adam"        # see the module docstring: Adam learns much faster here
    lr: float = 0.003              # Adam's peak learning rate (poly decay)
    momentum: float = 0.9          # Adam's beta1 (SGD's momentum with optimizer="sgd")
    grad_clip: float = 0.0         # clip the global gradient norm (0 = off)
    seed_h: float = 1.0            # h of the watershed's distance-transform seeds (px)
    iterations: int | None = None  # None: chosen from train_minutes
    min_iterations: int = 150
    max_iterations: int = 3000
    train_minutes: float = 4.0     # most minutes of training when iterations is None
    total_minutes: float = 9.0     # whole-demo budget: training gets what prediction leaves
    val_every: int = 0             # 0: about 5 validations per run
    warping_crop: int = 512        # side of the crop for the (slow) warping error; 0 = skip
    seed: int = 0
    quick: bool = False


def demo_settings(quick: bool = False, iterations: int | None = None, size: int | None = None,
                  train_minutes: float | None = None, seed: int = 0) -> DemoSettings:
    """The settings of ``unetlab demo`` (``quick``: tiny sizes for tests, ~10–30 s)."""
    if quick:
        s = DemoSettings(train_images=3, train_size=96, size=256, width=4, depth=2, tile=100,
                         iterations=6, val_every=3, warping_crop=0, seed=seed, quick=True)
    else:
        s = DemoSettings(seed=seed)
    if iterations is not None:
        if iterations < 1:
            raise UnetlabError(f"--iterations: must be ≥ 1, got {iterations}")
        s.iterations = int(iterations)
    if size is not None:
        if size < 64:
            raise UnetlabError(f"--size: the predicted image must be at least 64 px a side, "
                               f"got {size}")
        s.size = int(size)
    if train_minutes is not None:
        if not (train_minutes > 0 and math.isfinite(train_minutes)):
            raise UnetlabError(f"--train-minutes: must be a number > 0, got {train_minutes}")
        s.train_minutes = float(train_minutes)
    return s


# ---------------------------------------------------------------------------- the run folder
def _prepare_out(out: Path) -> None:
    """Create ``out``, or clear a previous demo's files in it; refuse a folder holding a
    different run or other files."""
    if out.exists() and not out.is_dir():
        raise UnetlabError(f"--out {out}: exists and is not a folder")
    if out.is_dir():
        entries = list(out.iterdir())
        if entries and not (out / DEMO_MARKER).exists():
            raise UnetlabError(f"--out {out}: folder exists and was not written by unetlab demo; "
                               f"choose another --out or remove it")
        for e in entries:
            if e.name in _DEMO_FILES or e.name.startswith("."):
                if e.is_file():
                    e.unlink()
            elif e.name in _DEMO_DIRS and e.is_dir():
                shutil.rmtree(e)
    out.mkdir(parents=True, exist_ok=True)


def _resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _calibrate_step(settings: DemoSettings, device: str = "cpu") -> tuple[float, int]:
    """Time one training step (forward + backward + optimiser update on one tile) of the demo's
    network here; returns ``(seconds per step, CPU threads to use)``.

    On CPU both one thread and torch's default thread count are tried and the faster is
    returned: on a busy machine (more runnable processes than cores) multi-threaded convolutions
    can be tens of times slower than single-threaded ones, since every parallel region waits
    for its slowest, descheduled thread. Each setting: one warm-up step, then the median of two
    (the slower setting is abandoned after one step when it is clearly slower).
    """
    import torch

    from .model import UNet

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = UNet(depth=settings.depth, width=settings.width, dropout=0.5,
                   norm=settings.norm).to(device)
    opt = (torch.optim.Adam(net.parameters(), lr=1e-9) if settings.optimizer == "adam"
           else torch.optim.SGD(net.parameters(), lr=1e-9, momentum=0.99))
    x = torch.randn(1, 1, settings.tile, settings.tile, device=device)

    def step() -> float:
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        torch.log_softmax(net(x), 1)[:, 1].mean().backward()
        opt.step()
        if device != "cpu":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    default = torch.get_num_threads()
    if device != "cpu" or default == 1:
        step()
        return float(np.median([step(), step()])), default
    try:
        torch.set_num_threads(1)
        step()
        one = float(np.median([step(), step()]))
        torch.set_num_threads(default)
        first = step()                     # primitives are cached: no separate warm-up
        many = first if first > 1.5 * one else float(np.median([first, step()]))
    finally:
        torch.set_num_threads(default)
    return (one, 1) if one <= many else (many, default)


#: measured on the 2-core machine (width 16, depth 3, 252² tiles): predicting a 2048² image
#: with 8-fold TTA takes about this many training-step times; evaluation and report ~ seconds
_PREDICT_STEPS_PER_2048 = 450.0
_EVAL_S_PER_2048 = 45.0
_FIXED_S = 60.0


def training_budget(settings: DemoSettings, step_s: float) -> float:
    """Seconds of training: ``train_minutes``, or less when the estimated time of prediction,
    evaluation and report (which scale with the image area and the step time) would push the
    whole demo past ``total_minutes``; at least one minute."""
    area = (settings.size / 2048.0) ** 2
    rest = step_s * _PREDICT_STEPS_PER_2048 * area + _EVAL_S_PER_2048 * area + _FIXED_S
    return float(max(60.0, min(settings.train_minutes * 60.0,
                               settings.total_minutes * 60.0 - rest)))


def _choose_iterations(settings: DemoSettings, step_s: float) -> int:
    # 1.25: the trainer also prepares tiles, logs, validates and writes checkpoints
    n = int(training_budget(settings, step_s) / (1.25 * max(step_s, 1e-3)))
    return int(min(settings.max_iterations, max(settings.min_iterations, n)))


# ---------------------------------------------------------------------------- evaluation
def isbi_pixel_rand(gt_cells: np.ndarray, prob_cell: np.ndarray) -> dict[str, Any]:
    """ISBI 2012 pixel error and foreground-restricted Rand error (1 − max F over the 11
    challenge thresholds, :mod:`unetlab.metrics`), without the slow warping error.

    ``gt_cells`` (H, W) bool, cells True and membranes/background False; ``prob_cell`` (H, W)
    P(cell) in [0, 1]. Returns ``pixel_error``, ``rand_error``, their thresholds and
    ``per_threshold`` (threshold, pixel_f, rand_f)."""
    from .metrics import isbi_thresholds, pixel_fscore, rand_fscore

    gt = np.asarray(gt_cells).astype(np.uint8)
    p = np.clip(np.asarray(prob_cell, np.float32), 0.0, 1.0)
    rows = []
    for th in isbi_thresholds():
        rows.append({"threshold": th, "pixel_f": pixel_fscore(gt, p, th),
                     "rand_f": rand_fscore(gt, p, th)})
    bp = max(rows, key=lambda r: r["pixel_f"])
    br = max(rows, key=lambda r: r["rand_f"])
    return {"pixel_error": 1.0 - bp["pixel_f"], "rand_error": 1.0 - br["rand_f"],
            "pixel_threshold": bp["threshold"], "rand_threshold": br["threshold"],
            "per_threshold": rows}


def _center(a: np.ndarray, n: int) -> np.ndarray:
    h, w = a.shape[-2:]
    n = min(n, h, w)
    y, x = (h - n) // 2, (w - n) // 2
    return a[..., y:y + n, x:x + n]


def evaluate_demo(gt_instances: np.ndarray, prob_cell: np.ndarray, pred_instances: np.ndarray,
                  warping_crop: int = 0) -> dict[str, Any]:
    """All the demo's metrics of one predicted image against its ground truth instances."""
    from .metrics import isbi2012, matching, seg
    from .report import split_merge_map
    from .weights import separate_instances

    gt_cells = separate_instances(gt_instances)          # Fig. 3c: touching cells separated
    out: dict[str, Any] = {"isbi2012": isbi_pixel_rand(gt_cells, prob_cell)}
    if warping_crop:
        crop = isbi2012(_center(gt_cells, warping_crop).astype(np.uint8),
                        np.clip(_center(prob_cell, warping_crop), 0, 1), classic=False)
        out["isbi2012_crop"] = {k: crop[k] for k in ("pixel_error", "rand_error",
                                                    "warping_error", "shape")}
    out["seg"] = seg(gt_instances, pred_instances)
    m = matching(gt_instances, pred_instances)
    out["matching"] = [{k: r[k] for k in ("threshold", "tp", "fp", "fn", "precision", "recall",
                                          "f1", "accuracy", "panoptic_quality")} for r in m]
    out["split_merge"] = split_merge_map(gt_instances, pred_instances)[1]
    return out


def headline(metrics: dict[str, Any]) -> dict[str, Any]:
    """The few numbers printed at the end and shown at the top of the report."""
    m50 = next(r for r in metrics["matching"] if abs(r["threshold"] - 0.5) < 1e-9)
    sm = metrics["split_merge"]
    h = {"pixel error (ISBI)": metrics["isbi2012"]["pixel_error"],
         "Rand error (ISBI, foreground)": metrics["isbi2012"]["rand_error"]}
    if "isbi2012_crop" in metrics:
        h["warping error (512² crop)"] = metrics["isbi2012_crop"]["warping_error"]
    h.update({"SEG": metrics["seg"], "F1 @ IoU 0.5": m50["f1"],
              "AP @ IoU 0.5 (DSB)": m50["accuracy"],
              "cells (true / found)": f"{sm['objects']} / {sm['predicted']}",
              "merges / splits": f"{sm['merges']} / {sm['splits']}"})
    return h


# ---------------------------------------------------------------------------- the demo
def _write_tiff(path: Path, array: np.ndarray) -> None:
    import tifffile

    from .atomic import atomic_path

    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, array)


def _augmented_examples(image: np.ndarray, instances: np.ndarray, n: int, seed: int):
    """``n`` random augmentations (unetlab.augment, the trainer's defaults) of one training
    image with its targets: list of (image (H, W), classes (H, W) uint8, weights (H, W))."""
    from .augment import Augment
    from .weights import training_targets

    classes, weights = training_targets(instances)
    aug = Augment.paper()
    out = []
    for i in range(n):
        img, cls, w = aug(image[None].astype(np.float32), classes, weights,
                          rng=np.random.default_rng([seed, i]))
        out.append((img[0], cls, w))
    return out


def run_demo(out: str | os.PathLike = "runs/demo", settings: DemoSettings | None = None,
             progress: bool = True, device: str = "auto",
             echo: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the demo into ``out``; returns a summary dict (``report``, ``headline``, ``metrics``,
    ``timing``, ``iterations``, ``run``). ``echo`` prints progress lines (default: stderr)."""
    import json

    import torch

    from .atomic import atomic_write_text
    from .postprocess import to_instances  # noqa: F401 - fail early when a piece is missing
    from .predict import predict_tiled  # noqa: F401
    from .training import train  # noqa: F401

    s = settings or demo_settings()
    say = echo or (lambda msg: print(msg, file=sys.stderr, flush=True))
    out = Path(out)
    _prepare_out(out)
    atomic_write_text(out / DEMO_MARKER, json.dumps({"unetlab_demo": dataclasses.asdict(s)},
                                                    indent=2))
    default_threads = torch.get_num_threads()
    try:
        return _run(out, s, progress, device, say)
    finally:
        torch.set_num_threads(default_threads)


def _run(out: Path, s: DemoSettings, progress: bool, device: str,
         say: Callable[[str], None]) -> dict[str, Any]:
    import json

    import torch

    from .atomic import atomic_write_text
    from .checkpoint import load_model
    from .postprocess import to_instances
    from .predict import predict_tiled
    from .report import ReportData, build_report, save_report_data
    from .synthetic import touching_cells_arrays
    from .training import TrainConfig, train

    timing: dict[str, float] = {}
    t_all = time.perf_counter()

    # 1. data ---------------------------------------------------------------------------
    t0 = time.perf_counter()
    say(f"[1/6] generating synthetic touching cells: {s.train_images} training images "
        f"{s.train_size}², 2 validation images, one {s.size}² test image")
    train_pairs = touching_cells_arrays(s.train_images, s.train_size, s.seed)
    big_img, big_gt = touching_cells_arrays(1, s.size, s.seed + 1000)[0]
    timing["data generation"] = time.perf_counter() - t0

    # 2. training -----------------------------------------------------------------------
    default_threads = torch.get_num_threads()
    step, threads = _calibrate_step(s, _resolve_device(device))
    busy = threads != torch.get_num_threads()
    if busy:
        torch.set_num_threads(threads)
    iterations = s.iterations
    if iterations is None:
        iterations = _choose_iterations(s, step)
        say(f"[2/6] training: one step takes {step:.2f} s here, so {iterations} iterations fit "
            f"the time budget ({training_budget(s, step) / 60:.1f} min)")
    else:
        say(f"[2/6] training: {iterations} iterations (about {step:.2f} s each)")
    if busy:
        say(f"      (this machine is busy: {threads} CPU thread(s) run faster here than "
            f"{default_threads})")
    val_every = s.val_every or max(1, math.ceil(iterations / 5))
    cfg = TrainConfig(
        data="synthetic", val="synthetic", out=str(out), synthetic_images=s.train_images,
        synthetic_size=s.train_size, synthetic_seed=s.seed, width=s.width, depth=s.depth,
        norm=s.norm,
        tile=s.tile, iterations=iterations, val_every=val_every,
        warmup=min(200, iterations // 5), checkpoint_every=max(val_every, 1),
        log_every=max(1, min(10, iterations // 50)), seed=s.seed, device=device,
        optimizer=s.optimizer, lr=s.lr, momentum=s.momentum, grad_clip=s.grad_clip,
        progress=progress)
    t0 = time.perf_counter()
    run = Path(train(cfg))
    timing["training"] = time.perf_counter() - t0
    model_path = run / "best.pt" if (run / "best.pt").exists() else run / "model.pt"
    net = load_model(model_path)

    # 3. prediction ---------------------------------------------------------------------
    say(f"[3/6] predicting the {s.size}×{s.size} image: overlap-tile, 8-fold test-time "
        f"averaging ({model_path.name})")
    t0 = time.perf_counter()
    prob = predict_tiled(net, big_img, tta=True, progress=progress,
                         device=_resolve_device(device))
    prob_cell = np.ascontiguousarray(prob[1], dtype=np.float32)
    timing["prediction (overlap-tile, 8× TTA)"] = time.perf_counter() - t0

    # 4. instances ----------------------------------------------------------------------
    say("[4/6] splitting instances")
    t0 = time.perf_counter()
    pred_inst = np.asarray(to_instances(prob, h=s.seed_h), dtype=np.int32)
    timing["instances"] = time.perf_counter() - t0
    (out / "prediction").mkdir(exist_ok=True)
    _write_tiff(out / "prediction" / "image.tif", big_img.astype(np.float32))
    _write_tiff(out / "prediction" / "prob_cell.tif", prob_cell)
    _write_tiff(out / "prediction" / "instances.tif", pred_inst)
    _write_tiff(out / "prediction" / "ground_truth.tif", big_gt.astype(np.int32))

    # 5. evaluation ---------------------------------------------------------------------
    say("[5/6] evaluating")
    t0 = time.perf_counter()
    metrics = evaluate_demo(big_gt, prob_cell, pred_inst, s.warping_crop)
    timing["evaluation"] = time.perf_counter() - t0
    head = headline(metrics)

    # 6. report -------------------------------------------------------------------------
    say("[6/6] writing the report")
    t0 = time.perf_counter()
    data = ReportData(
        title=f"unetlab demo: synthetic touching cells ({s.size}×{s.size} test image)",
        train_images=[p[0] for p in train_pairs[:4]],
        train_instances=[p[1] for p in train_pairs[:4]],
        augmented=_augmented_examples(train_pairs[0][0], train_pairs[0][1], 8, s.seed),
        pred_image=big_img, pred_prob=prob_cell, pred_instances=pred_inst, gt_instances=big_gt,
        metrics=metrics, timing=dict(timing), headline=head,
        notes=[f"U-Net depth {s.depth}, width {s.width}, unpadded"
               + (f", {s.norm} normalisation" if s.norm != "none" else "")
               + f", {iterations} iterations of "
               + (f"Adam (lr {s.lr:g}, β1 {s.momentum:g}, poly decay" if s.optimizer == "adam"
                  else f"SGD (lr {s.lr:g}, momentum {s.momentum:g}, poly decay")
               + f", one {s.tile}² tile per step, weight map w0 = 10, σ = 5 px, elastic "
               f"deformation); predicted with {model_path.name}; instances: watershed of the "
               f"distance transform of P(cell) > 0.5, seeds h = {s.seed_h:g} px."
               + (" Quick mode: tiny sizes, not a meaningful result." if s.quick else "")])
    data.timing["total before the report"] = time.perf_counter() - t_all
    save_report_data(out, data)
    report = build_report(out, data=data)
    timing["report"] = time.perf_counter() - t0
    timing["total"] = time.perf_counter() - t_all
    atomic_write_text(out / "report_data" / "timing.json", json.dumps(timing, indent=2))
    return {"report": report, "headline": head, "metrics": metrics, "timing": timing,
            "iterations": iterations, "run": run}


def format_summary(summary: dict[str, Any]) -> str:
    """The lines ``unetlab demo`` prints at the end: where the report is, the time taken, and
    the headline metrics."""
    tm = summary["timing"]
    lines = ["", "unetlab demo finished",
             f"report: {Path(summary['report']).resolve()}",
             f"total time: {tm['total']:.0f} s ({tm['total'] / 60:.1f} min; training "
             f"{tm['training']:.0f} s for {summary['iterations']} iterations, prediction "
             f"{tm.get('prediction (overlap-tile, 8× TTA)', 0.0):.0f} s)",
             "headline metrics of the test image (lower error / higher score is better):"]
    for k, v in summary["headline"].items():
        lines.append(f"  {k:32s} {v:.4f}" if isinstance(v, float) else f"  {k:32s} {v}")
    return "\n".join(lines)
