"""Out-of-core prediction on Dask + zarr (Sec. 2, Fig. 2 of Ronneberger et al. 2015 — the
overlap-tile strategy — run as ``dask.array.map_overlap``)::

    predict_dask(model, array, tile_size=None, tta=False, *, chunk=None, normalize=True,
                 batch_size=1, device=None) -> dask.array.Array   # (K, H, W) or (S, K, H, W)
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

Model once per worker. The model's bytes (the ``checkpoint`` model-file format) enter the task
graph once, as one key that every chunk task depends on; each worker process rebuilds the
network the first time it sees that key and keeps it in a small per-process cache
(:data:`_MODEL_CACHE`), so the network is neither pickled into every task nor rebuilt per chunk.

Output layout (``predict_to_zarr``)::

    OUT.zarr/                      zarr group, attrs["unetlab"] = {... "complete": bool}
      probabilities                float32 (K, H, W) or (S, K, H, W), one zarr chunk per task
      chunk_done                   uint8 grid (nby, nbx) or (S, nby, nbx), 1 = chunk written

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

__all__ = ["predict_dask", "predict_to_zarr", "run_dask_predict", "lazy_normalization_stats",
           "model_load_counts"]

_DEFAULT_CHUNK = 1024


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
        if torch.device(dev).type == "cpu":       # oneDNN is faster channels-last (as predict.py)
            net = net.to(memory_format=torch.channels_last)
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


def _chunk_task(block: np.ndarray, *, payload: _ModelPayload, halo: int,
                image_shape: tuple[int, int], ychunks: tuple, xchunks: tuple, tile_size,
                tta: bool, batch_size: int, device: str | None, num_classes: int,
                precision: str = "fp32", torch_threads: int | None = None,
                block_info=None) -> np.ndarray:
    """One ``map_overlap`` task: (S_b, C, h + 2·halo, w + 2·halo) → (S_b, K, h, w) float32,
    computed by the tiled-inference engine on the chunk's output rectangle."""
    import torch

    from .engine import TileEngine, make_runner
    from .tiling import TileGeometry

    if torch_threads and torch.get_num_threads() != int(torch_threads):
        torch.set_num_threads(int(torch_threads))
    net = _get_model(payload, device)
    iy, ix = block_info[None]["chunk-location"][-2:]
    y0, x0 = int(sum(ychunks[:iy])), int(sum(xchunks[:ix]))
    h, w = int(ychunks[iy]), int(xchunks[ix])
    fy, fx = y0 - halo, x0 - halo
    out = np.zeros((block.shape[0], num_classes, h, w), dtype=np.float32)
    runner = make_runner(net, device, precision=precision, tile_pixels=0,
                         channels_last=next(net.parameters()).device.type == "cpu")
    engine = TileEngine(runner, TileGeometry.from_net(net), tta=tta, batch_size=batch_size,
                        tile_size=tile_size)
    with runner, torch.inference_mode():
        for s in range(block.shape[0]):
            frame = np.array(block[s], dtype=np.float32)

            def read(rect, frame=frame):
                a, b, c, d = rect[0] - fy, rect[1] - fy, rect[2] - fx, rect[3] - fx
                if a < 0 or c < 0 or b > frame.shape[-2] or d > frame.shape[-1]:
                    # pragma: no cover - the halo covers every tile's input
                    raise AssertionError("tile reaches outside the chunk's halo")
                return frame[:, a:b, c:d]

            engine.predict_region(read, image_shape, (y0, y0 + h, x0, x0 + w), out[s],
                                  origin=(y0, x0))
    return out


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


def _chunk_size(chunk, geom, halo: int) -> int:
    L = geom.lattice
    k = _DEFAULT_CHUNK if chunk is None else int(chunk)
    if k < 1:
        raise UnetlabError(f"chunk: must be a positive number of pixels, got {chunk}")
    k = max(k, halo)
    return int(math.ceil(k / L) * L)


def _axis_chunks(n: int, k: int) -> tuple[int, ...]:
    full, rem = divmod(n, k)
    return (k,) * full + ((rem,) if rem else ())


