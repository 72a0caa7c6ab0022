"""Does bf16 inference change a trained model's ISBI 2012 scores?

    python -m benchmarks.check_bf16 MODEL IMAGES LABELS [--no-tta] [--slices N] [--tile T]

Predicts IMAGES with MODEL twice, in fp32 and in bf16 (autocast; soft-max and TTA sums in
fp32), with the 8-fold test-time augmentation by default, exactly as ``unetlab predict`` does
(percentile normalisation per slice, automatic tile unless ``--tile``). Prints the largest and
mean |ΔP| over all classes and pixels, the IoU of the two foregrounds (P(cell) > 0.5), and the
three ISBI errors of the paper's Table 1 (pixel, Rand, warping; :func:`unetlab.metrics.isbi2012`)
for both, with their thresholds and the time each prediction took.

IMAGES and LABELS are two files (2D images or multi-page TIFF stacks, one slice per page) or two
folders paired by file name, as ``unetlab evaluate`` pairs PRED and GT
(:func:`unetlab.evaluation.load_pairs`); LABELS have cells > 0 and membrane 0. P(cell) is the
probability of class 1.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from unetlab.errors import UnetlabError

KEYS = ("pixel_error", "rand_error", "warping_error")


def predict_all(net, images: list[np.ndarray], precision: str, tta: bool,
                tile: int | None) -> tuple[np.ndarray, float]:
    """(S, K, H, W) probabilities of every slice under ``precision``, and the seconds taken."""
    from unetlab.predict import predict_tiled

    t0 = time.perf_counter()
    probs = np.stack([predict_tiled(net, img, tile_size=tile, tta=tta, precision=precision)
                      for img in images])
    return probs, time.perf_counter() - t0


def compare(net, images, labels, tta: bool = True, tile: int | None = None) -> dict:
    """fp32 and bf16 predictions and ISBI scores of ``images`` against ``labels``."""
    from unetlab.metrics import isbi2012

    gt = np.stack([np.asarray(g) for g in labels])
    out = {}
    for precision in ("fp32", "bf16"):
        prob, seconds = predict_all(net, images, precision, tta, tile)
        scores = isbi2012(gt, np.clip(prob[:, 1], 0.0, 1.0))
        out[precision] = {"prob": prob, "seconds": seconds, "scores": scores}
    d = np.abs(out["bf16"]["prob"] - out["fp32"]["prob"])
    fg32, fg16 = out["fp32"]["prob"][:, 1] > 0.5, out["bf16"]["prob"][:, 1] > 0.5
    out["max_dp"], out["mean_dp"] = float(d.max()), float(d.mean())
    out["fg_iou"] = float((fg32 & fg16).sum() / max((fg32 | fg16).sum(), 1))
    return out


def report(res: dict, what: str) -> None:
    print(what)
    print(f"max |ΔP| bf16 vs fp32: {res['max_dp']:.4g} (mean {res['mean_dp']:.3g}); foreground "
          f"IoU (P(cell) > 0.5) {res['fg_iou']:.4f}")
    print(f"{'':6} {'pixel error':>18} {'Rand error':>18} {'warping error':>20} {'seconds':>9}")
    for p in ("fp32", "bf16"):
        s = res[p]["scores"]
        cells = [f"{s[k]:.6f} (th {s[k.replace('error', 'threshold')]:.1f})" for k in KEYS]
        print(f"{p:6} {cells[0]:>18} {cells[1]:>18} {cells[2]:>20} {res[p]['seconds']:>9.1f}")
    diff = [res["bf16"]["scores"][k] - res["fp32"]["scores"][k] for k in KEYS]
    print(f"{'Δ':6} {diff[0]:>+18.6f} {diff[1]:>+18.6f} {diff[2]:>+20.6f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.check_bf16",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="model file (model.pt, best.pt) or bioimage.io package")
    ap.add_argument("images", help="image file / stack, or folder")
    ap.add_argument("labels", help="label file / stack, or folder (cells > 0, membrane 0)")
    ap.add_argument("--no-tta", dest="tta", action="store_false", help="no 8-fold TTA")
    ap.add_argument("--slices", type=int, default=None, help="only the first N slices")
    ap.add_argument("--tile", type=int, default=None, help="input tile side (default: auto)")
    args = ap.parse_args(argv)
    try:
        from unetlab.checkpoint import load_model
        from unetlab.evaluation import load_pairs
        from unetlab.hardware import describe_precision

        for path, what in ((args.model, "MODEL"), (args.images, "IMAGES"),
                           (args.labels, "LABELS")):
            if not Path(path).exists():
                raise UnetlabError(f"{what} {path}: no such file or folder")
        net = load_model(args.model)
        pairs, _ = load_pairs(args.images, args.labels, prefer=())
        if args.slices is not None:
            if args.slices < 1:
                raise UnetlabError(f"--slices {args.slices}: must be ≥ 1")
            pairs = pairs[:args.slices]
        res = compare(net, [p.pred for p in pairs], [p.gt for p in pairs], args.tta, args.tile)
    except UnetlabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    report(res, f"{args.model}: {len(pairs)} slice(s) of {args.images}, "
                f"TTA {'on' if args.tta else 'off'}; bf16 = {describe_precision('bf16')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
