"""Writing one input's prediction (for :func:`unetlab.prediction_io.predict_files`): the
probability map streamed into a TIFF memmap or a zarr array as the tiles are computed (memory
does not grow with the image), or a PNG; then instance labels and overlay pictures.

Every file is written under a temporary name and renamed when complete
(:mod:`unetlab.atomic`); an interrupted run leaves no partial output.

A 3D model's input is one volume (:class:`unetlab.sources.VolumeView`, (C, Z, Y, X)): its
probabilities are (K, Z, Y, X) — (Z, Y, X) P(class 1) in the TIFF of a 2-class model — and
its instances are computed on the whole volume in 3D.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from .errors import UnetlabError
from .sources import NormalizedView, VolumeView

__all__ = ["predict_job", "overlay", "ClassSelect", "PICTURE_PIXELS", "MAX_OVERLAYS"]

#: Overlays and instances are made only for images up to this many pixels per slice.
PICTURE_PIXELS = 1 << 26
#: Overlay pictures written per stack at most.
MAX_OVERLAYS = 16


class ClassSelect:
    """An ``out`` for :func:`unetlab.predict.predict_tiled` that keeps only class ``k`` of its
    (…, K, h, w) writes in ``target`` (…, h, w): the 2-class TIFF stores P(class 1) only."""

    def __init__(self, target, k: int, K: int, stack: bool):
        self.target, self.k, self.K, self.stack = target, k, K, stack
        ts = tuple(target.shape)
        self.shape = ts[:1] + (K,) + ts[1:] if stack else (K,) + ts

    def _tkey(self, key):
        return key[:1] + key[2:] if self.stack else key[1:]

    def __setitem__(self, key, value):
        value = np.asarray(value, dtype=np.float32)
        self.target[self._tkey(key)] = value if value.ndim == 0 else value[self.k]

    def __getitem__(self, key):
        v = np.asarray(self.target[self._tkey(key)])
        full = np.zeros((self.K,) + v.shape, dtype=np.float32)
        full[self.k] = v
        return full


def _foreground(arr, stack: bool) -> np.ndarray:
    """P(class 1) in memory: (S, H, W) for a stack, (H, W) — or (Z, Y, X) for a volume —
    else, from (…, K, H, W)."""
    return np.asarray(arr[:, 1] if stack else arr[1])


def _stack(view) -> bool:
    """Whether ``view``'s output has a slice axis before the classes (2D stacks)."""
    return not isinstance(view, VolumeView) and view.stack


def _prob_shape(net, view) -> tuple[int, ...]:
    """The probabilities' shape: (K, H, W), (S, K, H, W), or (K, Z, Y, X) for a volume."""
    K = int(net.num_classes)
    if isinstance(view, VolumeView):
        return (K,) + tuple(view.shape[1:])
    S, _, H, W = view.shape
    return (S, K, H, W) if view.stack else (K, H, W)


def _predict_tif(net, view, final: Path, kw: dict, want_fg: bool, close: bool = False):
    """Predict into a memory-mapped TIFF; ``close``: P(cell) of a 2-class model through
    :func:`unetlab.membranes.close_membranes` before the file is complete."""
    import tifffile

    from . import predict as pr
    from .atomic import atomic_path

    K, stack = int(net.num_classes), _stack(view)
    two = K == 2
    full = _prob_shape(net, view)
    shape = (full[:1] + full[2:] if stack else full[1:]) if two else full
    with atomic_path(final) as tmp:
        mm = tifffile.memmap(tmp, shape=shape, dtype=np.float32, photometric="minisblack",
                             bigtiff=4 * int(np.prod(shape)) > 2**31)
        target = ClassSelect(mm, 1, K, stack) if two else mm
        pr.predict_tiled(net, view, out=target, **kw)
        if close:
            from .membranes import close_membranes

            mm[...] = close_membranes(np.asarray(mm))
        mm.flush()
        fg = None
        if want_fg:
            fg = np.array(mm) if two else _foreground(mm, stack)
        del mm, target
    return [final], fg


