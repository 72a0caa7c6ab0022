"""Overlap-tile prediction: speed against MONAI and peak memory on a 20000² image.

1. Per output megapixel, ``unetlab.predict_tiled`` (U-Net width 32, depth 4, valid padding, the
   automatic tile size within the default 1 GiB budget, channels-last on CPU) against MONAI
   ``sliding_window_inference`` (roi 512², overlap 0.25, mode="gaussian") with a MONAI
   ``BasicUNet`` of the same widths: features (32, 64, 128, 256, 512, 32), ReLU, no
   normalisation, no dropout — the same five levels of 32…512 channels, two 3×3 convolutions
   per level, 2×2 max pooling and 2×2 transposed convolutions (7.78 M vs 7.76 M parameters;
   BasicUNet pads its convolutions ("same") and its last up-convolution does not halve the
   channels). Same image (default 2048², ``UNETLAB_BENCH_PREDICT_SIZE`` to change), same
   torch threads, float32, inference mode, in this run. Needs monai (``make bench``).
   A profile of one unetlab run says where the time goes.
2. Peak RSS (``VmHWM`` of /proc/self/status in a fresh subprocess: the high-water mark of its
   own address space; ``ru_maxrss`` would also count the parent's peak before ``exec``) while
   predicting a 20000×20000 float32 image read lazily from zarr and written tile by tile into a
   zarr array, with a small network (width 4, depth 2). ``UNETLAB_BENCH_HUGE_SIZE`` changes the
   side; the target is < 2 GiB.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from .harness import Table

SIZE = int(os.environ.get("UNETLAB_BENCH_PREDICT_SIZE", "2048"))
HUGE = int(os.environ.get("UNETLAB_BENCH_HUGE_SIZE", "20000"))
REPEAT = int(os.environ.get("UNETLAB_BENCH_PREDICT_REPEAT", "2"))


def _image(size: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    img = np.sin(xx / 17.0) * np.cos(yy / 23.0) + 0.3 * rng.standard_normal((size, size))
    return img.astype(np.float32)


def _speed() -> None:
    import torch

    from unetlab.model import UNet
    from unetlab.predict import predict_tiled
    from unetlab.tiling import TileGeometry, choose_tile_size

    torch.manual_seed(0)
    img = _image(SIZE)
    mpx = SIZE * SIZE / 1e6
    net = UNet(width=32, depth=4).eval()
    tile = choose_tile_size(TileGeometry.from_net(net), img.shape)
    t = Table(f"prediction of a {SIZE}² image, U-Net width 32 depth 4, {torch.get_num_threads()} "
              f"torch threads, runs interleaved (ratio = MONAI time / time = speed-up per output "
              f"megapixel)", baseline="monai sliding_window_inference", work_unit="Mpx/s")
    cases = {}
    try:
        from monai.inferers import sliding_window_inference
        from monai.networks.nets import BasicUNet
    except ImportError:
        print("monai is not installed (make bench installs it): MONAI comparison skipped")
        t.baseline = None
    else:
        mnet = BasicUNet(spatial_dims=2, in_channels=1, out_channels=2,
                         features=(32, 64, 128, 256, 512, 32), act=("relu", {"inplace": True}),
                         norm=None, dropout=0.0).eval()
        x = torch.from_numpy(img)[None, None]

        def monai_run():
            with torch.inference_mode():
                y = sliding_window_inference(x, roi_size=(512, 512), sw_batch_size=1,
                                             predictor=mnet, overlap=0.25, mode="gaussian")
                return torch.softmax(y, 1)

        cases["monai sliding_window_inference"] = (monai_run, "roi 512², overlap 0.25, gaussian")
    cases["unetlab predict_tiled"] = (lambda: predict_tiled(net, img, normalize=False),
                                      f"auto tile {tile[0]}² (valid), channels_last")
    cases["unetlab predict_tiled tile 572"] = (lambda: predict_tiled(net, img, tile_size=572,
                                                                     normalize=False),
                                               "the paper's tile: more context per pixel")
    # the machine is shared: interleave the cases so that load drifts hit all of them alike
    times = {k: [] for k in cases}
    for fn, _ in cases.values():      # warm-up
        fn()
    for _ in range(REPEAT):
        for k, (fn, _) in cases.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    for k, (_, note) in cases.items():
        t.add_times(k, times[k], work=mpx, note=note)
    t.print()
    if t.baseline:
        pair = [m / u for m, u in zip(times["monai sliding_window_inference"],
                                      times["unetlab predict_tiled"])]
        print(f"speed-up over MONAI per output megapixel: {t.ratio('unetlab predict_tiled'):.2f}x "
              f"(ratio of medians; per interleaved round: "
              f"{', '.join(f'{r:.2f}' for r in pair)}; target >= 1.5x)")
    _channels_last(net, tile[0])
    _profile(net, img)


def _channels_last(net, n: int) -> None:
    """One forward pass on one n² tile, contiguous vs channels-last (interleaved)."""
    import torch

    x = torch.randn(1, 1, n, n)
    t = Table(f"one forward pass, {n}² tile, width 32 depth 4: memory format",
              baseline="contiguous (NCHW)")
    res = {"contiguous (NCHW)": [], "channels_last (NHWC)": []}
    with torch.inference_mode():
        for _ in range(REPEAT + 1):
            for k, fmt in (("contiguous (NCHW)", torch.contiguous_format),
                           ("channels_last (NHWC)", torch.channels_last)):
                net.to(memory_format=fmt)
                xx = x.contiguous(memory_format=fmt)
                t0 = time.perf_counter()
                net(xx)
                res[k].append(time.perf_counter() - t0)
    net.to(memory_format=torch.contiguous_format)
    for k, v in res.items():
        t.add_times(k, v[1:])
    t.print()


def _profile(net, img) -> None:
    """Where the time of one predict_tiled call goes (cProfile, by primitive)."""
    import cProfile
    import pstats

    from unetlab.predict import predict_tiled

    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    predict_tiled(net, img, normalize=False)
    prof.disable()
    total = time.perf_counter() - t0
    st = pstats.Stats(prof)
    groups = {"conv2d (3x3 + 1x1)": ["conv2d"], "conv_transpose2d": ["conv_transpose2d"],
              "max_pool2d": ["max_pool2d"], "relu": ["relu_"], "cat": ["cat"],
              "softmax": ["softmax"], "memory format / copies": ["copy_", "contiguous", "_to"]}
    spent = {k: 0.0 for k in groups}
    for (fname, _, func), (_, _, tt, _, _) in st.stats.items():
        for k, names in groups.items():
            if any(func.endswith(n) or func == f"<built-in method torch.{n}>"
                   or func == f"<method '{n}' of 'torch._C.TensorBase' objects>" for n in names):
                spent[k] += tt
    print(f"\nprofile of one unetlab call ({total:.2f} s):")
    for k, v in sorted(spent.items(), key=lambda kv: -kv[1]):
        print(f"  {k:<28} {v:7.2f} s  {100 * v / total:5.1f} %")
    rest = total - sum(spent.values())
    print(f"  {'rest (reading, stitching)':<28} {rest:7.2f} s  {100 * rest / total:5.1f} %")


_HUGE_CHILD = r"""
import json, sys, time
import numpy as np, torch, zarr
from unetlab.model import UNet
from unetlab.predict import predict_tiled
src, dst, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.manual_seed(0)
net = UNet(width=4, depth=2).eval()
img = zarr.open_array(store=src, mode="r")
out = zarr.open_array(store=dst, mode="w", shape=(2, size, size), chunks=(1, 2048, 2048),
                      dtype="float32")