def _open_canonical(model, array, normalize):
    """(payload, net, source (S, C, H, W), stats or None, description) for ``array``."""
    from .sources import open_image, source_stats

    payload, net = _model_payload(model)
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
    name = None
    if src.path:
        st = Path(src.path).stat().st_mtime_ns
        name = f"src-{hashlib.sha256(src.path.encode()).hexdigest()[:12]}-{st}"
    x = src.to_dask((1, C, ych, xch), name=name).rechunk((1, C, ych, xch))
    if stats is not None:
        x = x.map_blocks(_normalize_block, stats, dtype=np.float32)
    else:
        x = x.astype(np.float32)
    # mirror padding by `halo` on every side (numpy "reflect"), chunks (halo+k0, k.., k_last+halo)
    x = _reflect_pad_axis(_reflect_pad_axis(x, 2, halo, halo), 3, halo, halo)

    def padded(ch):
        return (ch[0] + halo,) + tuple(ch[1:-1]) + (ch[-1] + halo,) if len(ch) > 1 else \
            (ch[0] + 2 * halo,)

    return x.rechunk((1, C, padded(ych), padded(xch))), ych, xch


def _prepare(model, array, tile_size, tta, chunk, normalize, batch_size, device,
             torch_threads=None, precision="fp32"):
    """Build the lazy prediction; returns (pred (S,K,H,W), is_stack, payload, net, meta)."""
    import dask
    import dask.array as da

    from .predict import _tile_request
    from .tiling import TileGeometry

    payload, net, src, stats = _open_canonical(model, array, normalize)
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
        payload=blob, halo=halo, image_shape=(H, W), ychunks=ych, xchunks=xch,
        tile_size=tile, tta=bool(tta), batch_size=int(batch_size), device=device,
        num_classes=K, precision=precision, torch_threads=torch_threads)
    meta = {"model": payload.key, "input": src.description, "shape": [S, C, H, W],
            "stack": src.stack, "chunk": k, "tile": None if tile is None else list(tile),
            "tta": bool(tta), "num_classes": K, "precision": precision,
            "normalize": ("percentiles" if normalize is True else
                          "none" if stats is None else np.round(stats, 12).tolist())}
    return pred, src.stack, payload, net, meta


def predict_dask(model, array, tile_size=None, tta: bool = False, *, chunk: int | None = None,
                 normalize=True, batch_size: int = 1, device: str | None = None,
                 precision: str = "fp32"):
    """Lazy overlap-tile prediction of a large image or stack as a ``dask.array.Array``.

    Parameters
    ----------
    model : path to a unetlab model file, or a :class:`UNet`
        Sent to the workers once (as bytes in one graph key) and built once per worker process.
    array : array or source
        (H, W) or (C, H, W) image, (S, H, W) or (S, C, H, W) stack (numpy, dask or zarr array),
        or a path to a zarr array, an OME-Zarr group (multiscale level 0) or a TIFF file (read
        lazily). A 3-D array is a stack when the network has one input channel.
    tile_size : int or (h, w) or None
        Input tile size inside a chunk, as in :func:`predict.predict_tiled` (None: the largest
        tile that fits the default memory budget).
    tta : bool
        Average the 8 dihedral transforms (Sec. 3.1 rotations/flips), as ``predict_tiled``.
    chunk : int or None
        Output chunk side in pixels (default 1024), rounded up to a multiple of the lattice
        2^depth and to at least the halo; one Dask task per (slice, chunk).
    normalize : True, False or stats
        True: each slice is normalised as ``predict_tiled`` does (percentiles of the same
        subsample); False: the array is used as it is; or an explicit (S, C, 2) / (C, 2) array
        of (low, high).
    precision : "fp32", "bf16" or "auto"
        Arithmetic of the forward pass, as in ``predict_tiled``.

    Returns
    -------
    dask.array.Array, float32, (K, H, W) for an image or (S, K, H, W) for a stack: soft-max
    probabilities (Sec. 3, Eq. 1), chunks (K, chunk, chunk) / (1, K, chunk, chunk).
    """
    pred, stack, *_ = _prepare(model, array, tile_size, tta, chunk, normalize, batch_size, device,
                               precision=precision)
    return pred if stack else pred[0]


# ======================================================================= zarr output, resumable
def _open_out_array(out: str, name: str):
    import zarr

    return zarr.open_array(f"{out}/{name}", mode="r+")