def _predict_png(net, view, outputs: list[Path], kw: dict):
    from . import predict as pr
    from .writers import write_png

    prob = pr.predict_tiled(net, view, **kw)
    K, stack = int(net.num_classes), _stack(view)
    planes = [1] if K == 2 else list(range(K))
    pngs = iter(p for p in outputs if p.name.endswith(".png") and "_prob" in p.name)
    written = []
    for k in planes:
        p8 = np.round(np.clip(prob[:, k] if stack else prob[k], 0, 1) * 255).astype(np.uint8)
        for page in (p8 if p8.ndim == 3 else [p8]):        # the slices of a stack or volume
            f = next(pngs)
            write_png(f, page)
            written.append(f)
    return written, _foreground(prob, stack)


def _predict_zarr(net, view, final: Path, kw: dict, attrs: dict, want_fg: bool):
    import zarr

    from . import predict as pr

    shape = _prob_shape(net, view)
    if isinstance(view, VolumeView):
        chunks = shape[:1] + tuple(min(n, 128) for n in shape[1:])
    else:
        H, W = shape[-2:]
        chunks = (1,) * (len(shape) - 2) + (min(H, 1024), min(W, 1024))
    tmp = final.parent / f".{final.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    arr = zarr.open_array(store=str(tmp), mode="w", shape=shape, chunks=chunks,
                          dtype="float32", fill_value=0.0)
    arr.attrs["unetlab"] = dict(attrs, complete=False)
    try:
        pr.predict_tiled(net, view, out=arr, **kw)
        arr.attrs["unetlab"] = dict(attrs, complete=True)    # the marker, written last
        _replace_folder(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return [final], (_foreground(zarr.open_array(str(final), mode="r"), _stack(view))
                     if want_fg else None)


def _replace_folder(tmp: Path, final: Path) -> None:
    """Rename the folder ``tmp`` onto ``final``, replacing an existing one."""
    if final.exists():
        old = final.parent / f".{final.name}.old"
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def _volume_spacing_and_tta(net, job, opts, log):
    """(voxel size (dz, dy, dx) or None, ``tta`` for the engine) of a 3D job: the size is
    ``opts.spacing`` or what the file declares; with ``opts.tta`` the count of rotations/flips
    that respect it and the network's pooling (16 or 48, :func:`unetlab.tiling.tta_transforms`),
    logged once per input."""
    from .data.volumes import volume_spacing
    from .predict import transforms
    from .tiling import TileGeometry

    spacing = opts.spacing or volume_spacing(job.path)
    if not opts.tta:
        return spacing, opts.tta
    n = len(transforms(TileGeometry.from_net(net), True, spacing))
    told = "--spacing" if opts.spacing else "declared by the file" if spacing else "none declared"
    size = "x".join(f"{v:g}" for v in spacing) if spacing else "unknown"
    log(f"{job.path}: voxel size (z, y, x) {size} ({told}): test-time augmentation over {n} "
        f"rotations/flips")
    return spacing, n


def _predict_dask(model, job, opts, device, want_fg: bool, stack: bool, tta):
    import zarr

    from .dask_predict import run_dask_predict

    final = job.outputs[0]
    run_dask_predict(model, job.path, final, scheduler=opts.scheduler, workers=opts.workers,
                     tta=tta, tile=opts.tile, progress=opts.progress, device=str(device),
                     overwrite=opts.overwrite, batch_size=opts.batch, precision=opts.precision)
    fg = None
    if want_fg:
        fg = _foreground(zarr.open_group(str(final), mode="r")["probabilities"], stack)
    return [final], fg


def overlay(grey: np.ndarray, labels_or_mask: np.ndarray) -> np.ndarray:
    """RGB uint8 (H, W, 3): the normalised image (clipped to [0, 1]) in grey, object outlines
    in yellow."""
    from skimage.segmentation import find_boundaries

    g = np.clip(np.nan_to_num(np.asarray(grey, dtype=np.float32)), 0.0, 1.0)
    rgb = np.repeat((g * 255).astype(np.uint8)[..., None], 3, axis=-1)
    b = find_boundaries(np.asarray(labels_or_mask), mode="inner")
    rgb[b] = (255, 220, 0)
    return rgb


def _pictures(fg: np.ndarray, view, job, opts, spacing=None) -> list[Path]:
    """Instance labels and overlays from P(cell) ``fg`` ((S, H, W) or (H, W); a volume's
    (Z, Y, X) gives 3D instances — distances in units of its finest axis when its voxel
    ``spacing`` is known, so ``--seed-h`` stays in pixels — and one overlay per slice)."""
    from .postprocess import to_instances
    from .writers import write_png, write_tiff

    volume = isinstance(view, VolumeView)
    fgs = fg if volume or view.stack else fg[None]
    written, labels = [], None
    names = {p.name: p for p in job.outputs}
    if opts.instances:
        kw = dict(method=opts.method, threshold=opts.threshold, min_size=opts.min_size,
                  h=opts.seed_h)
        if volume and spacing:
            kw["spacing"] = tuple(float(v) / min(spacing) for v in spacing)
        labels = to_instances(fg, spatial_dims=3, **kw) if volume else \
            np.stack([to_instances(f, **kw) for f in fgs])
        f = names[f"{job.stem}_labels.tif"]
        write_tiff(f, labels if volume or view.stack else labels[0])
        written.append(f)
    if opts.overlays:
        for s in range(min(len(fgs), MAX_OVERLAYS)):
            obj = labels[s] if labels is not None else fgs[s] > opts.threshold
            f = names[f"{job.stem}_overlay_z{s:04d}.png" if volume or view.stack else
                      f"{job.stem}_overlay.png"]
            write_png(f, overlay(view[0, s] if volume else view[s, 0], obj))
            written.append(f)
    return written


def predict_job(net, model, job, opts, device, log) -> list[Path]:
    """Predict one planned input (a :class:`unetlab.prediction_io.Job`) and write all its
    outputs; returns the files written and logs ``INPUT -> FILE`` for each."""
    volume = int(getattr(net, "spatial_dims", 2)) == 3
    view = VolumeView(job.source) if volume else NormalizedView(job.source)
    want_fg = job.pictures and (opts.instances or opts.overlays)
    spacing, tta = _volume_spacing_and_tta(net, job, opts, log) if volume else (None, opts.tta)
    kw = dict(tile_size=opts.tile, tta=tta, batch_size=opts.batch, device=device,
              progress=opts.progress, precision=opts.precision)
    final = job.outputs[0]
    if opts.dask:
        written, fg = _predict_dask(model, job, opts, device, want_fg, _stack(view), tta)
    elif opts.format == "tif":
        if opts.close_membranes and int(net.num_classes) != 2:
            raise UnetlabError(f"--close-membranes: needs a 2-class (membrane / cell) model; "
                               f"{model} has {int(net.num_classes)} classes")
        if opts.close_membranes and volume:
            raise UnetlabError(f"--close-membranes: closes the membranes of 2D maps; {model} "
                               "is a 3D model (its instances are split in 3D, --instances)")
        written, fg = _predict_tif(net, view, final, kw, want_fg, opts.close_membranes)
    elif opts.format == "png":
        written, fg = _predict_png(net, view, job.outputs, kw)
    else:
        attrs = {"source": job.path.name, "classes": int(net.num_classes), "tta": bool(opts.tta),
                 "layout": "(K, Z, Y, X)" if volume else
                 "(S, K, H, W)" if view.stack else "(K, H, W)"}
        written, fg = _predict_zarr(net, view, final, kw, attrs, want_fg)
    if (opts.instances or opts.overlays) and not job.pictures:
        size = "x".join(str(n) for n in (view.shape[1:] if volume else view.shape[-2:]))
        log(f"{job.path}: {size} is too large for instances/overlays (limit "
            f"{PICTURE_PIXELS} {'voxels' if volume else 'pixels'}); wrote the probabilities "
            "only")
    if want_fg:
        written += _pictures(fg, view, job, opts, spacing)
    for f in written:
        log(f"{job.path} -> {f}")
    return written
