"""``unetlab predict``: probability maps, label images and overlays for images of any size."""
from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np

from ..errors import UnetlabError

HELP = "predict probability maps (and instances) of images of any size, tile by tile"

DESCRIPTION = """\
Predict class probabilities with a trained model by overlap-tile prediction (the paper's
Fig. 2): seamless, tiles on the 2^depth pooling lattice, mirrored context at the image border,
any image size. --tta averages the 8 rotations/flips (the paper's Sec. 4).

INPUT: image files (PNG, TIFF, JPEG), folders of them, or glob patterns. A multi-page TIFF is a
stack predicted slice by slice (single-channel models). Each image is normalised with the
percentile normalisation used in training (unetlab.data.normalize_image, per slice). Large
TIFFs (more than 64 megapixels) are read lazily, tile by tile, and the probability TIFF is
written tile by tile into a memory-mapped file, so memory does not grow with the image.

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
Every file is written to a temporary name and renamed when complete.

examples:
  unetlab predict runs/x/model.pt images/ --out preds/
  unetlab predict runs/x/model.pt ../shared/data/isbi2012/test-volume.tif --out preds/ --tta
  unetlab predict model.pt slide.tif --out preds/ --format zarr --tile 1020 --batch 2
  unetlab predict model.pt cells/*.png --out preds/ --instances --min-size 30
  unetlab predict model.pt huge.tif --out preds/ --format zarr --dask --workers 2
"""

#: TIFF images with more pixels than this are read lazily (memmap / zarr over the TIFF).
LAZY_PIXELS = 1 << 26
#: Overlays and instances are made only for images up to this many pixels per slice.
PICTURE_PIXELS = 1 << 26
#: Overlay pictures written per stack at most.
MAX_OVERLAYS = 16


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="model file (model.pt / best.pt / checkpoint.pt "
                                                  "of a run)")
    p.add_argument("inputs", metavar="INPUT", nargs="+",
                   help="image files, folders or glob patterns")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    p.add_argument("--tta", action="store_true",
                   help="average the 8 rotations/flips (8x the work)")
    p.add_argument("--tile", type=int, default=None, metavar="N",
                   help="input tile size in pixels (rounded down to a valid size; default: the "
                        "largest tile within 1 GiB of activations)")
    p.add_argument("--batch", type=int, default=1, metavar="N", help="tiles per forward pass")
    p.add_argument("--format", choices=("tif", "png", "zarr"), default="tif",
                   help="probability map format (default tif)")
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
    p.add_argument("--no-overlay", action="store_true", help="do not write overlay pictures")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="where to run (default: cuda when available)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--dask", action="store_true",
                   help="predict with Dask (unetlab.distributed; --format zarr)")
    p.add_argument("--workers", type=int, default=None, help="Dask local worker processes")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="address of a running Dask scheduler")


# ------------------------------------------------------------------------------ names
_SAFE = re.compile(r"[^A-Za-z0-9._+-]+")
#: Output stems are cut to this length so that NAME_overlay_z0000.png fits NAME_MAX (255).
MAX_STEM = 120


def safe_stem(path: Path) -> str:
    """A file-name stem derived from ``path`` that cannot leave the output folder: only
    letters, digits and ``._+-``, no leading dots, never empty."""
    stem = path.name
    for suf in (".ome.tiff", ".ome.tif", ".tiff", ".tif", ".png", ".jpeg", ".jpg", ".bmp",
                ".zarr"):
        if stem.lower().endswith(suf):
            stem = stem[: -len(suf)]
            break
    stem = _SAFE.sub("_", stem).lstrip(".")[:MAX_STEM]
    return stem or "image"


