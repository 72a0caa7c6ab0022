"""Past one machine: out-of-core prediction on Dask + zarr, and PyTorch DDP building blocks.

Dask prediction (Sec. 2, Fig. 2 of Ronneberger et al. 2015 — the overlap-tile strategy — run as
``dask.array.map_overlap``)::

    predict_dask(model, array, tile_size=None, tta=False, *, chunk=None, normalize=False,
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

DDP building blocks (for ``torchrun --nproc_per_node N -m unetlab train``)::

    info = init_distributed()        # reads RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT
    net = wrap_ddp(net, info.device) # DistributedDataParallel when world_size > 1
    rng = numpy.random.default_rng(rank_seed(seed, info.rank))
    ... if is_main(): save checkpoints / logs ...; barrier(); cleanup()

See ``docs/distributed.md`` for batch size, learning rate and momentum under DDP.
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
from typing import Any, Sequence

import numpy as np

from .errors import UnetlabError

__all__ = [
    "predict_dask", "predict_to_zarr", "run_dask_predict", "open_source", "lazy_normalization_stats",
    "WorldInfo", "init_distributed", "world_info", "is_main", "barrier", "wrap_ddp", "unwrap",
    "cleanup", "rank_seed", "all_reduce_mean", "model_load_counts",
]

_DEFAULT_CHUNK = 1024


# ============================================================================ DDP building blocks
@dataclass(frozen=True)
class WorldInfo:
    """Where this process stands in a (possibly single-process) job.

    ``rank``: global rank (0..world_size-1); ``local_rank``: rank on this node (selects the GPU);
    ``backend``: "nccl" / "gloo" / None (not distributed); ``device``: the torch device string
    this rank computes on ("cuda:<local_rank>" or "cpu").
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    device: str = "cpu"

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 and self.backend is not None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    v = os.environ.get(name)
    if v is None or v == "":
        return default
    try:
        return int(v)
    except ValueError:
        raise UnetlabError(f"environment variable {name}={v!r} is not an integer") from None


def world_info() -> WorldInfo:
    """The current :class:`WorldInfo`: from the initialised process group if there is one,
    else from the torchrun environment variables (RANK, WORLD_SIZE, LOCAL_RANK), else rank 0
    of 1."""
    import torch
    import torch.distributed as dist

    local = _env_int("LOCAL_RANK", 0)
    if dist.is_available() and dist.is_initialized():
        backend = str(dist.get_backend())
        dev = f"cuda:{local}" if backend == "nccl" else "cpu"
        return WorldInfo(dist.get_rank(), dist.get_world_size(), local, backend, dev)
    ws = _env_int("WORLD_SIZE", 1)
    dev = f"cuda:{local}" if torch.cuda.is_available() and ws > 1 else (
        "cuda" if torch.cuda.is_available() else "cpu")
    return WorldInfo(_env_int("RANK", 0), ws, local, None, dev)


def init_distributed(backend: str | None = None, timeout_s: float = 1800.0) -> WorldInfo:
    """Join the process group that ``torchrun`` describes in the environment.

    Reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT`` (set by
    ``torchrun``; multi-node rendezvous included). ``backend=None`` picks "nccl" when CUDA is
    available (and pins this process to GPU ``LOCAL_RANK``) and "gloo" on CPU. Without these
    variables, or with ``WORLD_SIZE=1``, nothing is initialised and rank 0 of 1 is returned, so
    the same training script runs with and without torchrun. Calling it twice is harmless.
    """
    import datetime

    import torch
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return world_info()
    ws = _env_int("WORLD_SIZE", 1)
    if ws <= 1:
        return world_info()
    if not dist.is_available():
        raise UnetlabError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    for name in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name):
            raise UnetlabError(f"WORLD_SIZE={ws} but {name} is not set: start the job with "
                               "torchrun (e.g. torchrun --nproc_per_node 2 -m unetlab train ...)")
    rank, local = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise UnetlabError("backend 'nccl' needs CUDA; use 'gloo' on CPU")
        torch.cuda.set_device(local)
    dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=ws,
                            timeout=datetime.timedelta(seconds=timeout_s))
    return world_info()


