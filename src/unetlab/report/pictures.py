"""Pictures of a run as PNG bytes: pure functions of numpy arrays (matplotlib's Agg renderer on a
private ``Figure``, no pyplot state, no files).

:func:`png_samples` (training images with instance outlines, the paper's Fig. 3a–b),
:func:`png_weight_map` (separation borders and the weight map of Eq. 2 as a jet colour map with a
colour bar, Fig. 3c–d), :func:`png_augmented` (a grid of augmented samples, Sec. 3.1),
:func:`png_prediction` (probability map and instance overlay, whole image and a full-resolution
crop) and :func:`png_errors` (object-level split and merge errors,
:func:`unetlab.metrics.split_merge_map`).

All images are (H, W) float (any range; shown with a 1–99.8 percentile stretch), instance
images (H, W) integer with 0 = background (negative = unlabelled, shown as background), class
images (H, W) uint8 (0 background, 1 cell, IGNORE_INDEX ignored), weight maps (H, W) float32.
"""
from __future__ import annotations

import io
import math
from typing import Sequence

import numpy as np

from ..metrics import (CATEGORY_FALSE_POSITIVE, CATEGORY_MATCHED, CATEGORY_MERGE, CATEGORY_MISSED,
                       CATEGORY_SPLIT, split_merge_map)
from ..weights import IGNORE_INDEX

__all__ = [
    "DISPLAY_MAX", "overlay", "png_samples", "png_weight_map", "png_augmented", "png_prediction",
    "png_errors",
]


#: largest side (pixels) of a whole image shown on the page; larger images are downsampled
DISPLAY_MAX = 1024
_CATEGORY_NAMES = {CATEGORY_MATCHED: "matched", CATEGORY_MERGE: "merge", CATEGORY_SPLIT: "split",
                   CATEGORY_MISSED: "missed", CATEGORY_FALSE_POSITIVE: "false positive"}
_CATEGORY_COLOURS = {CATEGORY_MATCHED: (0.20, 0.75, 0.30), CATEGORY_MERGE: (0.95, 0.15, 0.15),
                     CATEGORY_SPLIT: (0.20, 0.45, 1.00), CATEGORY_MISSED: (1.00, 0.85, 0.10),
                     CATEGORY_FALSE_POSITIVE: (0.90, 0.20, 0.90)}


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
    fig.clear()          # break the figure's reference cycles now, not at the next full gc
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
    _colorbar(fig, axes[2], im, "weight")
    return _png(fig)


def png_weight_panels(classes: np.ndarray, weights: np.ndarray, n_instances: int,
                      title: str = "weight map (Eq. 2)", cmap: str = "jet") -> bytes:
    """Two panels at the image's resolution: the class image with separated cells (Fig. 3c;
    ignored pixels grey) and the weight map with a colour bar (Fig. 3d)."""
    h, wd = weights.shape
    panel = min(7.0, max(3.0, wd / 100))                 # inches
    fig = _figure(2 * panel + 1.2, panel * h / wd + 0.9)
    fig.set_dpi(max(100, wd // 7))
    ax1, ax2 = fig.subplots(1, 2)
    shown = np.where(classes == IGNORE_INDEX, 0.5, classes.astype(np.float32))
    _imshow(ax1, shown, f"cells, separated (Fig. 3c): {n_instances} instances", cmap="gray",
            vmin=0, vmax=1)
    im = _imshow(ax2, weights, title, cmap=cmap)
    _colorbar(fig, ax2, im)
    return _png(fig)


def _colorbar(fig, ax, im, label: str | None = None):
    """A colour bar beside ``ax`` that does not shrink it, so panels in a row stay aligned."""
    cax = ax.inset_axes([1.03, 0.0, 0.04, 1.0])
    cb = fig.colorbar(im, cax=cax)
    if label:
        cb.set_label(label, fontsize=9)
    return cb


def to_uint8(img: np.ndarray) -> np.ndarray:
    """(C, H, W) float → (H, W) or (H, W, 3) uint8, stretched between the 0.5 and 99.5 %ile."""
    v = img[0] if img.shape[0] != 3 else np.moveaxis(img, 0, -1)
    lo, hi = np.percentile(v, [0.5, 99.5])
    scale = 255.0 / (hi - lo) if hi > lo else 1.0
    return np.clip((v - lo) * scale, 0, 255).astype(np.uint8)


def png_augment_grid(rows: Sequence[dict]) -> bytes:
    """One row per augmented sample (dict with ``original`` and ``image`` (C, H, W) float,
    ``classes`` (H, W) uint8, ``weights`` (H, W) float, ``title``): original, augmented image,
    augmented labels (grey = ignored), label outlines over the image, augmented weights."""
    from skimage.segmentation import find_boundaries

    cols = ["original", "augmented image", "augmented labels", "labels over image",
            "augmented weights"]
    fig = _figure(2.3 * len(cols), 2.3 * len(rows) + 0.6)
    axes = fig.subplots(len(rows), len(cols), squeeze=False)
    for r, row in enumerate(rows):
        img, cls = to_uint8(row["image"]), row["classes"]
        ign = cls == IGNORE_INDEX
        lab = np.where(ign, 128, np.where(cls > 0, 255, 0)).astype(np.uint8)
        over = np.stack([img if img.ndim == 2 else img.mean(-1).astype(np.uint8)] * 3, -1)
        over[find_boundaries(cls == 1, mode="inner")] = (255, 40, 40)
        over[ign] = (over[ign] * 0.5 + np.array([0, 0, 128])).astype(np.uint8)
        panels = [(to_uint8(row["original"]), "gray"), (img, "gray"), (lab, "gray"),
                  (over, None), (row["weights"], "jet")]
        for c, (a, cmap) in enumerate(panels):
            kw = {"vmin": 0, "vmax": 255} if cmap == "gray" else {}
            _imshow(axes[r, c], a, cols[c] if r == 0 else None, cmap=cmap, **kw)
        axes[r, 0].set_ylabel(row["title"], fontsize=7)
    fig.suptitle("unetlab augment: image, labels (nearest) and weights (linear) get one "
                 "transform", fontsize=9)
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
        ignored = cls == IGNORE_INDEX
        rgb[ignored] = 0.5 * rgb[ignored] + 0.25
        edge = _boundaries((cls == 1).astype(np.int32))
        rgb[edge] = (1.0, 0.85, 0.1)
        _imshow(a_img, rgb, f"sample {k}")
        im = _imshow(a_w, np.asarray(w, np.float32), None, cmap="jet", vmin=0, vmax=vmax)
    if im is not None:
        cb = fig.colorbar(im, ax=axes[1::2, :].ravel().tolist(), fraction=0.03, pad=0.02)
        cb.set_label("weight", fontsize=9)
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


def _compute_weight_map(instances: np.ndarray, w0: float = 10.0, sigma: float = 5.0):
    """(weights, cell mask) exactly as the trainer builds them (:func:`training_targets`)."""
    from ..weights import training_targets

    classes, weights = training_targets(np.asarray(instances), w0=w0, sigma=sigma)
    return weights, classes == 1
