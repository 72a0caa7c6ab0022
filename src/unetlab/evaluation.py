"""Scoring predictions read from files against ground truth (the library of ``unetlab evaluate``).

:func:`evaluate` is the one call: it reads PRED and GT (two files, 2D images or multi-page TIFF
stacks with one slice per page, or two folders paired by file stem), scores them with one metric
set and optionally writes ``metrics.json``, ``metrics.csv`` and pictures. The metric sets:

* ``"isbi"`` — the ISBI 2012 EM challenge metrics of the paper's Table 1
  (:func:`unetlab.metrics.isbi2012`). PRED is P(cell) = P(non-membrane) in [0, 1] (float, or
  8-bit divided by 255; ``invert=True`` for a membrane map), GT has cells > 0 and membrane 0.
  Pictures ``slice_NAME.png`` mark split (red) and merge (cyan) pixels of the warping error.
* ``"cells"`` — the Cell Tracking Challenge SEG score (the "IOU" of Table 2) and the IoU of the
  foreground masks, per image and pooled.
* ``"instances"`` — matching at IoU 0.50 … 0.95 (precision, recall, F1, the DSB 2018 "AP" =
  TP/(TP+FP+FN), panoptic quality), pooled over images.

Label images (GT, and PRED for cells/instances) are read by the one label rule of
:func:`unetlab.data.label_to_instances`; a float PRED with fractional values is P(cell) and its
4-connected regions > 0.5 become the objects.

Volumes (``volume=True``, ``unetlab evaluate --volume``): each file is ONE label volume
(Z, Y, X) — e.g. what ``unetlab predict --instances`` writes for a 3D model — and the cells
and instances metrics score 3D objects (:func:`unetlab.metrics.seg` / ``matching`` with
``volume=True``) instead of one 2D frame per slice. The label rule is the same in 3D
(:func:`unetlab.data.volume_to_instances` via :func:`read_volume_instances`: a binary mask
becomes its 6-connected components, other integer volumes are instance ids; a float P(cell)
its 6-connected regions > 0.5). A 4-D PRED (K, Z, Y, X) needs ``channel``. The ISBI metrics
are 2D only.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .errors import UnetlabError

__all__ = ["evaluate", "load_pairs", "Pair", "to_probability", "read_instances", "evaluate_isbi",
           "evaluate_cells", "evaluate_instances", "error_picture", "METRIC_SETS",
           "read_volume_instances"]

#: The metric sets :func:`evaluate` knows.
METRIC_SETS = ("isbi", "cells", "instances")

_SUFFIXES = ("_probability", "_prediction", "_labels", "_label", "_prob", "_pred", "_mask",
             "_seg", "_gt")
_OVERLAY = re.compile(r"_overlay(_z\d+)?$", re.IGNORECASE)


class Pair(NamedTuple):
    """One scored slice (or volume): its name, the raw PRED and GT arrays (H, W) (or
    (Z, Y, X)) and their files."""

    name: str
    pred: np.ndarray
    gt: np.ndarray
    pred_path: Path
    gt_path: Path


def evaluate(pred: str | os.PathLike, gt: str | os.PathLike, metrics: str = "isbi",
             out: str | os.PathLike | None = None, *, invert: bool = False,
             channel: int | None = None, radius: int = 20, thinning: bool = False,
             pictures: bool = True, overwrite: bool = False, volume: bool = False) -> dict:
    """Score PRED against GT with one metric set (``"isbi"``, ``"cells"``, ``"instances"``).

    ``channel`` picks class C of (K, H, W) / (S, K, H, W) class probabilities; ``radius`` and
    ``thinning`` are passed to :func:`unetlab.metrics.isbi2012`. With ``out`` (a folder) writes
    ``metrics.json``, ``metrics.csv`` and (isbi, ``pictures``) ``slice_NAME.png``; an output
    that is an input is refused, an existing one needs ``overwrite``. Ground-truth images
    without a prediction are left out and listed in ``result["missing_predictions"]``.
    ``volume``: each file is one label volume scored in 3D (cells/instances; module docstring).
    Returns the result dict that ``metrics.json`` holds. Raises :class:`UnetlabError`.
    """
    if metrics not in METRIC_SETS:
        raise UnetlabError(f"metrics: unknown metric set {metrics!r} (choose from "
                           f"{', '.join(METRIC_SETS)})")
    if volume and metrics == "isbi":
        raise UnetlabError("--volume: the ISBI 2012 metrics are 2D (slice by slice); use "
                           "--metrics cells or instances for label volumes")
    if metrics == "isbi" and radius < 1:
        raise UnetlabError(f"--radius must be ≥ 1, got {radius}")
    prefer = ("_prob",) if metrics == "isbi" else ("_labels", "_label")
    pairs, missing = load_pairs(pred, gt, channel, prefer=prefer, volume=volume)
    names = [f"slice_{_safe_name(p.name)}.png" for p in pairs]
    want_pictures = metrics == "isbi" and pictures and out is not None
    if out is not None:
        files = ["metrics.json", "metrics.csv"] + (names if want_pictures else [])
        from .writers import check_outputs

        check_outputs([Path(out) / f for f in files], [pred, gt], overwrite)
    if metrics == "isbi":
        result, drawn = evaluate_isbi(pairs, invert, radius, thinning, want_pictures)
    elif metrics == "cells":
        result, drawn = evaluate_cells(pairs, volume), []
    else:
        result, drawn = evaluate_instances(pairs, volume), []
    result = {"metrics": result.pop("metrics"), "pred": str(pred), "gt": str(gt), **result}
    if missing:
        result["missing_predictions"] = missing
    if volume:
        result["volume"] = True
    if out is not None:
        _write_results(Path(out), result, dict(zip(names, drawn)))
    return result


# ----------------------------------------------------------------------------------------------
# reading and pairing
# ----------------------------------------------------------------------------------------------
def _key(path: Path) -> str:
    """The pairing name of a file: lower-case stem without a known suffix (``_prob`` …)."""
    name = path.name
    for suf in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suf):
            name = name[: -len(suf)]
            break
    else:
        name = path.stem
    low = name.lower()
    for suf in _SUFFIXES:
        if low.endswith(suf) and len(low) > len(suf):
            return low[: -len(suf)]
    return low


def _select_channel(a: np.ndarray, channel: int | None, path: Path,
                    volume: bool = False) -> np.ndarray:
    """Pick class ``channel`` from (K, H, W) or (S, K, H, W) — or (K, Z, Y, X) volumes."""
    if channel is None:
        return a
    if volume and a.ndim != 4:
        raise UnetlabError(f"--channel {channel}: {path} has shape {a.shape}, expected class "
                           "probabilities (K, Z, Y, X)")
    axis = 1 if a.ndim == 4 and not volume else 0
    if a.ndim not in (3, 4):
        raise UnetlabError(f"--channel {channel}: {path} has shape {a.shape}, expected class "
                           "probabilities (K, H, W) or (S, K, H, W)")
    if not 0 <= channel < a.shape[axis]:
        raise UnetlabError(f"--channel {channel}: {path} has {a.shape[axis]} classes")
    return np.take(a, channel, axis=axis)


def _as_slices(a: np.ndarray, path: Path) -> list[np.ndarray]:
    if a.ndim == 2:
        return [a]
    if a.ndim == 3 and a.shape[-1] in (3, 4) and a.shape[0] > 4:
        raise UnetlabError(f"{path}: is a colour image {a.shape}; expected one channel")
    if a.ndim == 3:
        return [a[i] for i in range(a.shape[0])]
    hint = " (class probabilities? pick one with --channel C)" if a.ndim == 4 else ""
    raise UnetlabError(f"{path}: expected a 2D image or a (S, H, W) stack, got shape {a.shape}"
                       + hint)


def _preferred(a: Path, b: Path, prefer: tuple[str, ...]) -> Path | None:
    """Of two PRED files with the same pairing name, the one whose stem ends with a preferred
    suffix (``unetlab predict`` writes NAME_prob.tif and NAME_labels.tif side by side)."""
    for suf in prefer:
        hits = [f for f in (a, b) if f.stem.lower().endswith(suf)]
        if len(hits) == 1:
            return hits[0]
    return None


def _read_pred(path: Path, channel: int | None, volume: bool = False) -> np.ndarray:
    from .data import read_image

    return _select_channel(np.asarray(read_image(path)), channel, path, volume)


def _read_gt(path: Path) -> np.ndarray:
    from .data import read_label_image

    return np.asarray(read_label_image(path))


def _by_key(folder: Path, what: str, prefer: tuple[str, ...] | None) -> dict[str, Path]:
    """{pairing name: file} of a folder; PRED folders skip overlays and resolve ``prefer``."""
    from .data import list_images

    found: dict[str, Path] = {}
    for f in list_images(folder):
        if prefer is not None and _OVERLAY.search(f.stem):
            continue
        k = _key(f)
        if k in found:
            keep = _preferred(found[k], f, prefer) if prefer is not None else None
            if keep is None:
                raise UnetlabError(f"{what} {folder}: two files pair with the same name '{k}': "
                                   f"{found[k].name}, {f.name}")
            found[k] = keep
            continue
        found[k] = f
    return found


def _file_pairs(pred: Path, gt: Path, channel: int | None, volume: bool = False) -> list[Pair]:
    if volume:
        pa, ga = _read_pred(pred, channel, True), _read_gt(gt)
        _check_volume(pa, pred)
        _check_volume(ga, gt)
        return [Pair(pred.stem, pa, ga, pred, gt)]
    ps = _as_slices(_read_pred(pred, channel), pred)
    gs = _as_slices(_read_gt(gt), gt)
    if len(ps) != len(gs):
        raise UnetlabError(f"PRED {pred} has {len(ps)} slices but GT {gt} has {len(gs)}")
    return [Pair(pred.stem if len(ps) == 1 else f"{_key(pred)}_{i:03d}", p, g, pred, gt)
            for i, (p, g) in enumerate(zip(ps, gs))]


def _check_volume(a: np.ndarray, path: Path) -> None:
    if a.ndim != 3:
        hint = " (class probabilities? pick one with --channel C)" if a.ndim == 4 else ""
        raise UnetlabError(f"{path}: expected a label volume (Z, Y, X), got shape {a.shape}"
                           + hint)


def _folder_pairs(pred: Path, gt: Path, channel: int | None,
                  prefer: tuple[str, ...], volume: bool = False) -> tuple[list[Pair], list[str]]:
    pf = _by_key(pred, "PRED", prefer)
    gf = _by_key(gt, "GT", None)
    missing = [gf[k].name for k in gf if k not in pf]
    if len(missing) == len(gf):
        raise UnetlabError(f"PRED {pred}: no prediction for ground truth {missing[0]}"
                           + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    extra = [pf[k].name for k in pf if k not in gf]
    if extra:
        raise UnetlabError(f"GT {gt}: no ground truth for prediction {extra[0]}"
                           + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))
    out = []
    for k, g in gf.items():
        if k not in pf:
            continue
        p = pf[k]
        pa, ga = _read_pred(p, channel, volume), _read_gt(g)
        for a, f in ((pa, p), (ga, g)):
            if volume:
                _check_volume(a, f)
            elif a.ndim != 2:
                raise UnetlabError(f"{f}: expected a 2D image in a folder, got shape {a.shape}")
        out.append(Pair(g.stem, pa, ga, p, g))
    return out, missing


def load_pairs(pred: str | os.PathLike, gt: str | os.PathLike, channel: int | None = None,
               prefer: tuple[str, ...] = ("_prob",), volume: bool = False
               ) -> tuple[list[Pair], list[str]]:
    """Read PRED and GT → (pairs, names of GT files without a prediction).

    Two files give one pair per slice; two folders are paired by file stem (a suffix ``_prob``,
    ``_pred``, ``_probability``, ``_prediction``, ``_mask``, ``_label``, ``_labels``, ``_seg`` or
    ``_gt`` is ignored). In a PRED folder, overlay pictures (NAME_overlay.png) are skipped, and
    when two files pair with the same name the one ending in a ``prefer`` suffix wins. A
    prediction without ground truth, no pair at all, or PRED and GT of different shapes raise
    :class:`UnetlabError`. ``volume``: every file is one volume (Z, Y, X), one pair each."""
    pred, gt = Path(pred), Path(gt)
    for p, what in ((pred, "PRED"), (gt, "GT")):
        if not p.exists():
            raise UnetlabError(f"{what} {p}: no such file or folder")
    if pred.is_dir() != gt.is_dir():
        raise UnetlabError(f"PRED {pred} and GT {gt} must both be files or both be folders")
    if pred.is_file():
        pairs, missing = _file_pairs(pred, gt, channel, volume), []
    else:
        pairs, missing = _folder_pairs(pred, gt, channel, prefer, volume)
    for p in pairs:
        if p.pred.shape != p.gt.shape:
            raise UnetlabError(f"{p.pred_path}: prediction shape {p.pred.shape} does not match "
                               f"ground truth {p.gt_path} shape {p.gt.shape}")
    return pairs, missing


def to_probability(a: np.ndarray, path: str | os.PathLike, invert: bool = False) -> np.ndarray:
    """PRED values → float32 P(cell) in [0, 1]: floats as they are, 8-bit / 255, bool as 0/1."""
    if a.dtype == bool:
        p = a.astype(np.float32)
    elif a.dtype == np.uint8:
        p = a.astype(np.float32) / np.float32(255)
    elif np.issubdtype(a.dtype, np.floating):
        p = a.astype(np.float32)
        if not np.isfinite(p).all():
            raise UnetlabError(f"{path}: probability map contains NaN or infinite values")
        lo, hi = float(p.min()), float(p.max())
        if lo < 0 or hi > 1:
            raise UnetlabError(f"{path}: probabilities must lie in [0, 1], got values in "
                               f"[{lo:g}, {hi:g}]")
    elif np.issubdtype(a.dtype, np.integer) and a.min() >= 0 and a.max() <= 1:
        p = a.astype(np.float32)
    else:
        raise UnetlabError(f"{path}: PRED must be probabilities in [0, 1] (float TIFF) or an 8-bit "
                           f"image scaled by 255, got dtype {a.dtype} with values up to {a.max()}")
    return 1.0 - p if invert else p


def read_instances(a: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    """A label array → (H, W) int32 instances by :func:`unetlab.data.label_to_instances`; a
    float array with fractional values is P(cell): its 4-connected regions > 0.5."""
    from .data import label_to_instances

    return _label_or_prob(a, path, 2, label_to_instances)


def read_volume_instances(a: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    """A label volume (Z, Y, X) → int32 instances by the label rule for volumes,
    :func:`unetlab.data.volume_to_instances` (a mask → its 6-connected components, other
    integer volumes → ids as they are); a float volume with fractional values is P(cell): its
    6-connected regions > 0.5."""
    from .data import volume_to_instances

    return _label_or_prob(a, path, 3, volume_to_instances)


def _is_probability(a: np.ndarray, path) -> bool:
    """Whether ``a`` is P(cell): floats with fractional values (then they must lie in
    [0, 1]); integer-valued arrays are labels."""
    if np.issubdtype(a.dtype, np.floating) and np.isfinite(a).all() \
            and not np.array_equal(a, np.round(a)):
        if a.min() < 0 or a.max() > 1:
            raise UnetlabError(f"{path}: a float prediction must be P(cell) in [0, 1] or integer "
                               "labels")
        return True
    return False


def _prob_regions(prob: np.ndarray, ndim: int) -> np.ndarray:
    """The face-connected regions of P(cell) > 0.5 as int32 instances."""
    from scipy import ndimage

    return ndimage.label(prob > 0.5, structure=ndimage.generate_binary_structure(ndim, 1))[0]


def _label_or_prob(a, path, ndim: int, label_rule) -> np.ndarray:
    """P(cell) (fractional floats in [0, 1]) → face-connected regions > 0.5; labels →
    ``label_rule(a, path)``."""
    a = np.asarray(a)
    return _prob_regions(a, ndim) if _is_probability(a, path) else label_rule(a, path)


# ----------------------------------------------------------------------------------------------
# the metric sets
# ----------------------------------------------------------------------------------------------
def _sources(pairs: list[Pair]) -> tuple[Path, Path]:
    """(PRED, GT) as given: the file, or the folder when the pairs come from several files."""
    def who(paths: list[Path]) -> Path:
        return paths[0] if len(set(paths)) == 1 else paths[0].parent

    return who([p.pred_path for p in pairs]), who([p.gt_path for p in pairs])


def evaluate_isbi(pairs: list[Pair], invert: bool = False, radius: int = 20,
                  thinning: bool = False, pictures: bool = False) -> tuple[dict, list[np.ndarray]]:
    """ISBI 2012 metrics of all pairs as one stack → (result, error pictures (H, W, 3) uint8 per
    slice at the threshold of the least warping error, empty unless ``pictures``)."""
    from . import metrics

    probs = [to_probability(p.pred, p.pred_path, invert) for p in pairs]
    shapes = {p.shape for p in probs}
    if len(shapes) != 1:
        raise UnetlabError(f"all slices must have the same size for the ISBI metrics, got "
                           f"{sorted(shapes)}")
    prob = np.stack(probs)
    gt = np.stack([p.gt for p in pairs])
    t0 = time.perf_counter()
    try:
        r = metrics.isbi2012(gt, prob, radius=radius, thinning=thinning)
    except UnetlabError as e:
        pred_who, gt_who = _sources(pairs)
        raise UnetlabError(f"PRED {pred_who}, GT {gt_who}: {e}") from None
    keys = ("pixel_error", "rand_error", "warping_error", "pixel_threshold", "rand_threshold",
            "warping_threshold")
    result = {"metrics": "isbi2012", **{k: r[k] for k in keys},
              "slices": [p.name for p in pairs], "shape": r["shape"],
              "per_threshold": r["per_threshold"], "seconds": time.perf_counter() - t0}
    if thinning:
        result["vrand"], result["vinfo"] = r["vrand"], r["vinfo"]
    drawn = []
    if pictures:
        cls = metrics.warping_classes(gt, prob, r["warping_threshold"], radius=radius)
        drawn = [error_picture(p, c) for p, c in zip(prob, cls)]
    return result, drawn


def _instances(p: Pair, volume: bool) -> tuple[np.ndarray, np.ndarray]:
    """(GT, PRED) instances of a pair by the label rule (in 3D for volumes)."""
    read = read_volume_instances if volume else read_instances
    return read(p.gt, p.gt_path), read(p.pred, p.pred_path)


def evaluate_cells(pairs: list[Pair], volume: bool = False) -> dict:
    """SEG (mean Jaccard of the reference objects, pooled) and foreground IoU, per image too
    (``volume``: per volume, 3D objects). When every PRED is P(cell), also ``best_threshold``:
    the threshold with the best pooled foreground IoU and that IoU
    (:func:`unetlab.metrics.best_iou_threshold`; P(cell) > 0.5 gives ``iou`` and SEG)."""
    from . import metrics

    read = read_volume_instances if volume else read_instances
    rows, inter, union, probs = [], 0, 0, []
    for p in pairs:
        gi, pred = read(p.gt, p.gt_path), np.asarray(p.pred)
        if _is_probability(pred, p.pred_path):          # checked once: regions and threshold
            pi = _prob_regions(pred, 3 if volume else 2)
            probs.append((pred.astype(np.float32).ravel(), (gi > 0).ravel()))
        else:
            pi = read(pred, p.pred_path)
        a, b = gi > 0, pi > 0
        inter += int(np.count_nonzero(a & b))
        union += int(np.count_nonzero(a | b))
        row = {"image": p.name, "n_true": int(len(np.unique(gi[a]))),
               "n_pred": int(len(np.unique(pi[b]))), "iou": metrics.iou(a, b)}
        row["seg"] = metrics.seg(gi, pi, volume=volume) if a.any() else None
        rows.append(row)
    total = sum(r["n_true"] for r in rows)
    if not total:
        raise UnetlabError(f"GT {_sources(pairs)[1]}: no object in any ground-truth image")
    seg_all = sum(r["seg"] * r["n_true"] for r in rows if r["seg"] is not None) / total
    out = {"metrics": "cells", "seg": seg_all, "iou": inter / union if union else 1.0,
           "n_true": total, "per_image": rows}
    if probs and len(probs) == len(pairs):
        # every PRED is P(cell): the threshold whose foreground IoU, pooled, is best
        t, best = metrics.best_iou_threshold(np.concatenate([q for q, _ in probs]),
                                             np.concatenate([g for _, g in probs]))
        out["best_threshold"] = {"threshold": t, "iou": best}
    return out


def evaluate_instances(pairs: list[Pair], volume: bool = False) -> dict:
    """Instance matching at IoU 0.50 … 0.95, counts pooled over images (sizes may differ;
    ``volume``: over volumes, 3D objects)."""
    from . import metrics

    acc: list[dict] = []
    for p in pairs:
        rows = metrics.matching(*_instances(p, volume), volume=volume)
        if not acc:
            acc = [dict(tp=0, fp=0, fn=0, s=0.0, threshold=r["threshold"]) for r in rows]
        for a, r in zip(acc, rows):
            for k in ("tp", "fp", "fn"):
                a[k] += r[k]
            a["s"] += r["mean_matched_iou"] * r["tp"]

    def div(x, y):
        return x / y if y else 0.0

    rows = []
    for a in acc:
        tp, fp, fn, s = a["tp"], a["fp"], a["fn"], a["s"]
        rows.append({"threshold": a["threshold"], "tp": tp, "fp": fp, "fn": fn,
                     "precision": div(tp, tp + fp), "recall": div(tp, tp + fn),
                     "f1": div(2 * tp, 2 * tp + fp + fn), "accuracy": div(tp, tp + fp + fn),
                     "panoptic_quality": div(s, tp + fp / 2 + fn / 2),
                     "mean_matched_iou": div(s, tp)})
    return {"metrics": "instances", "mean_accuracy": float(np.mean([r["accuracy"] for r in rows])),
            "per_threshold": rows}


# ----------------------------------------------------------------------------------------------
# output
# ----------------------------------------------------------------------------------------------
def error_picture(prob: np.ndarray, classes: np.ndarray, grow: int = 2) -> np.ndarray:
    """(H, W, 3) uint8: grey probability map, split pixels red, merge pixels cyan (marks grown by
    ``grow`` pixels on each side so that single pixels are visible)."""
    from scipy import ndimage

    from .metrics import WARP_MERGE, WARP_SPLIT

    grey = np.clip(np.asarray(prob, np.float32) * 255 * 0.8, 0, 255).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    size = 2 * grow + 1
    rgb[ndimage.maximum_filter(classes == WARP_MERGE, size=size)] = (0, 255, 255)
    rgb[ndimage.maximum_filter(classes == WARP_SPLIT, size=size)] = (255, 0, 0)
    return rgb


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "slice"


def _csv_text(rows: list[dict]) -> str:
    buf = io.StringIO()
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue()


def _write_results(out: Path, result: dict, pictures: dict[str, np.ndarray]) -> None:
    """metrics.json, metrics.csv (the per-image or per-threshold rows) and pictures, atomically."""
    from .atomic import atomic_write_text
    from .writers import write_png

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UnetlabError(f"{out}: cannot create the folder ({e.strerror or e})") from None
    for name, rgb in pictures.items():
        write_png(out / name, rgb)
    rows = result.get("per_image") or result.get("per_threshold") or []
    atomic_write_text(out / "metrics.json", json.dumps(result, indent=1) + "\n")
    atomic_write_text(out / "metrics.csv", _csv_text(rows))
