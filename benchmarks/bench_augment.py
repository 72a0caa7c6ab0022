"""Elastic deformation (Sec. 3.1) of a 572² float32 image + uint8 label: unetlab vs elasticdeform.

Target: ≥ 5× the ``elasticdeform`` package's
``deform_random_grid([img, lbl], sigma=10, points=3, order=[3, 0])``, measured side by side.
Both use mirrored borders (``mode="mirror"``), so they do the same work. The three cubic
interpolators differ, and each line names its own:

* elasticdeform default (``prefilter=True``): cubic **B-spline interpolation** — a recursive
  spline prefilter over the whole image, then 4×4 B-spline taps (scipy's ``order=3``);
* elasticdeform ``prefilter=False``: the same 4×4 cubic B-spline taps on the raw samples, i.e.
  B-spline *approximation* (smooths; not exact at the pixel centres), no prefilter pass;
* unetlab: **Keys cubic convolution** (a = −0.75, 4×4 taps, interpolating, no prefilter; see
  :mod:`unetlab.elastic`), the closest in work to ``prefilter=False``.

Also shown: a plain
scipy baseline (field by ``zoom(order=3)``, resampling by ``map_coordinates``) and the full
``Augment.paper()`` pipeline (elastic + rotation + shift + flips + grey values, image + classes +
weights in one resampling).

Install the baseline with ``.venv/bin/pip install --no-binary elasticdeform elasticdeform==0.5.1``
(``make bench`` does); without it the scipy baseline is the reference.
"""
from __future__ import annotations

import numpy as np
import scipy.ndimage as ndi

from benchmarks.harness import Table, measure_interleaved
from unetlab.augment import Augment, elastic_deform

SIZE = 572


def _scipy_elastic(img, lbl, rng):
    d = rng.standard_normal((2, 3, 3)) * 10.0
    h, w = img.shape
    f = [ndi.zoom(d[c], (h / 3, w / 3), order=3, mode="mirror", grid_mode=False) for c in range(2)]
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    coords = [yy + f[0], xx + f[1]]
    return (ndi.map_coordinates(img, coords, order=3, mode="mirror"),
            ndi.map_coordinates(lbl, coords, order=0, mode="mirror"))


def main() -> None:
    rng = np.random.default_rng(0)
    img = rng.standard_normal((SIZE, SIZE)).astype(np.float32)
    lbl = (rng.random((SIZE, SIZE)) < 0.5).astype(np.uint8)
    wts = rng.random((SIZE, SIZE)).astype(np.float32) + 1

    try:
        import elasticdeform
    except Exception as e:  # noqa: BLE001 - the baseline is optional
        elasticdeform = None
        print(f"elasticdeform not importable ({type(e).__name__}: {e}); "
              f"baseline = scipy map_coordinates")

    base = "elasticdeform" if elasticdeform is not None else "scipy zoom+map_coordinates"
    img3 = img[None]
    aug = Augment.paper(seed=0)
    cases = {}                                 # name: (callable, note)
    if elasticdeform is not None:
        np.random.seed(0)
        for name, pf, note in (("elasticdeform", True, "B-spline interpolation (prefilter)"),
                               ("elasticdeform prefilter=False", False,
                                "B-spline approximation (no prefilter)")):
            cases[name] = (lambda pf=pf: elasticdeform.deform_random_grid(
                [img, lbl], sigma=10, points=3, order=[3, 0], mode="mirror", prefilter=pf),
                f"order [3, 0]: cubic {note}")
    cases["scipy zoom+map_coordinates"] = (lambda: _scipy_elastic(img, lbl, rng),
                                           "order [3, 0]: cubic B-spline interpolation")
    cases["unetlab elastic_deform"] = (
        lambda: elastic_deform([img, lbl], [3, 0], 3, 10.0, rng),
        "orders [3, 0]: Keys cubic convolution a=-0.75")
    cases["unetlab elastic_deform + weights"] = (
        lambda: elastic_deform([img3, lbl, wts], [3, 0, 1], 3, 10.0, rng), "orders [3, 0, 1]")
    cases["unetlab Augment.paper() img+cls+w"] = (lambda: aug(img3, lbl, wts),
                                                  "elastic+rot+shift+flip+grey")
    times = measure_interleaved({k: fn for k, (fn, _) in cases.items()}, repeat=9, warmup=2)
    t = Table(f"elastic deformation 3×3 grid, σ=10 px, {SIZE}² float32 image + uint8 label "
              f"(cases interleaved)", baseline=base)
    for k, (_, note) in cases.items():
        t.add_times(k, times[k], note=note)
    t.print()
    r = t.ratio("unetlab elastic_deform")
    print(f"speed-up of unetlab elastic_deform (Keys cubic) over {base}: {r:.1f}× "
          f"(target ≥ 5×)")
    if elasticdeform is not None:
        r2 = t.get("elasticdeform prefilter=False").median / t.get("unetlab elastic_deform").median
        print(f"speed-up of unetlab elastic_deform (Keys cubic) over elasticdeform "
              f"prefilter=False (cubic B-spline approximation, no prefilter pass): {r2:.1f}×")

if __name__ == "__main__":
    main()
