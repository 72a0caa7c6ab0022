"""``unetlab evaluate``: score predictions against ground truth (ISBI 2012, SEG/IoU, matching)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ._options import add_overwrite

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
  the foreground masks, per image and pooled. When PRED is P(cell), also the threshold with the
  best pooled IoU (0.05 ... 0.95): a network trained with the weighted loss is not calibrated
  to 0.5 (choose it on annotated data you do not report, use it with predict --threshold).
--metrics instances: matching at IoU 0.50, 0.55, ..., 0.95 (precision, recall, F1, accuracy =
  TP/(TP+FP+FN) = the DSB 2018 "AP", panoptic quality), pooled over images.
  For cells/instances both PRED and GT are label images: integer instance ids (0 =
  background) or a binary mask (4-connected regions become the objects); a float PRED with
  non-integer values is read as P(cell) and its 4-connected regions > 0.5 become the objects.
--volume (cells, instances): each TIFF is ONE label volume (Z, Y, X) of 3D objects (e.g. the
  NAME_labels.tif that 'unetlab predict --instances' writes for a 3D model) instead of a stack
  of 2D frames: SEG, IoU and matching count each 3D object once; masks become their
  6-connected components. A (K, Z, Y, X) PRED needs --channel C.

PRED and GT are each a file (a 2D image or a multi-page TIFF stack, one slice per page) or a
folder of PNG/TIFF images; two folders are paired by file stem (a suffix _prob, _pred,
_probability, _prediction, _mask, _label, _labels, _seg or _gt is ignored when pairing).
Ground-truth images without a prediction are left out and named in one line. Existing files
in --out are kept unless --overwrite is given.

examples (on the files of 'unetlab demo --data cells' and the demo's model):
  unetlab predict runs/demo/model.pt cells/images --out scored/ --instances   # what to score
  unetlab evaluate scored/ cells/labels --out eval/          # ISBI 2012 errors of P(cell)
  unetlab evaluate scored/ cells/labels --metrics cells      # SEG and IoU of the _labels files
  unetlab evaluate scored/00_labels.tif cells/labels/00.tif --metrics instances --out eval1/
"""

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
    p.add_argument("--volume", action="store_true",
                   help="cells/instances: each file is one label volume (Z, Y, X) of 3D "
                        "objects, not a stack of 2D frames")
    add_overwrite(p)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return "" if v is None else str(v)


def _print_table(rows: list[dict], cols: list[str]) -> None:
    width = {c: max(len(c), *(len(_fmt(r.get(c, ""))) for r in rows)) for c in cols}
    print("  ".join(c.rjust(width[c]) for c in cols))
    for r in rows:
        print("  ".join(_fmt(r.get(c, "")).rjust(width[c]) for c in cols))


def _print_isbi(r: dict, thinning: bool, n_warping: int) -> None:
    s, h, w = r["shape"]
    print(f"ISBI 2012 metrics, {s} slice(s) of {w}×{h} ({r['seconds']:.1f} s)")
    print(f"  warping error {r['warping_error']:.6f}  (threshold {r['warping_threshold']:.1f})")
    print(f"  Rand error    {r['rand_error']:.6f}  (threshold {r['rand_threshold']:.1f})")
    print(f"  pixel error   {r['pixel_error']:.6f}  (threshold {r['pixel_threshold']:.1f})")
    if thinning:
        print(f"  V_rand {r['vrand']:.6f}  V_info {r['vinfo']:.6f}  (after border thinning, "
              "higher is better)")
    rows = [dict(row) for row in r["per_threshold"]]
    for row in rows[n_warping:]:
        row["warping_error"] = f"{row['warping_error']:.6g}*"
    _print_table(rows, ["threshold", "pixel_f", "rand_f", "warping_error", "splits", "mergers"]
                 + (["vrand", "vinfo"] if thinning else []))
    if len(rows) > n_warping:
        print("  * not part of the warping-error minimum: as in the challenge, it is taken over "
              f"the first {n_warping} thresholds only")


def run(args) -> int:
    from ..evaluation import evaluate
    from ..metrics import WARPING_THRESHOLDS

    r = evaluate(args.pred, args.gt, args.metrics, args.out, invert=args.invert,
                 channel=args.channel, radius=args.radius, thinning=args.thinning,
                 pictures=args.pictures, overwrite=args.overwrite, volume=args.volume)
    missing = r.get("missing_predictions", [])
    if missing:
        print(f"not scored: {len(missing)} ground-truth image(s) without a prediction: "
              + ", ".join(missing))
    if args.metrics == "isbi":
        _print_isbi(r, args.thinning, WARPING_THRESHOLDS)
    elif args.metrics == "cells":
        what = "volume(s)" if args.volume else "image(s)"
        print(f"cell metrics, {len(r['per_image'])} {what}: SEG {r['seg']:.4f} (pooled over "
              f"{r['n_true']} reference objects), foreground IoU {r['iou']:.4f}")
        _print_table(r["per_image"], ["image", "n_true", "n_pred", "seg", "iou"])
        if "best_threshold" in r:
            b = r["best_threshold"]
            print(f"  P(cell) > {b['threshold']:.2f} gives the best foreground IoU, "
                  f"{b['iou']:.4f} (0.5 gives {r['iou']:.4f}): choose it on annotated data "
                  "you do not report, then 'unetlab predict --threshold'")
    else:
        print(f"instance matching: mean accuracy (AP, IoU 0.50:0.95) {r['mean_accuracy']:.4f}")
        _print_table(r["per_threshold"], ["threshold", "tp", "fp", "fn", "precision", "recall",
                                          "f1", "accuracy", "panoptic_quality"])
    if args.out:
        print(f"wrote {Path(args.out) / 'metrics.json'}, {Path(args.out) / 'metrics.csv'}")
    return 0
