"""Out-of-core prediction on Dask + zarr (Sec. 2, Fig. 2 of Ronneberger et al. 2015 — the
overlap-tile strategy — run as ``dask.array.map_overlap``)::

    predict_dask(model, array, tile_size=None, tta=False, *, chunk=None, normalize=True,
                 batch_size=1, device=None) -> dask.array.Array
                 # (K, H, W), (S, K, H, W), or (K, Z, Y, X) for a 3D network
    predict_to_zarr(model, source, out, *, tile_size=None, tta=False, chunk=None,
                    normalize=True, overwrite=False, batch_size=1, device=None,
                    client=None, progress=False, torch_threads=None) -> dict   # resumable
    run_dask_predict(model_path, input, out, *, scheduler=None, workers=None,
                     threads_per_worker=None, tta=False, tile=None, chunk=None,
                     normalize=True, overwrite=False, progress=True, device=None) -> Path

``run_dask_predict`` is what ``unetlab predict MODEL INPUT --out OUT.zarr --dask
[--scheduler ADDRESS | --workers N]`` calls: it connects to a running ``dask.distributed``
scheduler (``scheduler="tcp://host:8786"``) or starts a ``LocalCluster`` of ``workers``
processes (one Dask thread each; torch threads = cores / workers), shows a progress bar, and
writes ``OUT.zarr`` (layout below). Re-running the same command after a failure or Ctrl-C
computes only the chunks that are missing.

Exactness. ``predict_dask`` equals ``predict.predict_tiled`` on the same array (float32
round-off, ≤ 1e-5): the output is cut into chunks of ``chunk`` pixels, a multiple of the pooling
lattice 2^depth; each chunk is read with a halo of ``margin + 2^depth`` pixels per side (margin =
``net.context`` for "valid" networks) from the image mirror-padded with ``numpy.pad(mode=
"reflect")`` semantics (dask's own ``boundary="reflect"`` repeats the edge pixel, i.e. numpy's
"symmetric", so the padding is built explicitly from :func:`tiling.reflect_indices` and
``map_overlap`` runs with ``boundary="none"``). Inside a chunk the tiles start on the lattice of
the (possibly flipped/transposed) whole image, exactly as :func:`predict_tiled` places them, so
every output pixel sees the same pixels through the same pooling grid. The lattice of a flipped
image is anchored at the opposite border, which is why the halo carries one extra lattice step.

Volumes. With a 3D network (``spatial_dims=3``) the input is one volume (Z, Y, X) or
(C, Z, Y, X) (or a TIFF/zarr path whose slices are z), cut into 3D chunks of ``chunk`` voxels
per axis (default 128), each read with the halo ``margin + lattice`` of its own axis (so a
``pooling=(1, 2, 2)`` network carries a thinner z halo), normalised per channel with the
percentiles of the whole volume (:func:`unetlab.sources.volume_stats`) and computed by the same
engine: the result equals ``predict_tiled`` on the volume (≤ 1e-5), and memory per task is one
chunk's working set however large the volume (``benchmarks/bench_predict3d.py``).

Model once per worker. The model's bytes (the ``checkpoint`` model-file format) enter the task
graph once, as one key that every chunk task depends on; each worker process rebuilds the
network the first time it sees that key and keeps it in a small per-process cache
(:data:`_MODEL_CACHE`), so the network is neither pickled into every task nor rebuilt per chunk.

Output layout (``predict_to_zarr``; written by :mod:`unetlab.zarr_output`)::

    OUT.zarr/                      zarr group, attrs["unetlab"] = {... "complete": bool}
      probabilities                float32 (K, H, W), (S, K, H, W) or (K, Z, Y, X), one zarr
                                   chunk per task
      chunk_done                   uint8 grid (nby, nbx), (S, nby, nbx) or (nbz, nby, nbx),
                                   1 = chunk written

A chunk is written, then its ``chunk_done`` cell (its own zarr chunk: no two tasks write the same
key); ``attrs["unetlab"]["complete"] = True`` is written last. A re-run skips the chunks whose
marker is set and whose data chunk exists.

Inputs are opened by :func:`unetlab.sources.open_image` (the same reader as ``unetlab predict``)
and each chunk is computed by :class:`unetlab.engine.TileEngine` (the same loop as
:func:`unetlab.predict.predict_tiled`); this module only decides chunks, halos and storage.
"""
from __future__ import annotations

