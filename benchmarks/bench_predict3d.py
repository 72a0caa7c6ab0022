"""3D overlap-tile prediction of a large volume, streamed to zarr with bounded memory.

A float32 volume of noise, (Z, Y, X) = 256×1024×1024 by default (1 GiB; written to a zarr array
slab by slab, never whole in memory), is predicted by a small 3D U-Net (depth 2, width 4,
"valid", 2×2×2 pooling) with ``dask_predict.predict_to_zarr`` into a zarr group of
probabilities (2 classes × the volume, float32: 2 GiB on disk), chunk by chunk (128³ voxels,
each read with its halo), normalised over the whole volume as ``unetlab predict`` does. It
runs in a spawned child process with Dask's synchronous scheduler and torch on all cores.

Reported: wall time, voxels per second, and the child's peak resident memory (``VmHWM``): the
point is that memory stays at one chunk's working set (input chunk + halo, the network's
activations on one tile, one output chunk) however large the volume — target < 3 GiB at the
default size. One interior output chunk is checked against ``predict_tiled`` on a crop around
it with the same normalisation (max |Δ| printed; the two are the same computation).

The size is an argument: ``python -m benchmarks.bench_predict3d --size Z Y X`` (``--chunk``,
``--threads``); ``python -m benchmarks predict3d`` runs the default size, or
``BENCH_PREDICT3D_SIZE="Z,Y,X"`` (not part of a bare ``python -m benchmarks``: minutes). Time
grows linearly with the voxels; the peak does not (measured on one core: 0.88 GiB for
64×256×256, 1.01 GiB for 64×512×512, 0.92 GiB for 128×384×384 with full 128³ chunks, and at
the default 256×1024×1024 1.65 GiB in 489 s — 0.55 Mvoxel/s on one core of an AMD EPYC with
AVX-512 BF16 while the other core trained; tiled vs ``predict_tiled`` max |Δ| 2.6e-6).
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.harness import Table

DEFAULT_SIZE = (256, 1024, 1024)
#: Runs only when named (``python -m benchmarks predict3d``): minutes, 3 GiB written to disk.
DEFAULT = False
DEPTH, WIDTH, CHUNK = 2, 4, 128


def _vm_hwm_mib() -> float:
    """This process's own peak resident memory (MiB, ``VmHWM``; not ``ru_maxrss``, which a
    spawned child inherits from before ``exec``)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024.0


def _write_noise(path: Path, shape: tuple[int, int, int]) -> None:
    """A zarr array of uniform noise, written one z-slab of chunks at a time."""
    import zarr

    z = zarr.open_array(str(path), mode="w", shape=shape, chunks=(64, 256, 256),
                        dtype="float32")
    rng = np.random.default_rng(0)
    for z0 in range(0, shape[0], 64):
        z[z0:z0 + 64] = rng.random((min(64, shape[0] - z0),) + shape[1:], dtype=np.float32)


def _child(model: str, src: str, out: str, chunk: int, threads: int, q) -> None:
    import dask
    import torch

    from unetlab.dask_predict import predict_to_zarr

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    with dask.config.set(scheduler="synchronous"):
        res = predict_to_zarr(model, src, out, chunk=chunk, torch_threads=threads)
    q.put((time.perf_counter() - t0, _vm_hwm_mib(), res["total"]))


def _check_chunk(model: str, src: str, out: str, chunk: int) -> float:
    """max |Δ| between one interior output chunk and predict_tiled on a crop around it (the
    crop starts on the lattice and carries the halo, so both see the same voxels)."""
    import zarr

    from unetlab.checkpoint import load_model
    from unetlab.predict import predict_tiled
    from unetlab.sources import open_image, volume_stats
    from unetlab.tiling import TileGeometry

    net = load_model(model)
    geom = TileGeometry.from_net(net)
    vol = zarr.open_array(src, mode="r")
    got = zarr.open_group(out, mode="r")["probabilities"]
    stats = volume_stats(open_image(src))
    lo = [min(chunk, (n // 2) // chunk * chunk) for n in vol.shape]     # an interior chunk
    hi = [min(a + chunk, n) for a, n in zip(lo, vol.shape)]
    h = [m + 2 * L for m, L in zip(geom.margins, geom.lattices)]
    c0 = [max(0, (a - e) // L * L) for a, e, L in zip(lo, h, geom.lattices)]
    c1 = [min(n, b + e) for b, e, n in zip(hi, h, vol.shape)]
    crop = np.asarray(vol[c0[0]:c1[0], c0[1]:c1[1], c0[2]:c1[2]])
    ref = predict_tiled(net, crop, normalize=stats)
    ref = ref[(slice(None),) + tuple(slice(a - c, b - c) for a, b, c in zip(lo, hi, c0))]
    mine = np.asarray(got[(slice(None),) + tuple(slice(a, b) for a, b in zip(lo, hi))])
    return float(np.abs(mine - ref).max())


def run(size: tuple[int, int, int], chunk: int = CHUNK, threads: int | None = None) -> None:
    import torch

    from unetlab.checkpoint import save_model
    from unetlab.model import UNet

    threads = threads or os.cpu_count() or 1
    tmp = Path(tempfile.mkdtemp(prefix="bench_predict3d_"))
    try:
        torch.manual_seed(0)
        model = tmp / "model.pt"
        save_model(UNet(spatial_dims=3, depth=DEPTH, width=WIDTH), model)
        src, out = tmp / "volume.zarr", tmp / "prob.zarr"
        t0 = time.perf_counter()
        _write_noise(src, size)
        gib = np.prod(size) * 4 / 2**30
        print(f"volume (Z, Y, X) = {size} float32 ({gib:.2f} GiB zarr, written in "
              f"{time.perf_counter() - t0:.0f} s), 3D U-Net depth {DEPTH} width {WIDTH}, "
              f"chunks {chunk}³, {threads} torch thread(s)", flush=True)
        ctx = mp.get_context("spawn")
        q = ctx.Queue()
        p = ctx.Process(target=_child, args=(str(model), str(src), str(out), chunk, threads, q))
        p.start()
        seconds, peak, nchunks = q.get()
        p.join()
        diff = _check_chunk(str(model), str(src), str(out), chunk)
        table = Table(f"predict_to_zarr of a {'×'.join(map(str, size))} volume (one run)")
        table.add_times("predict_to_zarr, synchronous", [seconds],
                        note=f"{np.prod(size) / seconds / 1e6:.2f} Mvoxel/s; peak RSS "
                             f"{peak:.0f} MiB; {nchunks} chunks; max|Δ| {diff:.1e}")
        table.print()
        print(f"peak resident memory {peak / 1024:.2f} GiB (target < 3 GiB at 256×1024×1024; "
              f"output {2 * gib:.2f} GiB on disk)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_predict3d",
                                description=__doc__.splitlines()[0])
    env = os.environ.get("BENCH_PREDICT3D_SIZE")
    default = tuple(int(v) for v in env.split(",")) if env else DEFAULT_SIZE
    p.add_argument("--size", type=int, nargs=3, default=default, metavar=("Z", "Y", "X"),
                   help="volume size in voxels (default %(default)s)")
    p.add_argument("--chunk", type=int, default=CHUNK, help="output chunk side (voxels)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    args = p.parse_args([] if argv is None else argv)
    run(tuple(args.size), args.chunk, args.threads)


if __name__ == "__main__":
    main(sys.argv[1:])