def _store_block(block: np.ndarray, out: str, index: tuple[int, ...], stack: bool,
                 chunks: tuple[int, int]) -> tuple[int, ...]:
    """Write one predicted chunk (1, K, h, w) and then its done marker; returns its index."""
    s, iy, ix = index
    k0, k1 = chunks
    h, w = block.shape[-2:]
    probs = _open_out_array(out, "probabilities")
    done = _open_out_array(out, "chunk_done")
    ys, xs = slice(iy * k0, iy * k0 + h), slice(ix * k1, ix * k1 + w)
    if stack:
        probs[s:s + 1, :, ys, xs] = block
        done[s, iy, ix] = 1
    else:
        probs[:, ys, xs] = block[0]
        done[iy, ix] = 1
    return index


def _chunk_exists(arr, coords: tuple[int, ...]) -> bool:
    from zarr.core.sync import sync

    key = arr.metadata.encode_chunk_key(tuple(int(c) for c in coords))
    sp = arr.store_path
    full = f"{sp.path}/{key}" if sp.path else key
    return bool(sync(sp.store.exists(full)))


def _open_or_create_group(out: str, sig: dict, overwrite: bool, shape, chunks, grid,
                          stack: bool):
    """(group, complete): the zarr group of an earlier run with the same signature ``sig``
    (``complete`` True when it finished), else a new empty one. Another run's output, or a
    folder that is not a prediction, is refused unless ``overwrite``."""
    import zarr

    if Path(out).exists():
        try:
            group = zarr.open_group(out, mode="r+")
            old = dict(group.attrs).get("unetlab")
        except Exception:  # noqa: BLE001
            old = None
        if old is None and not overwrite:
            raise UnetlabError(f"{out}: exists and is not a unetlab prediction; choose another "
                               "--out or pass --overwrite")
        same = old is not None and {k: v for k, v in old.items() if k != "complete"} == sig
        if old is not None and not same and not overwrite:
            raise UnetlabError(f"{out}: holds a prediction from another model, input or "
                               "options; choose another --out or pass --overwrite")
        if same:
            return group, bool(old.get("complete"))
    group = zarr.open_group(out, mode="w")
    group.attrs["unetlab"] = {**sig, "complete": False}
    group.create_array("probabilities", shape=shape, chunks=chunks, dtype="float32",
                       fill_value=np.float32(np.nan), config={"write_empty_chunks": True},
                       dimension_names=(["slice"] if stack else []) + ["class", "y", "x"])
    group.create_array("chunk_done", shape=grid, chunks=(1,) * len(grid), dtype="uint8",
                       fill_value=0, config={"write_empty_chunks": True})
    return group, False


def _missing_chunks(group, grid, stack: bool) -> list[tuple[int, int, int]]:
    """(s, iy, ix) of the chunks whose marker is unset or whose data chunk is absent."""
    probs = group["probabilities"]
    done = np.asarray(group["chunk_done"][...]).reshape(grid)
    missing = []
    for idx in np.ndindex(*grid):
        s, iy, ix = idx if stack else (0,) + idx
        zc = (s, 0, iy, ix) if stack else (0, iy, ix)
        if done[idx] == 1 and _chunk_exists(probs, zc):
            continue
        missing.append((s, iy, ix))
    return missing


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
    ``{"path", "computed": [(s, iy, ix), ...], "skipped": int, "total": int}``.
    """
    import dask

    out = str(out)
    pred, stack, payload, net, meta = _prepare(model, source, tile_size, tta, chunk, normalize,
                                               batch_size, device, torch_threads, precision)
    S, C, H, W = meta["shape"]
    K, k = meta["num_classes"], meta["chunk"]
    nby, nbx = len(pred.chunks[2]), len(pred.chunks[3])
    grid = (S, nby, nbx) if stack else (nby, nbx)
    sig = dict(json.loads(json.dumps(meta)), format="unetlab-probabilities", version=1)
    group, complete = _open_or_create_group(
        out, sig, overwrite, (S, K, H, W) if stack else (K, H, W),
        (1, K, k, k) if stack else (K, k, k), grid, stack)
    total = int(np.prod(grid))
    if complete:
        return {"path": out, "computed": [], "skipped": total, "total": total}
    missing = _missing_chunks(group, grid, stack)
    blocks = pred.to_delayed(optimize_graph=True)      # (S, 1, nby, nbx)
    store = dask.delayed(_store_block, pure=False)
    computed = _compute([store(blocks[s, 0, iy, ix], out, (s, iy, ix), stack, (k, k))
                         for s, iy, ix in missing], client, progress)
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