import collections
import hashlib
import io
import json
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UnetlabError
from .sources import _first_line
from .zarr_output import missing_chunks, open_or_create_group, store_block

__all__ = ["predict_dask", "predict_to_zarr", "run_dask_predict", "lazy_normalization_stats",
           "model_load_counts"]

_DEFAULT_CHUNK = 1024
#: Default output chunk side of volumes (voxels): 2 classes × 128³ float32 = 16 MiB per chunk.
_DEFAULT_CHUNK_3D = 128


# ======================================================================= model, once per worker
_MODEL_CACHE: "collections.OrderedDict[tuple, Any]" = collections.OrderedDict()
_MODEL_LOADS: collections.Counter = collections.Counter()
_MODEL_LOCK = threading.Lock()
_MODEL_CACHE_SIZE = 2


@dataclass(frozen=True)
class _ModelPayload:
    key: str            # sha256 of the bytes (16 hex digits)
    blob: bytes         # a unetlab model file (checkpoint.save_model format)


def _model_payload(model) -> tuple[_ModelPayload, Any]:
    """(payload, net on the client) for a model path or an in-memory UNet."""
    import torch

    from .checkpoint import MODEL_FORMAT, load_model
    from .model import UNet

    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        net = load_model(path)                      # validates the file, one-line errors
        blob = path.read_bytes()
    elif isinstance(model, UNet):
        net = model
        buf = io.BytesIO()
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        torch.save({"format": MODEL_FORMAT, "version": 1, "config": model.config(),
                    "state_dict": state, "meta": {}}, buf)
        blob = buf.getvalue()
    else:
        raise UnetlabError(f"model: expected a model file path or a UNet, got "
                           f"{type(model).__name__}")
    key = hashlib.sha256(blob).hexdigest()[:16]
    return _ModelPayload(key, blob), net


def _get_model(payload: _ModelPayload, device: str | None):
    """The network for ``payload`` on ``device``, built once per process and cached."""
    import torch

    from .checkpoint import model_from_state

    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    ck = (payload.key, dev)
    with _MODEL_LOCK:
        net = _MODEL_CACHE.get(ck)
        if net is not None:
            _MODEL_CACHE.move_to_end(ck)
            return net
        obj = torch.load(io.BytesIO(payload.blob), map_location="cpu", weights_only=True)
        net = model_from_state(obj, "<model>").eval().to(dev)
        if torch.device(dev).type == "cpu":       # oneDNN is faster channels-last (engine.py)
            net = net.to(memory_format=torch.channels_last_3d if net.spatial_dims == 3 else
                         torch.channels_last)
        _MODEL_LOADS[payload.key] += 1
        _MODEL_CACHE[ck] = net
        while len(_MODEL_CACHE) > _MODEL_CACHE_SIZE:
            _MODEL_CACHE.popitem(last=False)
        return net


def model_load_counts() -> dict[str, int]:
    """How many times this process built each model (by key) — for tests and diagnostics;
    call on every worker with ``client.run(model_load_counts)``."""
    return dict(_MODEL_LOADS)


# ============================================================================ the chunk computation
def lazy_normalization_stats(x) -> np.ndarray:
    """``data.normalization_stats`` of every (slice, channel) of a lazy (S, C, H, W) array:
    (S, C, 2) float64, reading only the regular subsample that the eager version uses."""
    from .sources import from_array, source_stats

    return source_stats(from_array(x, int(x.shape[1])))


def _normalize_block(block: np.ndarray, stats: np.ndarray, block_info=None) -> np.ndarray:
    """:func:`unetlab.sources.normalize_block` on each slice of a (S_b, C, h, w) block."""
    from .sources import normalize_block

    s0 = block_info[0]["array-location"][0][0]
    return np.stack([normalize_block(b, stats[s0 + i]) for i, b in enumerate(block)])


