"""bf16 against fp32 on this machine: the peaks, the paper net and the CPU recipe net.

Every line names the CPU and its native bf16 flags (``amx_bf16``, ``avx512_bf16``), since the
answer differs between machines: oneDNN runs bf16 convolutions on AMX tiles where they exist,
on AVX-512 BF16 dot products where only those exist, and emulates bf16 elsewhere.

1. **Peaks**: one 3×3 convolution 64→64 on 512², channels_last, batch 1, no grad, in fp32 and
   with bf16 tensors (weights and input cast once); 2048² matrix product in fp32 and bf16.
2. **Networks**, each case against the fp32 NCHW baseline of the same table:
   forward (no grad, eval) and training step (forward + weighted cross-entropy in fp32 +
   backward + Adam), in NCHW and channels_last, fp32 and bf16 autocast (fp32 master weights);
   for the forward also a bf16 copy of the weights (cast once, as for inference).
   The paper net on 572² (``UNet.paper()``) and the CPU recipe net (width 16, depth 4) on 380².
3. The fraction of the bf16 conv peak reached by the bf16 cases (FLOPs counted analytically,
   see :mod:`benchmarks.bench_model`).

``UNETLAB_BENCH_PRECISION_NETS=recipe`` runs only the small net (the paper net's training
step takes seconds per call).
"""
from __future__ import annotations

import copy
import os
import platform

import torch
from torch import nn

from benchmarks.bench_model import conv_flops
from benchmarks.harness import Table
from unetlab import hardware
from unetlab.loss import weighted_cross_entropy
from unetlab.model import UNet


def cpu_line() -> str:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        model = platform.processor() or model
    flags = hardware.cpu_bf16_flags()
    return (f"{model}; native bf16: {', '.join(flags) if flags else 'none'}; "
            f"{torch.get_num_threads()} threads; torch {torch.__version__}")


def peaks() -> dict[str, float]:
    """GFLOP/s of the conv and matmul peaks, fp32 and bf16."""
    x = torch.randn(1, 64, 512, 512).contiguous(memory_format=torch.channels_last)
    conv = nn.Conv2d(64, 64, 3).to(memory_format=torch.channels_last)
    gconv = 2 * 64 * 64 * 9 * 510 * 510 / 1e9
    a = torch.randn(2048, 2048)
    gmm = 2 * 2048 ** 3 / 1e9
    t = Table(f"peaks ({cpu_line()})", baseline="conv fp32", work_unit="GFLOP/s")
    conv_b, x_b, a_b = copy.deepcopy(conv).to(torch.bfloat16), x.to(torch.bfloat16), a.bfloat16()
    with torch.no_grad():
        t.add("conv fp32", lambda: conv(x), repeat=5, work=gconv)
        t.add("conv bf16 tensors", lambda: conv_b(x_b), repeat=5, work=gconv)
    t.add("matmul 2048² fp32", lambda: a @ a, repeat=5, work=gmm)
    t.add("matmul 2048² bf16", lambda: a_b @ a_b, repeat=5, work=gmm)
    t.print()
    return {r.name: r.work / r.median for r in t.results}


def _cases(net_fn, n: int, train: bool):
    """(name, callable) for every memory format × precision of one network."""
    out = []
    for fmt, fname in ((torch.contiguous_format, "NCHW"), (torch.channels_last, "channels_last")):
        for prec in ("fp32", "bf16"):
            torch.manual_seed(0)
            net = net_fn().to(memory_format=fmt).train(train)
            x = torch.randn(1, 1, n, n).contiguous(memory_format=fmt)
            out.append((f"{fname} {prec}" + (" autocast" if prec == "bf16" else ""),
                        _step(net, x, prec) if train else _forward(net, x, prec)))
            if prec == "bf16" and not train:
                net_b = copy.deepcopy(net).to(torch.bfloat16)
                xb = x.to(torch.bfloat16)
                out.append((f"{fname} bf16 weights", _forward(net_b, xb, "fp32")))
    return out


def _forward(net, x, prec):
    def call():
        with torch.no_grad(), hardware.autocast(prec, "cpu"):
            return net(x)
    return call


def _step(net, x, prec):
    opt = torch.optim.Adam(net.parameters(), lr=1e-5)
    o = net.output_size(x.shape[-1])
    g = torch.Generator().manual_seed(0)
    classes = torch.randint(0, 2, (1, o, o), generator=g, dtype=torch.uint8)
    weights = 1.0 + 10.0 * torch.rand(1, o, o, generator=g)

    def call():
        opt.zero_grad(set_to_none=True)
        with hardware.autocast(prec, "cpu"):
            logits = net(x)
        weighted_cross_entropy(logits.float(), classes, weights).backward()
        opt.step()
    return call


def networks(peak: dict[str, float]) -> None:
    which = os.environ.get("UNETLAB_BENCH_PRECISION_NETS", "recipe,paper").split(",")
    nets = {"recipe": ("CPU recipe net (width 16, depth 4)", lambda: UNet(width=16, depth=4), 380),
            "paper": ("paper net (width 64, depth 4)", UNet.paper, 572)}
    for key in which:
        title, fn, n = nets[key]
        fwd, first = conv_flops(fn(), (1, 1, n, n))
        for train in (False, True):
            work = (3 * fwd - first if train else fwd) / 1e9
            reps = 2 if key == "paper" else 5
            t = Table(f"{title}, {n}², {'training step' if train else 'forward'} — "
                      f"{cpu_line()}", baseline="NCHW fp32", work_unit="GFLOP/s")
            for name, call in _cases(fn, n, train):
                t.add(name, call, repeat=reps, warmup=2, work=work)
            t.print()
            bpeak = peak["conv bf16 tensors"]
            best = max((r for r in t.results if "bf16" in r.name), key=lambda r: r.work / r.median)
            print(f"best bf16 case '{best.name}': {best.work / best.median:.0f} GFLOP/s = "
                  f"{best.work / best.median / bpeak:.0%} of the bf16 conv peak "
                  f"({bpeak:.0f} GFLOP/s); {t.ratio(best.name):.2f}× the fp32 NCHW baseline")


def main() -> None:
    torch.manual_seed(0)
    networks(peaks())


if __name__ == "__main__":
    main()
