"""``unetlab evaluate``: score predictions against ground truth (ISBI 2012, SEG/IoU, matching)."""
from __future__ import annotations

import argparse
import csv
import io
import json
import re
import time
from pathlib import Path

import numpy as np

from ..errors import UnetlabError

HELP = "score predictions against ground truth (ISBI 2012 pixel/Rand/warping error, SEG, AP)"

DESCRIPTION = """\
Score predictions against ground truth and print a table; with --out also write metrics.json,
metrics.csv and (isbi) one picture per slice marking the topological errors.

--metrics isbi (default): the ISBI 2012 EM challenge metrics of the U-Net paper's Table 1,
  computed exactly as the organisers' Fiji code: pixel error = 1 - max F(pixels), Rand error =
  1 - max F(foreground-restricted Rand), over the 11 thresholds 0.0, 0.1, ..., 1.0; warping
  error = min over 0.0...0.9 of (split + merge pixels) / all pixels after topology-preserving
  warping of the ground truth onto the thresholded map.
    PRED: P(cell) = P(non-membrane) in [0, 1] (the ISBI submission convention: 1 = certainly
          not membrane). A float TIFF (values must lie in [0, 1]) or an 8-bit PNG/TIFF, which is
          divided by 255. A membrane probability map needs --invert.
    GT:   cells > 0 (e.g. 255), membrane 0.
  The pictures (slice_NAME.png) show the probability map in grey with split error pixels in
  red and merge error pixels in cyan at the threshold with the lowest warping error (marks
  are enlarged to 5x5 pixels so that they are visible).
--metrics cells: Cell Tracking Challenge SEG (the "IOU" of the paper's Table 2) and the IoU of
  the foreground masks, per image and pooled.
--metrics instances: matching at IoU 0.50, 0.55, ..., 0.95 (precision, recall, F1, accuracy =
  TP/(TP+FP+FN) = the DSB 2018 "AP", panoptic quality), pooled over images.
  For cells/instances both PRED and GT are label images: integer instance ids (0 =
  background) or a binary mask (4-connected regions become the objects); a float PRED with
  non-integer values is read as P(cell) and its 4-connected regions > 0.5 become the objects.

PRED and GT are each a file (a 2D image or a multi-page TIFF stack, one slice per page) or a
folder of PNG/TIFF images; two folders are paired by file stem (a suffix _prob, _pred,
_probability, _prediction, _mask, _label, _labels, _seg or _gt is ignored when pairing).

examples:
  unetlab evaluate preds/prob.tif ../shared/data/isbi2012/train-labels.tif --out eval/
  unetlab evaluate preds/ ../shared/data/isbi2012/train/label --out eval/
  unetlab evaluate preds/ ctc/01_GT/SEG --metrics cells
  unetlab evaluate masks/ gt_masks/ --metrics instances --out eval/
"""

_SUFFIXES = ("_probability", "_prediction", "_labels", "_label", "_prob", "_pred", "_mask",
             "_seg", "_gt")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pred", metavar="PRED", help="prediction: file (image or TIFF stack) or folder")
    p.add_argument("gt", metavar="GT", help="ground truth: file (image or TIFF stack) or folder")
    p.add_argument("--metrics", choices=("isbi", "cells", "instances"), default="isbi",
                   help="which metrics (default isbi)")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="write metrics.json, metrics.csv and pictures here (default: print only)")
    p.add_argument("--invert", action="store_true",
                   help="isbi: PRED is P(membrane); use 1 - PRED")
    p.add_argument("--channel", type=int, default=None, metavar="C",
                   help="PRED holds class probabilities (K, H, W) or (S, K, H, W): use class C")
    p.add_argument("--radius", type=int, default=20,
                   help="isbi: window radius of the split test of the warping error (default 20, "
                        "as the challenge)")
    p.add_argument("--thinning", action="store_true",
                   help="isbi: also V_rand and V_info after border thinning (the 2016 ISBI "
                        "leaderboard scores; higher is better)")
    p.add_argument("--no-pictures", dest="pictures", action="store_false",
                   help="isbi: do not write the per-slice error pictures")


# ----------------------------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------------------------
def _read(path: Path) -> np.ndarray:
    try:
        from ..data import read_image
    except ImportError:  # pragma: no cover - data.py is part of the package
        read_image = None
    if read_image is not None:
        return np.asarray(read_image(path))
    try:  # pragma: no cover
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            return np.asarray(tifffile.imread(path))
        import imageio.v3 as iio

        return np.asarray(iio.imread(path))
    except Exception as e:  # noqa: BLE001  # pragma: no cover
        raise UnetlabError(f"{path}: cannot read image ({type(e).__name__}: {e})") from None


