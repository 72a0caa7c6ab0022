"""DDP building blocks (issue 8): two gloo processes on localhost train like one process that
averages the two tiles' gradients.

Each rank draws its own tile (a different seed per rank, as the trainer does), the network is
wrapped with :func:`unetlab.distributed.wrap_ddp`, and a few SGD steps with momentum 0.99 are
taken. The reference, in this process, starts from the same weights and at every step computes
the gradient of each rank's tile separately, averages the two and takes the same SGD step —
"effective batch = N × batch" made explicit. The weights must agree within 1e-5.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from unetlab.distributed import (WorldInfo, all_reduce_mean, barrier, cleanup, init_distributed,
                                 is_main, rank_seed, unwrap, world_info, wrap_ddp)
from unetlab.loss import weighted_cross_entropy
from unetlab.model import UNet

STEPS = 3
LR = 0.05
MOMENTUM = 0.99
TILE = 36           # valid input for depth 1: 36 -> 20


def _net() -> UNet:
    torch.manual_seed(0)
    return UNet(depth=1, width=4)


def _tile(rank: int, step: int):
    rng = np.random.default_rng([rank_seed(123, rank), step])
    x = torch.from_numpy(rng.random((1, 1, TILE, TILE), dtype=np.float32))
    c = torch.from_numpy((rng.random((1, TILE, TILE)) > 0.5).astype(np.uint8))
    w = torch.from_numpy(rng.uniform(0.5, 2.0, (1, TILE, TILE)).astype(np.float32))
    return x, c, w


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    info = init_distributed()
    try:
        assert info == WorldInfo(rank, world, rank, "gloo", "cpu"), info
        assert world_info() == info and is_main() == (rank == 0)
        assert abs(all_reduce_mean(float(rank)) - 0.5) < 1e-12
        net = _net()
        if rank == 1:                       # DDP must broadcast rank 0's weights at wrap time
            with torch.no_grad():
                for p in net.parameters():
                    p.add_(1.0)
        model = wrap_ddp(net, "cpu")
        assert model is not net and unwrap(model) is net
        opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
        for step in range(STEPS):
            x, c, w = _tile(rank, step)
            opt.zero_grad(set_to_none=True)
            weighted_cross_entropy(model(x), c, w).backward()
            opt.step()
        state = {k: v.detach().clone() for k, v in unwrap(model).state_dict().items()}
        torch.save(state, Path(out) / f"rank{rank}.pt")
        barrier()
    finally:
        cleanup()


def test_two_gloo_ranks_equal_one_process_averaging_gradients(tmp_path):
    world = 2
    mp.spawn(_worker, args=(world, _free_port(), str(tmp_path)), nprocs=world, join=True)
    got = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(world)]

    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM)
    for step in range(STEPS):
        grads = []
        for r in range(world):
            x, c, w = _tile(r, step)
            net.zero_grad(set_to_none=True)
            weighted_cross_entropy(net(x), c, w).backward()
            grads.append([p.grad.clone() for p in net.parameters()])
        for p, *gs in zip(net.parameters(), *grads):
            p.grad = sum(gs) / world
        opt.step()
    ref = net.state_dict()
    start = _net().state_dict()
    moved = max(float((ref[k] - start[k]).abs().max()) for k in ref)
    assert moved > 1e-3                     # the steps changed the weights
    for r in range(world):
        diff = max(float((got[r][k] - ref[k]).abs().max()) for k in ref)
        assert diff < 1e-5, (r, diff)

    # one rank's tile alone gives different weights: both ranks' gradients were used
    solo = _net()
    opt = torch.optim.SGD(solo.parameters(), lr=LR, momentum=MOMENTUM)
    for step in range(STEPS):
        x, c, w = _tile(0, step)
        opt.zero_grad()
        weighted_cross_entropy(solo(x), c, w).backward()
        opt.step()
    assert max(float((solo.state_dict()[k] - ref[k]).abs().max()) for k in ref) > 1e-4


def test_single_process_fallbacks(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    info = init_distributed()
    assert info.world_size == 1 and info.rank == 0 and not info.distributed
    assert is_main()
    net = UNet(depth=1, width=2)
    assert wrap_ddp(net, "cpu") is net       # no process group: no wrapper
    barrier()
    cleanup()
    assert all_reduce_mean(2.5) == 2.5
    # per-rank seeds: rank 0 keeps the seed, other ranks get distinct ones
    assert rank_seed(7, 0) == 7
    assert len({rank_seed(7, r) for r in range(8)}) == 8


def test_missing_torchrun_variables_is_a_one_line_error(monkeypatch):
    from unetlab.errors import UnetlabError

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(UnetlabError, match="torchrun"):
        init_distributed()
