"""``unetlab weights``: compute the weight map (Eq. 2) of a label image and write a picture."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..errors import UnetlabError

HELP = "show the weight map (Eq. 2) of a label image as a colour picture"

DESCRIPTION = """\
Compute the U-Net weight map of a label image (Ronneberger et al. 2015, Eq. 2):

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))

w_c balances the cell/background frequencies; d1, d2 are the distances to the nearest and
second-nearest cell, so the weights are high in the thin gaps between touching cells. Touching
cells are first split by one-pixel background borders (the paper's Fig. 3c). The picture shows
the separated cells and the weight map as a colour map with a colour bar (Fig. 3d).

LABELS is a TIFF/PNG label image: integer instance ids (0 = background, negative = ignored),
or a binary mask (e.g. ISBI 2012: cells white, membranes black), whose 4-connected white
regions become the cells. For a multi-page TIFF stack, --page picks the slice.

examples:
  unetlab weights ../shared/data/dsb2018_nuclei/mask2d.tif --out w.png
  unetlab weights train-labels.tif --page 3 --out w3.png --tiff w3.tif
  unetlab weights labels.png --out w.png --w0 5 --sigma 3 --no-balance
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


def read_label_image(path: str | Path, page: int = 0) -> np.ndarray:
    """Read one 2D label image (a page of a stack), with one-line errors naming the file."""
    from ..data import read_image

    path = Path(path)
    if path.is_dir():
        raise UnetlabError(f"{path}: is a folder, expected a label image file")
    # unetlab.data checks the declared size before decoding (decompression bombs), empty and
    # truncated files; palette PNG labels keep their indices
    a = np.asarray(read_image(path, palette_indices=True))
    if a.ndim == 3 and a.shape[-1] in (3, 4):
        raise UnetlabError(f"{path}: is an RGB(A) image {a.shape}; a label image must have one "
                           f"channel (integer ids or a binary mask)")
    if a.ndim == 3:
        if not 0 <= page < a.shape[0]:
            raise UnetlabError(f"--page {page}: {path} has {a.shape[0]} pages")
        a = a[page]
    elif a.ndim != 2:
        raise UnetlabError(f"{path}: expected a 2D label image or a stack, got shape {a.shape}")
    if a.size == 0:
        raise UnetlabError(f"{path}: empty image")
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)):
            raise UnetlabError(f"{path}: label image contains NaN or infinite values")
        if not np.array_equal(a, np.round(a)):
            raise UnetlabError(f"{path}: label image has non-integer values "
                               f"(is this an intensity image?)")
    elif a.dtype.kind not in "iub":
        raise UnetlabError(f"{path}: unsupported label dtype {a.dtype}")
    _check_not_intensity(a, path)
    return a


def _check_not_intensity(a: np.ndarray, path: Path) -> None:
    """Refuse images whose values are scattered in far more pieces than there are values: an
    intensity (or semantic class) image, not instance ids or a binary mask."""
    from skimage.measure import label as cc_label

    nvals = len(np.unique(a[a > 0]))
    if nvals <= 1:
        return
    pieces = int(cc_label(a, connectivity=1, background=0).max())
    if pieces > 1000 and pieces > 4 * nvals:
        raise UnetlabError(f"{path}: looks like an intensity image, not labels ({nvals} values "
                           f"scattered in {pieces} pieces; instance ids are mostly one piece "
                           f"each)")


def run(args) -> int:
    from ..weights import as_instances, training_targets

    import math

    if not (math.isfinite(args.sigma) and args.sigma > 0):
        raise UnetlabError(f"--sigma must be a finite number > 0, got {args.sigma}")
    if not (math.isfinite(args.w0) and args.w0 >= 0):
        raise UnetlabError(f"--w0 must be a finite number ≥ 0, got {args.w0}")
    import matplotlib

    if args.cmap not in matplotlib.colormaps:
        raise UnetlabError(f"--cmap: unknown matplotlib colour map {args.cmap!r} "
                           f"(e.g. jet, viridis, magma)")
    outputs = [Path(args.out)] + ([Path(args.tiff)] if args.tiff else [])
    for o in outputs:  # check every output before writing any, so a failure leaves nothing
        if o.is_dir():
            raise UnetlabError(f"{o}: is a folder, expected an output file name")
        try:
            o.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UnetlabError(f"{o}: cannot create the folder {o.parent} "
                               f"({e.strerror or e})") from None
    raw = read_label_image(args.labels, args.page)
    inst = as_instances(raw, ignore_label=args.ignore_label)
    classes, w = training_targets(inst, w0=args.w0, sigma=args.sigma, balance=args.balance)
    n = int(len(np.unique(inst[inst > 0])))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _write_picture(out, classes, w, args, n)
    if args.tiff:
        import tifffile

        from ..atomic import atomic_path

        tpath = Path(args.tiff)
        tpath.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(tpath) as tmp:
            tifffile.imwrite(tmp, w.astype(np.float32))
    print(f"{args.labels}: {w.shape[1]}×{w.shape[0]}, {n} instances, weights "
          f"{w.min():.3g}–{w.max():.3g} (mean {w.mean():.3g}) → {out}"
          + (f", {args.tiff}" if args.tiff else ""))
    return 0


def _write_picture(out: Path, classes: np.ndarray, w: np.ndarray, args, n: int) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    from ..atomic import atomic_path
    from ..weights import IGNORE_INDEX

    h, wd = w.shape
    panel = min(7.0, max(3.0, wd / 100))                 # inches
    aspect = h / wd
    fig = Figure(figsize=(2 * panel + 1.2, panel * aspect + 0.9), dpi=max(100, wd // 7))
    ax1, ax2 = fig.subplots(1, 2)
    shown = np.where(classes == IGNORE_INDEX, 0.5, classes.astype(np.float32))
    ax1.imshow(shown, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax1.set_title(f"cells, separated (Fig. 3c): {n} instances", fontsize=9)
    im = ax2.imshow(w, cmap=args.cmap, interpolation="nearest")
    ax2.set_title(f"weight map (Eq. 2): w0={args.w0:g}, σ={args.sigma:g}"
                  + ("" if args.balance else ", no balance"), fontsize=9)
    for ax in (ax1, ax2):
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=ax2, fraction=0.046, pad=0.02)
    fig.tight_layout()
    with atomic_path(out, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
