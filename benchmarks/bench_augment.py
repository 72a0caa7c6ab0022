"""Elastic deformation (Sec. 3.1) of a 572² float32 image + uint8 label: unetlab vs elasticdeform.

Target: ≥ 5× the ``elasticdeform`` package's
``deform_random_grid([img, lbl], sigma=10, points=3, order=[3, 0])``, measured side by side.
Both use mirrored borders (``mode="mirror"``), so they do the same work. Also shown: a plain
scipy baseline (field by ``zoom(order=3)``, resampling by ``map_coordinates``) and the full
``Augment.paper()`` pipeline (elastic + rotation + shift + flips + grey values, image + classes +
weights in one resampling).

Install the baseline with ``.venv/bin/pip install --no-binary elasticdeform elasticdeform==0.5.1``
(``make bench`` does); without it the scipy baseline is the reference.
"""
from __future__ import annotations

import numpy as np
import scipy.ndimage as ndi

from benchmarks.harness import Table
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
    t = Table(f"elastic deformation 3×3 grid, σ=10 px, {SIZE}² float32 image + uint8 label",
              baseline=base)
    if elasticdeform is not None:
        np.random.seed(0)
        t.add("elasticdeform", lambda: elasticdeform.deform_random_grid(
            [img, lbl], sigma=10, points=3, order=[3, 0], mode="mirror"), repeat=9, warmup=2,
            note="deform_random_grid order=[3,0]")
    t.add("scipy zoom+map_coordinates", lambda: _scipy_elastic(img, lbl, rng), repeat=5)
    t.add("unetlab elastic_deform", lambda: elastic_deform([img, lbl], [3, 0], 3, 10.0, rng),
          repeat=15, warmup=3, note="orders [3, 0]")
    img3 = img[None]
    t.add("unetlab elastic_deform + weights", lambda: elastic_deform(
        [img3, lbl, wts], [3, 0, 1], 3, 10.0, rng), repeat=15, warmup=3, note="orders [3, 0, 1]")
    aug = Augment.paper(seed=0)
    t.add("unetlab Augment.paper() img+cls+w", lambda: aug(img3, lbl, wts), repeat=15, warmup=3,
          note="elastic+rot+shift+flip+grey")
    t.print()
    r = t.ratio("unetlab elastic_deform")
    print(f"speed-up of unetlab elastic_deform over {base}: {r:.1f}× (target ≥ 5×)")


if __name__ == "__main__":
    main()
