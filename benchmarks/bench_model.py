"""The paper's U-Net against this machine's convolution peak.

* **Peak**: one 3×3 convolution 64→64 on a 512² image, channels_last, batch 1 — unpadded (as
  in the paper's network) and zero-padded; the faster of the two is "the peak".
* **Forward**: ``UNet.paper()`` on a 572² tile (→ 388²), ``torch.no_grad``, eval mode,
  channels_last.
* **Training step**: forward + weighted cross-entropy + backward + SGD (momentum 0.99), train
  mode (dropout on), in NCHW and in channels_last (the faster one is the trainer's choice).

FLOPs are counted analytically from the layer shapes (2 FLOP per multiply-add of every Conv2d /
ConvTranspose2d; ReLU, pooling, concatenation and the loss are not counted, < 1 %):
forward F = Σ_layers 2·C_in·C_out·k²·(output pixels) (for the 2×2 stride-2 up-convolution:
2·C_in·C_out·4·(input pixels)); a training step = forward + gradient w.r.t. the weights (F) +
gradient w.r.t. the inputs (F minus the first layer's, whose input needs no gradient).
Targets: forward ≥ 85 % and training step ≥ 60 % of the peak measured in the same run.
"""
from __future__ import annotations

import torch
from torch import nn

from benchmarks.harness import Table
from unetlab.loss import weighted_cross_entropy
from unetlab.model import UNet


