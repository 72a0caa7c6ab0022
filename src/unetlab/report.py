"""Pictures and a one-page HTML report of a run (inputs, weight maps, curves, predictions, errors).

Two layers:

* **Pictures** — pure functions that take numpy arrays and return PNG bytes (matplotlib's Agg
  renderer on a private ``Figure``, no pyplot state, no files): :func:`png_samples` (training
  images with instance outlines, the paper's Fig. 3a–b), :func:`png_weight_map` (separation
  borders and the weight map of Eq. 2 as a jet colour map with a colour bar, Fig. 3c–d),
  :func:`png_augmented` (a grid of augmented samples, Sec. 3.1), :func:`png_curves` (loss and
  validation curves from ``log.csv``), :func:`png_prediction` (probability map and instance
  overlay, whole image and a full-resolution crop) and :func:`png_errors` (split and merge
  errors, see :func:`split_merge_map`).
* **The page** — :func:`build_report(run_dir)` reads a run folder and writes one self-contained
  ``report.html`` (every picture embedded as a base64 PNG ``data:`` URI, or with
  ``embed=False`` written beside it in ``report_files/`` for ``report.html``). Sections a run lacks (no validation,
  no prediction, ...) are omitted with a note; the page always builds.

Run folder, as read here (everything optional)::

    RUN/config.toml            resolved training configuration (shown verbatim)
    RUN/log.csv                iteration, loss, lr, time, validation columns (val_* or any other
                               numeric column)
    RUN/report_data/           written by :func:`save_report_data` (``unetlab demo`` does):
        train.npz              image_000, instances_000[, weights_000], ...
        augmented.npz          image_000, classes_000, weights_000, ...
        prediction.npz         image, prob (P(cell), float16), instances[, gt]
        metrics.json           nested dict of metrics (scalars, lists of per-threshold dicts)
        timing.json            {stage: seconds}
        summary.json           title, headline {name: value}, notes [str]

All images are (H, W) float (any range; shown with a 1–99.8 percentile stretch), instance
images (H, W) integer with 0 = background (negative = unlabelled, shown as background), class
images (H, W) uint8 (0 background, 1 cell, 255 ignored), weight maps (H, W) float32.
"""
from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .atomic import atomic_path, atomic_write_bytes, atomic_write_text
from .errors import UnetlabError

__all__ = [
    "ReportData", "build_report", "save_report_data", "load_report_data", "read_log",
    "split_merge_map", "png_samples", "png_weight_map", "png_augmented", "png_curves",
    "png_prediction", "png_errors", "SECTIONS",
]

#: (anchor id, heading) of every section, in page order
SECTIONS = (
    ("summary", "Summary"),
    ("training-images", "Training images and labels"),
    ("weight-map", "Weight map"),
    ("augmentation", "Augmented samples"),
    ("curves", "Training curves"),
    ("prediction", "Prediction"),
    ("errors", "Split and merge errors"),
    ("metrics", "Metrics"),
    ("configuration", "Configuration"),
    ("timing", "Timing"),
)

#: largest side (pixels) of a whole image shown on the page; larger images are downsampled
DISPLAY_MAX = 1024

# error categories of split_merge_map
CATEGORY_MATCHED, CATEGORY_MERGE, CATEGORY_SPLIT, CATEGORY_MISSED, CATEGORY_FALSE_POSITIVE = 1, 2, 3, 4, 5
_CATEGORY_NAMES = {CATEGORY_MATCHED: "matched", CATEGORY_MERGE: "merge", CATEGORY_SPLIT: "split", CATEGORY_MISSED: "missed",
                   CATEGORY_FALSE_POSITIVE: "false positive"}
_CATEGORY_COLOURS = {CATEGORY_MATCHED: (0.20, 0.75, 0.30), CATEGORY_MERGE: (0.95, 0.15, 0.15),
                     CATEGORY_SPLIT: (0.20, 0.45, 1.00), CATEGORY_MISSED: (1.00, 0.85, 0.10),
                     CATEGORY_FALSE_POSITIVE: (0.90, 0.20, 0.90)}


# ============================================================================================
# data passed to the page
# ============================================================================================
@dataclass
class ReportData:
    """Arrays and numbers the report shows besides ``config.toml`` and ``log.csv``.

    Every field is optional; a section whose data are missing is omitted with a note.
    """

    title: str = "unetlab run"
    #: training images (H, W) float and their instance labels (H, W) int, same order
    train_images: list[np.ndarray] = field(default_factory=list)
    train_instances: list[np.ndarray] = field(default_factory=list)
    #: weight maps (Eq. 2) of the training images; computed by the report when absent
    weight_maps: list[np.ndarray] = field(default_factory=list)
    #: augmented samples: (image (H, W) float, classes (H, W) uint8, weights (H, W) float32)
    augmented: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)
    #: the predicted image (H, W), P(cell) (H, W) in [0, 1], predicted and true instances
    pred_image: np.ndarray | None = None
    pred_prob: np.ndarray | None = None
    pred_instances: np.ndarray | None = None
    gt_instances: np.ndarray | None = None
    #: nested metrics dict (scalars; lists of dicts become tables)
    metrics: dict[str, Any] = field(default_factory=dict)
    #: wall-clock seconds per stage
    timing: dict[str, float] = field(default_factory=dict)
    #: a few headline numbers shown at the top {name: value}
    headline: dict[str, Any] = field(default_factory=dict)
    #: free-text remarks shown in the summary
    notes: list[str] = field(default_factory=list)


def _readable(path: Path) -> None:
    """Pages and pictures are for sharing: rw-r--r-- (the atomic temp file starts as 0600)."""
    try:
        os.chmod(path, 0o644)
    except OSError:
        pass


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)


