"""``unetlab demo``: the whole method on synthetic touching cells, end to end, in minutes on a CPU.

What it does (each step the paper's, at a size a laptop can run):

1. **Data** — generated touching cells (:func:`unetlab.synthetic.touching_cells`): a handful of
   training images, two validation images, and one large test image (2048×2048 by default).
2. **Training** (Sec. 3) — :func:`unetlab.training.train` with the device-aware recipe of
   ``unetlab train`` (:func:`unetlab.training.presets.recipe`, ``preset="auto"``: on a CPU the
   ``cpu`` preset — width 16, depth 4, 380² tiles, Adam with poly decay, bf16 where the CPU has
   it — on a GPU the paper's) plus two options, batch normalisation and Adam's rate 0.003,
   which touching cells need to learn their separation lines in minutes (:data:`CELL_OPTIONS`):
   one large tile per step, cross-entropy weighted by Eq. 2's weight map (w0 = 10, σ = 3 px on
   a CPU), elastic deformation and the other augmentations, He initialisation. Unless
   ``iterations`` is given, the training gets a wall-clock budget (``unetlab train --time``):
   ``train_minutes``, or less when the prediction of the large image (estimated from a timing
   of one training step here) would push the whole demo past ``total_minutes``.
3. **Prediction** (Sec. 2, Fig. 2; Sec. 4) — overlap-tile prediction of the large image with
   8-fold test-time averaging (:func:`unetlab.predict.predict_tiled`).
4. **Instances** — :func:`unetlab.postprocess.to_instances`: P(cell) > threshold, then a
   watershed of the distance transform seeded by its h-maxima. The threshold and h are chosen
   on a separate synthetic validation image (best F1 at IoU 0.5), never on the test image.
5. **Evaluation** — ISBI 2012 pixel error and foreground-restricted Rand error (1 − best F over
   the challenge's 11 thresholds, :mod:`unetlab.metrics`) against the ground truth with touching
   cells separated as in Fig. 3c; on a 512×512 crop also the warping error; cell metrics SEG and
   instance matching (precision/recall/F1 at IoU 0.5 … 0.95); split/merge counts.
6. **Report** — ``OUT/report.html`` (:func:`unetlab.report.build_report`), plus the probability
   map and the instance labels as TIFF files in ``OUT/prediction/``.

The run folder ``OUT`` is a normal training run (config.toml, model.pt, best.pt, log.csv, ...)
plus ``report_data/``, ``prediction/`` and ``report.html``. Running the demo again into the same
folder replaces a previous demo's files — only after every option was checked, and while the
demo holds the folder's lock; a folder holding anything else is refused.
:func:`write_demo_data` writes a small dataset in the layout ``unetlab train`` reads.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import UnetlabError

__all__ = ["DemoSettings", "demo_settings", "run_demo", "write_demo_data", "format_summary",
           "DEMO_MARKER"]

#: file marking a folder as written by the demo (so a rerun may replace it)
DEMO_MARKER = "demo.json"

#: files and folders the demo (and the trainer inside it) writes into OUT
_DEMO_FILES = ("config.toml", "checkpoint.pt", "model.pt", "best.pt", "log.csv", "curves.png",
               "report.html", DEMO_MARKER)
_DEMO_DIRS = ("report_data", "prediction", "report_files")


#: TrainConfig fields the demo sets over the preset: touching cells learn their separation
#: lines within minutes only with batch normalisation, which also takes Adam's rate 0.003
#: (docs/decisions.md: SEG 0.72 against 0.64; with lr 0.003, 0.76 in less time)
CELL_OPTIONS = {"norm": "batch", "lr": 0.003}


@dataclass
class DemoSettings:
    """Sizes of one demo run (pixels, counts, seconds); the training recipe is ``preset``'s
    (:func:`unetlab.training.presets.recipe`) with ``options`` (TrainConfig fields) on top."""
    train_images: int = 8          # generated training images
    train_size: int = 256          # their side (px)
    size: int = 2048               # side of the large predicted image (px)
    preset: str = "auto"           # unetlab train's device-aware recipe (cpu or paper)
    options: dict = field(default_factory=lambda: dict(CELL_OPTIONS))  # over the preset
    seed_h: float = 1.0            # h of the watershed's distance-transform seeds (px)
    iterations: int | None = None  # None: a time budget from train_minutes
    train_minutes: float = 3.5     # most minutes of training when iterations is None
    total_minutes: float = 9.0     # whole-demo budget: training gets what prediction leaves
    val_every: int = 0             # 0: about 5 validations per run
    warping_crop: int = 512        # side of the crop for the (slow) warping error; 0 = skip
    seed: int = 0
    quick: bool = False


def demo_settings(quick: bool = False, iterations: int | None = None, size: int | None = None,
                  train_minutes: float | None = None, seed: int = 0,
                  preset: str = "auto") -> DemoSettings:
    """The settings of ``unetlab demo`` (``quick``: tiny sizes for tests, ~10–30 s); every
    value is checked here (one-line :class:`UnetlabError` naming the option)."""
    from .training.config import check_seed
    from .training.presets import PRESETS

    check_seed(seed)
    if str(preset).strip().lower() not in PRESETS:
        raise UnetlabError(f"--preset {preset!r}: use one of {', '.join(PRESETS)}")
    if quick:
        s = DemoSettings(train_images=3, train_size=96, size=256, iterations=6, val_every=3,
                         options=dict(CELL_OPTIONS, width=4, depth=2, tile=100,
                                      precision="fp32"),
                         warping_crop=0, seed=seed, quick=True)
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
    s.preset = str(preset).strip().lower()
    return s


# ---------------------------------------------------------------------------- the run folder
def _prepare_out(out: Path) -> None:
    """Create ``out``, or clear a previous demo's files in it; refuse a folder holding a
    different run or other files. Call it holding the folder's lock (its file is kept)."""
    from .runlock import LOCK_NAME

    if out.exists() and not out.is_dir():
        raise UnetlabError(f"--out {out}: exists and is not a folder")
    if out.is_dir():
        entries = [e for e in out.iterdir() if e.name != LOCK_NAME]
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


