"""PyTorch DistributedDataParallel building blocks for data-parallel training (one process per
GPU or CPU rank, started by ``torchrun --nproc_per_node N -m unetlab train``). The paper trains
on one GPU (Sec. 3); DDP averages the gradients of the ranks' tiles, so a step sees the tiles
of all ranks::

    info = init_distributed()        # reads RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT
    net = wrap_ddp(net, info.device) # DistributedDataParallel when world_size > 1
    rng = numpy.random.default_rng(rank_seed(seed, info.rank))
    ... if is_main(): save checkpoints / logs ...; barrier(); cleanup()

See ``docs/distributed.md`` for batch size, learning rate and momentum under DDP.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from .errors import UnetlabError

__all__ = ["WorldInfo", "init_distributed", "world_info", "is_main", "barrier", "wrap_ddp",
           "unwrap", "cleanup", "rank_seed", "all_reduce_mean"]


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