def _chunk_task(block: np.ndarray, *, payload: _ModelPayload, halo, image_shape: tuple,
                chunk_grid: tuple, tile_size, tta, batch_size: int, device: str | None,
                num_classes: int, precision: str = "fp32", torch_threads: int | None = None,
                block_info=None) -> np.ndarray:
    """One ``map_overlap`` task, computed by the tiled-inference engine on the chunk's output
    rectangle: (S_b, C, h + 2·halo, w + 2·halo) → (S_b, K, h, w) float32 for images and
    stacks; (C, *(size + 2·halo)) → (K, *size) for a volume (``image_shape`` (Z, Y, X),
    ``halo`` one per axis). ``chunk_grid``: the output chunk sizes along each spatial axis."""
    import torch

    from .engine import TileEngine, make_runner
    from .tiling import TileGeometry

    if torch_threads and torch.get_num_threads() != int(torch_threads):
        torch.set_num_threads(int(torch_threads))
    net = _get_model(payload, device)
    dims = len(image_shape)
    halos = (halo,) * dims if isinstance(halo, (int, np.integer)) else tuple(halo)
    loc = block_info[None]["chunk-location"][-dims:]
    starts = tuple(int(sum(ch[:i])) for ch, i in zip(chunk_grid, loc))
    sizes = tuple(int(ch[i]) for ch, i in zip(chunk_grid, loc))
    frame0 = tuple(s - h for s, h in zip(starts, halos))
    volume = dims == 3
    frames = [block] if volume else list(block)
    out = np.zeros((len(frames), num_classes) + sizes, dtype=np.float32)
    runner = make_runner(net, device, precision=precision, tile_pixels=0,
                         channels_last=next(net.parameters()).device.type == "cpu")
    engine = TileEngine(runner, TileGeometry.from_net(net), tta=tta, batch_size=batch_size,
                        tile_size=tile_size)
    rect = tuple(v for s, n in zip(starts, sizes) for v in (s, s + n))
    with runner, torch.inference_mode():
        for i, frame in enumerate(frames):
            frame = np.array(frame, dtype=np.float32)

            def read(r, frame=frame):
                box = tuple(slice(r[2 * a] - f, r[2 * a + 1] - f) for a, f in enumerate(frame0))
                if any(b.start < 0 or b.stop > n for b, n in zip(box, frame.shape[1:])):
                    # pragma: no cover - the halo covers every tile's input
                    raise AssertionError("tile reaches outside the chunk's halo")
                return frame[(slice(None),) + box]

            engine.predict_region(read, image_shape, rect, out[i], origin=starts)
    return out[0] if volume else out


def _reflect_pad_axis(x, axis: int, before: int, after: int):
    """Mirror-pad a dask array along ``axis`` with numpy.pad(mode="reflect") semantics (any
    widths, repeated reflection)."""
    import dask.array as da

    from .tiling import reflect_indices

    n = int(x.shape[axis])
    parts = []
    if before:
        parts.append(da.take(x, reflect_indices(-before, 0, n), axis=axis))
    parts.append(x)
    if after:
        parts.append(da.take(x, reflect_indices(n, n + after, n), axis=axis))
    return da.concatenate(parts, axis=axis) if len(parts) > 1 else x


def _chunk_size(chunk, geom, halo: int, axis: int = -1) -> int:
    L = geom.lattices[axis]
    k = _DEFAULT_CHUNK if chunk is None else int(chunk)
    if k < 1:
        raise UnetlabError(f"chunk: must be a positive number of pixels, got {chunk}")
    k = max(k, halo)
    return int(math.ceil(k / L) * L)


def _axis_chunks(n: int, k: int) -> tuple[int, ...]:
    full, rem = divmod(n, k)
    return (k,) * full + ((rem,) if rem else ())