def hwm_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
base = hwm_kib()
t0 = time.perf_counter()
predict_tiled(net, img, out=out, normalize=False)
dt = time.perf_counter() - t0
peak = hwm_kib()
print(json.dumps({"seconds": dt, "peak_kib": peak, "before_kib": base,
                  "check": float(np.asarray(out[1, size // 2, :8]).sum())}))
"""


def _huge() -> None:
    import zarr

    size = HUGE
    with tempfile.TemporaryDirectory(prefix="unetlab-bench-") as d:
        src, dst = os.path.join(d, "in.zarr"), os.path.join(d, "out.zarr")
        z = zarr.open_array(store=src, mode="w", shape=(size, size), chunks=(2048, 2048),
                            dtype="float32")
        t0 = time.perf_counter()
        band = 2048
        cols = np.sin(np.arange(size, dtype=np.float32) / 17.0)
        for y in range(0, size, band):   # write the input band by band (never whole in memory)
            h = min(band, size - y)
            rows = np.cos(np.arange(y, y + h, dtype=np.float32) / 23.0)
            z[y:y + h] = rows[:, None] * cols[None, :]
        print(f"\nwrote a {size}² float32 zarr input in {time.perf_counter() - t0:.1f} s")
        r = subprocess.run([sys.executable, "-c", _HUGE_CHILD, src, dst, str(size)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            print(r.stderr[-2000:])
            raise SystemExit("huge-image benchmark failed")
        res = json.loads(r.stdout.strip().splitlines()[-1])
        gib = res["peak_kib"] / 2**20
        print(f"## {size}x{size} image, U-Net width 4 depth 2, zarr in -> zarr out (2 classes)")
        print(f"time {res['seconds']:.1f} s ({size * size / 1e6 / res['seconds']:.2f} Mpx/s), "
              f"peak RSS {gib:.2f} GiB (process before predicting: "
              f"{res['before_kib'] / 2**20:.2f} GiB) -> {'OK' if gib < 2 else 'FAIL'} "
              f"(target < 2 GiB)")


def main() -> None:
    which = os.environ.get("UNETLAB_BENCH_PREDICT_PARTS", "speed,huge").split(",")
    if "speed" in which:
        _speed()
    if "huge" in which:
        _huge()


if __name__ == "__main__":
    main()