def save_report_data(run_dir: str | os.PathLike, data: ReportData) -> Path:
    """Write ``data`` into ``run_dir/report_data/`` (npz + json, each file atomically).

    P(cell) is stored as float16 (display only). Returns the folder.
    """
    folder = Path(run_dir) / "report_data"
    folder.mkdir(parents=True, exist_ok=True)
    if data.train_images:
        arrays = {}
        for i, (img, lab) in enumerate(zip(data.train_images, data.train_instances)):
            arrays[f"image_{i:03d}"] = np.asarray(img, np.float32)
            arrays[f"instances_{i:03d}"] = np.asarray(lab, np.int32)
            if i < len(data.weight_maps):
                arrays[f"weights_{i:03d}"] = np.asarray(data.weight_maps[i], np.float32)
        _save_npz(folder / "train.npz", arrays)
    if data.augmented:
        arrays = {}
        for i, (img, cls, w) in enumerate(data.augmented):
            arrays[f"image_{i:03d}"] = np.asarray(img, np.float32)
            arrays[f"classes_{i:03d}"] = np.asarray(cls, np.uint8)
            arrays[f"weights_{i:03d}"] = np.asarray(w, np.float32)
        _save_npz(folder / "augmented.npz", arrays)
    pred = {k: v for k, v in (("image", data.pred_image), ("prob", data.pred_prob),
                              ("instances", data.pred_instances), ("gt", data.gt_instances))
            if v is not None}
    if pred:
        if "image" in pred:
            pred["image"] = np.asarray(pred["image"], np.float32)
        if "prob" in pred:
            pred["prob"] = np.asarray(pred["prob"], np.float16)
        for k in ("instances", "gt"):
            if k in pred:
                pred[k] = np.asarray(pred[k], np.int32)
        _save_npz(folder / "prediction.npz", pred)
    for name, obj in (("metrics", data.metrics), ("timing", data.timing)):
        if obj:
            atomic_write_text(folder / f"{name}.json",
                              json.dumps(obj, indent=2, default=_json_default))
    atomic_write_text(folder / "summary.json",
                      json.dumps({"title": data.title, "headline": data.headline,
                                  "notes": list(data.notes)}, indent=2, default=_json_default))
    return folder


def _indexed(z, prefix: str) -> list[np.ndarray]:
    keys = sorted(k for k in z.files if k.startswith(prefix + "_"))
    return [z[k] for k in keys]


def _read_json(path: Path, notes: list[str]) -> Any:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        notes.append(f"{path.name}: unreadable ({e})")
        return None


def _read_npz(path: Path, notes: list[str]):
    if not path.exists():
        return None
    try:
        z = np.load(path, allow_pickle=False)
        return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError) as e:
        notes.append(f"{path.name}: unreadable ({' '.join(str(e).split())[:150]})")
        return None


class _Z(dict):
    @property
    def files(self):
        return list(self)


def load_report_data(run_dir: str | os.PathLike) -> ReportData:
    """Read ``run_dir/report_data/`` (missing or unreadable parts stay empty, with a note)."""
    folder = Path(run_dir) / "report_data"
    data = ReportData(title=Path(run_dir).name or "unetlab run")
    notes: list[str] = []
    if not folder.is_dir():
        return data
    t = _read_npz(folder / "train.npz", notes)
    if t:
        z = _Z(t)
        data.train_images = _indexed(z, "image")
        data.train_instances = _indexed(z, "instances")
        data.weight_maps = _indexed(z, "weights")
    a = _read_npz(folder / "augmented.npz", notes)
    if a:
        z = _Z(a)
        data.augmented = list(zip(_indexed(z, "image"), _indexed(z, "classes"),
                                  _indexed(z, "weights")))
    p = _read_npz(folder / "prediction.npz", notes)
    if p:
        data.pred_image = p.get("image")
        data.pred_prob = p["prob"].astype(np.float32) if "prob" in p else None
        data.pred_instances = p.get("instances")
        data.gt_instances = p.get("gt")
    data.metrics = _read_json(folder / "metrics.json", notes) or {}
    data.timing = _read_json(folder / "timing.json", notes) or {}
    s = _read_json(folder / "summary.json", notes) or {}
    data.title = s.get("title", data.title)
    data.headline = s.get("headline", {}) or {}
    data.notes = list(s.get("notes", []) or []) + notes
    return data


