"""DDP building blocks (issue 8): two gloo processes on localhost train like one process that
averages the two tiles' gradients.

Each rank draws its own tile (a different seed per rank, as the trainer does), the network is
wrapped with :func:`unetlab.ddp.wrap_ddp`, and a few SGD steps with momentum 0.99 are
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

from unetlab.ddp import (WorldInfo, all_reduce_mean, barrier, cleanup, init_distributed,
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


# ---------------------------------------------------------------------------- the real trainer
# `torchrun --nproc_per_node 2 -m unetlab train ...` (as `python -m torch.distributed.run`, gloo
# on CPU): a tiny network, small tiles, a few iterations, no validation. Dropout is off (its
# masks would be drawn per rank too, but the reference below would have to replay them inside
# the same forward pass); augmentation is on: the reference draws it with the trainer's own
# per-rank sampling.
DDP_ARGS = ["synthetic", "--width", "4", "--depth", "2", "--tile", "60", "--warmup", "2",
            "--schedule", "constant", "--lr", "0.01", "--dropout", "0", "--threads", "1",
            "--no-progress", "--synthetic-images", "2", "--synthetic-size", "64",
            "--precision", "fp32", "--prefetch", "1", "--checkpoint-every", "1"]
DDP_ITERATIONS = 4


def _torchrun_start(args: list[str], nproc: int = 2, new_session: bool = False):
    """Start ``torchrun --nproc_per_node nproc -m unetlab train ARGS`` (one node, a free port on
    127.0.0.1, one thread per rank)."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                        "MASTER_PORT", "TORCHELASTIC_RUN_ID")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--nnodes", "1", "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           "-m", "unetlab", "train", *args]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=new_session)


def _finish(proc, timeout: float = 240.0) -> str:
    """Wait for a started torchrun; assert it succeeded; return its stdout."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:
        proc.kill()
        proc.communicate()
        raise
    assert proc.returncode == 0, (proc.returncode, out[-3000:], err[-3000:])
    return out


def _torchrun(args: list[str], nproc: int = 2) -> str:
    return _finish(_torchrun_start(args, nproc))


def _weights(run: Path) -> dict:
    from unetlab.checkpoint import safe_load

    return safe_load(run / "model.pt")["state_dict"]


@pytest.fixture
def one_thread():
    """torch on one thread in this process (tiny tensors on a shared, loaded CPU)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    """Two 2-rank runs started side by side (to save wall time): "full", uninterrupted, of
    DDP_ITERATIONS iterations, and "part", the same run stopped after 2 iterations (continued by
    the resume test). Returns (full run folder, its stdout, part run folder)."""
    root = tmp_path_factory.mktemp("ddp")
    full = _torchrun_start([*DDP_ARGS, "--out", str(root / "full"),
                            "--iterations", str(DDP_ITERATIONS)])
    part = _torchrun_start([*DDP_ARGS, "--out", str(root / "part"), "--iterations", "2"])
    out = _finish(full)
    _finish(part)
    return root / "full", out, root / "part"