def training_config(s: DemoSettings, out, device="auto", **options):
    """The demo's :class:`~unetlab.training.TrainConfig`: ``s.preset``'s recipe on the generated
    touching cells (:func:`unetlab.training.presets.recipe`), ``s.options`` and ``options`` on
    top."""
    from .training.presets import recipe

    return recipe(s.preset, data="synthetic", val="synthetic", out=str(out),
                  synthetic_images=s.train_images, synthetic_size=s.train_size,
                  synthetic_seed=s.seed, seed=s.seed, device=str(device),
                  **{**s.options, **options})


def _calibrate_step(cfg, device) -> tuple[float, int, str]:
    """Time one training step (forward + backward + optimiser update on one tile, in the
    recipe's precision) of the network of ``cfg`` here; returns ``(seconds per step, CPU
    threads to use, reason)``. On a CPU the faster of one thread and torch's default is kept
    (:func:`unetlab.hardware.fastest_threads`: on a busy machine one thread can be many times
    faster)."""
    import statistics

    import torch

    from .hardware import fastest_threads, resolve_precision
    from .training.build import build_net, timing_step

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net, tile, _ = build_net(cfg, 1)
    precision = resolve_precision(cfg.precision, device)
    step = timing_step(net, cfg.optimizer, tile, device, precision, cfg.batch)
    if torch.device(device).type == "cpu":
        threads, seconds, why = fastest_threads(step)
        return seconds, threads, why
    step()
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    n = torch.get_num_threads()
    return statistics.median(times), n, f"{n} thread(s) (GPU)"


#: predicting a 2048² image with 8-fold TTA (and choosing the instance settings) takes about
#: this many training-step times: measured 390 with the cpu preset (bf16, 74 s at 0.19 s per
#: step on one core of the 2-core AMD EPYC), 400 with the older depth-3 fp32 recipe; the
#: estimate keeps a margin. Evaluation and report take seconds.
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
    from .metrics import split_merge_map
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


#: one sentence per headline number: what it measures
HEADLINE_NOTES = {
    "pixel error (ISBI)": "share of pixels on the wrong side of the best threshold",
    "Rand error (ISBI, foreground)": "how much the cells' pixel groupings differ (0 = same)",
    "warping error (512² crop)": "topology errors (merges, splits, holes) per pixel",
    "SEG": "mean IoU of each true cell with its best-overlapping prediction (CTC)",
    "F1 @ IoU 0.5": "harmonic mean of precision and recall of cells matched at IoU ≥ 0.5",
    "AP @ IoU 0.5 (DSB)": "matched / (matched + missed + spurious) cells at IoU ≥ 0.5",
    "cells (true / found)": "cells in the ground truth / in the prediction",
    "merges / splits": "predicted cells covering several true ones / true cells cut in parts",
}


def headline(metrics: dict[str, Any]) -> dict[str, Any]:
    """The few numbers printed at the end and shown at the top of the report (explained by
    :data:`HEADLINE_NOTES`)."""
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


DEMO_DATA_MARKER = "demo_data.json"