def _open_canonical(payload, net, array, normalize):
    """(payload, net, source (S, C, H, W), stats or None) for ``array``."""
    from .sources import open_image, source_stats

    src = open_image(array, int(net.in_channels))
    S, C = src.shape[:2]
    if src.shape[1] != int(net.in_channels):
        raise UnetlabError(f"{src.path or 'input array'}: has {C} channel(s), the network "
                           f"expects {int(net.in_channels)}")
    stats = None
    if normalize is True:
        stats = source_stats(src)
    elif normalize is not False and normalize is not None:
        stats = np.asarray(normalize, dtype=np.float64).reshape(-1, C, 2)
        if stats.shape[0] == 1 and S > 1:
            stats = np.repeat(stats, S, axis=0)
        if stats.shape != (S, C, 2):
            raise UnetlabError(f"normalize: stats must have shape ({S}, {C}, 2), "
                               f"got {stats.shape}")
    return payload, net, src, stats


def _padded_input(src, stats, k: int, halo: int):
    """The normalised (S, C, H, W) dask array mirror-padded by ``halo``, chunked so that each
    chunk is one output chunk of ``k`` pixels plus its halo at the image border."""
    S, C, H, W = src.shape
    ych, xch = _axis_chunks(H, k), _axis_chunks(W, k)
    x = src.to_dask((1, C, ych, xch), name=_source_name(src)).rechunk((1, C, ych, xch))
    if stats is not None:
        x = x.map_blocks(_normalize_block, stats, dtype=np.float32)
    else:
        x = x.astype(np.float32)
    # mirror padding by `halo` on every side (numpy "reflect"), chunks (halo+k0, k.., k_last+halo)
    x = _reflect_pad_axis(_reflect_pad_axis(x, 2, halo, halo), 3, halo, halo)
    return x.rechunk((1, C, _padded_chunks(ych, halo), _padded_chunks(xch, halo))), ych, xch


def _source_name(src) -> str | None:
    """A dask name for a file source that changes when the file does (None for arrays)."""
    if not src.path:
        return None
    st = Path(src.path).stat().st_mtime_ns
    return f"src-{hashlib.sha256(src.path.encode()).hexdigest()[:12]}-{st}"


def _prepare(model, array, tile_size, tta, chunk, normalize, batch_size, device,
             torch_threads=None, precision="fp32"):
    """Build the lazy prediction; returns (pred (S, K, H, W) or (K, Z, Y, X), layout ("image",
    "stack" or "volume"), payload, net, meta)."""
    import dask
    import dask.array as da

    from .predict import _tile_request
    from .tiling import TileGeometry

    payload, net = _model_payload(model)
    if int(getattr(net, "spatial_dims", 2)) == 3:
        return _prepare_volume(payload, net, array, tile_size, tta, chunk, normalize,
                               batch_size, device, torch_threads, precision)
    payload, net, src, stats = _open_canonical(payload, net, array, normalize)
    S, C, H, W = src.shape
    geom = TileGeometry.from_net(net)
    halo = geom.margin + geom.lattice
    k = _chunk_size(chunk, geom, halo)
    tile = None if tile_size is None else _tile_request(geom, tile_size, (H, W), 1, None)
    x, ych, xch = _padded_input(src, stats, k, halo)
    K = int(net.num_classes)
    blob = dask.delayed(payload, pure=True, name=f"unetlab-model-{payload.key}")
    pred = da.map_overlap(
        _chunk_task, x, depth={0: 0, 1: 0, 2: halo, 3: halo}, boundary="none", trim=False,
        chunks=((1,) * S, (K,), ych, xch), dtype=np.float32,
        meta=np.empty((0, 0, 0, 0), np.float32),
        payload=blob, halo=halo, image_shape=(H, W), chunk_grid=(ych, xch),
        tile_size=tile, tta=bool(tta), batch_size=int(batch_size), device=device,
        num_classes=K, precision=precision, torch_threads=torch_threads)
    meta = {"model": payload.key, "input": src.description, "shape": [S, C, H, W],
            "stack": src.stack, "chunk": k, "tile": None if tile is None else list(tile),
            "tta": bool(tta), "num_classes": K, "precision": precision,
            "normalize": ("percentiles" if normalize is True else
                          "none" if stats is None else np.round(stats, 12).tolist())}
    return pred, "stack" if src.stack else "image", payload, net, meta


