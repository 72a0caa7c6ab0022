"""``unetlab augment``: see what the augmentation (Sec. 3.1) does to a dataset."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..errors import UnetlabError

HELP = "write pictures of randomly augmented training samples (elastic, rotation, grey values)"

DESCRIPTION = """\
Apply the paper's data augmentation (Ronneberger et al. 2015, Sec. 3.1) to training samples and
write pictures a person can check: random elastic deformations (displacements on a coarse 3x3
grid, standard deviation 10 pixels, bicubic interpolation), rotations, flips, shifts and mild
grey-value changes. Image, labels and weight map get the same transform: the image is
interpolated bicubically, the labels by nearest neighbour (never invented), the weights
linearly, all with mirrored borders.

DATA is a dataset that 'unetlab train' reads (image/ + label/ folders, an ISBI train-volume.tif +
train-labels.tif folder, a Cell Tracking Challenge folder, or an image file with --labels), or
the word 'synthetic' for generated touching cells.

Written to --out:
  grid.png                 one row per augmented sample: original image, augmented image,
                           augmented labels (black background, white cells, grey = ignored),
                           label outlines over the image (they must follow the cells), weights
  aug_NNN_image.tif        augmented image, float32 (C, H, W), normalised as for training
  aug_NNN_image.png        the same, 8-bit for viewing
  aug_NNN_classes.png      augmented class labels: 0 background, 1 cell, 255 ignored
  aug_NNN_weights.tif      augmented weight map (Eq. 2), float32

examples:
  unetlab augment synthetic --out aug/
  unetlab augment ../shared/data/isbi2012 --out aug/ --n 12 --seed 3 --tile 256
  unetlab augment image.tif --labels labels.tif --out aug/ --sigma 20 --no-grey
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", metavar="DATA", help="dataset (folder or image file), or 'synthetic'")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    p.add_argument("--labels", metavar="PATH", default=None,
                   help="label file or folder when DATA is an image file or image folder")
    p.add_argument("--n", type=int, default=8, help="number of augmented samples (default 8)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--size", type=int, default=256,
                   help="image size in pixels for DATA=synthetic (default 256)")
    p.add_argument("--tile", type=int, default=None, metavar="N",
                   help="augment a random N x N tile of each image instead of the whole image "
                        "(mirrored at the borders when the image is smaller)")
    p.add_argument("--sigma", type=float, default=10.0,
                   help="elastic displacement standard deviation in pixels (default 10; 0 = off)")
    p.add_argument("--grid", type=int, default=3,
                   help="elastic grid points per axis (default 3)")
    p.add_argument("--rotation", type=float, default=45.0,
                   help="maximum rotation in degrees, on top of the random flips/quarter "
                        "turns (default 45)")
    p.add_argument("--no-grey", dest="grey", action="store_false",
                   help="no grey-value changes")


def _check_args(args: argparse.Namespace) -> None:
    if args.n < 1:
        raise UnetlabError(f"--n: must be at least 1, got {args.n}")
    if args.n > 1000:
        raise UnetlabError(f"--n: at most 1000 samples per run, got {args.n}")
    if args.size < 16:
        raise UnetlabError(f"--size: synthetic images must be at least 16 pixels, got {args.size}")
    if args.tile is not None and args.tile < 8:
        raise UnetlabError(f"--tile: must be at least 8 pixels, got {args.tile}")
    if not np.isfinite(args.sigma) or args.sigma < 0:
        raise UnetlabError(f"--sigma: must be a number ≥ 0 (pixels), got {args.sigma}")
    if args.grid < 2:
        raise UnetlabError(f"--grid: must be at least 2 points per axis, got {args.grid}")
    if not np.isfinite(args.rotation) or args.rotation < 0:
        raise UnetlabError(f"--rotation: must be a number ≥ 0 (degrees), got {args.rotation}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UnetlabError(f"--out: {out} exists and is not a folder")


def _load(args: argparse.Namespace):
    if args.data == "synthetic":
        from ..synthetic import touching_cells

        if args.labels is not None:
            raise UnetlabError("--labels: not used with DATA=synthetic")
        return touching_cells(min(args.n, 4), args.size, args.seed)
    from ..data import read_dataset

    samples = read_dataset(args.data, labels=args.labels)
    if not samples:
        raise UnetlabError(f"{args.data}: no training samples found")
    return samples


def _tile(arrays, n: int, rng: np.random.Generator):
    """A random n×n tile of every (..., H, W) array (same place), mirrored past the borders."""
    h, w = arrays[0].shape[-2:]
    y0 = int(rng.integers(0, max(h - n, 0) + 1))
    x0 = int(rng.integers(0, max(w - n, 0) + 1))

    def idx(start, size):
        k = np.arange(start, start + n)
        if size == 1:
            return np.zeros_like(k)
        p = 2 * (size - 1)
        k = np.mod(k, p)
        return np.where(k >= size, p - k, k)

    iy, ix = idx(y0, h), idx(x0, w)
    return [a[..., iy, :][..., ix] for a in arrays]


def _to_uint8(img: np.ndarray) -> np.ndarray:
    """(C, H, W) float → (H, W) or (H, W, 3) uint8, stretched between the 0.5 and 99.5 %ile."""
    v = img[0] if img.shape[0] != 3 else np.moveaxis(img, 0, -1)
    lo, hi = np.percentile(v, [0.5, 99.5])
    scale = 255.0 / (hi - lo) if hi > lo else 1.0
    return np.clip((v - lo) * scale, 0, 255).astype(np.uint8)


def _write_png(path: Path, arr: np.ndarray) -> None:
    import imageio.v3 as iio

    from ..atomic import atomic_path

    with atomic_path(path) as tmp:
        iio.imwrite(tmp, arr, extension=".png")


def _write_tiff(path: Path, arr: np.ndarray) -> None:
    import tifffile

    from ..atomic import atomic_path

    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, arr)


