"""Training-step cost with and without data augmentation.

Target: a training step with the paper's augmentation (elastic 3×3 grid σ = 10 px, rotation,
flips, shift, grey values), tiles and weight maps produced off the training thread by the
trainer's prefetch thread, takes ≤ 1.1× a step whose tiles cost nothing (pre-made).

Cases (same network, same tiles per step, SGD momentum 0.99, NCHW):
* "pre-made tiles": the baseline, tiles drawn before timing — pure forward + loss + backward;
* "augmentation in the loop": tiles + augmentation drawn on the training thread (prefetch 0);
* "augmentation, prefetch thread": what ``unetlab.train`` does (prefetch 2).
Also the cost of one augmented tile alone, to show what is being hidden.
"""
from __future__ import annotations

import functools
import time

import numpy as np
import torch

from benchmarks.harness import Table
from unetlab.augment import Augment
from unetlab.data import TileSampler
from unetlab.loss import weighted_cross_entropy
from unetlab.model import UNet
from unetlab.synthetic import touching_cells
from unetlab.training.prefetch import Prefetcher, data_rng
from unetlab.weights import training_targets

STEPS = 6


def _case(width: int, depth: int, tile: int, table: Table) -> None:
    torch.manual_seed(0)
    net = UNet(depth=depth, width=width, dropout=0.5).train()
    out = net.output_size(tile)
    opt = torch.optim.SGD(net.parameters(), lr=1e-4, momentum=0.99)
    samples = touching_cells(4, 512, seed=0)
    targets = functools.partial(training_targets, w0=10.0, sigma=5.0)
    t0 = time.perf_counter()
    plain = TileSampler(samples, tile, out, targets).precompute()
    aug = TileSampler(samples, tile, out, targets, Augment.paper())
    aug._targets = plain._targets                        # share the precomputed weight maps
    print(f"weight maps of 4 images 512² (once per image): {time.perf_counter() - t0:.2f} s")

    def batch(sampler, it):
        x, c, w = sampler.sample(data_rng(0, 0, it))
        return (torch.from_numpy(x[None]), torch.from_numpy(c[None]), torch.from_numpy(w[None]))

    def step(x, c, w):
        opt.zero_grad(set_to_none=True)
        loss = weighted_cross_entropy(net(x), c, w)
        loss.backward()
        opt.step()

    premade = [batch(plain, i) for i in range(STEPS)]
    name = f"width {width}, depth {depth}, {tile}² → {out}²"

    def run_premade():
        for b in premade:
            step(*b)

    def run_inline():
        for i in range(STEPS):
            step(*batch(aug, i))

    def run_prefetch():
        pf = Prefetcher(functools.partial(batch, aug), 0, STEPS, 2)
        try:
            for i in range(STEPS):
                step(*pf.get(i))
        finally:
            pf.close()

    table.add(f"{name}: pre-made tiles", run_premade, repeat=3, warmup=1,
              note=f"{STEPS} steps")
    table.add(f"{name}: augmentation in the loop", run_inline, repeat=3, warmup=0)
    table.add(f"{name}: augmentation, prefetch thread", run_prefetch, repeat=3, warmup=0)
    rng = np.random.default_rng(0)
    table.add(f"{name}: one augmented tile alone ×{STEPS}",
              lambda: [aug.sample(rng) for _ in range(STEPS)], repeat=3, warmup=1)


def main() -> None:
    import os

    # One torch thread by default: on the shared 2-core machine two OpenMP threads are often
    # oversubscribed (tens of times slower); the other core is what the prefetch thread uses.
    torch.set_num_threads(int(os.environ.get("UNETLAB_BENCH_THREADS", "1")))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads "
          f"(UNETLAB_BENCH_THREADS to change)")
    cases = [(16, 4, 316)]
    if os.environ.get("UNETLAB_BENCH_FULL"):       # the paper net: ~10 s per step on 2 cores
        cases.append((64, 4, 572))
    for width, depth, tile in cases:
        t = Table(f"training steps with/without augmentation, width {width}",
                  baseline=f"width {width}, depth {depth}, {tile}² → "
                           f"{UNet(depth=depth, width=1).output_size(tile)}²: pre-made tiles",
                  higher_is_better_ratio=True)
        if width == 64:
            global STEPS
            STEPS = 2
        _case(width, depth, tile, t)
        t.print()
        base = t.results[0].median
        for r in t.results[1:3]:
            print(f"  {r.name.split(': ')[1]:<34} {r.median / base:5.2f}× the step without "
                  f"augmentation (target ≤ 1.10×)")


if __name__ == "__main__":
    main()
