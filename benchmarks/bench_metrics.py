"""ISBI 2012 metrics: the fast implementation vs the step-by-step reference, and the absolute
time of all three metrics on 5 ISBI slices of 512×512 (target: ≤ 30 s on 2 cores). Instance
matching: time and peak memory for crowded images (memory follows the overlapping pairs).

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

from benchmarks.harness import Result, Table

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


def crowded_instances(n_objects: int, side: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(gt, pred) int32 instance images of ``side``² with about ``n_objects`` nuclei-like objects
    on a jittered grid; the prediction is shifted by a pixel and merges every 7th pair."""
    rng = np.random.default_rng(seed)
    per_row = int(np.ceil(np.sqrt(n_objects)))
    cell = side / per_row
    yy, xx = np.indices((side, side))
    gy, gx = (yy / cell).astype(int), (xx / cell).astype(int)
    ids = gy * per_row + gx + 1
    cy = (gy + 0.5 + rng.uniform(-0.1, 0.1, (per_row, per_row))[gy.clip(0, per_row - 1),
                                                                 gx.clip(0, per_row - 1)]) * cell
    inside = (yy - cy) ** 2 + (xx - (gx + 0.5) * cell) ** 2 < (0.42 * cell) ** 2
    gt = np.where(inside & (ids <= n_objects), ids, 0).astype(np.int32)
    pred = np.roll(gt, 1, axis=1)
    pred = np.where((pred % 7 == 0) & (pred > 0), pred - 1, pred)
    return gt, pred


def _vm_hwm_kib() -> int:
    """This process's own peak resident memory (KiB, ``VmHWM``). ``ru_maxrss`` is not used: a
    spawned child inherits the parent's high-water mark from before ``exec``."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def _matching_child(n_objects: int, side: int, conn) -> None:
    from unetlab import metrics

    gt, pred = crowded_instances(n_objects, side)
    base = _vm_hwm_kib()
    t0 = time.perf_counter()
    rows = metrics.matching(gt, pred)
    seconds = time.perf_counter() - t0
    peak = _vm_hwm_kib()
    conn.send((seconds, base / 1024, peak / 1024, rows[0]["n_true"], rows[0]["tp"]))


def instance_matching_case() -> None:
    """Time and peak resident memory (fresh process each) of ``metrics.matching`` at the 10 IoU
    thresholds: 9,216 objects in 384² and 20,000 in 2048² (targets: < 2 GB and < 30 s)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    t = Table("instance matching (10 IoU thresholds), fresh process per case",
              baseline="1,000 objects in 512²")
    for n, side in ((1000, 512), (9216, 384), (20000, 2048)):
        a, b = ctx.Pipe()
        p = ctx.Process(target=_matching_child, args=(n, side, b))
        p.start()
        seconds, base_mb, peak_mb, n_true, tp = a.recv()
        p.join()
        name = f"{n:,} objects in {side}²" if n != 1000 else "1,000 objects in 512²"
        t.results.append(Result(name, [seconds], note=f"peak RSS {peak_mb:.0f} MB "
                                f"(+{peak_mb - base_mb:.0f} MB), {n_true} true, {tp} TP at 0.5"))
    t.print()


def main() -> None:
    instance_matching_case()
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
               f"{gt5.shape[2]}×{gt5.shape[1]} (target ≤ 30 s)")
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