def is_main() -> bool:
    """True on rank 0 (and in a single-process run): the rank that writes files and logs."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return _env_int("RANK", 0) == 0


def barrier() -> None:
    """Wait for all ranks (no-op when not distributed)."""
    import torch
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def wrap_ddp(model, device=None):
    """Move ``model`` to ``device`` and wrap it in ``DistributedDataParallel`` when the process
    group has more than one rank; otherwise return it (moved) unchanged.

    DDP broadcasts rank 0's parameters and buffers at construction (all ranks start equal) and
    averages gradients over ranks in ``backward()`` (sum / world_size, overlapped with the
    backward pass). Models with BatchNorm get ``SyncBatchNorm`` only if the caller converts
    them first (``torch.nn.SyncBatchNorm.convert_sync_batchnorm``); the paper's U-Net has none.
    """
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    if device is not None:
        model = model.to(device)
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return model
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    if dev.type == "cuda":
        idx = dev.index if dev.index is not None else torch.cuda.current_device()
        return DDP(model, device_ids=[idx], output_device=idx)
    return DDP(model)


def unwrap(model):
    """The plain module inside a DDP wrapper (what to save in a checkpoint)."""
    return getattr(model, "module", model)


def cleanup() -> None:
    """Leave the process group (no-op when not distributed)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def rank_seed(seed: int, rank: int | None = None) -> int:
    """A per-rank seed derived from the run's ``seed``: independent streams for the tile
    sampler and augmentation on each rank (``numpy.random.SeedSequence(seed).spawn``). Rank 0
    of a single-process run gets ``seed`` itself, so one-process runs are unchanged."""
    if rank is None:
        rank = world_info().rank
    if rank == 0:
        return int(seed)
    child = np.random.SeedSequence(int(seed)).spawn(int(rank) + 1)[int(rank)]
    return int(child.generate_state(1, dtype=np.uint32)[0])


def all_reduce_mean(value: float) -> float:
    """The mean of a Python float over all ranks (for logging the loss); identity when not
    distributed."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return float(value)
    dev = "cuda" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([float(value)], dtype=torch.float64, device=dev)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item()) / dist.get_world_size()


# ============================================================================ model, once per worker
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
        raise UnetlabError(f"model: expected a model file path or a UNet, got {type(model).__name__}")
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


# ============================================================================ inputs
class _TiffSource:
    """A picklable, lazily opened array over a TIFF file (level 0 of series 0).

    Opening happens in the process that reads (``tifffile.imread(path, aszarr=True)`` wrapped by
    zarr), so worker processes never receive an open file handle.
    """

    def __init__(self, path: str):
        import tifffile

        self.path = str(path)
        try:
            with tifffile.TiffFile(self.path) as tf:
                if not tf.series:
                    raise UnetlabError(f"{path}: TIFF file contains no images")
                s = tf.series[0]
                self.shape = tuple(int(v) for v in s.shape)
                self.dtype = np.dtype(s.dtype)
                self.axes = str(s.axes)
        except UnetlabError:
            raise
        except Exception as e:  # noqa: BLE001 - tifffile raises many types
            raise UnetlabError(f"{path}: cannot read TIFF ({_first_line(e)})") from None
        self.ndim = len(self.shape)
        self._arr = None

    def _open(self):
        if self._arr is None:
            import tifffile
            import zarr

            z = zarr.open(tifffile.imread(self.path, aszarr=True, series=0, level=0), mode="r")
            self._arr = z
        return self._arr

    def __getitem__(self, key):
        return np.asarray(self._open()[key])

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_arr"] = None
        return d


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return (s.splitlines()[0] if s else type(e).__name__)[:200]


def _ome_level0(group, path: str):
    """(array, axes names or None) of OME-Zarr multiscale level 0, or of a group's only array."""
    attrs = dict(group.attrs)
    ms = attrs.get("multiscales") or (attrs.get("ome") or {}).get("multiscales")
    if ms:
        try:
            first = ms[0]
            ds_path = first["datasets"][0]["path"]
            axes = first.get("axes")
        except (KeyError, IndexError, TypeError):
            raise UnetlabError(f"{path}: malformed OME-Zarr 'multiscales' metadata") from None
        names = None
        if axes:
            names = [a["name"] if isinstance(a, dict) else str(a) for a in axes]
        try:
            return group[ds_path], names
        except KeyError:
            raise UnetlabError(f"{path}: OME-Zarr level 0 dataset {ds_path!r} is missing") from None
    arrays = [k for k, _ in group.arrays()]
    if len(arrays) == 1:
        return group[arrays[0]], None
    raise UnetlabError(f"{path}: a zarr group without OME-Zarr 'multiscales' metadata; point to "
                       f"the array inside it (arrays: {', '.join(sorted(arrays)) or 'none'})")