def read_log(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """``log.csv`` as {column: float64 array} (non-numeric or empty cells become NaN).

    Raises :class:`UnetlabError` naming the file when it is unreadable or has no header.
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as e:
        raise UnetlabError(f"{path}: cannot read the training log ({e})") from None
    if not rows or not rows[0]:
        raise UnetlabError(f"{path}: empty training log (no header line)")
    header = [h.strip() for h in rows[0]]
    cols: dict[str, list[float]] = {h: [] for h in header}
    for row in rows[1:]:
        if not row:
            continue
        for i, h in enumerate(header):
            try:
                cols[h].append(float(row[i]) if i < len(row) and row[i].strip() else math.nan)
            except ValueError:
                cols[h].append(math.nan)
    return {h: np.asarray(v, np.float64) for h, v in cols.items()}


# ============================================================================================
# pure helpers on arrays
# ============================================================================================
def _stretch(img: np.ndarray, lo: float = 1.0, hi: float = 99.8) -> np.ndarray:
    """(H, W) or (C, H, W) image → (H, W) float32 in [0, 1] by a percentile stretch
    (multi-channel images show their first channel)."""
    a = np.asarray(img, np.float32)
    if a.ndim == 3:
        a = a[0]
    if a.ndim != 2:
        raise ValueError(f"expected an (H, W) image, got shape {a.shape}")
    finite = a[np.isfinite(a)]
    if finite.size == 0:
        return np.zeros(a.shape, np.float32)
    p0, p1 = np.percentile(finite, [lo, hi])
    if p1 <= p0:
        p1 = p0 + 1.0
    return np.clip((np.nan_to_num(a, nan=p0) - p0) / (p1 - p0), 0, 1).astype(np.float32)


def _display_step(shape: Sequence[int], max_side: int = DISPLAY_MAX) -> int:
    return max(1, int(math.ceil(max(shape[-2:]) / max_side)))


def _downsample(a: np.ndarray, step: int, labels: bool = False) -> np.ndarray:
    """Block mean (images) or nearest (labels) by an integer factor along the last two axes."""
    if step == 1:
        return a
    if labels:
        return a[..., step // 2::step, step // 2::step]
    h, w = a.shape[-2] // step * step, a.shape[-1] // step * step
    b = np.asarray(a[..., :h, :w], np.float32)
    return b.reshape(*b.shape[:-2], h // step, step, w // step, step).mean(axis=(-3, -1))


def _instance_colours(labels: np.ndarray) -> np.ndarray:
    """(max_id + 1, 3) RGB table: id 0 black, others spread around the hue circle."""
    import colorsys

    n = int(max(labels.max(initial=0), 0)) + 1
    table = np.zeros((n, 3), np.float32)
    for i in range(1, n):
        h = (i * 0.618033988749895) % 1.0
        table[i] = colorsys.hsv_to_rgb(h, 0.75, 1.0)
    return table


def _boundaries(labels: np.ndarray) -> np.ndarray:
    """Inner boundary pixels of every instance (4-neighbour differs), (H, W) bool."""
    lab = np.asarray(labels)
    b = np.zeros(lab.shape, bool)
    fg = lab > 0
    for ax in (0, 1):
        d = np.diff(lab, axis=ax) != 0
        lo = [slice(None)] * 2
        hi = [slice(None)] * 2
        lo[ax] = slice(0, -1)
        hi[ax] = slice(1, None)
        b[tuple(lo)] |= d
        b[tuple(hi)] |= d
    return b & fg


def overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.3) -> np.ndarray:
    """RGB (H, W, 3) float in [0, 1]: the stretched grey image, instances tinted with ``alpha``
    and outlined in their colour (the paper's Fig. 3b). ``labels``: (H, W) int, ≤ 0 untouched."""
    grey = _stretch(image)
    lab = np.where(np.asarray(labels) > 0, labels, 0).astype(np.int64)
    if lab.shape != grey.shape:
        raise ValueError(f"image {grey.shape} and labels {lab.shape} differ in shape")
    colours = _instance_colours(lab)[lab]
    rgb = np.repeat(grey[..., None], 3, axis=2)
    fg = lab > 0
    rgb[fg] = (1 - alpha) * rgb[fg] + alpha * colours[fg]
    edge = _boundaries(lab)
    rgb[edge] = colours[edge]
    return np.clip(rgb, 0, 1)


def split_merge_map(gt: np.ndarray, pred: np.ndarray, fraction: float = 0.5
                    ) -> tuple[np.ndarray, dict[str, int]]:
    """Where a predicted segmentation merges or splits the true objects.

    With C[g, p] the number of pixels shared by true object g and predicted object p (0 =
    background on either side) and |·| object areas:

    * predicted p is a **merge** when ≥ 2 true objects g have C[g, p] > fraction·|g|
      (p holds most of each of several cells);
    * true g is **split** when ≥ 2 predicted objects p have C[g, p] > fraction·|p|
      (several predicted pieces lie mostly inside g);
    * true g is **missed** when C[g, 0] > fraction·|g| (mostly predicted background);
    * predicted p is a **false positive** when C[0, p] > fraction·|p|;
    * every other true object is **matched**.

    Returns ``(categories, counts)``: categories (H, W) uint8 — 0 nothing, 1 matched (pixels of
    g), 2 merge (pixels of p and of the true cells it swallows), 3 split (pixels of g), 4 missed
    (pixels of g), 5 false positive (pixels of p), later ones painted over earlier ones in the
    order matched, missed, false positive, split, merge — and counts {"objects", "predicted", "merges" (predicted objects),
    "merged" (true objects inside merges), "splits" (true objects), "missed",
    "false_positives"}. Labels ≤ 0 count as background.
    """
    gt = np.asarray(gt)
    pred = np.asarray(pred)
    if gt.shape != pred.shape:
        raise UnetlabError(f"ground truth {gt.shape} and prediction {pred.shape} differ in shape")
    g_ids, g_inv = np.unique(np.where(gt > 0, gt, 0), return_inverse=True)
    p_ids, p_inv = np.unique(np.where(pred > 0, pred, 0), return_inverse=True)
    g_inv = g_inv.reshape(gt.shape)
    p_inv = p_inv.reshape(pred.shape)
    # make index 0 background on both sides even when the image has none
    if g_ids[0] != 0:
        g_ids, g_inv = np.concatenate([[0], g_ids]), g_inv + 1
    if p_ids[0] != 0:
        p_ids, p_inv = np.concatenate([[0], p_ids]), p_inv + 1
    ng, npred = len(g_ids), len(p_ids)
    C = np.bincount((g_inv.astype(np.int64) * npred + p_inv).ravel(),
                    minlength=ng * npred).reshape(ng, npred)
    g_area = C.sum(1)
    p_area = C.sum(0)
    big_in_p = C[1:, 1:] > fraction * g_area[1:, None]   # g mostly inside p
    p_in_g = C[1:, 1:] > fraction * p_area[None, 1:]     # p mostly inside g
    merges = np.flatnonzero(big_in_p.sum(0) >= 2) + 1    # predicted indices
    merged_g = np.flatnonzero(big_in_p[:, merges - 1].any(1)) + 1 if merges.size else \
        np.zeros(0, np.int64)
    splits = np.flatnonzero(p_in_g.sum(1) >= 2) + 1      # true indices
    missed = np.flatnonzero(C[1:, 0] > fraction * g_area[1:]) + 1
    false_pos = np.flatnonzero(C[0, 1:] > fraction * p_area[1:]) + 1

    g_cat = np.zeros(ng, np.uint8)
    g_cat[1:] = CATEGORY_MATCHED
    g_cat[missed] = CATEGORY_MISSED
    g_cat[splits] = CATEGORY_SPLIT
    g_cat[merged_g] = CATEGORY_MERGE                 # true cells swallowed by a merge
    p_cat = np.zeros(npred, np.uint8)
    p_cat[false_pos] = CATEGORY_FALSE_POSITIVE
    p_cat[merges] = CATEGORY_MERGE
    cat = g_cat[g_inv]                      # matched / missed / split, on true pixels
    pc = p_cat[p_inv]
    cat[pc == CATEGORY_FALSE_POSITIVE] = CATEGORY_FALSE_POSITIVE
    cat[g_cat[g_inv] == CATEGORY_SPLIT] = CATEGORY_SPLIT
    cat[(pc == CATEGORY_MERGE) | (g_cat[g_inv] == CATEGORY_MERGE)] = CATEGORY_MERGE
    counts = {"objects": ng - 1, "predicted": npred - 1, "merges": int(merges.size),
              "merged": int(merged_g.size), "splits": int(splits.size),
              "missed": int(missed.size), "false_positives": int(false_pos.size)}
    return cat, counts


# ============================================================================================
# pictures: arrays in, PNG bytes out
# ============================================================================================
def _figure(w_in: float, h_in: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(w_in, h_in), dpi=100, layout="constrained")


def _png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi, facecolor="white")
    return buf.getvalue()


def _imshow(ax, img, title: str | None = None, **kw):
    im = ax.imshow(img, interpolation="nearest", **kw)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=10)
    return im


