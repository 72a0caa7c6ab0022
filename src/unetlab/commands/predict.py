"""``unetlab predict``: probability maps, label images and overlays for images of any size."""
from __future__ import annotations

import argparse

HELP = "predict probability maps (and instances) of images of any size, tile by tile"

DESCRIPTION = """\
Predict class probabilities with a trained model by overlap-tile prediction (the paper's
Fig. 2): seamless, tiles on the 2^depth pooling lattice, mirrored context at the image border,
any image size. --tta averages the 8 rotations/flips (the paper's Sec. 4); for a 3D model the
48 rotations/flips of the cube, or 16 (the 8 in-plane ones x the z-flip) when z pools
differently from y and x (e.g. pooling (1, 2, 2)).

INPUT: image files (PNG, TIFF, JPEG), folders of them, glob patterns, or zarr / OME-Zarr folders
(each one image). A multi-page TIFF is a stack predicted slice by slice (single-channel
models); a TIFF's own axes decide (samples last = channels). A 3D model (spatial_dims=3,
Cicek et al. 2016) predicts a stack as ONE volume in 3D tiles instead (normalised over the
whole volume), writes NAME_prob.tif as (Z, Y, X) (K > 2: (K, Z, Y, X)) and, with
--instances, 3D instance labels (Z, Y, X). Each image is normalised with the
percentile normalisation used in training (per slice). Large TIFFs (more than 64 megapixels)
are read lazily, tile by tile, and the probability TIFF is written tile by tile into a
memory-mapped file, so memory does not grow with the image. The Python equivalent is
unetlab.prediction_io.predict_files(model, inputs, out_dir, tta=..., ...).

Writes into DIR, for each input NAME (names are sanitised and never leave DIR):
  NAME_prob.tif      float32 probabilities. 2-class models: P(class 1) = P(cell), cells bright
                     (the ISBI 2012 submission convention: 1 = certainly not membrane); other
                     models: all K classes, (K, H, W). Stacks: one page per slice.
  NAME_prob.png      with --format png: 8-bit P(cell)·255 (K > 2: NAME_prob_cK.png per class)
  NAME_prob.zarr     with --format zarr: zarr array (K, H, W) / (S, K, H, W) float32 of all
                     classes, chunked; attrs["unetlab"]["complete"] is set last.
  NAME_labels.tif    with --instances: int32 instance labels (watershed split of touching
                     cells, see unetlab.postprocess.to_instances)
  NAME_overlay.png   the image in grey with the predicted cell outlines in colour (2D images
                     up to 64 megapixels; stacks: NAME_overlay_zS.png per slice, first 16)
Every file is written to a temporary name and renamed when complete. All output names are
checked before any work: an output that would replace an input, or two inputs writing the same
file, is refused; existing outputs are replaced only with --overwrite. Files in DIR that are
earlier outputs (NAME_prob.tif, ...) are not predicted again when DIR is also an input folder.
With --dask an existing NAME_prob.zarr of the same prediction is resumed.

examples (`unetlab demo --data cells` makes cells/; `unetlab demo --out runs/demo` trains):
  unetlab predict --model em-membranes ../shared/data/isbi2012/test/image --out em/ --tta \
      --close-membranes
  unetlab predict runs/demo/model.pt cells/big.tif --out preds/ --tta
  unetlab predict runs/demo/model.pt cells/images/ --out preds/ --instances --min-size 30
  unetlab predict runs/demo/model.pt cells/big.tif --out preds-zarr/ --format zarr --tile 252 --batch 2
  unetlab predict runs/demo/model.pt cells/big.tif --out preds-dask/ --dask --workers 2
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..hardware import PRECISIONS

    p.add_argument("model", metavar="MODEL", help="model file (model.pt / best.pt / checkpoint.pt "
                                                  "of a run, a bioimage.io package) or the name "
                                                  "of a shipped model (`unetlab models`)")
    p.add_argument("inputs", metavar="INPUT", nargs="*",
                   help="image files, folders, glob patterns or zarr folders")
    p.add_argument("--model", dest="model_option", metavar="MODEL", default=None,
                   help="the model, given as an option: then every positional argument is an "
                        "INPUT (e.g. --model em-membranes)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    p.add_argument("--tta", action="store_true",
                   help="average the 8 rotations/flips (8x the work; 3D models: 16 or 48)")
    p.add_argument("--tile", type=int, default=None, metavar="N",
                   help="input tile size in pixels (rounded down to a valid size; default: the "
                        "largest tile within 1 GiB of activations)")
    p.add_argument("--batch", type=int, default=1, metavar="N", help="tiles per forward pass")
    p.add_argument("--format", choices=("tif", "png", "zarr"), default=None,
                   help="probability map format (default tif; zarr with --dask)")
    p.add_argument("--instances", action="store_true",
                   help="also write instance labels NAME_labels.tif")
    p.add_argument("--method", choices=("watershed", "components"), default="watershed",
                   help="instance method (default watershed)")
    p.add_argument("--threshold", type=float, default=0.5,
                   help="foreground threshold on P(cell) (default 0.5)")
    p.add_argument("--seed-h", type=float, default=2.0, metavar="PX",
                   help="watershed seeds: maxima of the distance transform at least this many "
                        "pixels high (smaller splits more; 1 suits small touching cells) "
                        "(default 2)")
    p.add_argument("--min-size", type=int, default=16, metavar="PX",
                   help="remove instances smaller than this (default 16)")
    p.add_argument("--close-membranes", action="store_true",
                   help="EM membrane maps (2-class models): close one-pixel gaps before writing "
                        "P(cell) — watershed regions of the membrane probability, merged across "
                        "weak boundaries, boundaries set to 0 (unetlab.membranes; halves the "
                        "Rand error on ISBI 2012, docs/isbi2012.md)")
    p.add_argument("--spacing", default=None, metavar="DZ,DY,DX",
                   help="3D models: voxel size of the inputs (any unit), for --tta (16 "
                        "rotations/flips that keep z when z differs, else 48) and the 3D "
                        "instances' distances (default: as each file declares it, ImageJ/OME "
                        "TIFF or zarr metadata)")
    p.add_argument("--no-overlay", action="store_true", help="do not write overlay pictures")
    p.add_argument("--device", default=None, metavar="DEVICE",
                   help="auto, cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="arithmetic of the network (default auto: bf16 where the CPU or GPU "
                        "computes it natively, fp16 on a GPU without bf16, else fp32)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU threads (default: the faster of 1 and all, measured on one tile)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--dask", action="store_true",
                   help="predict with Dask, chunk by chunk into NAME_prob.zarr (resumable)")
    p.add_argument("--workers", type=int, default=None,
                   help="with --dask: local worker processes")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="with --dask: address of a running Dask scheduler")


def run(args: argparse.Namespace) -> int:
    from ..errors import UnetlabError
    from ..prediction_io import PredictOptions, predict_files
    from ..training.config import parse_spacing

    model, inputs = args.model, list(args.inputs)
    if args.model_option is not None:
        model, inputs = args.model_option, [args.model, *inputs]
    if not inputs:
        raise UnetlabError("INPUT: give at least one image, folder or pattern to predict")
    try:
        spacing = parse_spacing(args.spacing or "")
    except UnetlabError as e:
        raise UnetlabError(f"--spacing {args.spacing!r}: {e}") from None

    opts = PredictOptions(
        tta=args.tta, tile=args.tile, batch=args.batch, format=args.format,
        instances=args.instances, method=args.method, threshold=args.threshold,
        seed_h=args.seed_h, min_size=args.min_size, overlays=not args.no_overlay,
        device=args.device, precision=args.precision, threads=args.threads, dask=args.dask,
        workers=args.workers, scheduler=args.scheduler, overwrite=args.overwrite,
        progress=not args.quiet, close_membranes=args.close_membranes,
        spacing=spacing)
    predict_files(model, inputs, args.out, opts)
    return 0