def _key(path: Path) -> str:
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


def _files(folder: Path) -> list[Path]:
    from ..data import list_images

    return list_images(folder)


def _select_channel(a: np.ndarray, channel: int | None, path: Path) -> np.ndarray:
    """Pick class ``channel`` from (K, H, W) (or (S, K, H, W) when ``stacked``)."""
    if channel is None:
        return a
    axis = 1 if a.ndim == 4 else 0
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


_OVERLAY = re.compile(r"_overlay(_z\d+)?$", re.IGNORECASE)


def _preferred(a: Path, b: Path, prefer: tuple[str, ...]) -> Path | None:
    """Of two PRED files with the same pairing name, the one whose stem ends with a preferred
    suffix (``unetlab predict`` writes NAME_prob.tif and NAME_labels.tif side by side)."""
    for suf in prefer:
        hits = [f for f in (a, b) if f.stem.lower().endswith(suf)]
        if len(hits) == 1:
            return hits[0]
    return None


def load_pairs(pred: str | Path, gt: str | Path, channel: int | None = None,
               prefer: tuple[str, ...] = ("_prob",)):
    """Read PRED and GT → list of (name, pred_slice, gt_slice, pred_path, gt_path).

    In a PRED folder, overlay pictures (NAME_overlay.png) are skipped, and when two files pair
    with the same name the one ending in a ``prefer`` suffix wins (``_prob`` for the ISBI
    metrics, ``_labels`` for cells/instances)."""
    pred, gt = Path(pred), Path(gt)
    for p, what in ((pred, "PRED"), (gt, "GT")):
        if not p.exists():
            raise UnetlabError(f"{what} {p}: no such file or folder")
    if pred.is_dir() != gt.is_dir():
        raise UnetlabError(f"PRED {pred} and GT {gt} must both be files or both be folders")
    out = []
    if pred.is_file():
        ps = _as_slices(_select_channel(_read(pred), channel, pred), pred)
        gs = _as_slices(_read(gt), gt)
        if len(ps) != len(gs):
            raise UnetlabError(f"PRED {pred} has {len(ps)} slices but GT {gt} has {len(gs)}")
        for i, (p, g) in enumerate(zip(ps, gs)):
            name = pred.stem if len(ps) == 1 else f"{_key(pred)}_{i:03d}"
            out.append((name, p, g, pred, gt))
        return out
    pf = {}
    for f in _files(pred):
        if _OVERLAY.search(f.stem):
            continue
        k = _key(f)
        if k in pf:
            keep = _preferred(pf[k], f, prefer)
            if keep is not None:
                pf[k] = keep
                continue
            raise UnetlabError(f"PRED {pred}: two files pair with the same name '{k}': "
                               f"{pf[k].name}, {f.name}")
        pf[k] = f
    gf = {}
    for f in _files(gt):
        k = _key(f)
        if k in gf:
            raise UnetlabError(f"GT {gt}: two files pair with the same name '{k}': "
                               f"{gf[k].name}, {f.name}")
        gf[k] = f
    missing = [gf[k].name for k in gf if k not in pf]
    if missing:
        raise UnetlabError(f"PRED {pred}: no prediction for ground truth {missing[0]}"
                           + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    extra = [pf[k].name for k in pf if k not in gf]
    if extra:
        raise UnetlabError(f"GT {gt}: no ground truth for prediction {extra[0]}"
                           + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))
    for k, g in gf.items():
        p = pf[k]
        pa = _select_channel(_read(p), channel, p)
        if pa.ndim != 2:
            raise UnetlabError(f"{p}: expected a 2D image in a folder, got shape {pa.shape}")
        ga = _read(g)
        if ga.ndim != 2:
            raise UnetlabError(f"{g}: expected a 2D image in a folder, got shape {ga.shape}")
        out.append((g.stem, pa, ga, p, g))
    return out


def _check_shapes(pairs) -> None:
    for name, p, g, pp, gp in pairs:
        if p.shape != g.shape:
            raise UnetlabError(f"{pp}: prediction shape {p.shape} does not match ground truth "
                               f"{gp} shape {g.shape}")


def to_probability(a: np.ndarray, path: Path, invert: bool = False) -> np.ndarray:
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


