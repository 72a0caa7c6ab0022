"""Overlap-tile prediction: bf16 vs fp32, unetlab vs MONAI like for like, and peak memory.

1. For U-Nets of width 16, 32 and 64 (depth 4, valid padding; ``UNETLAB_BENCH_PREDICT_WIDTHS``
   to choose), ``unetlab.predict_tiled`` of one image (default 2048²,
   ``UNETLAB_BENCH_PREDICT_SIZE`` to change) with the tiles and batch it chooses by itself
   (automatic tile size within the 1 GiB budget, batch 1):

   a. fp32 and bf16 autocast, each in NCHW and channels_last (four cases interleaved); the
      fastest layout of each precision and the bf16/fp32 time ratio per width;
   b. against MONAI ``sliding_window_inference`` (roi 512² or the image if smaller, overlap
      0.25, ``mode="gaussian"`` blending, batch 1) with a MONAI ``BasicUNet`` of the same widths: features
      (w, 2w, 4w, 8w, 16w, w), ReLU, no normalisation, no dropout — the same five levels, two
      3×3 convolutions per level, 2×2 max pooling and 2×2 transposed convolutions (BasicUNet
      pads its convolutions ("same") and its last up-convolution does not halve the channels).
      MONAI gets unetlab's fastest precision and memory format of (a): its windows are made
      channels-last and run under the same bf16 autocast when unetlab uses them; logits and
      soft-max in float32 for both. Time per output megapixel, interleaved, same threads.
      Skipped, with the reason, when monai is not importable (``make bench`` installs it).

   A summary line per width, and a profile of one width-32 unetlab call (where the time goes).
   ``UNETLAB_BENCH_PREDICT_REPEAT`` (default 2) timed rounds after one warm-up round.
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

from .harness import Table, measure_interleaved

SIZE = int(os.environ.get("UNETLAB_BENCH_PREDICT_SIZE", "2048"))
HUGE = int(os.environ.get("UNETLAB_BENCH_HUGE_SIZE", "20000"))
REPEAT = int(os.environ.get("UNETLAB_BENCH_PREDICT_REPEAT", "2"))


def _image(size: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    img = np.sin(xx / 17.0) * np.cos(yy / 23.0) + 0.3 * rng.standard_normal((size, size))
    return img.astype(np.float32)


LAYOUTS = (("NCHW", False), ("channels_last", True))
PRECISIONS = ("fp32", "bf16")
MONAI_ROI, MONAI_OVERLAP, MONAI_MODE = 512, 0.25, "gaussian"


def _widths() -> list[int]:
    return [int(w) for w in os.environ.get("UNETLAB_BENCH_PREDICT_WIDTHS", "16,32,64").split(",")]


def _unetlab_call(net, img, precision: str, channels_last: bool):
    from unetlab.predict import predict_tiled

    return lambda: predict_tiled(net, img, normalize=False, precision=precision,
                                 channels_last=channels_last)


def _precision_layouts(width: int, net, img, tile: int) -> dict[str, tuple[str, bool, float]]:
    """Tiled prediction in fp32 and bf16, each in NCHW and channels_last, interleaved; returns
    for each precision its fastest (layout name, channels_last, median seconds)."""
    import torch

    cases = {f"unetlab {p} {name}": (p, cl) for p in PRECISIONS for name, cl in LAYOUTS}
    times = measure_interleaved({k: _unetlab_call(net, img, p, cl) for k, (p, cl) in
                                 cases.items()}, repeat=REPEAT, warmup=1)
    mpx = img.size / 1e6
    t = Table(f"tiled prediction of a {SIZE}² image, U-Net width {width} depth 4 (valid), auto "
              f"tile {tile}², batch 1, {torch.get_num_threads()} torch threads, cases interleaved",
              baseline="unetlab fp32 NCHW", work_unit="Mpx/s")
    for k in cases:
        t.add_times(k, times[k], work=mpx)
    t.print()
    best = {}
    for p in PRECISIONS:
        k = min((k for k in cases if cases[k][0] == p), key=lambda k: t.get(k).median)
        best[p] = (k.split()[-1], cases[k][1], t.get(k).median)
    (lf, _, tf), (lb, _, tb) = best["fp32"], best["bf16"]
    print(f"width {width}: fastest fp32 = {lf} ({tf:.2f} s), fastest bf16 = {lb} ({tb:.2f} s); "
          f"bf16/fp32 time ratio {tb / tf:.2f} (bf16 speed-up {tf / tb:.2f}×; "
          f"{hardware_line()})")
    return best


def _monai_net(width: int):
    """MONAI's BasicUNet with unetlab's widths (w, 2w, …, 16w), ReLU, no norm, no dropout."""
    from monai.networks.nets import BasicUNet

    return BasicUNet(spatial_dims=2, in_channels=1, out_channels=2,
                     features=(width, 2 * width, 4 * width, 8 * width, 16 * width, width),
                     act=("relu", {"inplace": True}), norm=None, dropout=0.0).eval()


def _monai_call(mnet, img, precision: str, channels_last: bool):
    """MONAI sliding_window_inference in the given precision and memory format: each window
    is made channels-last (when asked) and run under the same autocast as unetlab; logits in
    float32, soft-max in float32, as unetlab does."""
    import torch
    from monai.inferers import sliding_window_inference

    from unetlab.hardware import autocast

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    roi = _monai_roi(img)
    mnet.to(memory_format=fmt)
    x = torch.from_numpy(img)[None, None].contiguous(memory_format=fmt)

    def predictor(w):
        with autocast(precision, "cpu"):
            return mnet(w.contiguous(memory_format=fmt)).float()

    def run():
        with torch.inference_mode():
            y = sliding_window_inference(x, roi_size=(roi, roi), sw_batch_size=1,
                                         predictor=predictor, overlap=MONAI_OVERLAP,
                                         mode=MONAI_MODE)
            return torch.softmax(y, 1)
    return run


def _monai_roi(img) -> int:
    """MONAI's window side: 512, or the image's shorter side when smaller (MONAI would pad)."""
    return min(MONAI_ROI, *img.shape)


def _against_monai(width: int, net, img, tile: int, precision: str, layout: str,
                   channels_last: bool) -> float | None:
    """unetlab vs MONAI in the same precision and memory format, interleaved; returns the
    speed-up per output megapixel (MONAI time / unetlab time), None without MONAI."""
    try:
        mnet = _monai_net(width)
    except ImportError:
        print("monai is not importable (make bench installs it): MONAI comparison skipped")
        return None
    setting = f"{precision}{' autocast' if precision == 'bf16' else ''}, {layout}"
    cases = {"monai sliding_window_inference": _monai_call(mnet, img, precision, channels_last),
             "unetlab predict_tiled": _unetlab_call(net, img, precision, channels_last)}
    times = measure_interleaved(cases, repeat=REPEAT, warmup=1)
    t = Table(f"unetlab vs MONAI, {SIZE}² image, width {width} depth 4, both {setting} "
              f"(unetlab's fastest), batch 1, per output megapixel",
              baseline="monai sliding_window_inference", work_unit="Mpx/s")
    t.add_times("monai sliding_window_inference", times["monai sliding_window_inference"],
                work=img.size / 1e6, note=f"BasicUNet ('same' padding), roi {_monai_roi(img)}², overlap "
                f"{MONAI_OVERLAP}, blending {MONAI_MODE}")
    t.add_times("unetlab predict_tiled", times["unetlab predict_tiled"], work=img.size / 1e6,
                note=f"valid tiles {tile}² (auto), no output overlap, no blending")
    t.print()
    pair = [m / u for m, u in zip(times["monai sliding_window_inference"],
                                  times["unetlab predict_tiled"])]
    r = t.ratio("unetlab predict_tiled")
    print(f"width {width}: unetlab/MONAI speed-up per output megapixel {r:.2f}× (ratio of "
          f"medians; per round {', '.join(f'{x:.2f}' for x in pair)}; target >= 1.5x)")
    return r


def hardware_line() -> str:
    from unetlab.hardware import cpu_bf16_flags

    flags = cpu_bf16_flags()
    return f"CPU native bf16: {', '.join(flags) if flags else 'none (emulated)'}"


def _speed() -> None:
    """Per width: bf16 vs fp32 (each in its fastest layout), then unetlab vs MONAI in
    unetlab's fastest setting; a summary line per width; a profile of width 32."""
    import torch

    from unetlab.model import UNet
    from unetlab.engine import balanced_tile
    from unetlab.tiling import TileGeometry, choose_tile_size

    img = _image(SIZE)
    summary, profiled = [], None
    for width in _widths():
        torch.manual_seed(0)
        net = UNet(width=width, depth=4).eval()
        geom = TileGeometry.from_net(net)           # the tile predict_tiled chooses
        tile = balanced_tile(geom, img.shape, choose_tile_size(geom, img.shape))[0]
        best = _precision_layouts(width, net, img, tile)
        prec = min(best, key=lambda p: best[p][2])
        layout, cl, _ = best[prec]
        r = _against_monai(width, net, img, tile, prec, layout, cl)
        gain = best["fp32"][2] / best["bf16"][2]
        summary.append(f"width {width:>2}: fp32 best {best['fp32'][0]:<13} bf16 best "
                       f"{best['bf16'][0]:<13} bf16 speed-up {gain:.2f}×"
                       + (f"; unetlab/MONAI ({prec}, {layout}) {r:.2f}×" if r else ""))
        if width == 32 or profiled is None:
            profiled = (net, prec, cl)
    print(f"\nsummary ({SIZE}² image, {hardware_line()}):")
    print("\n".join(summary))
    _profile(*profiled, img)


def _profile(net, precision: str, channels_last: bool, img) -> None:
    """Where the time of one predict_tiled call goes (cProfile, by primitive)."""
    import cProfile
    import pstats

    from unetlab.predict import predict_tiled

    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    predict_tiled(net, img, normalize=False, precision=precision, channels_last=channels_last)
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
    print(f"\nprofile of one unetlab call, width {net.width}, {precision}, "
          f"{'channels_last' if channels_last else 'NCHW'} ({total:.2f} s):")
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
