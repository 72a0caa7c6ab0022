"""``unetlab augment``: see what the augmentation (Sec. 3.1) does to a dataset."""
from __future__ import annotations

import argparse
from pathlib import Path

from ._options import add_overwrite, seed

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
Existing files in --out are kept unless --overwrite is given.

examples (the last two on the files of 'unetlab demo --data cells'):
  unetlab augment synthetic --out aug/
  unetlab augment cells --out aug-cells/ --n 12 --seed 3 --tile 256
  unetlab augment cells/images/00.tif --labels cells/labels/00.tif --out aug-one/ --sigma 20 --no-grey
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", metavar="DATA", help="dataset (folder or image file), or 'synthetic'")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    p.add_argument("--labels", metavar="PATH", default=None,
                   help="label file or folder when DATA is an image file or image folder")
    p.add_argument("--n", type=int, default=8, help="number of augmented samples (default 8)")
    p.add_argument("--seed", type=seed, default=0, help="random seed (default 0)")
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
    add_overwrite(p)


def run(args: argparse.Namespace) -> int:
    from ..augment import write_augmented

    written = write_augmented(args.data, args.out, labels=args.labels, n=args.n, seed=args.seed,
                              size=args.size, tile=args.tile, sigma=args.sigma, grid=args.grid,
                              rotation=args.rotation, grey=args.grey, overwrite=args.overwrite)
    out = Path(args.out)
    print(f"wrote {out / 'grid.png'} and {len(written) // 4} augmented samples "
          f"(aug_NNN_image.tif/.png, _classes.png, _weights.tif) to {out}")
    return 0