def png_samples(images: Sequence[np.ndarray], instances: Sequence[np.ndarray],
                max_samples: int = 4) -> bytes:
    """Training images and their labels: per sample the raw image and the image with every
    instance tinted and outlined in its own colour (Fig. 3a–b). Up to ``max_samples``."""
    n = min(len(images), len(instances), max_samples)
    if n == 0:
        raise ValueError("no samples to show")
    fig = _figure(3.2 * n, 6.6)
    axes = fig.subplots(2, n, squeeze=False)
    for i in range(n):
        img, lab = np.asarray(images[i]), np.asarray(instances[i])
        step = _display_step(lab.shape, 512)
        img_d = _downsample(_stretch(img), step)
        lab_d = _downsample(lab, step, labels=True)
        k = int(len(np.unique(lab[lab > 0])))
        _imshow(axes[0, i], img_d, f"image {i} ({lab.shape[-2]}×{lab.shape[-1]})", cmap="gray",
                vmin=0, vmax=1)
        _imshow(axes[1, i], overlay(img_d, lab_d), f"{k} labelled instances")
    return _png(fig)


def png_weight_map(image: np.ndarray, instances: np.ndarray, weights: np.ndarray,
                   separation: np.ndarray | None = None) -> bytes:
    """The paper's Fig. 3: (a) image with the true instances outlined, (c) the segmentation
    with separation borders (cells white, background and borders black), (d) the weight map
    w(x) of Eq. 2 as a jet colour map with a colour bar."""
    img = _stretch(image)
    lab = np.asarray(instances)
    w = np.asarray(weights, np.float32)
    if separation is None:
        separation = lab > 0
    fig = _figure(13.5, 4.6)
    axes = fig.subplots(1, 3)
    _imshow(axes[0], overlay(img, lab, alpha=0.0), "image with true instances")
    _imshow(axes[1], np.asarray(separation, np.float32), "segmentation, borders separated (Fig. 3c)",
            cmap="gray", vmin=0, vmax=1)
    im = _imshow(axes[2], w, "weight map w(x) (Fig. 3d)", cmap="jet", vmin=0,
                 vmax=float(np.nanmax(w)) if w.size else 1.0)
    cb = fig.colorbar(im, ax=axes[2], fraction=0.046, pad=0.02)
    cb.set_label("weight", fontsize=9)
    return _png(fig)


def png_augmented(samples: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
                  columns: int = 4, max_samples: int = 8) -> bytes:
    """A grid of augmented samples (Sec. 3.1): per sample the deformed image with the deformed
    cell mask outlined (ignored pixels hatched grey) and, below it, its deformed weight map (jet,
    common colour scale)."""
    samples = list(samples)[:max_samples]
    if not samples:
        raise ValueError("no augmented samples to show")
    cols = min(columns, len(samples))
    rows = int(math.ceil(len(samples) / cols))
    vmax = max(float(np.nanmax(s[2])) if np.size(s[2]) else 0.0 for s in samples) or 1.0
    fig = _figure(2.7 * cols + 0.8, 5.3 * rows)
    axes = fig.subplots(2 * rows, cols, squeeze=False)
    im = None
    for k in range(rows * cols):
        r, c = divmod(k, cols)
        a_img, a_w = axes[2 * r, c], axes[2 * r + 1, c]
        if k >= len(samples):
            a_img.axis("off")
            a_w.axis("off")
            continue
        img, cls, w = samples[k]
        cls = np.asarray(cls)
        rgb = np.repeat(_stretch(img)[..., None], 3, axis=2)
        ignored = cls == 255
        rgb[ignored] = 0.5 * rgb[ignored] + 0.25
        edge = _boundaries((cls == 1).astype(np.int32))
        rgb[edge] = (1.0, 0.85, 0.1)
        _imshow(a_img, rgb, f"sample {k}")
        im = _imshow(a_w, np.asarray(w, np.float32), None, cmap="jet", vmin=0, vmax=vmax)
    if im is not None:
        cb = fig.colorbar(im, ax=axes[1::2, :].ravel().tolist(), fraction=0.03, pad=0.02)
        cb.set_label("weight", fontsize=9)
    return _png(fig)


_LOG_META = {"iteration", "iter", "step", "epoch", "lr", "time", "elapsed", "seconds",
             "wall", "wall_s", "it_per_s", "samples"}


