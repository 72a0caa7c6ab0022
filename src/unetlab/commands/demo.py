"""``unetlab demo``: train on synthetic touching cells, predict a large image, evaluate, report."""
from __future__ import annotations

import argparse

from ._options import seed

HELP = "train, predict, evaluate and report on synthetic touching cells (a few minutes)"
DESCRIPTION = """\
The whole method end to end on generated touching cells, no data or download needed: generate
training images, train a U-Net with the recipe 'unetlab train' picks for the device (--preset
auto: on a CPU the cpu preset, width 16, depth 4, 380 x 380 tiles, Adam, bf16 where the CPU has
it; on a GPU the paper's), with batch normalisation and Adam's rate 0.003, which touching cells
need to learn their separation lines in minutes (the weight map of Eq. 2 with w0 = 10 and the
preset's sigma, 3 px on a CPU; elastic deformation, one tile per step), predict a large image
(2048 x 2048 by default) with overlap-tile and 8-fold test-time averaging, split instances
(watershed of the distance transform), evaluate (ISBI pixel/Rand error, SEG, matching F1/AP,
merges and splits) and write OUT/report.html. It ends by printing where the report is and the
headline metrics. 4 to 9 minutes on a 2-core CPU: unless --iterations is given, training gets a
wall-clock budget (as 'unetlab train --time') of --train-minutes, less when predicting the
large image would take the demo past 9 minutes.

OUT is a normal run folder (model.pt usable by 'unetlab predict' and 'unetlab export').
Every option is checked first; only then does a rerun into the same folder replace the
previous demo's own files (a folder holding anything else is refused). One process at a time
owns OUT. The instance step's threshold and seed height are chosen on a separate synthetic
validation image, never on the test image.

--data DIR only writes a small synthetic dataset and exits (no training): DIR/images/NN.tif,
DIR/labels/NN.tif (4 images of 256 x 256) and DIR/big.tif (1024 x 1024, to predict), the
layout 'unetlab train DIR' reads.

examples:
  unetlab demo --out runs/demo                   # what 'make demo' runs
  unetlab demo --out runs/quick --quick          # tiny sizes, ~30 s, for a smoke test
  unetlab demo --out runs/long --iterations 3000 --size 4096
  unetlab demo --data mycells                    # files to try 'unetlab train' on
  unetlab train mycells --out runs/mycells --time 5m
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..training.presets import PRESETS

    p.add_argument("--out", default="runs/demo", metavar="DIR",
                   help="run folder to write (default: runs/demo)")
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes (seconds; for tests, not a meaningful result)")
    p.add_argument("--iterations", type=int, default=None, metavar="N",
                   help="training iterations (default: as many as fit --train-minutes)")
    p.add_argument("--train-minutes", type=float, default=None, metavar="M",
                   help="time budget of training when --iterations is not given (default 3.5)")
    p.add_argument("--preset", default="auto", choices=PRESETS,
                   help="training recipe, as for 'unetlab train' (default: auto, the device's)")
    p.add_argument("--size", type=int, default=None, metavar="PX",
                   help="side of the large predicted image (default 2048; 256 with --quick)")
    p.add_argument("--seed", type=seed, default=0, help="seed of data, training and augmentation")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="where to train and predict (default: cuda when available); "
                        "checked before OUT is touched")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--data", default=None, metavar="DIR",
                   help="only write a small synthetic dataset into DIR (images/, labels/, "
                        "big.tif) and exit")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..demo import (DEMO_DATA_MARKER, demo_settings, format_summary, run_demo,
                        write_demo_data)

    if args.data is not None:
        had = (Path(args.data) / DEMO_DATA_MARKER).is_file()
        files = write_demo_data(args.data, seed=args.seed)
        what = (f"{args.data} already holds this dataset ({len(files)} files)" if had else
                f"wrote {len(files)} files into {args.data}")
        print(f"{what}: images/, labels/ (training pairs) and big.tif (to predict); next: "
              f"unetlab train {args.data} --out runs/cells")
        return 0
    settings = demo_settings(quick=args.quick, iterations=args.iterations, size=args.size,
                             train_minutes=args.train_minutes, seed=args.seed,
                             preset=args.preset)
    summary = run_demo(args.out, settings, progress=not args.no_progress, device=args.device)
    print(format_summary(summary))
    return 0