def _unique_stems(paths: list[Path]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for p in paths:
        s = safe_stem(p)
        if s in seen:
            seen[s] += 1
            s = f"{s}_{seen[s]}"
        seen.setdefault(s, 1)
        out.append(s)
    return out


def _inside(folder: Path, name: str) -> Path:
    path = folder / name
    if path.resolve().parent != folder.resolve():  # pragma: no cover - safe_stem guarantees it
        raise UnetlabError(f"output name {name!r} would leave --out {folder}")
    return path


# ------------------------------------------------------------------------------ reading
class _Normalized:
    """A lazy view ``(raw - lo) / (hi - lo)`` of a (S, C, H, W) or (C, H, W) array with per
    slice/channel stats (S, C, 2); reads and normalises only the requested block."""

    def __init__(self, raw, stats: np.ndarray, stack: bool):
        self.raw = raw
        self.stats = np.asarray(stats, dtype=np.float64)
        self.stack = stack
        self.shape = tuple(int(s) for s in raw.shape)
        self.ndim = len(self.shape)
        self.dtype = np.dtype(np.float32)

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        block = np.asarray(self.raw[key], dtype=np.float64)
        # stats for the block: slice index (int) first when a stack; channels next
        st = self.stats
        if self.stack:
            s = key[0]
            if not isinstance(s, (int, np.integer)):
                raise TypeError("index a stack view with a slice number first")
            st = st[int(s)]
        else:
            st = st[0]
        lo, hi = st[:, 0], st[:, 1]
        scale = np.where(hi > lo, 1.0 / np.where(hi > lo, hi - lo, 1.0), 0.0)
        shape = (-1, 1, 1)
        return ((block - lo.reshape(shape)) * scale.reshape(shape)).astype(np.float32)


def _stats_lazy(slice2d_getter, C: int, H: int, W: int) -> np.ndarray:
    """Per-channel (lo, hi) of one (C, H, W) slice read through a regular subsample, the same
    sample as :func:`unetlab.data.normalization_stats` takes."""
    from ..data import sample_stats, subsample_step

    sample = np.asarray(slice2d_getter(subsample_step(H, W)), dtype=np.float64)
    return sample_stats(sample.reshape(C, sample.shape[-2], sample.shape[-1]))


def open_input(path: Path, cin: int):
    """Open one input: returns (array for predict_tiled, is_stack, grey) where ``grey(s)`` is
    the normalised first channel (H, W) of slice s (for overlays). Lazy for big TIFFs and TIFF
    stacks; raises :class:`UnetlabError` for unreadable files and channel mismatches."""
    from ..data import normalize_image, read_image, to_channels_first

    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        import tifffile

        try:
            with tifffile.TiffFile(path) as tf:
                if not tf.series:
                    raise UnetlabError(f"{path}: TIFF file contains no images")
                shape = tuple(int(s) for s in tf.series[0].shape)
        except UnetlabError:
            raise
        except Exception as e:  # noqa: BLE001
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UnetlabError(f"{path}: cannot read TIFF ({msg[:200]})") from None
        if any(s == 0 for s in shape):
            raise UnetlabError(f"{path}: image has zero size (shape {shape})")
        from ..data import MAX_PIXELS, _check_size

        _check_size(path, shape, MAX_PIXELS)  # a decompression bomb never reaches the decoder
        is_stack = len(shape) == 3 and cin == 1 and shape[-1] > 4
        big = len(shape) == 2 and shape[0] * shape[1] > LAZY_PIXELS
        if is_stack or big:
            raw = _Decoding(_open_lazy(path), path)
            if raw.ndim == 2:
                raw4 = _AddAxes(raw, 2)                       # (1, 1, H, W)
            else:
                raw4 = _AddAxes(raw, 1, after=1)              # (S, 1, H, W)
            S, H, W = int(raw4.shape[0]), int(raw4.shape[-2]), int(raw4.shape[-1])
            stats = np.stack([_stats_lazy(lambda st, s=s: raw4[s, :, ::st, ::st], 1, H, W)
                              for s in range(S)])
            if cin != 1:
                raise UnetlabError(f"{path}: image has 1 channel but the model expects {cin}")
            view = _Normalized(raw4, stats, stack=True)

            def grey(s, view=view):
                return view[s, 0:1][0]
            if is_stack:
                return view, True, grey
            return _Slice0(view), False, grey
    arr = read_image(path)
    if arr.ndim == 3 and cin == 1 and arr.shape[0] > 4 and arr.shape[-1] > 4:
        # a small multi-page stack read eagerly
        norm = np.stack([normalize_image(a)[0] for a in arr])
        return norm, True, lambda s: norm[s]
    a = to_channels_first(arr, None, path)
    if a.shape[0] != cin:
        raise UnetlabError(f"{path}: image has {a.shape[0]} channel(s) but the model expects "
                           f"{cin}")
    norm = normalize_image(arr)  # the raw array: its layout is interpreted once, as for ``a``
    img = norm[0] if cin == 1 else norm
    return img, False, lambda s: norm[0]


class _Decoding:
    """A lazily read TIFF whose decoder failures (truncated or corrupt strips, found only when
    a tile is read) become one-line :class:`UnetlabError` naming the file."""

    def __init__(self, raw, path: Path):
        self.raw, self.path = raw, path
        self.shape = tuple(int(s) for s in raw.shape)
        self.ndim = len(self.shape)
        self.dtype = raw.dtype

    def __getitem__(self, key):
        try:
            return np.asarray(self.raw[key])
        except Exception as e:  # noqa: BLE001 - any decoder failure is a bad file
            msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise UnetlabError(f"{self.path}: cannot decode the TIFF data "
                               f"({type(e).__name__}: {msg[:200]})") from None


class _AddAxes:
    """A lazy view of ``raw`` with ``n`` length-1 axes inserted at ``after``."""

    def __init__(self, raw, n: int, after: int = 0):
        self.raw, self.n, self.after = raw, n, after
        shp = list(int(s) for s in raw.shape)
        self.shape = tuple(shp[:after] + [1] * n + shp[after:])
        self.ndim = len(self.shape)

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (self.ndim - len(key))
        pre, mid, post = key[:self.after], key[self.after:self.after + self.n], \
            key[self.after + self.n:]
        block = np.asarray(self.raw[pre + post])
        # re-insert the new axes that were indexed with slices (ints drop them)
        pos = sum(1 for k in pre if not isinstance(k, (int, np.integer)))
        for k in mid:
            if not isinstance(k, (int, np.integer)):
                block = np.expand_dims(block, pos)
                pos += 1
        return block


class _Slice0:
    """``view[0, 0]`` lazily: (S=1, C=1, H, W) → (H, W)."""

    def __init__(self, view):
        self.view = view
        self.shape = tuple(view.shape[2:])
        self.ndim = len(self.shape)

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        # keep the channel axis as a slice so _Normalized applies channel 0's stats, then drop it
        return np.asarray(self.view[(0, slice(0, 1)) + key])[0]


def _open_lazy(path: Path):
    import tifffile

    try:
        return tifffile.memmap(path, mode="r")
    except Exception:  # noqa: BLE001 - compressed or not contiguous: zarr over the TIFF
        import zarr

        try:
            return zarr.open(tifffile.imread(path, aszarr=True), mode="r")
        except Exception as e:  # noqa: BLE001
            raise UnetlabError(f"{path}: cannot open TIFF lazily ({e})") from None


# ------------------------------------------------------------------------------ writing
class _ClassSelect:
    """An ``out`` for predict_tiled that keeps only class ``k`` of (…, K, h, w) writes."""

    def __init__(self, target, k: int, K: int, stack: bool):
        self.target, self.k, self.K, self.stack = target, k, K, stack
        ts = tuple(target.shape)
        self.shape = ts[:1] + (K,) + ts[1:] if stack else (K,) + ts

    def _tkey(self, key):
        return key[:1] + key[2:] if self.stack else key[1:]

    def __setitem__(self, key, value):
        value = np.asarray(value, dtype=np.float32)
        if value.ndim == 0:
            self.target[self._tkey(key)] = value
        else:
            self.target[self._tkey(key)] = value[self.k]

    def __getitem__(self, key):
        v = np.asarray(self.target[self._tkey(key)])
        full = np.zeros((self.K,) + v.shape, dtype=np.float32)
        full[self.k] = v
        return full


def _write_zarr_atomic(final: Path, shape, chunks, fill, attrs):
    """Create a zarr array in a hidden temporary folder beside ``final``; returns (array, tmp)."""
    import zarr

    tmp = final.parent / f".{final.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    arr = zarr.open_array(store=str(tmp), mode="w", shape=shape, chunks=chunks,
                          dtype="float32", fill_value=fill)
    arr.attrs["unetlab"] = dict(attrs, complete=False)
    return arr, tmp


