"""``unetlab weights``: compute the weight map (Eq. 2) of a label image and write a picture."""
from __future__ import annotations

import argparse

from ._options import add_overwrite

HELP = "show the weight map (Eq. 2) of a label image as a colour picture"

DESCRIPTION = """\
Compute the U-Net weight map of a label image (Ronneberger et al. 2015, Eq. 2):

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))

w_c balances the cell/background frequencies; d1, d2 are the distances to the nearest and
second-nearest cell, so the weights are high in the thin gaps between touching cells. Touching
cells are first split by one-pixel background borders (the paper's Fig. 3c). The picture shows
the separated cells and the weight map as a colour map with a colour bar (Fig. 3d).

LABELS is a TIFF/PNG label image read as `unetlab train` reads labels: integer instance ids
(0 = background, negative = ignored), or a binary mask (e.g. ISBI 2012: cells white, membranes
black), whose 4-connected white regions become the cells. For a multi-page TIFF stack, --page
picks the slice. Existing output files are kept unless --overwrite is given.

examples (on the files of 'unetlab demo --data cells'):
  unetlab weights cells/labels/00.tif --out w.png
  unetlab weights cells/labels/01.tif --out w5.png --tiff w5.tif --w0 5 --sigma 3 --no-balance
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("labels", metavar="LABELS", help="label image (TIFF or PNG)")
    p.add_argument("--out", required=True, metavar="PNG", help="picture to write (PNG)")
    p.add_argument("--w0", type=float, default=10.0, help="border weight w0 (default 10)")
    p.add_argument("--sigma", type=float, default=5.0,
                   help="border width sigma in pixels (default 5)")
    p.add_argument("--no-balance", dest="balance", action="store_false",
                   help="w_c = 1 instead of balancing the class frequencies")
    p.add_argument("--ignore-label", type=int, default=None, metavar="ID",
                   help="label value meaning 'unlabelled, ignore' (negative values always are)")
    p.add_argument("--page", type=int, default=0,
                   help="slice of a multi-page stack (default 0)")
    p.add_argument("--tiff", metavar="PATH", default=None,
                   help="also write the float32 weights as a TIFF")
    p.add_argument("--cmap", default="jet", help="matplotlib colour map (default jet)")
    add_overwrite(p)


def run(args) -> int:
    from ..weights import write_weight_map

    r = write_weight_map(args.labels, args.out, tiff=args.tiff, page=args.page, w0=args.w0,
                         sigma=args.sigma, balance=args.balance, ignore_label=args.ignore_label,
                         cmap=args.cmap, overwrite=args.overwrite)
    h, w = r["shape"]
    print(f"{args.labels}: {w}×{h}, {r['instances']} instances, weights "
          f"{r['min']:.3g}–{r['max']:.3g} (mean {r['mean']:.3g}) → {args.out}"
          + (f", {args.tiff}" if args.tiff else ""))
    return 0