def open_source(source, chunks: Any = "auto"):
    """Open ``source`` lazily as a dask array; returns ``(array, axes, description)``.

    ``source``: a numpy or dask array, a zarr array, a path to a zarr array, a zarr group with
    OME-Zarr ``multiscales`` metadata (level 0 is used; axes names are returned), or a TIFF file
    (opened lazily through ``tifffile``'s zarr store, series 0, level 0). ``axes`` is a list of
    axis names ("t", "c", "z", "y", "x") when the source declares them, else None.
    """
    import dask.array as da

    if isinstance(source, da.Array):
        return source, None, {"kind": "array", "shape": list(source.shape),
                              "dtype": str(source.dtype)}
    if isinstance(source, np.ndarray):
        return da.from_array(source, chunks=chunks), None, {
            "kind": "array", "shape": list(source.shape), "dtype": str(source.dtype)}
    try:
        import zarr
    except ImportError:  # pragma: no cover
        zarr = None
    if zarr is not None and isinstance(source, zarr.Array):
        return da.from_zarr(source), None, {"kind": "array", "shape": list(source.shape),
                                            "dtype": str(source.dtype)}
    if zarr is not None and isinstance(source, zarr.Group):
        arr, axes = _ome_level0(source, "zarr group")
        return da.from_zarr(arr), axes, {"kind": "array", "shape": list(arr.shape),
                                         "dtype": str(arr.dtype)}
    if not isinstance(source, (str, os.PathLike)):
        raise UnetlabError(f"input: expected an array, a zarr store or a TIFF path, "
                           f"got {type(source).__name__}")
    path = Path(source)
    if not path.exists():
        raise UnetlabError(f"{path}: no such file or folder")
    desc = {"kind": "path", "path": str(path.resolve())}
    if path.suffix.lower() in (".tif", ".tiff"):
        src = _TiffSource(str(path))
        axes = None
        if len(src.axes) == src.ndim:
            amap = {"Y": "y", "X": "x", "C": "c", "S": "c", "Z": "z", "T": "t", "Q": "z",
                    "I": "z"}
            names = [amap.get(a) for a in src.axes]
            axes = names if None not in names and len(set(names)) == len(names) else None
        arr = da.from_array(src, chunks=chunks if chunks != "auto" else
                            _tiff_chunks(src.shape), meta=np.empty((0,) * src.ndim, src.dtype),
                            name=f"tiff-{hashlib.sha256(desc['path'].encode()).hexdigest()[:12]}"
                                 f"-{int(path.stat().st_mtime_ns)}")
        desc.update(shape=list(src.shape), dtype=str(src.dtype))
        return arr, axes, desc
    if zarr is None:  # pragma: no cover
        raise UnetlabError(f"{path}: reading zarr needs the 'zarr' package")
    try:
        node = zarr.open(str(path), mode="r")
    except Exception as e:  # noqa: BLE001
        raise UnetlabError(f"{path}: not a readable zarr store or TIFF ({_first_line(e)})") from None
    axes = None
    if isinstance(node, zarr.Group):
        node, axes = _ome_level0(node, str(path))
    desc.update(shape=list(node.shape), dtype=str(node.dtype))
    return da.from_zarr(node), axes, desc