def to_instances(a: np.ndarray, path: Path) -> np.ndarray:
    """A label image → int32 instances; a float image with fractional values → CC4(a > 0.5)."""
    from scipy import ndimage

    from ..data import label_to_instances

    if np.issubdtype(a.dtype, np.floating) and np.isfinite(a).all() \
            and not np.array_equal(a, np.round(a)):
        if a.min() < 0 or a.max() > 1:
            raise UnetlabError(f"{path}: a float prediction must be P(cell) in [0, 1] or integer "
                               "labels")
        return ndimage.label(a > 0.5, structure=ndimage.generate_binary_structure(2, 1))[0]
    return label_to_instances(a, path)


# ----------------------------------------------------------------------------------------------
# output
# ----------------------------------------------------------------------------------------------
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


def _write_outputs(out: Path, result: dict, rows: list[dict]) -> None:
    from ..atomic import atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "metrics.json", json.dumps(result, indent=1) + "\n")
    atomic_write_text(out / "metrics.csv", _csv_text(rows))


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "slice"


def error_picture(prob: np.ndarray, classes: np.ndarray, grow: int = 2) -> np.ndarray:
    """(H, W, 3) uint8: grey probability map, split pixels red, merge pixels cyan (marks grown by
    ``grow`` pixels on each side so that single pixels are visible)."""
    from scipy import ndimage

    from ..metrics import WARP_MERGE, WARP_SPLIT

    grey = np.clip(np.asarray(prob, np.float32) * 255 * 0.8, 0, 255).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    size = 2 * grow + 1
    merge = ndimage.maximum_filter(classes == WARP_MERGE, size=size)
    split = ndimage.maximum_filter(classes == WARP_SPLIT, size=size)
    rgb[merge] = (0, 255, 255)
    rgb[split] = (255, 0, 0)
    return rgb


def _write_png(path: Path, rgb: np.ndarray) -> None:
    import imageio.v3 as iio

    from ..atomic import atomic_path

    with atomic_path(path, suffix=".png") as tmp:
        iio.imwrite(tmp, rgb, extension=".png")


# ----------------------------------------------------------------------------------------------
# the verb
# ----------------------------------------------------------------------------------------------
def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _print_table(rows: list[dict], cols: list[str]) -> None:
    width = {c: max(len(c), *(len(_fmt(r.get(c, ""))) for r in rows)) for c in cols}
    print("  ".join(c.rjust(width[c]) for c in cols))
    for r in rows:
        print("  ".join(_fmt(r.get(c, "")).rjust(width[c]) for c in cols))


def run_isbi(pairs, args) -> tuple[dict, list[dict]]:
    from .. import metrics

    probs = [to_probability(p, pp, args.invert) for _, p, _, pp, _ in pairs]
    gts = [g for _, _, g, _, _ in pairs]
    shapes = {p.shape for p in probs}
    if len(shapes) != 1:
        raise UnetlabError(f"all slices must have the same size for the ISBI metrics, got "
                           f"{sorted(shapes)}")
    prob = np.stack(probs)
    gt = np.stack(gts)
    if args.radius < 1:
        raise UnetlabError(f"--radius must be ≥ 1, got {args.radius}")
    t0 = time.perf_counter()
    try:
        r = metrics.isbi2012(gt, prob, radius=args.radius, thinning=args.thinning)
    except UnetlabError as e:
        raise UnetlabError(f"PRED {args.pred}, GT {args.gt}: {e}") from None
    seconds = time.perf_counter() - t0
    result = {
        "metrics": "isbi2012",
        "pred": str(args.pred), "gt": str(args.gt),
        "pixel_error": r["pixel_error"], "rand_error": r["rand_error"],
        "warping_error": r["warping_error"],
        "pixel_threshold": r["pixel_threshold"], "rand_threshold": r["rand_threshold"],
        "warping_threshold": r["warping_threshold"],
        "slices": [n for n, *_ in pairs], "shape": r["shape"],
        "per_threshold": r["per_threshold"], "seconds": seconds,
    }
    if args.thinning:
        result["vrand"], result["vinfo"] = r["vrand"], r["vinfo"]
    print(f"ISBI 2012 metrics, {len(pairs)} slice(s) of {prob.shape[2]}×{prob.shape[1]} "
          f"({seconds:.1f} s)")
    print(f"  warping error {r['warping_error']:.6f}  (threshold {r['warping_threshold']:.1f})")
    print(f"  Rand error    {r['rand_error']:.6f}  (threshold {r['rand_threshold']:.1f})")
    print(f"  pixel error   {r['pixel_error']:.6f}  (threshold {r['pixel_threshold']:.1f})")
    if args.thinning:
        print(f"  V_rand {r['vrand']:.6f}  V_info {r['vinfo']:.6f}  (after border thinning, "
              "higher is better)")
    _print_table(r["per_threshold"], ["threshold", "pixel_f", "rand_f", "warping_error",
                                      "splits", "mergers"]
                 + (["vrand", "vinfo"] if args.thinning else []))
    if args.out and args.pictures:
        cls = metrics.warping_classes(gt, prob, r["warping_threshold"], radius=args.radius)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        for (name, *_), p, c in zip(pairs, prob, cls):
            _write_png(out / f"slice_{_safe_name(name)}.png", error_picture(p, c))
    return result, r["per_threshold"]


