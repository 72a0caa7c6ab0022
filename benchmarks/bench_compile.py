"""``torch.compile`` (inductor, C++ backend) against eager for the CPU recipe net.

The width-16 depth-4 U-Net on a 380² tile, batch 1, bf16 autocast, channels_last (the CPU
training recipe):

1. forward (eval, no grad) — ``torch.compile(net)`` vs ``net``;
2. training step — forward + weighted cross-entropy in float32 (Eq. 1) compiled as one function
   (its backward compiled by AOTAutograd), ``backward()`` and an eager Adam step — vs the same
   step in eager mode.

For each: the compile time (first call of the compiled function minus one eager call) and the
steady-state time ratio (eager median / compiled median, > 1: compiled is faster), compiled and
eager calls interleaved. Not in the default ``make bench`` list (``DEFAULT = False``): compiling
takes minutes on a busy CPU; run it as ``python -m benchmarks compile``.
``UNETLAB_BENCH_COMPILE_REPEAT`` (default 7) timed rounds; ``UNETLAB_BENCH_COMPILE_PARTS``
(default ``forward,step``) which of the two.
"""
from __future__ import annotations

import os
import time

import torch

from benchmarks.harness import Table, measure_interleaved
from unetlab import hardware
from unetlab.loss import weighted_cross_entropy
from unetlab.model import UNet

#: not run by a bare ``python -m benchmarks`` / ``make bench`` (see benchmarks/__main__.py)
DEFAULT = False
SIZE = 380
REPEAT = int(os.environ.get("UNETLAB_BENCH_COMPILE_REPEAT", "7"))
CL = torch.channels_last


def _net(train: bool):
    torch.manual_seed(0)
    return UNet(width=16, depth=4).to(memory_format=CL).train(train)


def _input():
    return torch.randn(1, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(1)) \
        .contiguous(memory_format=CL)


def forward_calls() -> dict[str, callable]:
    """Eager and compiled forward passes (eval, no grad, bf16 autocast, channels_last)."""
    net = _net(False)
    compiled = torch.compile(net, backend="inductor")
    x = _input()

    def call(model):
        def run():
            with torch.no_grad(), hardware.autocast("bf16", "cpu"):
                return model(x)
        return run
    return {"eager": call(net), "compiled": call(compiled)}


def step_calls() -> dict[str, callable]:
    """Eager and compiled training steps (Adam, weighted CE in fp32, bf16 autocast)."""
    x = _input()
    o = UNet(width=16, depth=4).output_size(SIZE)
    g = torch.Generator().manual_seed(0)
    classes = torch.randint(0, 2, (1, o, o), generator=g, dtype=torch.uint8)
    weights = 1.0 + 10.0 * torch.rand(1, o, o, generator=g)
    out = {}
    for name in ("eager", "compiled"):
        net = _net(True)
        opt = torch.optim.Adam(net.parameters(), lr=1e-5)

        def loss_of(inp, net=net):
            with hardware.autocast("bf16", "cpu"):
                logits = net(inp)
            return weighted_cross_entropy(logits.float(), classes, weights)
        fn = torch.compile(loss_of, backend="inductor") if name == "compiled" else loss_of

        def step(fn=fn, opt=opt):
            opt.zero_grad(set_to_none=True)
            fn(x).backward()
            opt.step()
        out[name] = step
    return out


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def compare(title: str, calls: dict) -> tuple[float, float]:
    """(compile seconds, eager/compiled steady-state ratio) of one pair, printed as a table."""
    eager_first = _timed(calls["eager"])
    first = _timed(calls["compiled"])
    compile_s = max(first - eager_first, 0.0)
    times = measure_interleaved(calls, repeat=REPEAT, warmup=2)
    t = Table(f"{title}, width 16 depth 4, {SIZE}², bf16 autocast, channels_last, "
              f"{torch.get_num_threads()} threads, interleaved", baseline="eager")
    t.add_times("eager", times["eager"])
    t.add_times("compiled", times["compiled"], note=f"inductor; first call {first:.1f} s "
                f"(compile ≈ {compile_s:.1f} s)")
    t.print()
    return compile_s, t.ratio("compiled")


def main() -> None:
    print(f"torch {torch.__version__}; {hardware.describe_precision('bf16')}")
    t0 = time.perf_counter()
    parts = os.environ.get("UNETLAB_BENCH_COMPILE_PARTS", "forward,step").split(",")
    said = []
    if "forward" in parts:
        c, r = compare("forward (eval, no grad)", forward_calls())
        said.append(f"forward {r:.2f}× eager (compile {c:.0f} s)")
    if "step" in parts:
        c, r = compare("training step (Adam, weighted CE)", step_calls())
        said.append(f"training step {r:.2f}× eager (compile {c:.0f} s)")
    print(f"\ntorch.compile: {', '.join(said)}; adopt only above 1.15× "
          f"(whole benchmark {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
