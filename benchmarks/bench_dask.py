"""Out-of-core prediction through Dask.

An 8192×8192 float32 zarr image (256 MiB) is predicted by a small U-Net (depth 3, width 4,
"valid") into a zarr group of probabilities (2 × 8192² float32, 512 MiB):

* ``predict_tiled`` in one process (reading the zarr lazily, writing into a zarr array: the
  same I/O as the Dask runs), all cores for torch — the baseline;
* ``predict_to_zarr`` on a ``LocalCluster`` with 1 worker process (all cores for torch) and with
  2 worker processes (cores split between them), chunks of 1024².

Reported: wall time (one run each: the whole benchmark must stay under ~5 minutes on a shared
2-core machine), ratio against the baseline (> 1 = faster), and the peak resident memory of each
process that computed (``ru_maxrss``): the point of the exercise is that memory per worker stays
at one chunk's working set however large the image is. The output is checked against the
baseline (max |Δ| printed). ``BENCH_DASK_SIZE`` (env) changes the image side.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.harness import Table

SIZE = int(os.environ.get("BENCH_DASK_SIZE", "8192"))
CHUNK = 1024
DEPTH, WIDTH = 3, 4


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0   # Linux: KiB


def _baseline(model: str, src: str, out: str, q) -> None:
    import torch
    import zarr

    from unetlab.checkpoint import load_model
    from unetlab.predict import predict_tiled

    torch.set_num_threads(os.cpu_count() or 1)
    net = load_model(model)
    img = zarr.open_array(src, mode="r")
    res = zarr.open_array(out, mode="w", shape=(2, SIZE, SIZE), chunks=(2, CHUNK, CHUNK),
                          dtype="float32")
    t0 = time.perf_counter()
    predict_tiled(net, img, out=res, normalize=False)
    q.put((time.perf_counter() - t0, _peak_mib()))


def _worker_peak() -> float:
    return _peak_mib()


def _dask_run(model: str, src: str, out: str, workers: int) -> tuple[float, list[float]]:
    from distributed import Client, LocalCluster

    from unetlab.dask_predict import predict_to_zarr

    cores = os.cpu_count() or 1
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      dashboard_address=":0", memory_limit=0, silence_logs=40) as cluster, \
            Client(cluster) as client:
        client.run(lambda: __import__("torch").set_num_threads(max(1, cores // workers)))
        t0 = time.perf_counter()
        predict_to_zarr(model, src, out, chunk=CHUNK, normalize=False, client=client,
                        torch_threads=max(1, cores // workers))
        dt = time.perf_counter() - t0
        peaks = sorted(client.run(_worker_peak).values())
    return dt, peaks


def main() -> None:
    import torch
    import zarr

    from unetlab.checkpoint import save_model
    from unetlab.model import UNet

    tmp = Path(tempfile.mkdtemp(prefix="bench_dask_"))
    try:
        torch.manual_seed(0)
        model = tmp / "model.pt"
        save_model(UNet(depth=DEPTH, width=WIDTH), model)
        src = tmp / "image.zarr"
        z = zarr.open_array(str(src), mode="w", shape=(SIZE, SIZE), chunks=(CHUNK, CHUNK),
                            dtype="float32")
        rng = np.random.default_rng(0)
        for y in range(0, SIZE, CHUNK):
            z[y:y + CHUNK] = rng.random((min(CHUNK, SIZE - y), SIZE), dtype=np.float32)
        print(f"image {SIZE}×{SIZE} float32 zarr, U-Net depth {DEPTH} width {WIDTH}, "
              f"chunks {CHUNK}², {os.cpu_count()} cores", flush=True)

        ctx = mp.get_context("spawn")
        q = ctx.Queue()
        p = ctx.Process(target=_baseline, args=(str(model), str(src), str(tmp / "base.zarr"), q))
        p.start()
        t_base, peak_base = q.get()
        p.join()
        table = Table(f"Dask prediction of a {SIZE}² zarr image (one run each)",
                      baseline="predict_tiled, 1 process")
        table.add_times("predict_tiled, 1 process", [t_base],
                        note=f"peak {peak_base:.0f} MiB")
        base = zarr.open_array(str(tmp / "base.zarr"), mode="r")
        for workers in (1, 2):
            out = tmp / f"dask{workers}.zarr"
            dt, peaks = _dask_run(str(model), str(src), str(out), workers)
            got = zarr.open_group(str(out), mode="r")["probabilities"]
            diff = max(float(np.abs(got[:, y:y + CHUNK] - base[:, y:y + CHUNK]).max())
                       for y in range(0, SIZE, 4 * CHUNK))
            table.add_times(f"predict_dask, {workers} worker(s)", [dt],
                            note="peak/worker " + ", ".join(f"{m:.0f}" for m in peaks)
                                 + f" MiB; max|Δ| {diff:.1e} (sampled rows)")
            shutil.rmtree(out, ignore_errors=True)
        table.print()
        r1, r2 = table.ratio("predict_dask, 1 worker(s)"), table.ratio("predict_dask, 2 worker(s)")
        print(f"Dask overhead vs one process: 1 worker {100 * (1 / r1 - 1):+.0f} %, "
              f"2 workers {100 * (1 / r2 - 1):+.0f} % (wall time; shared machine, one run each)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
