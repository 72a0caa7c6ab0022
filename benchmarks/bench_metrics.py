"""ISBI 2012 metrics: the fast implementation vs the step-by-step reference, and the absolute
time of all three metrics on 5 ISBI slices of 512×512 (issue target: ≤ 30 s on 2 cores).

The probability map is built from the real labels (../shared/data/isbi2012/train/label) the way a
decent but imperfect network looks: blurred labels, smooth noise, false membrane fragments inside
cells and gaps in true membranes. ``python -m benchmarks metrics``.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from benchmarks.harness import Table

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "isbi2012" / "train" / "label"


def realistic_probability(gt: np.ndarray, seed: int = 0) -> np.ndarray:
    """(S, H, W) float32 P(cell) from binary labels: blur, noise, false and missing membranes."""
    rng = np.random.default_rng(seed)
    out = []
    for g in gt:
        cell = (g > 0).astype(np.float32)
        p = ndimage.gaussian_filter(cell, 1.5)
        p += ndimage.gaussian_filter(rng.normal(0, 0.5, g.shape), 2).astype(np.float32)
        h, w = g.shape
        for _ in range(max(1, h * w // 6000)):  # false membrane fragments
            y, x = rng.integers(0, h), rng.integers(0, w)
            ang = rng.uniform(0, np.pi)
            n = int(rng.integers(5, 25))
            ys = np.clip((y + np.arange(n) * np.sin(ang)).astype(int), 0, h - 1)
            xs = np.clip((x + np.arange(n) * np.cos(ang)).astype(int), 0, w - 1)
            p[ys, xs] *= rng.uniform(0.1, 0.6)
        memb = np.argwhere(cell == 0)
        for y, x in memb[rng.choice(len(memb), size=max(1, h * w // 8000), replace=False)]:
            p[max(0, y - 2):y + 3, max(0, x - 2):x + 3] += rng.uniform(0.3, 0.7)  # gaps
        out.append(np.clip(p, 0, 1).astype(np.float32))
    return np.stack(out)


def _small_case(seed=1, h=32, w=32, s=1):
    rng = np.random.default_rng(seed)
    g = ndimage.gaussian_filter(rng.random((s, h, w)), (0, 2, 2))
    gt = np.stack([(x > np.quantile(x, 0.3)).astype(np.uint8) for x in g])
    return gt, realistic_probability(gt, seed)


def main() -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from reference import naive_metrics as nm

    from unetlab import metrics

    gt, prob = _small_case()
    metrics.isbi2012(gt, prob)  # compile the numba kernels outside the timing
    t = Table("ISBI 2012 pixel + Rand + warping error, 11 thresholds, one 32×32 slice",
              baseline="naive reference")
    t.add("naive reference", lambda: nm.isbi2012(gt, prob), repeat=3, warmup=0)
    t.add("unetlab.metrics.isbi2012", lambda: metrics.isbi2012(gt, prob, classic=False),
          repeat=5)
    t.print()
    fast, slow = metrics.isbi2012(gt, prob), nm.isbi2012(gt, prob)
    same = all(abs(fast[k] - slow[k]) < 1e-12 for k in ("pixel_error", "rand_error",
                                                        "warping_error"))
    print(f"same numbers as the reference: {same}")

    if not DATA.is_dir():
        print(f"\n(skipped the 5×512² case: {DATA} not found)")
        return
    import imageio.v3 as iio

    files = sorted(DATA.glob("*.png"))[:5]
    gt5 = np.stack([iio.imread(f) for f in files])
    prob5 = realistic_probability(gt5, 0)
    t2 = Table(f"ISBI 2012 metrics on {len(files)} real slices of "
               f"{gt5.shape[2]}×{gt5.shape[1]} (issue target ≤ 30 s)")
    res = {}

    def run():
        res["r"] = metrics.isbi2012(gt5, prob5, classic=False)

    t2.add("unetlab.metrics.isbi2012 (11 thresholds)", run, repeat=3, warmup=0)
    t2.add("  + V_rand/V_info after thinning",
           lambda: metrics.isbi2012(gt5, prob5, classic=False, thinning=True), repeat=1,
           warmup=0)
    t2.print()
    r = res["r"]
    print(f"pixel error {r['pixel_error']:.4f}, Rand error {r['rand_error']:.4f}, "
          f"warping error {r['warping_error']:.6f}; remaining split/merge pixels per threshold: "
          + ", ".join(f"{x['splits']}/{x['mergers']}" for x in r["per_threshold"]))
    t0 = time.perf_counter()
    metrics.warping_classes(gt5, prob5, 0.5)
    print(f"warping alone at one threshold: {time.perf_counter() - t0:.2f} s")
