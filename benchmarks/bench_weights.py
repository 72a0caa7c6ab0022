"""Weight map (Eq. 2): windowed distance transforms vs one full EDT per instance.

Target: ``border_weight_map`` ≥ 20× the naive reference (tests/reference/
naive_weights.py: one full-image ``distance_transform_edt`` per instance, keeping the two
smallest distances) on ../shared/data/dsb2018_nuclei/mask2d.tif (512², 125 touching nuclei), with
max |fast − naive| ≤ 1e-5. Also: the same on a synthetic 512² image, and the full
``training_targets`` (separation + class balance + border term) on synthetic 512² and 2048²
images (no baseline; the naive method would take minutes there).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from benchmarks.harness import Table
from unetlab.synthetic import touching_cells_arrays
from unetlab.weights import border_weight_map, training_targets

ROOT = Path(__file__).resolve().parents[1]
NUCLEI = ROOT.parent / "shared" / "data" / "dsb2018_nuclei" / "mask2d.tif"


def _naive():
    sys.path.insert(0, str(ROOT / "tests"))
    from reference.naive_weights import naive_border_weight_map_lowmem

    return naive_border_weight_map_lowmem


def _compare(title: str, inst: np.ndarray, naive, repeat_naive: int, repeat_fast: int) -> float:
    n = len(np.unique(inst[inst > 0]))
    t = Table(f"{title}: {inst.shape[0]}×{inst.shape[1]}, {n} instances, w0=10, σ=5",
              baseline="naive (full EDT per instance)")
    t.add("naive (full EDT per instance)", lambda: naive(inst), repeat=repeat_naive, warmup=0)
    t.add("unetlab border_weight_map", lambda: border_weight_map(inst), repeat=repeat_fast,
          warmup=2, note="windowed EDT, tol 1e-6")
    t.add("unetlab training_targets", lambda: training_targets(inst), repeat=repeat_fast,
          warmup=1, note="separation + w_c + border")
    t.print()
    err = float(np.abs(border_weight_map(inst) - naive(inst)).max())
    r = t.ratio("unetlab border_weight_map")
    print(f"max |fast - naive| = {err:.2e} (target ≤ 1e-5); speed-up {r:.1f}× (target ≥ 20×)")
    return r


def main() -> None:
    naive = _naive()
    if NUCLEI.exists():
        import tifffile

        m = tifffile.imread(NUCLEI).astype(np.int32)
        _compare("DSB 2018 nuclei mask2d.tif", m, naive, repeat_naive=3, repeat_fast=15)
    else:
        print(f"skipped the nuclei benchmark: {NUCLEI} not found")

    (_, syn), = touching_cells_arrays(1, 512, seed=0)
    _compare("synthetic touching cells", syn, naive, repeat_naive=1, repeat_fast=7)

    (_, big), = touching_cells_arrays(1, 2048, seed=0)
    t = Table(f"training_targets on a synthetic 2048² image ({big.max()} cells)")
    t.add("unetlab border_weight_map", lambda: border_weight_map(big), repeat=3, warmup=1)
    t.add("unetlab training_targets", lambda: training_targets(big), repeat=3, warmup=0)
    t.print()


if __name__ == "__main__":
    main()