def _reference(cfg, ranks: tuple[int, ...]) -> dict:
    """One process: the trainer's model init, tile sampling (per rank: SeedSequence([seed,
    rank, i])), loss, optimiser and learning-rate schedule; at every step the gradient of each
    rank's tiles is computed on its own and the gradients are averaged."""
    from unetlab.training import lr_at
    from unetlab.training.build import build_net, load_samples, make_optimizer, make_sampler
    from unetlab.training.prefetch import sample_batch, torch_seed

    samples, _ = load_samples(cfg)
    torch.manual_seed(cfg.seed)
    net, tile, out = build_net(cfg, samples[0].channels)
    sampler = make_sampler(cfg, samples, tile, out)
    opt = make_optimizer(cfg, net.parameters())
    for it in range(cfg.iterations):
        grads = []
        for r in ranks:
            x, c, w = sample_batch(sampler, cfg.batch, cfg.seed, r, it)
            net.zero_grad(set_to_none=True)
            torch.manual_seed(torch_seed(cfg.seed, r, it))
            weighted_cross_entropy(net(x), c, w).backward()
            grads.append([p.grad.clone() for p in net.parameters()])
        for p, *gs in zip(net.parameters(), *grads):
            p.grad = sum(gs) / len(gs)
        for g in opt.param_groups:
            g["lr"] = lr_at(cfg, it)
        opt.step()
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _maxdiff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def test_torchrun_two_ranks_equal_one_process_averaging_two_tiles(ddp_runs, one_thread):
    from unetlab.checkpoint import safe_load
    from unetlab.training.build import build_net, load_samples, make_sampler
    from unetlab.training.prefetch import sample_batch
    from unetlab.training import load_config

    run, stdout, _ = ddp_runs
    # rank 0 alone wrote the run folder and printed
    assert stdout.count("trained:") == 1, stdout
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.pt", "config.toml",
                                                      "curves.png", "log.csv", "model.pt"]
    ck = safe_load(run / "checkpoint.pt")
    assert (ck["iteration"], ck["world_size"], ck["rank"]) == (DDP_ITERATIONS, 2, 0)
    log = (run / "log.csv").read_text().splitlines()
    assert log[0].startswith("iteration,loss") and len(log) == 2 and log[1].startswith("4,")

    cfg = load_config(run / "config.toml")
    assert (cfg.width, cfg.depth, cfg.dropout, cfg.augment) == (4, 2, 0.0, True)
    # the two ranks draw different tiles
    samples, _ = load_samples(cfg)
    net, tile, out = build_net(cfg, samples[0].channels)
    sampler = make_sampler(cfg, samples, tile, out)
    assert not torch.equal(sample_batch(sampler, cfg.batch, cfg.seed, 0, 0)[0],
                           sample_batch(sampler, cfg.batch, cfg.seed, 1, 0)[0])

    got = _weights(run)
    ref = _reference(cfg, (0, 1))
    torch.manual_seed(cfg.seed)
    start = build_net(cfg, samples[0].channels)[0].state_dict()
    assert _maxdiff(ref, start) > 1e-3                 # the steps moved the weights
    assert _maxdiff(got, ref) < 1e-5
    # rank 0's tiles alone give other weights: both ranks' gradients entered every step
    assert _maxdiff(_reference(cfg, (0,)), ref) > 1e-4


def test_torchrun_resume_continues_like_the_uninterrupted_run(ddp_runs):
    from unetlab.checkpoint import safe_load

    full, _, run = ddp_runs
    assert safe_load(run / "checkpoint.pt")["iteration"] == 2
    assert _maxdiff(_weights(run), _weights(full)) > 1e-4     # not there yet
    # the learning rate does not depend on --iterations (constant schedule, fixed warm-up),
    # so extending the run continues exactly where the uninterrupted run was
    _torchrun(["--out", str(run), "--resume", "--iterations", str(DDP_ITERATIONS)])
    ck = safe_load(run / "checkpoint.pt")
    assert (ck["iteration"], ck["world_size"]) == (DDP_ITERATIONS, 2)
    assert _maxdiff(_weights(run), _weights(full)) < 1e-6
    # the resumed log continues the first one
    rows = [line.split(",")[0] for line in (run / "log.csv").read_text().splitlines()[1:]]
    assert rows == ["2", str(DDP_ITERATIONS)]


@pytest.mark.slow
def test_torchrun_ctrl_c_stops_all_ranks_saves_and_resumes_exactly(tmp_path):
    """Ctrl-C to the whole torchrun process group (as a terminal sends it; torchrun forwards a
    second SIGINT to each rank): every rank stops at the same iteration, rank 0 saves, and the
    resumed run ends with the weights of an uninterrupted run of the same length."""
    import signal
    import time

    from unetlab.checkpoint import safe_load

    run = tmp_path / "int"
    args = [*DDP_ARGS[:-2], "--checkpoint-every", "100000"]
    proc = _torchrun_start([*args, "--out", str(run), "--iterations", "100000"],
                           new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (run / "checkpoint.pt").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.2)
        time.sleep(2.0)
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert err.count("interrupted at iteration") == 1, err[-3000:]
    stopped = safe_load(run / "checkpoint.pt")["iteration"]
    assert 0 < stopped < 100000
    end = stopped + 2
    _torchrun(["--out", str(run), "--resume", "--iterations", str(end)])
    full = tmp_path / "full"
    _torchrun([*args, "--out", str(full), "--iterations", str(end)])
    assert safe_load(run / "checkpoint.pt")["iteration"] == end
    assert _maxdiff(_weights(run), _weights(full)) < 1e-6