def _grid_png(path: Path, rows: list[dict]) -> None:
    from matplotlib.figure import Figure
    from skimage.segmentation import find_boundaries

    from ..atomic import atomic_path

    cols = ["original", "augmented image", "augmented labels", "labels over image",
            "augmented weights"]
    fig = Figure(figsize=(2.3 * len(cols), 2.3 * len(rows) + 0.4), dpi=100)
    axes = fig.subplots(len(rows), len(cols), squeeze=False)
    for r, row in enumerate(rows):
        img = _to_uint8(row["image"])
        cls = row["classes"]
        lab = np.where(cls == 255, 128, np.where(cls > 0, 255, 0)).astype(np.uint8)
        over = np.stack([img if img.ndim == 2 else img.mean(-1).astype(np.uint8)] * 3, -1)
        edge = find_boundaries(cls == 1, mode="inner")
        over[edge] = (255, 40, 40)
        over[cls == 255] = (over[cls == 255] * 0.5 + np.array([0, 0, 128])).astype(np.uint8)
        panels = [(_to_uint8(row["original"]), "gray"), (img, "gray"), (lab, "gray"),
                  (over, None), (row["weights"], "jet")]
        for c, (a, cmap) in enumerate(panels):
            ax = axes[r, c]
            kw = {"vmin": 0, "vmax": 255} if cmap == "gray" else {}
            ax.imshow(a, cmap=cmap, interpolation="nearest", **kw)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(cols[c], fontsize=9)
        axes[r, 0].set_ylabel(row["title"], fontsize=7)
    fig.suptitle("unetlab augment: image, labels (nearest) and weights (linear) get one "
                 "transform", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    from ..augment import Augment
    from ..weights import training_targets

    samples = _load(args)
    if args.tile is not None:
        side = max(max(s.shape) for s in samples)
        if args.tile > max(4 * side, 64):
            raise UnetlabError(f"--tile: {args.tile} pixels is far larger than the images "
                               f"(largest side {side}); use at most {max(4 * side, 64)}")
    grey = {} if args.grey else {"contrast": 0.0, "brightness": 0.0, "gamma": 0.0, "noise": 0.0}
    aug = Augment(elastic_sigma=args.sigma, elastic_grid=args.grid, rotation=args.rotation,
                  seed=args.seed, **grey)
    rng = np.random.default_rng([args.seed, 1])        # tile positions
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    targets: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    rows = []
    for i in range(args.n):
        k = i % len(samples)
        s = samples[k]
        if k not in targets:
            targets[k] = training_targets(s.instances)
        classes, weights = targets[k]
        image = s.image
        if args.tile is not None:
            image, classes, weights = _tile([image, classes, weights], args.tile, rng)
        params = aug.sample(classes.shape)
        a_img, a_cls, a_w = aug.apply(params, image, classes, weights)
        stem = f"aug_{i:03d}"
        _write_tiff(out / f"{stem}_image.tif", a_img)
        _write_png(out / f"{stem}_image.png", _to_uint8(a_img))
        _write_png(out / f"{stem}_classes.png", a_cls)
        _write_tiff(out / f"{stem}_weights.tif", a_w)
        d = params.displacements
        title = (f"{s.name or 'sample ' + str(k)}\n"
                 f"rot {params.angle:+.0f}°+{90 * params.quarter_turns}°"
                 f"{' flip' if params.flip else ''}, "
                 f"max |d| {0 if d is None else np.abs(d).max():.0f} px")
        rows.append({"original": image, "image": a_img, "classes": a_cls, "weights": a_w,
                     "title": title})
    _grid_png(out / "grid.png", rows)
    print(f"wrote {out / 'grid.png'} and {args.n} augmented samples "
          f"(aug_NNN_image.tif/.png, _classes.png, _weights.tif) to {out}")
    return 0