def _validation_columns(log: dict[str, np.ndarray]) -> list[str]:
    cols = []
    for k, v in log.items():
        if k in _LOG_META or k.endswith("loss") or k.endswith("_time") or k.endswith("_s"):
            continue
        if k.startswith("train_"):
            continue
        if np.isfinite(v).any():
            cols.append(k)
    return cols


def png_curves(log: dict[str, np.ndarray]) -> bytes:
    """Loss per iteration (raw and a running mean, log scale when positive) and, when the log
    has them, the validation columns against iteration."""
    it = log.get("iteration", log.get("iter", log.get("step")))
    loss = log.get("loss")
    if loss is None or not np.isfinite(loss).any():
        raise ValueError("the log has no loss values")
    if it is None:
        it = np.arange(1, len(loss) + 1, dtype=np.float64)
    val_cols = _validation_columns(log)
    ncol = 2 if val_cols else 1
    fig = _figure(6.2 * ncol, 3.8)
    axes = fig.subplots(1, ncol, squeeze=False)[0]
    ax = axes[0]
    ok = np.isfinite(loss)
    ax.plot(it[ok], loss[ok], color="0.7", lw=0.8, label="loss")
    k = max(1, min(50, int(ok.sum()) // 20))
    if ok.sum() > k:
        smooth = np.convolve(loss[ok], np.ones(k) / k, mode="valid")
        ax.plot(it[ok][k - 1:], smooth, color="C0", lw=1.8, label=f"running mean ({k})")
    for c in (c for c in log if c.endswith("loss") and c != "loss"):   # e.g. val_loss
        m = np.isfinite(log[c])
        if m.any():
            ax.plot(it[m], log[c][m], marker="o", ms=4, lw=1.4, color="C3", label=c)
    if np.all(loss[ok] > 0):
        ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("weighted cross-entropy")
    ax.set_title("training loss", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if val_cols:
        ax = axes[1]
        for i, c in enumerate(val_cols):
            v = log[c]
            m = np.isfinite(v)
            ax.plot(it[m], v[m], marker="o", ms=3, lw=1.4, color=f"C{i + 1}", label=c)
        ax.set_xlabel("iteration")
        ax.set_ylim(bottom=0)
        ax.set_title("validation", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _png(fig)


def _crop_box(shape: Sequence[int], size: int, labels: np.ndarray | None = None
              ) -> tuple[slice, slice]:
    """A ``size``² window: among a 5×5 grid of candidates the one with most pixels
    ``labels > 0`` (ties: the first), else centred."""
    h, w = shape[-2:]
    size = min(size, max(32, min(h, w) // 2))     # a detail, never the whole image
    s_h, s_w = min(size, h), min(size, w)
    best = ((h - s_h) // 2, (w - s_w) // 2)
    if labels is not None:
        best_score = -1.0
        for fy in (0.0, 0.25, 0.5, 0.75, 1.0):
            for fx in (0.0, 0.25, 0.5, 0.75, 1.0):
                y = int(round((h - s_h) * fy))
                x = int(round((w - s_w) * fx))
                score = float(np.count_nonzero(labels[y:y + s_h:4, x:x + s_w:4] > 0))
                if score > best_score:
                    best, best_score = (y, x), score
    return slice(best[0], best[0] + s_h), slice(best[1], best[1] + s_w)


def png_prediction(image: np.ndarray, prob: np.ndarray, instances: np.ndarray | None = None,
                   crop: int = 256) -> bytes:
    """Top row, whole image (downsampled to ≤ 1024 px): the input, P(cell) (viridis with a colour
    bar) and the predicted instances overlaid; bottom row: the same at full resolution in a
    ``crop``² window."""
    img = np.asarray(image)
    p = np.asarray(prob, np.float32)
    if img.shape[-2:] != p.shape[-2:]:
        raise ValueError(f"image {img.shape} and probabilities {p.shape} differ in shape")
    ncol = 3 if instances is not None else 2
    fig = _figure(4.6 * ncol + 0.6, 9.0)
    axes = fig.subplots(2, ncol, squeeze=False)
    step = _display_step(p.shape)
    box = _crop_box(p.shape, crop, instances)
    h, w = p.shape[-2:]
    rows = [(_downsample(_stretch(img), step), _downsample(p, step),
             None if instances is None else _downsample(np.asarray(instances), step, labels=True),
             f"whole image {h}×{w}" + (f" (shown 1:{step})" if step > 1 else "")),
            (_stretch(img)[box], p[box], None if instances is None else np.asarray(instances)[box],
             f"crop y {box[0].start}–{box[0].stop}, x {box[1].start}–{box[1].stop} (1:1)")]
    for r, (im_d, p_d, lab_d, label) in enumerate(rows):
        _imshow(axes[r, 0], im_d, f"input, {label}", cmap="gray", vmin=0, vmax=1)
        if r == 0:
            y0, x0 = box[0].start / step, box[1].start / step
            from matplotlib.patches import Rectangle

            axes[r, 0].add_patch(Rectangle((x0, y0), (box[1].stop - box[1].start) / step,
                                           (box[0].stop - box[0].start) / step, fill=False,
                                           ec="yellow", lw=1.2))
        pim = _imshow(axes[r, 1], p_d, "P(cell)", cmap="viridis", vmin=0, vmax=1)
        fig.colorbar(pim, ax=axes[r, 1], fraction=0.046, pad=0.02)
        if lab_d is not None:
            k = len(np.unique(lab_d[lab_d > 0]))
            _imshow(axes[r, 2], overlay(im_d, lab_d),
                    f"predicted instances ({k} visible)" if r else
                    f"predicted instances ({len(np.unique(instances[instances > 0]))})")
    return _png(fig)


def png_errors(image: np.ndarray, gt: np.ndarray, pred: np.ndarray, crop: int = 384,
               fraction: float = 0.5) -> bytes:
    """Split/merge error map (:func:`split_merge_map`) over the grey image: whole image
    (downsampled) and a full-resolution crop, with a colour legend and the counts."""
    from matplotlib.patches import Patch

    cat, counts = split_merge_map(gt, pred, fraction)
    img = _stretch(image)

    def paint(g, c):
        rgb = np.repeat(g[..., None], 3, axis=2) * 0.8
        for k, col in _CATEGORY_COLOURS.items():
            m = c == k
            rgb[m] = 0.45 * rgb[m] + 0.55 * np.asarray(col)
        return np.clip(rgb, 0, 1)

    step = _display_step(cat.shape)
    errors = (cat >= CATEGORY_MERGE)
    box = _crop_box(cat.shape, crop, errors if errors.any() else np.asarray(gt))
    fig = _figure(13.0, 6.8)
    axes = fig.subplots(1, 2)
    _imshow(axes[0], paint(_downsample(img, step), _downsample(cat, step, labels=True)),
            "whole image" + (f" (1:{step})" if step > 1 else ""))
    _imshow(axes[1], paint(img[box], cat[box]),
            f"crop y {box[0].start}–{box[0].stop}, x {box[1].start}–{box[1].stop} (1:1)")
    names = {CATEGORY_MATCHED: f"matched ({counts['objects'] - counts['splits'] - counts['missed'] - counts['merged']})",
             CATEGORY_MERGE: f"merge ({counts['merges']} predicted, {counts['merged']} true cells)",
             CATEGORY_SPLIT: f"split ({counts['splits']})", CATEGORY_MISSED: f"missed ({counts['missed']})",
             CATEGORY_FALSE_POSITIVE: f"false positive ({counts['false_positives']})"}
    handles = [Patch(color=_CATEGORY_COLOURS[k], label=names[k]) for k in names]
    fig.legend(handles=handles, loc="outside lower center", ncol=5, fontsize=9, frameon=False)
    return _png(fig)


# ============================================================================================
# the page
# ============================================================================================
_CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0;color:#1d2330;
 background:#f4f5f7;line-height:1.45}
header{background:#1f2a44;color:#fff;padding:18px 32px}
header h1{margin:0;font-size:24px} header p{margin:4px 0 0;color:#c9d1e3;font-size:14px}
nav{background:#fff;border-bottom:1px solid #dde1e8;padding:8px 32px;font-size:14px;
 position:sticky;top:0;z-index:1}
nav a{margin-right:14px;color:#2a5bd7;text-decoration:none;white-space:nowrap}
main{max-width:1400px;margin:0 auto;padding:8px 32px 40px}
section{background:#fff;border:1px solid #dde1e8;border-radius:8px;margin:18px 0;
 padding:6px 22px 16px}
h2{font-size:19px;border-bottom:1px solid #eceef2;padding-bottom:6px}
h3{font-size:15px;margin:14px 0 6px}
img{max-width:100%;height:auto;display:block;margin:6px 0}
.note{color:#7a5d00;background:#fff8e1;border-left:4px solid #f0c000;padding:6px 10px;
 font-size:14px}
.caption{color:#555;font-size:13.5px;margin:2px 0 10px}
table{border-collapse:collapse;font-size:13.5px;margin:6px 0 12px}
th,td{border:1px solid #dde1e8;padding:3px 10px;text-align:right}
th{background:#f0f2f6} td:first-child,th:first-child{text-align:left}
pre{background:#f6f8fa;border:1px solid #e1e4e8;padding:10px;overflow:auto;font-size:12.5px;
 max-height:520px}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:10px 0}
.card{border:1px solid #dde1e8;border-radius:8px;padding:10px 16px;min-width:150px;
 background:#fafbfc}
.card .v{font-size:22px;font-weight:600} .card .k{font-size:12.5px;color:#555}
"""


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return html.escape(str(v))
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    if isinstance(v, (float, np.floating)):
        f = float(v)
        if not math.isfinite(f):
            return str(f)
        if f != 0 and (abs(f) < 1e-3 or abs(f) >= 1e6):
            return f"{f:.4g}"
        return f"{f:.4f}".rstrip("0").rstrip(".") if abs(f) < 100 else f"{f:,.1f}"
    return html.escape(str(v))


def _seconds(s: float) -> str:
    s = float(s)
    if s < 60:
        return f"{s:.1f} s"
    m, sec = divmod(s, 60)
    return f"{int(m)} min {sec:04.1f} s"


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    out = ["<table><tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>"]
    for r in rows:
        out.append("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in r) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _metrics_html(metrics: dict[str, Any]) -> str:
    """Scalars of a nested dict as one (name, value) table; lists of dicts as their own tables."""
    scalars: list[tuple[str, Any]] = []
    tables: list[str] = []

    def walk(prefix: str, obj: Any):
        if isinstance(obj, dict):
            for k, v in obj.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(obj, (list, tuple)) and obj and all(isinstance(x, dict) for x in obj):
            keys: list[str] = []
            for x in obj:
                keys += [k for k in x if k not in keys and not isinstance(x[k], (dict, list))]
            tables.append(f"<h3>{html.escape(prefix)}</h3>" +
                          _table(keys, ([x.get(k, "") for k in keys] for x in obj)))
        elif isinstance(obj, (list, tuple)):
            if len(obj) <= 12 and all(isinstance(x, (int, float)) for x in obj):
                scalars.append((prefix, ", ".join(_fmt(x) for x in obj)))
        else:
            scalars.append((prefix, obj))

    walk("", metrics)
    out = _table(["metric", "value"], scalars) if scalars else ""
    return out + "\n".join(tables)


class _Page:
    """Collects sections and images; images are embedded or written to ``files_dir``."""

    def __init__(self, embed: bool, files_dir: Path, rel: str):
        self.embed, self.files_dir, self.rel = embed, files_dir, rel
        self.parts: list[str] = []
        self.n_images = 0

    def img(self, png: bytes, alt: str, name: str) -> str:
        self.n_images += 1
        if self.embed:
            src = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        else:
            self.files_dir.mkdir(parents=True, exist_ok=True)
            fname = f"{self.n_images:02d}-{name}.png"
            atomic_write_bytes(self.files_dir / fname, png)
            _readable(self.files_dir / fname)
            src = f"{self.rel}/{fname}"
        return f'<img src="{src}" alt="{html.escape(alt)}">'

    def section(self, anchor: str, heading: str, body: str) -> None:
        self.parts.append(f'<section id="{anchor}"><h2>{html.escape(heading)}</h2>\n{body}\n'
                          f"</section>")


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _caption(text: str) -> str:
    return f'<p class="caption">{text}</p>'


def _picture(page: _Page, make, alt: str, name: str) -> str:
    """Run a picture function; a failure becomes a note instead of breaking the page."""
    try:
        return page.img(make(), alt, name)
    except Exception as e:  # noqa: BLE001 - one broken picture must not lose the report
        return _note(f"{alt}: could not draw ({type(e).__name__}: {' '.join(str(e).split())[:200]})")


def _compute_weight_map(instances: np.ndarray, w0: float = 10.0, sigma: float = 5.0):
    """(weights, cell mask) exactly as the trainer builds them (:func:`training_targets`)."""
    from .weights import training_targets

    classes, weights = training_targets(np.asarray(instances), w0=w0, sigma=sigma)
    return weights, classes == 1


def _read_config(run_dir: Path) -> dict[str, Any]:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    try:
        return tomllib.loads((run_dir / "config.toml").read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return {}


def _samples_from_config(config: dict[str, Any], n: int = 4, n_aug: int = 8
                         ) -> tuple[list, list, list, str | None]:
    """Training images, instances and augmented samples of a run made by ``unetlab train``,
    re-read from the data its config.toml names (the generated cells are regenerated).
    Returns (images, instances, augmented, note-or-None); never raises."""
    data = config.get("data")
    if not data:
        return [], [], [], None
    try:
        if data == "synthetic":
            from .synthetic import touching_cells_arrays

            pairs = touching_cells_arrays(min(n, int(config.get("synthetic_images", n))),
                                          int(config.get("synthetic_size", 256)),
                                          int(config.get("synthetic_seed", 0)))
            images = [p[0] for p in pairs]
            instances = [p[1] for p in pairs]
        else:
            from .data import read_dataset

            samples = read_dataset(data, labels=config.get("labels") or None)[:n]
            images = [np.asarray(sm.image)[0] for sm in samples]
            instances = [np.asarray(sm.instances) for sm in samples]
        aug = []
        if images and config.get("augment", True):
            from .augment import Augment
            from .weights import training_targets

            classes, weights = training_targets(instances[0], w0=float(config.get("w0", 10.0)),
                                                sigma=float(config.get("sigma", 5.0)))
            a = Augment.paper()
            for i in range(n_aug):
                img, cls, w = a(np.asarray(images[0], np.float32)[None], classes, weights,
                                rng=np.random.default_rng([int(config.get("seed", 0)), i]))
                aug.append((img[0], cls, w))
        return images, instances, aug, None
    except Exception as e:  # noqa: BLE001 - the data may have moved; the report still builds
        return [], [], [], (f"could not re-read the training data {data!r} named in "
                            f"config.toml ({' '.join(str(e).split())[:200]})")


def build_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None,
                 data: ReportData | None = None, embed: bool = True) -> Path:
    """Write the HTML report of the run in ``run_dir``; returns its path.

    ``out``: the HTML file (default ``run_dir/report.html``). ``data``: the arrays and numbers to
    show (default: :func:`load_report_data(run_dir)`). ``embed``: pictures as base64 ``data:``
    URIs in the page (self-contained, the default) or PNG files in ``<out stem>_files/``
    beside it. The configuration and curves come from ``config.toml`` and ``log.csv``.
    Missing parts are omitted with a note. Raises :class:`UnetlabError` when ``run_dir`` is not
    a folder or ``out`` cannot be written.
    """
    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UnetlabError(f"{run_dir}: no such run folder")
    out = Path(out) if out is not None else run_dir / "report.html"
    if out.is_dir():
        raise UnetlabError(f"{out}: is a folder, expected the report's file name")
    if not out.parent.is_dir():
        raise UnetlabError(f"{out}: the folder {out.parent} does not exist")
    config = _read_config(run_dir)
    if data is None:
        data = load_report_data(run_dir)
        if not data.train_images:
            imgs, labs, aug, note = _samples_from_config(config)
            data.train_images, data.train_instances = imgs, labs
            data.augmented = data.augmented or aug
            if note:
                data.notes.append(note)
    files_dir = out.parent / f"{out.stem}_files"
    page = _Page(embed, files_dir, files_dir.name)
    timing = dict(data.timing)

    # -- summary
    body = []
    if data.headline:
        body.append('<div class="cards">' + "".join(
            f'<div class="card"><div class="v">{_fmt(v)}</div><div class="k">{html.escape(str(k))}'
            f"</div></div>" for k, v in data.headline.items()) + "</div>")
    for n in data.notes:
        body.append(_note(n))
    if not body:
        body.append("<p>No headline numbers were saved for this run.</p>")
    body.append(_caption(f"Run folder: <code>{html.escape(str(run_dir.resolve()))}</code>"))
    page.section("summary", "Summary", "\n".join(body))

    # -- training images
    if data.train_images and data.train_instances:
        body = [_caption("Top: training images. Bottom: the annotated instances, each tinted "
                         "and outlined in its own colour (the paper's Fig. 3a–b).")]
        body.append(_picture(page, lambda: png_samples(data.train_images, data.train_instances),
                             "training images with labels", "samples"))
    else:
        body = [_note("No training samples were saved with this run "
                      "(report_data/train.npz; unetlab demo writes it).")]
    page.section("training-images", "Training images and labels", "\n".join(body))

    # -- weight map
    if data.train_instances:
        lab = np.asarray(data.train_instances[0])
        img = data.train_images[0]

        def make_w():
            w, sep = _compute_weight_map(lab, float(config.get("w0", 10.0)),
                                         float(config.get("sigma", 5.0)))
            if data.weight_maps:
                w = data.weight_maps[0]
            return png_weight_map(img, lab, w, sep)

        body = [_caption("Eq. 2: w(x) = w<sub>c</sub>(x) + w<sub>0</sub>·exp(−(d<sub>1</sub>(x) + "
                         "d<sub>2</sub>(x))² / 2σ²), here for the first training image. The class "
                         "balance w<sub>c</sub> lifts the rarer class; the border term is large in "
                         "the thin gaps between touching cells, forcing the network to learn "
                         "them."),
                _picture(page, make_w, "weight map", "weights")]
    else:
        body = [_note("No training labels available, so no weight map to show.")]
    page.section("weight-map", "Weight map", "\n".join(body))

    # -- augmentation
    if data.augmented:
        body = [_caption("Random augmentations as the trainer sees them (Sec. 3.1: elastic "
                         "deformation on a 3×3 grid with σ = 10 px, rotation, flips, shifts, grey "
                         "values). Top: deformed image with the deformed cell outlines (yellow; "
                         "grey = ignored pixels). Bottom: the deformed weight map."),
                _picture(page, lambda: png_augmented(data.augmented), "augmented samples",
                         "augmented")]
    else:
        body = [_note("No augmented samples were saved with this run "
                      "(report_data/augmented.npz).")]
    page.section("augmentation", "Augmented samples", "\n".join(body))

    # -- curves
    log_path = run_dir / "log.csv"
    log = None
    if log_path.exists():
        try:
            log = read_log(log_path)
        except UnetlabError as e:
            body = [_note(str(e))]
    if log is not None:
        body = [_picture(page, lambda: png_curves(log), "training curves", "curves")]
        if not _validation_columns(log):
            body.append(_note("This run logged no validation metrics (no validation set)."))
        it = log.get("iteration")
        if it is not None and len(it):
            body.append(_caption(f"{len(it)} log rows, last iteration {int(np.nanmax(it))}."))
        tcol = next((c for c in ("seconds", "time", "elapsed") if c in log), None)
        if tcol and np.isfinite(log[tcol]).any() and not any(k.startswith("training")
                                                              for k in timing):
            timing["training (log.csv)"] = float(np.nanmax(log[tcol]))
    elif not log_path.exists():
        body = [_note("No log.csv in the run folder: no training curves.")]
    page.section("curves", "Training curves", "\n".join(body))

    # -- prediction
    if data.pred_image is not None and data.pred_prob is not None:
        body = [_caption("Overlap-tile prediction (Fig. 2) of the image below: P(cell) from the "
                         "pixel-wise soft-max, and the instances split from it. The yellow box "
                         "marks the full-resolution crop of the second row."),
                _picture(page, lambda: png_prediction(data.pred_image, data.pred_prob,
                                                      data.pred_instances),
                         "prediction", "prediction")]
    else:
        body = [_note("No prediction was saved with this run (report_data/prediction.npz).")]
    page.section("prediction", "Prediction", "\n".join(body))

    # -- errors
    if data.gt_instances is not None and data.pred_instances is not None:
        body = [_caption("Object-level errors of the predicted instances against the ground "
                         "truth: a <b>merge</b> is a predicted object holding most of two or more "
                         "true cells, a <b>split</b> a true cell most of whose area falls in two or "
                         "more predicted pieces, <b>missed</b> a true cell predicted mostly as "
                         "background, <b>false positive</b> a predicted object lying mostly on "
                         "background."),
                _picture(page, lambda: png_errors(data.pred_image if data.pred_image is not None
                                                  else data.gt_instances > 0,
                                                  data.gt_instances, data.pred_instances),
                         "split and merge errors", "errors")]
    else:
        body = [_note("No ground truth for the predicted image: no error map.")]
    page.section("errors", "Split and merge errors", "\n".join(body))

    # -- metrics
    if data.metrics:
        body = [_metrics_html(data.metrics)]
    else:
        body = [_note("No metrics were saved with this run (report_data/metrics.json).")]
    page.section("metrics", "Metrics", "\n".join(body))

    # -- configuration
    cfg = run_dir / "config.toml"
    if cfg.exists():
        try:
            text = cfg.read_text(encoding="utf-8")
            body = [f"<pre>{html.escape(text)}</pre>"]
        except (OSError, UnicodeDecodeError) as e:
            body = [_note(f"{cfg}: unreadable ({e})")]
    else:
        body = [_note("No config.toml in the run folder.")]
    page.section("configuration", "Configuration", "\n".join(body))

    # -- timing
    timing["report"] = time.perf_counter() - t0
    before = timing.pop("total before the report", None)
    if isinstance(before, (int, float)):
        timing["total"] = before + timing["report"]
    rows = [(k, _seconds(v)) for k, v in timing.items() if isinstance(v, (int, float))]
    body = [_table(["stage", "wall-clock time"], rows)]
    page.section("timing", "Timing", "\n".join(body))

    from . import __version__

    nav = "".join(f'<a href="#{a}">{html.escape(h)}</a>' for a, h in SECTIONS)
    doc = (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
           f"<title>{html.escape(data.title)} — unetlab report</title><style>{_CSS}</style>"
           f"</head><body><header><h1>{html.escape(data.title)}</h1><p>unetlab {__version__} · "
           f"U-Net (Ronneberger, Fischer &amp; Brox, MICCAI 2015) · report written "
           f"{time.strftime('%Y-%m-%d %H:%M')}</p></header><nav>{nav}</nav><main>\n"
           + "\n".join(page.parts) + "\n</main></body></html>\n")
    try:
        atomic_write_text(out, doc)
    except OSError as e:
        raise UnetlabError(f"{out}: cannot write the report ({e.strerror or e})") from None
    _readable(out)
    return out