def _finish_zarr(arr, tmp: Path, final: Path, attrs):
    arr.attrs["unetlab"] = dict(attrs, complete=True)    # the completion marker, written last
    if final.exists():
        old = final.parent / f".{final.name}.old"
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def _overlay(grey: np.ndarray, labels_or_mask: np.ndarray) -> np.ndarray:
    """RGB uint8: the image in grey, object outlines in yellow."""
    from skimage.segmentation import find_boundaries

    g = np.clip(np.nan_to_num(np.asarray(grey, dtype=np.float32)), 0.0, 1.0)
    rgb = np.repeat((g * 255).astype(np.uint8)[..., None], 3, axis=-1)
    b = find_boundaries(np.asarray(labels_or_mask), mode="inner")
    rgb[b] = (255, 220, 0)
    return rgb


def _write_png(path: Path, arr: np.ndarray) -> None:
    import imageio.v3 as iio

    from ..atomic import atomic_path

    with atomic_path(path) as tmp:
        iio.imwrite(tmp, arr, extension=".png")


def _write_tiff(path: Path, arr: np.ndarray) -> None:
    import tifffile

    from ..atomic import atomic_path

    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, arr, photometric="minisblack")


# ------------------------------------------------------------------------------ run
def run(args: argparse.Namespace) -> int:
    from ..checkpoint import load_model
    from ..data import list_images

    if args.batch < 1:
        raise UnetlabError(f"--batch: must be >= 1, got {args.batch}")
    if args.tile is not None and args.tile < 1:
        raise UnetlabError(f"--tile: must be a positive number of pixels, got {args.tile}")
    if not (math.isfinite(args.seed_h) and args.seed_h > 0):
        raise UnetlabError(f"--seed-h: must be a finite number > 0, got {args.seed_h}")
    if args.min_size < 0:
        raise UnetlabError(f"--min-size: must be >= 0, got {args.min_size}")
    if not 0.0 <= args.threshold <= 1.0:
        raise UnetlabError(f"--threshold: must be in [0, 1], got {args.threshold}")
    device = args.device
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UnetlabError("--device cuda: CUDA is not available on this machine")
    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        raise UnetlabError(f"--out {out_dir}: exists and is not a folder")
    net = load_model(args.model)
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    inputs = list_images(args.inputs)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UnetlabError(f"--out {out_dir}: cannot create folder ({e.strerror or e})") from None
    stems = _unique_stems(inputs)
    if args.dask:
        return _run_dask(args, inputs, stems, out_dir, device)
    for path, stem in zip(inputs, stems):
        _predict_one(net, path, stem, out_dir, args, device)
    return 0


