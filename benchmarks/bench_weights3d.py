"""Weight map (Eq. 2) on volumes: the separable two-nearest pass and the windowed distance
transforms vs one full EDT per instance.

Target: ``border_weight_map`` (method "auto" = "separable" for volumes) ≥ 10× the naive reference (tests/reference/naive_weights.py:
one full-volume ``distance_transform_edt(instances != i, sampling=spacing)`` per instance,
keeping the two smallest distances) on a synthetic 128³ volume of about 100 touching cells
(``synthetic.touching_cells_3d``, separated as ``training_targets`` does), with
max |fast − naive| ≤ 1e-5; the same on an anisotropic 32×96×96 volume with spacing (2.5, 1, 1).
Also method "windows" (one windowed EDT per instance, the 2D default) and the full
``training_targets`` (separation + class balance + border term). The naive 128³ run takes
one to two minutes on one core.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.harness import Table
from unetlab.synthetic import touching_cells_3d
from unetlab.weights import border_weight_map, separate_instances, training_targets

ROOT = Path(__file__).resolve().parents[1]


def _naive():
    sys.path.insert(0, str(ROOT / "tests"))
    from reference.naive_weights import naive_border_weight_map_lowmem

    return naive_border_weight_map_lowmem


def _compare(title: str, inst: np.ndarray, spacing, naive, repeat_fast: int) -> float:
    sep = np.where(separate_instances(inst), inst, 0)
    n = len(np.unique(sep[sep > 0]))
    shape = "×".join(map(str, inst.shape))
    t = Table(f"{title}: {shape}, {n} instances, spacing {spacing}, w0=10, σ=5",
              baseline="naive (full EDT per instance)")
    t0 = time.perf_counter()
    ref = naive(sep, sampling=spacing)                  # one run: it is the slow part
    t.add_times("naive (full EDT per instance)", [time.perf_counter() - t0])
    t.add("unetlab border_weight_map", lambda: border_weight_map(sep, spacing=spacing),
          repeat=repeat_fast, warmup=1, note="separable two-nearest pass, tol 1e-6")
    t.add("border_weight_map(method='windows')",
          lambda: border_weight_map(sep, spacing=spacing, method="windows"),
          repeat=1, warmup=0, note="windowed EDT per instance")
    t.add("unetlab training_targets", lambda: training_targets(inst, spacing=spacing),
          repeat=repeat_fast, warmup=0, note="separation + w_c + border")
    t.print()
    err = float(np.abs(border_weight_map(sep, spacing=spacing) - ref).max())
    err_w = float(np.abs(border_weight_map(sep, spacing=spacing, method="windows") - ref).max())
    r = t.ratio("unetlab border_weight_map")
    print(f"max |fast - naive| = {err:.2e}, windows {err_w:.2e} (target ≤ 1e-5); "
          f"speed-up {r:.1f}× (target ≥ 10×)")
    return r


def main() -> None:
    naive = _naive()
    (_, iso), = touching_cells_3d(1, 128, seed=0, cells=100)
    _compare("synthetic touching cells", iso, (1.0, 1.0, 1.0), naive, repeat_fast=5)
    sp = (2.5, 1.0, 1.0)
    (_, aniso), = touching_cells_3d(1, (32, 96, 96), seed=1, cells=60, spacing=sp)
    _compare("anisotropic synthetic cells", aniso, sp, naive, repeat_fast=3)


if __name__ == "__main__":
    main()