def _prepare_volume(payload, net, array, tile_size, tta, chunk, normalize, batch_size,
                    device, torch_threads=None, precision="fp32"):
    """:func:`_prepare` for a 3D network: one volume (C, Z, Y, X) in chunks of ``chunk``
    voxels per axis (int or (z, y, x); default 128), each read with a halo of ``margin +
    lattice`` of its axis → pred (K, Z, Y, X)."""
    import dask
    import dask.array as da

    from .predict import _tile_request
    from .sources import open_image, volume_source, volume_stats
    from .tiling import TileGeometry

    cin = int(net.in_channels)
    src = open_image(array, cin) if isinstance(array, (str, os.PathLike)) else \
        volume_source(array, cin)
    Z, C, Y, X = src.shape
    if C != cin:
        raise UnetlabError(f"{src.path or 'input volume'}: has {C} channel(s), the network "
                           f"expects {cin}")
    stats = volume_stats(src) if normalize is True else None if normalize in (False, None) \
        else np.asarray(normalize, dtype=np.float64).reshape(C, 2)
    geom = TileGeometry.from_net(net)
    halos = tuple(m + L for m, L in zip(geom.margins, geom.lattices))
    req = _DEFAULT_CHUNK_3D if chunk is None else chunk
    ks = tuple(_chunk_size(c, geom, h, a) for a, (c, h) in
               enumerate(zip((req,) * 3 if isinstance(req, (int, np.integer)) else req, halos)))
    grid = tuple(_axis_chunks(n, k) for n, k in zip((Z, Y, X), ks))
    x = src.to_dask((grid[0], C, grid[1], grid[2]), name=_source_name(src))
    x = x.rechunk((grid[0], C, grid[1], grid[2])).transpose(1, 0, 2, 3)
    x = x.map_blocks(_normalize_volume, stats, dtype=np.float32)
    for a, h in enumerate(halos):
        x = _reflect_pad_axis(x, a + 1, h, h)
    x = x.rechunk((C,) + tuple(_padded_chunks(ch, h) for ch, h in zip(grid, halos)))
    tile = None if tile_size is None else _tile_request(geom, tile_size, (Z, Y, X), 1, None)
    K = int(net.num_classes)
    blob = dask.delayed(payload, pure=True, name=f"unetlab-model-{payload.key}")
    pred = da.map_overlap(
        _chunk_task, x, depth={0: 0, 1: halos[0], 2: halos[1], 3: halos[2]}, boundary="none",
        trim=False, chunks=((K,),) + grid, dtype=np.float32,
        meta=np.empty((0, 0, 0, 0), np.float32), payload=blob, halo=halos,
        image_shape=(Z, Y, X), chunk_grid=grid, tile_size=tile, tta=tta,
        batch_size=int(batch_size), device=device, num_classes=K, precision=precision,
        torch_threads=torch_threads)
    meta = {"model": payload.key, "input": src.description, "shape": [C, Z, Y, X],
            "volume": True, "chunk": list(ks), "tile": None if tile is None else list(tile),
            "tta": tta if isinstance(tta, bool) else int(tta), "num_classes": K,
            "precision": precision,
            "normalize": ("percentiles" if normalize is True else "none" if stats is None
                          else np.round(stats, 12).tolist())}
    return pred, "volume", payload, net, meta


def _normalize_volume(block: np.ndarray, stats) -> np.ndarray:
    """A (C, z, y, x) block normalised per channel with ``stats`` (C, 2), or as float32."""
    from .sources import normalize_block

    return np.asarray(block, np.float32) if stats is None else normalize_block(block, stats)


def _padded_chunks(ch: tuple[int, ...], halo: int) -> tuple[int, ...]:
    """Chunks of an axis mirror-padded by ``halo``: the padding joins the first/last chunk."""
    if len(ch) == 1:
        return (ch[0] + 2 * halo,)
    return (ch[0] + halo,) + tuple(ch[1:-1]) + (ch[-1] + halo,)