def _run_dask(args, inputs, stems, out_dir, device) -> int:
    from ..dask_predict import run_dask_predict

    if args.format != "zarr":
        raise UnetlabError("--dask writes zarr: add --format zarr")
    for path, stem in zip(inputs, stems):
        final = _inside(out_dir, f"{stem}_prob.zarr")
        run_dask_predict(args.model, path, final, scheduler=args.scheduler, workers=args.workers,
                         tta=args.tta, tile=args.tile, progress=not args.quiet, device=device,
                         overwrite=True)
        print(f"{path} -> {final}")
    return 0


def _predict_one(net, path: Path, stem: str, out_dir: Path, args, device) -> None:
    from ..atomic import atomic_path
    from ..predict import image_layout, predict_tiled

    cin, K = int(net.in_channels), int(net.num_classes)
    image, is_stack, grey = open_input(path, cin)
    _, out_shape = image_layout(net, image.shape)
    H, W = out_shape[-2:]
    two = K == 2
    progress = not args.quiet
    kw = dict(tile_size=args.tile, tta=args.tta, batch_size=args.batch, progress=progress,
              device=device, normalize=False)
    attrs = {"source": path.name, "classes": K, "tta": bool(args.tta),
             "layout": "(S, K, H, W)" if is_stack else "(K, H, W)"}
    written: list[Path] = []
    fg = None  # P(cell) in memory for instances/overlay, when small enough
    small = H * W <= PICTURE_PIXELS
    if args.format == "tif":
        import tifffile

        final = _inside(out_dir, f"{stem}_prob.tif")
        tshape = (out_shape[0], H, W) if (is_stack and two) else \
            ((H, W) if two else out_shape)
        with atomic_path(final) as tmp:
            nbytes = 4 * int(np.prod(tshape))
            mm = tifffile.memmap(tmp, shape=tshape, dtype=np.float32, photometric="minisblack",
                                 bigtiff=nbytes > 2**31)
            target = _ClassSelect(mm, 1, K, is_stack) if two else mm
            predict_tiled(net, image, out=target, **kw)
            mm.flush()
            if small and (args.instances or not args.no_overlay):
                fg = np.array(mm if two else (mm[:, 1] if is_stack else mm[1]))
            del mm, target
        written.append(final)
    elif args.format == "png":
        prob = predict_tiled(net, image, **kw)
        planes = [1] if two else list(range(K))
        for k in planes:
            name = f"{stem}_prob.png" if two else f"{stem}_prob_c{k}.png"
            p8 = np.round(np.clip(prob[:, k] if is_stack else prob[k], 0, 1) * 255).astype(np.uint8)
            if is_stack:
                for s in range(p8.shape[0]):
                    f = _inside(out_dir, name.replace("_prob", f"_z{s:04d}_prob"))
                    _write_png(f, p8[s])
                    written.append(f)
            else:
                f = _inside(out_dir, name)
                _write_png(f, p8)
                written.append(f)
        if small:
            fg = prob[:, 1] if is_stack else prob[1]
    else:  # zarr
        final = _inside(out_dir, f"{stem}_prob.zarr")
        chunks = (1,) * (len(out_shape) - 2) + (min(H, 1024), min(W, 1024))
        arr, tmp = _write_zarr_atomic(final, out_shape, chunks, 0.0, attrs)
        try:
            predict_tiled(net, image, out=arr, **kw)
            _finish_zarr(arr, tmp, final, attrs)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        written.append(final)
        if small and (args.instances or not args.no_overlay):
            fg = np.asarray(arr[:, 1] if is_stack else arr[1])
    if (args.instances or not args.no_overlay) and fg is None:
        print(f"{path}: {H}x{W} is too large for instances/overlays (limit "
              f"{PICTURE_PIXELS} pixels); wrote the probabilities only", file=sys.stderr)
    if fg is not None:
        from ..postprocess import to_instances

        fgs = fg if is_stack else fg[None]
        labels = None
        if args.instances:
            labels = np.stack([to_instances(f, method=args.method, threshold=args.threshold,
                                            min_size=args.min_size, h=args.seed_h)
                               for f in fgs])
            f = _inside(out_dir, f"{stem}_labels.tif")
            _write_tiff(f, labels if is_stack else labels[0])
            written.append(f)
        if not args.no_overlay:
            n = min(len(fgs), MAX_OVERLAYS)
            for s in range(n):
                g = np.asarray(grey(s))
                obj = labels[s] if labels is not None else fgs[s] > args.threshold
                name = f"{stem}_overlay_z{s:04d}.png" if is_stack else f"{stem}_overlay.png"
                f = _inside(out_dir, name)
                _write_png(f, _overlay(g, obj))
                written.append(f)
    for f in written:
        print(f"{path} -> {f}")