def write_demo_data(folder: str | os.PathLike, seed: int = 0, images: int = 4,
                    size: int = 256, big: int = 1024) -> list[Path]:
    """A small synthetic touching-cells dataset in the layout ``unetlab train`` reads:
    ``folder/images/NN.tif`` (float32, ≈ [0, 1]) and ``folder/labels/NN.tif`` (int32
    instances), ``images`` of ``size``² px, plus ``folder/big.tif``, one ``big``² image to
    predict, and ``folder/demo_data.json`` recording the settings. Returns the files.

    A folder that already holds this very dataset (same settings, every file present) is
    left as it is; any other existing, non-empty folder is refused."""
    from .atomic import atomic_write_text
    from .synthetic import touching_cells_arrays
    from .training.config import check_seed
    from .writers import write_tiff

    folder = Path(folder)
    if not str(folder).strip():
        raise UnetlabError("--data: empty folder name (an unset shell variable?)")
    check_seed(seed)
    settings = {"seed": seed, "images": images, "size": size, "big": big}
    files = [folder / sub / f"{i:02d}.tif" for i in range(images)
             for sub in ("images", "labels")] + [folder / "big.tif"]
    if _same_demo_data(folder, settings, files):
        return files
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise UnetlabError(f"--data {folder}: exists and is not an empty folder; choose "
                           f"another name")
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(exist_ok=True)
    for i, (img, lab) in enumerate(touching_cells_arrays(images, size, seed)):
        write_tiff(folder / "images" / f"{i:02d}.tif", img.astype(np.float32))
        write_tiff(folder / "labels" / f"{i:02d}.tif", lab.astype(np.int32))
    write_tiff(folder / "big.tif", touching_cells_arrays(1, big, seed + 1000)[0][0])
    atomic_write_text(folder / DEMO_DATA_MARKER, json.dumps(settings))
    return files


def _same_demo_data(folder: Path, settings: dict, files: list[Path]) -> bool:
    try:
        recorded = json.loads((folder / DEMO_DATA_MARKER).read_text())
    except (OSError, ValueError):
        return False
    return recorded == settings and all(f.is_file() for f in files)