def _tiff_chunks(shape: Sequence[int]) -> tuple:
    lead = (1,) * (len(shape) - 2)
    return lead + (min(int(shape[-2]), 2048), min(int(shape[-1]), 2048))


def _canonical(x, axes: list[str] | None, net, where: str):
    """Bring a lazy array to (S, C, H, W); returns (array, is_stack). Without axis names the
    layout is :func:`predict.image_layout`'s, so ``predict_dask`` reads arrays as
    ``predict_tiled`` does."""
    import dask.array as da

    in_channels = int(net.in_channels)
    if axes is not None and len(axes) == x.ndim and "y" in axes and "x" in axes:
        x = da.moveaxis(x, [axes.index("y"), axes.index("x")], [-2, -1])
        rest = [a for a in axes if a not in ("y", "x")]
        if "c" in rest:
            x = da.moveaxis(x, rest.index("c"), -3)
            rest = [a for a in rest if a != "c"] + ["c"]
        else:
            x = x[..., None, :, :]
            rest = rest + ["c"]
        other = x.shape[:-3]
        big = [n for n in other if n > 1]
        if len(big) > 1:
            raise UnetlabError(f"{where}: more than one non-channel axis besides y, x "
                               f"(axes {axes}, shape {tuple(x.shape)}); select a time point "
                               "or a slice first")
        stack = len(big) == 1
        x = x.reshape((int(np.prod(other)) if other else 1,) + tuple(x.shape[-3:]))
    else:
        from .predict import image_layout

        try:
            stack, _ = image_layout(net, x.shape)
        except UnetlabError as e:
            raise UnetlabError(f"{where}: {e}") from None
        if x.ndim == 2:
            x = x[None, None]
        elif x.ndim == 3:
            x = x[:, None] if stack else x[None]
    if x.shape[1] != in_channels:
        raise UnetlabError(f"{where}: has {x.shape[1]} channel(s), the network expects "
                           f"{in_channels}")
    if x.shape[-1] < 1 or x.shape[-2] < 1 or x.shape[0] < 1:
        raise UnetlabError(f"{where}: empty image (shape {tuple(x.shape)})")
    if np.dtype(x.dtype).kind not in "biuf":
        raise UnetlabError(f"{where}: unsupported dtype {x.dtype}")
    return x, stack


# ============================================================================ normalisation
def lazy_normalization_stats(x) -> np.ndarray:
    """``data.normalization_stats`` of every (slice, channel) of a lazy (S, C, H, W) array:
    (S, C, 2) float64, reading only the regular subsample that the eager version uses."""
    import dask

    from . import data

    S, C, H, W = (int(v) for v in x.shape)
    step = data.subsample_step(H, W)
    sub = dask.compute(x[:, :, ::step, ::step])[0]
    out = np.empty((S, C, 2), dtype=np.float64)
    for s in range(S):
        out[s] = data.sample_stats(sub[s])
    return out


def _normalize_block(block: np.ndarray, stats: np.ndarray, block_info=None) -> np.ndarray:
    """Apply (x - lo)/(hi - lo) per (slice, channel) with ``data.normalize_image``'s float ops."""
    s0 = block_info[0]["array-location"][0][0]
    out = np.empty(block.shape, dtype=np.float32)
    for i in range(block.shape[0]):
        for c in range(block.shape[1]):
            lo, hi = stats[s0 + i, c]
            if hi > lo:
                np.subtract(block[i, c], lo, out=out[i, c], casting="unsafe")
                out[i, c] *= np.float32(1.0 / (hi - lo))
            else:
                out[i, c] = 0.0
    return out