def run_cells(pairs, args) -> tuple[dict, list[dict]]:
    from .. import metrics

    rows, inter, union = [], 0, 0
    all_gt, all_pr = [], []
    for name, p, g, pp, gp in pairs:
        gi = to_instances(g, gp)
        pi = to_instances(p, pp)
        a, b = gi > 0, pi > 0
        inter += int(np.count_nonzero(a & b))
        union += int(np.count_nonzero(a | b))
        row = {"image": name, "n_true": int(len(np.unique(gi[a]))),
               "n_pred": int(len(np.unique(pi[b]))), "iou": metrics.iou(a, b)}
        row["seg"] = metrics.seg(gi, pi) if a.any() else None
        rows.append(row)
        all_gt.append(gi)
        all_pr.append(pi)
    if not any(r["n_true"] for r in rows):
        raise UnetlabError(f"GT {args.gt}: no object in any ground-truth image")
    total_r = sum(r["n_true"] for r in rows)
    seg_all = sum(r["seg"] * r["n_true"] for r in rows if r["seg"] is not None) / total_r
    result = {"metrics": "cells", "pred": str(args.pred), "gt": str(args.gt),
              "seg": seg_all, "iou": inter / union if union else 1.0, "per_image": rows}
    print(f"cell metrics, {len(pairs)} image(s): SEG {seg_all:.4f} (pooled over "
          f"{total_r} reference objects), foreground IoU {result['iou']:.4f}")
    _print_table(rows, ["image", "n_true", "n_pred", "seg", "iou"])
    return result, rows


def run_instances(pairs, args) -> tuple[dict, list[dict]]:
    from .. import metrics

    gts, prs = [], []
    for name, p, g, pp, gp in pairs:
        gts.append(to_instances(g, gp))
        prs.append(to_instances(p, pp))
    acc = None
    for gi, pi in zip(gts, prs):  # pooled over images (sizes may differ)
        rows = metrics.matching(gi, pi)
        if acc is None:
            acc = [dict(tp=0, fp=0, fn=0, s=0.0, threshold=r["threshold"]) for r in rows]
        for a, r in zip(acc, rows):
            a["tp"] += r["tp"]
            a["fp"] += r["fp"]
            a["fn"] += r["fn"]
            a["s"] += r["mean_matched_iou"] * r["tp"]
    assert acc is not None

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
    mean_ap = float(np.mean([r["accuracy"] for r in rows]))
    result = {"metrics": "instances", "pred": str(args.pred), "gt": str(args.gt),
              "mean_accuracy": mean_ap, "per_threshold": rows}
    print(f"instance matching, {len(pairs)} image(s): mean accuracy (AP, IoU 0.50:0.95) "
          f"{mean_ap:.4f}")
    _print_table(rows, ["threshold", "tp", "fp", "fn", "precision", "recall", "f1", "accuracy",
                        "panoptic_quality"])
    return result, rows


def run(args) -> int:
    prefer = ("_prob",) if args.metrics == "isbi" else ("_labels", "_label")
    pairs = load_pairs(args.pred, args.gt, args.channel, prefer=prefer)
    _check_shapes(pairs)
    if args.metrics == "isbi":
        result, rows = run_isbi(pairs, args)
    elif args.metrics == "cells":
        result, rows = run_cells(pairs, args)
    else:
        result, rows = run_instances(pairs, args)
    if args.out:
        _write_outputs(Path(args.out), result, rows)
        print(f"wrote {Path(args.out) / 'metrics.json'}, {Path(args.out) / 'metrics.csv'}")
    return 0