def conv_flops(net: nn.Module, shape: tuple[int, ...]) -> tuple[float, float]:
    """(forward FLOPs, FLOPs of the first convolution) of ``net`` on an input of ``shape``,
    from the layer shapes recorded by forward hooks on a meta-device copy (no compute)."""
    import copy

    meta = copy.deepcopy(net).to("meta").eval()
    per_layer: list[float] = []

    def hook(m, inp, out):
        if isinstance(m, nn.ConvTranspose2d):
            cin, cout = m.in_channels, m.out_channels
            kh, kw = m.kernel_size
            pix = inp[0].shape[-2] * inp[0].shape[-1]
            per_layer.append(2.0 * cin * cout * kh * kw * pix * inp[0].shape[0])
        elif isinstance(m, nn.Conv2d):
            cin, cout = m.in_channels // m.groups, m.out_channels
            kh, kw = m.kernel_size
            pix = out.shape[-2] * out.shape[-1]
            per_layer.append(2.0 * cin * cout * kh * kw * pix * out.shape[0])

    hooks = [m.register_forward_hook(hook) for m in meta.modules()
             if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    with torch.no_grad():
        meta(torch.empty(shape, device="meta"))
    for h in hooks:
        h.remove()
    return sum(per_layer), per_layer[0]


def main() -> None:
    torch.manual_seed(0)
    threads = torch.get_num_threads()

    # ---------------------------------------------------------------- conv peak
    # The machine is shared: the peak is measured three times (before, between and after the
    # network cases) and the best median is used, so a busy moment cannot flatter the ratios.
    x = torch.randn(1, 64, 512, 512).contiguous(memory_format=torch.channels_last)
    convs = {}
    for pad, name in ((0, "unpadded (as the paper net)"), (1, "zero-padded")):
        conv = nn.Conv2d(64, 64, 3, padding=pad).to(memory_format=torch.channels_last)
        out = 512 - 2 + 2 * pad
        convs[name] = (conv, 2 * 64 * 64 * 9 * out * out / 1e9)
    peak = Table(f"conv peak: 3×3 conv 64→64, 512², batch 1, channels_last, {threads} threads",
                 work_unit="GFLOP/s")

    def measure_peak(when: str) -> None:
        with torch.no_grad():
            for name, (conv, gflop) in convs.items():
                peak.add(f"{name}, {when}", lambda c=conv: c(x), repeat=5, warmup=1,
                         work=gflop)

    # ---------------------------------------------------------------- the paper net
    net = UNet.paper()
    n = 572
    fwd, first = conv_flops(net, (1, 1, n, n))
    train_flops = 3 * fwd - first
    print(f"\npaper net: {sum(p.numel() for p in net.parameters()):,} parameters, "
          f"{n}² → {net.output_size(n)}², forward {fwd / 1e9:.1f} GFLOP, "
          f"training step {train_flops / 1e9:.1f} GFLOP (analytic)")

    measure_peak("before")
    t = Table(f"paper U-Net on a {n}² tile ({threads} threads)", work_unit="GFLOP/s")
    xin = torch.randn(1, 1, n, n)
    net_cl = UNet.paper().eval().to(memory_format=torch.channels_last)
    x_cl = xin.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        t.add("forward, no_grad, channels_last", lambda: net_cl(x_cl), repeat=3, warmup=1,
              work=fwd / 1e9)
        net_nchw = UNet.paper().eval()
        t.add("forward, no_grad, NCHW", lambda: net_nchw(xin), repeat=3, warmup=1,
              work=fwd / 1e9)
    del net_cl, net_nchw
    measure_peak("between")

    out = net.output_size(n)
    g = torch.Generator().manual_seed(0)
    classes = torch.randint(0, 2, (1, n, n), generator=g, dtype=torch.uint8)
    weights = 1.0 + 10.0 * torch.rand(1, n, n, generator=g)
    assert out == 388

    for fmt, name in ((torch.contiguous_format, "NCHW"), (torch.channels_last, "channels_last")):
        tnet = UNet.paper().train().to(memory_format=fmt)
        opt = torch.optim.SGD(tnet.parameters(), lr=1e-4, momentum=0.99)
        xt = xin.contiguous(memory_format=fmt)

        def step(tnet=tnet, opt=opt, xt=xt):
            opt.zero_grad(set_to_none=True)
            loss = weighted_cross_entropy(tnet(xt), classes, weights)
            loss.backward()
            opt.step()
            return loss

        t.add(f"training step, {name}", step, repeat=3 if name == "NCHW" else 2, warmup=1,
              work=train_flops / 1e9)
        del tnet, opt
    measure_peak("after")
    peak.print()
    peak_rate = max(r.work / r.median for r in peak.results)
    print(f"peak = {peak_rate:.1f} GFLOP/s (best median of the three measurements)")
    t.print()

    print(f"\nfraction of the conv peak ({peak_rate:.1f} GFLOP/s):")
    for r in t.results:
        rate = r.work / r.median
        target = 0.85 if r.name.startswith("forward") else 0.60
        print(f"  {r.name:<36} {rate:7.1f} GFLOP/s = {rate / peak_rate:6.1%} "
              f"(target ≥ {target:.0%})")

    # Paired ratios: the load of a shared machine drifts within seconds, so each call of the
    # network is also compared with the conv peak measured right before it (median of 3 calls).
    conv, gflop = convs["unpadded (as the paper net)"]
    print("\npaired with the unpadded conv measured just before each call "
          "(median of the per-call ratios):")
    net_cl = UNet.paper().eval().to(memory_format=torch.channels_last)
    tnet = UNet.paper().train()
    opt = torch.optim.SGD(tnet.parameters(), lr=1e-4, momentum=0.99)

    def fwd_call():
        with torch.no_grad():
            net_cl(x_cl)

    def train_call():
        opt.zero_grad(set_to_none=True)
        weighted_cross_entropy(tnet(xin), classes, weights).backward()
        opt.step()

    import statistics
    import time

    for name, fn, work, target in (("forward, no_grad, channels_last", fwd_call, fwd, 0.85),
                                   ("training step, NCHW", train_call, train_flops, 0.60)):
        fn()
        ratios = []
        for _ in range(3):
            with torch.no_grad():
                pt = []
                for _ in range(3):
                    t0 = time.perf_counter()
                    conv(x)
                    pt.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            ratios.append((work / dt) / (gflop * 1e9 / statistics.median(pt)))
        print(f"  {name:<36} {statistics.median(ratios):6.1%} of the peak "
              f"(per call: {', '.join(f'{q:.0%}' for q in ratios)}; target ≥ {target:.0%})")


if __name__ == "__main__":
    main()