def run_demo(out: str | os.PathLike = "runs/demo", settings: DemoSettings | None = None,
             progress: bool = True, device: str = "auto",
             echo: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the demo into ``out``; returns a summary dict (``report``, ``headline``, ``notes``,
    ``metrics``, ``timing``, ``iterations``, ``run``, ``quick``). ``echo`` prints progress
    lines (default: stderr). Every argument is checked before ``out`` is touched; the folder is
    locked (:class:`unetlab.runlock.RunLock`) while the demo runs in it."""
    import json

    import torch

    from .atomic import atomic_write_text
    from .hardware import resolve_device
    from .runlock import RunLock

    s = settings or demo_settings()
    say = echo or (lambda msg: print(msg, file=sys.stderr, flush=True))
    if not str(out).strip():
        raise UnetlabError("--out: empty folder name (an unset shell variable?)")
    dev = resolve_device(device)
    out = Path(out)
    default_threads = torch.get_num_threads()
    with RunLock(out):
        _prepare_out(out)
        atomic_write_text(out / DEMO_MARKER,
                          json.dumps({"unetlab_demo": dataclasses.asdict(s)}, indent=2))
        try:
            return _run(out, s, progress, dev, say)
        finally:
            torch.set_num_threads(default_threads)


def _train(out: Path, s: DemoSettings, progress: bool, device, say):
    """Step 2: time a step, give training its share of the time, train with the preset's
    recipe; (run folder, iterations done, the TrainConfig)."""
    import torch

    from .training import train
    from .training.config import load_config

    probe = training_config(s, out, device)
    step, threads, why = _calibrate_step(probe, device)
    torch.set_num_threads(threads)
    recipe_name = f"the {probe.preset} preset of unetlab train"
    if s.iterations is None:
        budget = training_budget(s, step)
        expected = max(1, int(budget / (1.05 * max(step, 1e-6))))
        extra: dict[str, Any] = {"time": f"{budget:.0f}s"}
        say(f"[2/6] training with {recipe_name}: one step takes {step:.2f} s here, so training "
            f"gets {budget / 60:.1f} min (about {expected} iterations); {why}")
    else:
        expected = s.iterations
        extra = {"iterations": s.iterations, "warmup": min(probe.warmup, s.iterations // 5)}
        say(f"[2/6] training with {recipe_name}: {s.iterations} iterations (about {step:.2f} s "
            f"each); {why}")
    val_every = s.val_every or max(1, math.ceil(expected / 5))
    cfg = training_config(s, out, device, val_every=val_every, checkpoint_every=val_every,
                          log_every=max(1, min(10, expected // 50)), progress=progress,
                          threads=threads, **extra)
    # overwrite: the folder holds the demo's own marker file, checked by _prepare_out
    run = Path(train(cfg, overwrite=True, say=say))
    return run, load_config(run / "config.toml")


def _instance_settings(net, s: DemoSettings, device, progress,
                       precision: str = "fp32") -> dict[str, float]:
    """The threshold on P(cell) and the seed height h (px) of the instance step, chosen by F1
    at IoU 0.5 on a separate synthetic validation image (not the test image)."""
    from .data import normalize_image
    from .metrics import matching
    from .postprocess import to_instances
    from .training.validation import predict_normalized

    img, gt = _validation_image(s)
    prob = predict_normalized(net, normalize_image(img), device, tta=True, progress=progress,
                              precision=precision)
    best = (-1.0, 0.5, s.seed_h)
    for th in (0.3, 0.4, 0.5, 0.6, 0.7):
        for h in (s.seed_h / 2, s.seed_h, 2 * s.seed_h):
            pred = to_instances(prob, threshold=th, h=h)
            f1 = next(r["f1"] for r in matching(gt, pred) if abs(r["threshold"] - 0.5) < 1e-9)
            best = max(best, (f1, th, h), key=lambda b: b[0])
    return {"threshold": best[1], "h": best[2], "validation_f1": best[0]}


def _validation_image(s: DemoSettings):
    """The demo's instance-validation image (image, instances): generated with its own seed,
    a side of ``min(512, size)`` px (at least the training images' side)."""
    from .synthetic import touching_cells_arrays

    side = max(s.train_size, min(512, s.size))
    return touching_cells_arrays(1, side, s.seed + 2000)[0]


def _predict(out: Path, net, big_img, s: DemoSettings, device, progress,
             precision: str = "fp32"):
    """Steps 3–4: probabilities of the test image and its instances (settings from the
    validation image); writes ``OUT/prediction/*.tif``. Returns (P(cell), instances, chosen)."""
    from .data import normalize_image
    from .postprocess import to_instances
    from .training.validation import predict_normalized
    from .writers import write_tiff

    prob = predict_normalized(net, normalize_image(big_img), device, tta=True, progress=progress,
                              precision=precision)
    prob_cell = np.ascontiguousarray(prob[1], dtype=np.float32)
    chosen = _instance_settings(net, s, device, progress, precision)
    pred_inst = np.asarray(to_instances(prob, threshold=chosen["threshold"], h=chosen["h"]),
                           dtype=np.int32)
    (out / "prediction").mkdir(exist_ok=True)
    for name, arr in (("image", big_img.astype(np.float32)), ("prob_cell", prob_cell),
                      ("instances", pred_inst)):
        write_tiff(out / "prediction" / f"{name}.tif", arr)
    return prob_cell, pred_inst, chosen


def _notes(s: DemoSettings, cfg, precision: str, model_name: str,
           chosen: dict) -> list[str]:
    """One sentence on what was trained and how the instances were made (``cfg``: the
    training's TrainConfig as written to config.toml)."""
    adam = {"adam": "Adam", "adamw": "AdamW"}.get(cfg.optimizer)
    opt = (f"{adam} (lr {cfg.lr:g}, β1 {cfg.momentum:g}" if adam
           else f"SGD (lr {cfg.lr:g}, momentum {cfg.momentum:g}")
    note = (f"unetlab train's {cfg.preset} preset: U-Net depth {cfg.depth}, width {cfg.width}, "
            f"{cfg.padding}" + (f", {cfg.norm} normalisation" if cfg.norm != "none" else "")
            + f", {cfg.iterations} iterations of {opt}, {cfg.schedule} decay) in "
            f"{precision}, one {cfg.tile}² tile per step, weight map w0 = {cfg.w0:g}, "
            f"σ = {cfg.sigma:g} px, elastic deformation; predicted with {model_name}; instances: "
            f"watershed of the distance transform of P(cell) > {chosen['threshold']:g}, seeds "
            f"h = {chosen['h']:g} px (both chosen on a separate validation image, F1 "
            f"{chosen['validation_f1']:.3f}).")
    if s.quick:
        note += (" Quick mode: tiny sizes and a few training steps; SEG and the other scores "
                 "are not meaningful.")
    return [note]


def _run(out: Path, s: DemoSettings, progress: bool, device,
         say: Callable[[str], None]) -> dict[str, Any]:
    from .checkpoint import load_model
    from .hardware import resolve_precision
    from .synthetic import touching_cells_arrays

    timing: dict[str, float] = {}
    t_all = t0 = time.perf_counter()
    say(f"[1/6] generating synthetic touching cells: {s.train_images} training images "
        f"{s.train_size}², 2 validation images, one {s.size}² test image")
    train_pairs = touching_cells_arrays(s.train_images, s.train_size, s.seed)
    big_img, big_gt = touching_cells_arrays(1, s.size, s.seed + 1000)[0]
    timing["data generation"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    run, cfg = _train(out, s, progress, device, say)
    iterations = cfg.iterations
    timing["training"] = time.perf_counter() - t0
    model_path = run / "best.pt" if (run / "best.pt").exists() else run / "model.pt"
    net = load_model(model_path)
    say(f"[3/6] predicting the {s.size}×{s.size} image: overlap-tile, 8-fold test-time "
        f"averaging ({model_path.name}); [4/6] instances, settings chosen on a validation image")
    t0 = time.perf_counter()
    precision = resolve_precision(cfg.precision, device)
    prob_cell, pred_inst, chosen = _predict(out, net, big_img, s, device, progress, precision)
    timing["prediction (overlap-tile, 8× TTA) and instances"] = time.perf_counter() - t0
    from .writers import write_tiff

    write_tiff(out / "prediction" / "ground_truth.tif", big_gt.astype(np.int32))
    say("[5/6] evaluating")
    t0 = time.perf_counter()
    metrics = evaluate_demo(big_gt, prob_cell, pred_inst, s.warping_crop)
    metrics["instance_settings"] = chosen
    timing["evaluation"] = time.perf_counter() - t0
    say("[6/6] writing the report")
    notes = _notes(s, cfg, precision, model_path.name, chosen)
    report = _report(out, s, train_pairs, (big_img, prob_cell, pred_inst, big_gt), metrics,
                     timing, notes, t_all)
    return {"report": report, "headline": headline(metrics), "metrics": metrics,
            "timing": timing, "iterations": iterations, "run": run, "quick": s.quick,
            "notes": notes}


def _report(out: Path, s: DemoSettings, train_pairs, predicted, metrics, timing, notes,
            t_all: float) -> Path:
    """Step 6: ``OUT/report.html`` and ``OUT/report_data/`` (timing included)."""
    import json

    from .atomic import atomic_write_text
    from .report import ReportData, build_report, save_report_data

    t0 = time.perf_counter()
    big_img, prob_cell, pred_inst, big_gt = predicted
    data = ReportData(
        title=f"unetlab demo: synthetic touching cells ({s.size}×{s.size} test image)",
        train_images=[p[0] for p in train_pairs[:4]],
        train_instances=[p[1] for p in train_pairs[:4]],
        augmented=_augmented_examples(train_pairs[0][0], train_pairs[0][1], 8, s.seed),
        pred_image=big_img, pred_prob=prob_cell, pred_instances=pred_inst, gt_instances=big_gt,
        metrics=metrics, timing=dict(timing), headline=headline(metrics), notes=notes)
    data.timing["total before the report"] = time.perf_counter() - t_all
    save_report_data(out, data)
    report = build_report(out, data=data)
    timing["report"] = time.perf_counter() - t0
    timing["total"] = time.perf_counter() - t_all
    atomic_write_text(out / "report_data" / "timing.json", json.dumps(timing, indent=2))
    return report


def format_summary(summary: dict[str, Any]) -> str:
    """The lines ``unetlab demo`` prints at the end: where the report is, the time taken, and
    the headline metrics, each with a sentence saying what it measures."""
    tm = summary["timing"]
    pred_s = next((v for k, v in tm.items() if k.startswith("prediction")), 0.0)
    lines = ["", "unetlab demo finished",
             f"report: {Path(summary['report']).resolve()}",
             f"total time: {tm['total']:.0f} s ({tm['total'] / 60:.1f} min; training "
             f"{tm['training']:.0f} s for {summary['iterations']} iterations, prediction "
             f"{pred_s:.0f} s)",
             "headline metrics of the test image (lower error / higher score is better):"]
    for k, v in summary["headline"].items():
        value = f"{v:.4f}" if isinstance(v, float) else str(v)
        lines.append(f"  {k:30s} {value:>12s}  {HEADLINE_NOTES.get(k, '')}".rstrip())
    if summary.get("quick"):
        lines.append("note: --quick trains only a few steps on tiny images: SEG and the other "
                     "scores are not meaningful, only that every step runs.")
    return "\n".join(lines)