# ============================================================================ the chunk computation
def _rect_to_g(rect, shape, g):
    """Map an image rectangle (y0, y1, x0, x1) to the coordinates of g(image)."""
    t, fr, fc = g
    H, W = shape
    y0, y1, x0, x1 = rect
    if t:
        y0, y1, x0, x1 = x0, x1, y0, y1
        H, W = W, H
    if fr:
        y0, y1 = H - y1, H - y0
    if fc:
        x0, x1 = W - x1, W - x0
    return (y0, y1, x0, x1)


def _forward(net, tiles: np.ndarray, device: str) -> np.ndarray:
    """Soft-max probabilities (N, K, h, w) float32 of a batch of input tiles (N, C, H, W)."""
    import torch

    with torch.inference_mode():
        t = torch.from_numpy(np.ascontiguousarray(tiles)).to(device)
        if t.device.type == "cpu":
            t = t.contiguous(memory_format=torch.channels_last)
        p = torch.softmax(net(t).float(), dim=1)
        return np.ascontiguousarray(p.cpu().numpy())


def _predict_region(net, frame: np.ndarray, frame_origin: tuple[int, int],
                    out_rect: tuple[int, int, int, int], image_shape: tuple[int, int],
                    tile_size, tta: bool, batch_size: int, device: str) -> np.ndarray:
    """Probabilities (K, y1-y0, x1-x0) of the image rows/cols ``out_rect`` = (y0, y1, x0, x1).

    ``frame`` (C, h, w) float32 holds the mirror-padded image at image coordinates starting at
    ``frame_origin``; it must reach ``margin + lattice`` pixels beyond ``out_rect`` on every
    side. For each dihedral transform g (only the identity when not ``tta``), the tiles are
    placed on the lattice of g(image) as :func:`predict.predict_tiled` places them, so the
    values are those of one pass over the whole image.
    """
    from . import tiling

    geom = tiling.TileGeometry.from_net(net)
    m, L = geom.margin, geom.lattice
    K = int(net.num_classes)
    H, W = image_shape
    transforms = tiling.DIHEDRAL if tta else tiling.DIHEDRAL[:1]
    fy, fx = frame_origin
    frect = (fy, fy + frame.shape[-2], fx, fx + frame.shape[-1])
    acc = np.zeros((K, out_rect[1] - out_rect[0], out_rect[3] - out_rect[2]), dtype=np.float32)
    for g in transforms:
        gframe = tiling.apply_dihedral(frame, g)
        gf = _rect_to_g(frect, (H, W), g)
        u0, u1, v0, v1 = _rect_to_g(out_rect, (H, W), g)
        us, vs = (u0 // L) * L, (v0 // L) * L            # lattice of g(image)
        region = (u1 - us, v1 - vs)
        tile = tile_size
        if tile is None:
            tile = tiling.choose_tile_size(geom, region, batch=batch_size)
        plan = tiling.plan_tiles(geom, region, tile)
        gout = np.zeros((K, u1 - u0, v1 - v0), dtype=np.float32)
        by_shape: dict[tuple[int, int], list] = {}
        for t in plan:
            iy0, iy1, ix0, ix1 = t.inp
            a, b = iy0 + us - gf[0], ix0 + vs - gf[2]
            if a < 0 or b < 0 or a + (iy1 - iy0) > gframe.shape[-2] or \
                    b + (ix1 - ix0) > gframe.shape[-1]:  # pragma: no cover - halo invariant
                raise AssertionError("tile reaches outside the chunk's halo")
            by_shape.setdefault((iy1 - iy0, ix1 - ix0), []).append((t, a, b))
        for (th, tw), items in by_shape.items():
            for k in range(0, len(items), max(1, batch_size)):
                chunk = items[k:k + max(1, batch_size)]
                batch = np.stack([gframe[:, a:a + th, b:b + tw] for _, a, b in chunk])
                probs = _forward(net, batch, device)
                if geom.padding == "same":
                    probs = probs[:, :, m:th - m, m:tw - m]
                for (t, _, _), p in zip(chunk, probs):
                    oy0, oy1, ox0, ox1 = t.own
                    # own rect in g coords, clipped to the requested output rect
                    gy0, gy1 = max(oy0 + us, u0), min(oy1 + us, u1)
                    gx0, gx1 = max(ox0 + vs, v0), min(ox1 + vs, v1)
                    if gy1 <= gy0 or gx1 <= gx0:
                        continue
                    py, px = t.out[0] + us, t.out[2] + vs
                    gout[:, gy0 - u0:gy1 - u0, gx0 - v0:gx1 - v0] = \
                        p[:, gy0 - py:gy1 - py, gx0 - px:gx1 - px]
        acc += tiling.invert_dihedral(gout, g)
    if len(transforms) > 1:
        acc /= np.float32(len(transforms))
    return acc


def _chunk_task(block: np.ndarray, *, payload: _ModelPayload, halo: int,
                image_shape: tuple[int, int], ychunks: tuple, xchunks: tuple, tile_size,
                tta: bool, batch_size: int, device: str | None, num_classes: int,
                torch_threads: int | None = None, block_info=None) -> np.ndarray:
    """One ``map_overlap`` task: (S_b, C, h + 2·halo, w + 2·halo) → (S_b, K, h, w) float32."""
    if torch_threads:
        import torch

        if torch.get_num_threads() != int(torch_threads):
            torch.set_num_threads(int(torch_threads))
    net = _get_model(payload, device)
    dev = device or str(next(net.parameters()).device)
    loc = block_info[None]["chunk-location"]
    iy, ix = loc[-2], loc[-1]
    y0 = int(sum(ychunks[:iy]))
    x0 = int(sum(xchunks[:ix]))
    h, w = int(ychunks[iy]), int(xchunks[ix])
    out = np.empty((block.shape[0], num_classes, h, w), dtype=np.float32)
    frame_origin = (y0 - halo, x0 - halo)
    for s in range(block.shape[0]):
        frame = np.ascontiguousarray(block[s], dtype=np.float32)
        out[s] = _predict_region(net, frame, frame_origin, (y0, y0 + h, x0, x0 + w),
                                 image_shape, tile_size, tta, batch_size, dev)
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


def _prepare(model, array, tile_size, tta, chunk, normalize, batch_size, device,
             torch_threads=None):
    """Build the lazy prediction; returns (pred (S,K,H,W), is_stack, payload, net, meta)."""
    import dask
    import dask.array as da

    from . import tiling

    payload, net = _model_payload(model)
    x, axes, desc = open_source(array)
    x, stack = _canonical(x, axes, net, desc.get("path", "input array"))
    S, C, H, W = (int(v) for v in x.shape)
    geom = tiling.TileGeometry.from_net(net)
    halo = geom.margin + geom.lattice
    k = _chunk_size(chunk, geom, halo)
    if tile_size is not None:
        ts = tile_size if isinstance(tile_size, (tuple, list)) else (tile_size, tile_size)
        for t in ts:
            if int(t) < 1:
                raise UnetlabError(f"tile size: must be positive, got {tile_size}")
    # normalisation (pointwise, so before padding)
    stats = None
    if normalize is True:
        stats = lazy_normalization_stats(x)
    elif normalize is not False and normalize is not None:
        stats = np.asarray(normalize, dtype=np.float64).reshape(-1, C, 2)
        if stats.shape[0] == 1 and S > 1:
            stats = np.repeat(stats, S, axis=0)
        if stats.shape != (S, C, 2):
            raise UnetlabError(f"normalize: stats must have shape ({S}, {C}, 2), "
                               f"got {stats.shape}")
    ych, xch = _axis_chunks(H, k), _axis_chunks(W, k)
    x = x.rechunk((1, C, ych, xch))
    if stats is not None:
        x = x.map_blocks(_normalize_block, stats, dtype=np.float32)
    else:
        x = x.astype(np.float32)
    # mirror padding by `halo` on every side (numpy "reflect"), chunks (halo+k0, k.., k_last+halo)
    x = _reflect_pad_axis(x, 2, halo, halo)
    x = _reflect_pad_axis(x, 3, halo, halo)

    def padded(ch):
        ch = list(ch)
        ch[0] += halo
        ch[-1] += halo
        return tuple(ch)

    x = x.rechunk((1, C, padded(ych), padded(xch)))
    K = int(net.num_classes)
    blob = dask.delayed(payload, pure=True, name=f"unetlab-model-{payload.key}")
    pred = da.map_overlap(
        _chunk_task, x, depth={0: 0, 1: 0, 2: halo, 3: halo}, boundary="none", trim=False,
        chunks=((1,) * S, (K,), ych, xch), dtype=np.float32,
        meta=np.empty((0, 0, 0, 0), np.float32),
        payload=blob, halo=halo, image_shape=(H, W), ychunks=ych, xchunks=xch,
        tile_size=tile_size, tta=bool(tta), batch_size=int(batch_size), device=device,
        num_classes=K, torch_threads=torch_threads)
    meta = {"model": payload.key, "input": desc, "shape": [S, C, H, W], "stack": stack,
            "chunk": k, "tile": tile_size if tile_size is None else
            list(tile_size) if isinstance(tile_size, (tuple, list)) else int(tile_size),
            "tta": bool(tta), "num_classes": K,
            "normalize": ("percentiles" if normalize is True else
                          "none" if stats is None else np.round(stats, 12).tolist())}
    return pred, stack, payload, net, meta


def predict_dask(model, array, tile_size=None, tta: bool = False, *, chunk: int | None = None,
                 normalize=False, batch_size: int = 1, device: str | None = None):
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
    normalize : False, True or stats
        False: the array is used as it is (like ``predict_tiled``); True: each slice is
        normalised as ``data.normalize_image`` does (percentiles on the same subsample);
        or an explicit (S, C, 2) / (C, 2) array of (low, high).

    Returns
    -------
    dask.array.Array, float32, (K, H, W) for an image or (S, K, H, W) for a stack: soft-max
    probabilities (Sec. 3, Eq. 1), chunks (K, chunk, chunk) / (1, K, chunk, chunk).
    """
    pred, stack, *_ = _prepare(model, array, tile_size, tta, chunk, normalize, batch_size, device)
    return pred if stack else pred[0]


# ============================================================================ zarr output, resumable
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


def predict_to_zarr(model, source, out, *, tile_size=None, tta: bool = False,
                    chunk: int | None = None, normalize=True, overwrite: bool = False,
                    batch_size: int = 1, device: str | None = None, client=None,
                    progress: bool = False, torch_threads: int | None = None) -> dict:
    """Predict ``source`` chunk by chunk into the zarr group ``out`` (layout: module docstring).

    Resumable: chunks already written by an earlier, interrupted run with the same model,
    input and options are skipped (marker set and data chunk present); the others are computed.
    A finished output (``attrs["unetlab"]["complete"]``) is left as it is. An ``out`` written
    with another model/input/options raises :class:`UnetlabError` unless ``overwrite``.

    ``client``: a ``dask.distributed.Client`` (else the current Dask scheduler). Returns
    ``{"path", "computed": [(s, iy, ix), ...], "skipped": int, "total": int}``.
    """
    import dask
    import zarr

    out = str(out)
    pred, stack, payload, net, meta = _prepare(model, source, tile_size, tta, chunk, normalize,
                                               batch_size, device, torch_threads)
    S, C, H, W = meta["shape"]
    K = meta["num_classes"]
    k = meta["chunk"]
    nby, nbx = len(pred.chunks[2]), len(pred.chunks[3])
    shape = (S, K, H, W) if stack else (K, H, W)
    chunks = (1, K, k, k) if stack else (K, k, k)
    grid = (S, nby, nbx) if stack else (nby, nbx)
    sig = json.loads(json.dumps(meta))
    sig["format"] = "unetlab-probabilities"
    sig["version"] = 1

    group = None
    if Path(out).exists():
        try:
            group = zarr.open_group(out, mode="r+")
            old = dict(group.attrs).get("unetlab")
        except Exception:  # noqa: BLE001
            old = None
        if old is None and not overwrite:
            raise UnetlabError(f"{out}: exists and is not a unetlab prediction; choose another "
                               "--out or pass --overwrite")
        if old is not None:
            same = {k2: v for k2, v in old.items() if k2 != "complete"} == sig
            if not same and not overwrite:
                raise UnetlabError(f"{out}: holds a prediction from another model, input or "
                                   "options; choose another --out or pass --overwrite")
            if same and old.get("complete"):
                n = int(np.prod(grid))
                return {"path": out, "computed": [], "skipped": n, "total": n}
            if not same:
                group = None
        else:
            group = None
    if group is None:
        group = zarr.open_group(out, mode="w")
        group.attrs["unetlab"] = {**sig, "complete": False}
        group.create_array("probabilities", shape=shape, chunks=chunks, dtype="float32",
                           fill_value=np.float32(np.nan), config={"write_empty_chunks": True},
                           dimension_names=(["slice"] if stack else []) + ["class", "y", "x"])
        group.create_array("chunk_done", shape=grid, chunks=(1,) * len(grid), dtype="uint8",
                           fill_value=0, config={"write_empty_chunks": True})

    probs = group["probabilities"]
    done = np.asarray(group["chunk_done"][...]).reshape(grid)
    missing = []
    for idx in np.ndindex(*grid):
        s, iy, ix = idx if stack else (0,) + idx
        zc = (s, 0, iy, ix) if stack else (0, iy, ix)
        if done[idx] == 1 and _chunk_exists(probs, zc):
            continue
        missing.append((s, iy, ix))

    blocks = pred.to_delayed(optimize_graph=True)      # (S, 1, nby, nbx)
    store = dask.delayed(_store_block, pure=False)
    tasks = [store(blocks[s, 0, iy, ix], out, (s, iy, ix), stack, (k, k))
             for s, iy, ix in missing]
    computed: list = []
    if tasks:
        if client is not None:
            futures = client.compute(tasks)
            try:
                if progress:
                    from distributed import progress as dprogress

                    dprogress(futures)
                computed = client.gather(futures)
            except BaseException:
                client.cancel(futures)
                raise
        elif progress:
            from dask.diagnostics import ProgressBar

            with ProgressBar():
                computed = list(dask.compute(*tasks))
        else:
            computed = list(dask.compute(*tasks))
    attrs = dict(group.attrs)["unetlab"]
    attrs["complete"] = True
    group.attrs["unetlab"] = attrs                       # written last
    total = int(np.prod(grid))
    return {"path": out, "computed": sorted(tuple(int(v) for v in c) for c in computed),
            "skipped": total - len(missing), "total": total}


# ============================================================================ CLI entry point
def run_dask_predict(model_path, input, out, *, scheduler: str | None = None,
                     workers: int | None = None, threads_per_worker: int | None = None,
                     tta: bool = False, tile=None, chunk: int | None = None, normalize=True,
                     overwrite: bool = False, progress: bool = True,
                     device: str | None = None) -> Path:
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
            raise UnetlabError(f"--scheduler {scheduler}: cannot connect ({_first_line(e)})") from None
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
                              client=client, progress=progress, torch_threads=torch_threads)
        if progress:
            print(f"\n{out}: {len(res['computed'])} chunk(s) computed, {res['skipped']} already "
                  f"done, {res['total']} in all ({n_workers} worker(s))", flush=True)
        return out
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