def predict_dask(model, array, tile_size=None, tta: bool = False, *, chunk: int | None = None,
                 normalize=True, batch_size: int = 1, device: str | None = None,
                 precision: str = "fp32"):
    """Lazy overlap-tile prediction of a large image, stack or volume as a
    ``dask.array.Array``.

    Parameters
    ----------
    model : path to a unetlab model file, or a :class:`UNet`
        Sent to the workers once (as bytes in one graph key) and built once per worker process.
    array : array or source
        (H, W) or (C, H, W) image, (S, H, W) or (S, C, H, W) stack (numpy, dask or zarr array),
        or a path to a zarr array, an OME-Zarr group (multiscale level 0) or a TIFF file (read
        lazily). A 3-D array is a stack when the network has one input channel. For a 3D
        network: one volume (Z, Y, X) or (C, Z, Y, X), or such a path.
    tile_size : int, (h, w), (d, h, w) or None
        Input tile size inside a chunk, as in :func:`predict.predict_tiled` (None: the largest
        tile that fits the default memory budget).
    tta : bool or int
        Average the 8 dihedral transforms (Sec. 3.1 rotations/flips), as ``predict_tiled``
        (volumes: 16 or 48).
    chunk : int, (z, y, x) or None
        Output chunk side in pixels (default 1024; volumes 128 per axis), rounded up to a
        multiple of the lattice and to at least the halo; one Dask task per (slice, chunk).
    normalize : True, False or stats
        True: each slice is normalised as ``predict_tiled`` does (percentiles of the same
        subsample; a volume over the whole volume); False: the array is used as it is; or an
        explicit (S, C, 2) / (C, 2) array of (low, high).
    precision : "fp32", "bf16", "fp16" or "auto"
        Arithmetic of the forward pass, as in ``predict_tiled``.

    Returns
    -------
    dask.array.Array, float32, (K, H, W) for an image, (S, K, H, W) for a stack, (K, Z, Y, X)
    for a volume: soft-max probabilities (Sec. 3, Eq. 1), chunks (K, chunk, chunk) /
    (1, K, chunk, chunk) / (K, kz, ky, kx).
    """
    pred, layout, *_ = _prepare(model, array, tile_size, tta, chunk, normalize, batch_size,
                                device, precision=precision)
    return pred[0] if layout == "image" else pred


# ======================================================================= zarr output, resumable
def _compute(tasks: list, client, progress: bool) -> list:
    """Run the delayed ``tasks`` on ``client`` (or the current scheduler), with a progress
    bar when asked; cancels the client's futures on any interruption."""
    import dask

    if not tasks:
        return []
    if client is not None:
        futures = client.compute(tasks)
        try:
            if progress:
                from distributed import progress as dprogress

                dprogress(futures)
            return client.gather(futures)
        except BaseException:
            client.cancel(futures)
            raise
    if progress:
        from dask.diagnostics import ProgressBar

        with ProgressBar():
            return list(dask.compute(*tasks))
    return list(dask.compute(*tasks))


def predict_to_zarr(model, source, out, *, tile_size=None, tta: bool = False,
                    chunk: int | None = None, normalize=True, overwrite: bool = False,
                    batch_size: int = 1, device: str | None = None, client=None,
                    progress: bool = False, torch_threads: int | None = None,
                    precision: str = "fp32") -> dict:
    """Predict ``source`` chunk by chunk into the zarr group ``out`` (layout: module docstring).

    Resumable: chunks already written by an earlier, interrupted run with the same model,
    input and options are skipped (marker set and data chunk present); the others are computed.
    A finished output (``attrs["unetlab"]["complete"]``) is left as it is. An ``out`` written
    with another model/input/options raises :class:`UnetlabError` unless ``overwrite``.

    ``client``: a ``dask.distributed.Client`` (else the current Dask scheduler). Returns
    ``{"path", "computed": [(s, iy, ix) or (iz, iy, ix) for volumes, ...], "skipped": int,
    "total": int}``.
    """
    import dask

    out = str(out)
    pred, layout, payload, net, meta = _prepare(model, source, tile_size, tta, chunk,
                                                normalize, batch_size, device, torch_threads,
                                                precision)
    K, k = meta["num_classes"], meta["chunk"]
    if layout == "volume":
        grid = tuple(len(c) for c in pred.chunks[1:])
        shape, chunks, ks = tuple(pred.shape), (K,) + tuple(k), tuple(k)
    else:
        S, C, H, W = meta["shape"]
        nby, nbx = len(pred.chunks[2]), len(pred.chunks[3])
        stack = layout == "stack"
        grid = (S, nby, nbx) if stack else (nby, nbx)
        shape, chunks = ((S, K, H, W), (1, K, k, k)) if stack else ((K, H, W), (K, k, k))
        ks = (k, k)
    sig = dict(json.loads(json.dumps(meta)), format="unetlab-probabilities", version=1)
    group, complete = open_or_create_group(out, sig, overwrite, shape, chunks, grid, layout)
    total = int(np.prod(grid))
    if complete:
        return {"path": out, "computed": [], "skipped": total, "total": total}
    missing = missing_chunks(group, grid, layout)
    blocks = pred.to_delayed(optimize_graph=True)   # (S, 1, nby, nbx) or (1, nbz, nby, nbx)
    store = dask.delayed(store_block, pure=False)
    computed = _compute([store(blocks[(0,) + i if layout == "volume" else (i[0], 0) + i[1:]],
                               out, i, layout, ks) for i in missing], client, progress)
    attrs = dict(group.attrs)["unetlab"]
    attrs["complete"] = True
    group.attrs["unetlab"] = attrs                       # written last
    return {"path": out, "computed": sorted(tuple(int(v) for v in c) for c in computed),
            "skipped": total - len(missing), "total": total}


# ============================================================================ CLI entry point
def run_dask_predict(model_path, input, out, *, scheduler: str | None = None,
                     workers: int | None = None, threads_per_worker: int | None = None,
                     tta: bool = False, tile=None, chunk: int | None = None, normalize=True,
                     overwrite: bool = False, progress: bool = True,
                     device: str | None = None, batch_size: int = 1,
                     precision: str = "fp32") -> Path:
    """``unetlab predict MODEL INPUT --out OUT.zarr --dask [--scheduler ADDR | --workers N]``.

    ``scheduler``: address of a running ``dask.distributed`` scheduler ("tcp://host:8786",
    or a scheduler-file path ending in .json); None starts a ``LocalCluster`` with ``workers``
    processes (default: one per 2 cores, at least 1), ``threads_per_worker`` Dask threads each
    (default 1: torch parallelises inside a chunk) and torch threads = cores // workers. Writes
    the zarr group ``out`` (see :func:`predict_to_zarr`, resumable) and returns its path.
    """
    from distributed import Client, LocalCluster

    out = Path(out)
    if out.suffix.lower() != ".zarr":
        raise UnetlabError(f"--out {out}: Dask prediction writes a zarr folder; name it *.zarr")
    if workers is not None and int(workers) < 1:
        raise UnetlabError(f"--workers: must be >= 1, got {workers}")
    cluster = None
    if scheduler:
        try:
            if str(scheduler).endswith(".json"):
                client = Client(scheduler_file=str(scheduler), timeout="30s")
            else:
                client = Client(str(scheduler), timeout="30s")
        except (OSError, TimeoutError) as e:
            raise UnetlabError(f"--scheduler {scheduler}: cannot connect "
                               f"({_first_line(e)})") from None
        n_workers = max(1, len(client.scheduler_info().get("workers", {})))
        torch_threads = None
    else:
        cores = os.cpu_count() or 1
        n_workers = int(workers) if workers else max(1, cores // 2)
        tpw = int(threads_per_worker) if threads_per_worker else 1
        torch_threads = max(1, cores // (n_workers * tpw))
        cluster = LocalCluster(n_workers=n_workers, threads_per_worker=tpw, processes=True,
                               dashboard_address=":0", memory_limit=0)
        client = Client(cluster)
    try:
        res = predict_to_zarr(model_path, input, str(out), tile_size=tile, tta=tta, chunk=chunk,
                              normalize=normalize, overwrite=overwrite, device=device,
                              client=client, progress=progress, torch_threads=torch_threads,
                              batch_size=batch_size, precision=precision)
        if progress:
            print(f"\n{out}: {len(res['computed'])} chunk(s) computed, {res['skipped']} already "
                  f"done, {res['total']} in all ({n_workers} worker(s))", flush=True)
        return out
    finally:
        client.close()
        if cluster is not None:
            cluster.close()

