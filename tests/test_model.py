"""unetlab.model: the paper's U-Net (Sec. 2, Fig. 1), its tile geometry, He initialisation,
variants, TorchScript and configuration round trips.

Output sizes are checked against an independent reference: the size arithmetic of Fig. 1 traced
layer by layer here (−2 per unpadded 3×3 conv, ÷2 per pooling, ×2 per up-convolution)."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from unetlab.model import GeometryError, UNet


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def reference_output_size(n: int, depth: int, padding: str) -> int | None:
    """Fig. 1's arithmetic, written independently of model.py: None when not valid."""
    if padding == "same":
        return n if n % 2 ** depth == 0 and n > 0 else None
    s = n
    for _ in range(depth):
        s -= 4                                  # two unpadded 3×3 convs
        if s < 2 or s % 2:
            return None
        s //= 2                                 # 2×2 max pool, stride 2
    s -= 4
    if s < 1:
        return None
    for _ in range(depth):
        s = 2 * s - 4                           # 2×2 up-conv, then two 3×3 convs
    return s if s >= 1 else None


def _valid_sizes(depth: int, padding: str, lo: int, count: int) -> list[int]:
    out, n = [], lo
    while len(out) < count:
        if reference_output_size(n, depth, padding) is not None:
            out.append(n)
        n += 1
    return out


@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5])
def test_shapes_for_many_valid_sizes(depth, padding):
    net = UNet(depth=depth, width=8, padding=padding)
    lo = 1 if padding == "same" else 1
    sizes = _valid_sizes(depth, padding, lo, 3)
    for n in sizes:
        assert net.is_valid_input_size(n)
        assert net.output_size(n) == reference_output_size(n, depth, padding)
    # run the smallest valid size (tiny input) and a non-square one
    h, w = sizes[0], sizes[1]
    with torch.no_grad():
        y = net(torch.zeros(1, 1, h, w))
    assert y.shape == (1, 2, net.output_size(h), net.output_size(w))
    # geometry properties
    assert net.lattice == 2 ** depth
    if padding == "valid":
        assert net.context == (h - net.output_size(h)) // 2 == 6 * 2 ** depth - 4
        assert net.valid_input_size(1) == sizes[0]
    else:
        assert net.context == 0


@pytest.mark.parametrize("width", [8, 16, 32, 64])
def test_widths(width):
    net = UNet(depth=2, width=width, in_channels=3, num_classes=4)
    n = net.valid_input_size(1)
    with torch.no_grad():
        y = net(torch.zeros(2, 3, n, n))
    assert y.shape == (2, 4, net.output_size(n), net.output_size(n))
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert convs[0].out_channels == width and convs[-1].out_channels == width
    assert max(m.out_channels for m in convs) == width * 4


def test_paper_preset():
    net = UNet.paper()
    assert sum(p.numel() for p in net.parameters()) == 31_030_658
    layers = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert len(layers) == 23
    assert sum(isinstance(m, nn.ConvTranspose2d) for m in layers) == 4
    assert sum(isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) for m in layers) == 18
    assert net.output_size(572) == 388 and net.context == 92
    assert net.valid_input_size(570) == 572 and net.valid_input_size(1) == 188
    assert net.is_valid_input_size(188) and not net.is_valid_input_size(574)
    # a forward pass on a meta tensor checks the shapes without computing
    meta = UNet.paper().to("meta")
    assert meta(torch.empty(1, 1, 572, 572, device="meta")).shape == (1, 2, 388, 388)


def test_invalid_sizes_give_clear_error():
    net = UNet(depth=4, width=8)
    with pytest.raises(ValueError, match=r"input size 574 is not valid.*nearest valid sizes: "
                                         r"572 or 588"):
        net.output_size(574)
    with pytest.raises(GeometryError, match="nearest valid sizes: 188"):
        net.output_size(100)
    with pytest.raises(ValueError, match=r"input size 190 is not valid.*188 or 204"):
        net(torch.zeros(1, 1, 188, 190))
    same = UNet(depth=3, width=8, padding="same")
    with pytest.raises(ValueError, match=r"multiple of 8.*nearest valid sizes: 24 or 32"):
        same(torch.zeros(1, 1, 30, 32))
    with pytest.raises(ValueError, match="input channel"):
        net(torch.zeros(1, 3, 188, 188))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        net(torch.zeros(188, 188))


def test_backward_pass_reaches_every_parameter():
    torch.manual_seed(0)
    net = UNet(depth=2, width=8, dropout=0.5)
    n = net.valid_input_size(1)
    y = net(torch.randn(2, 1, n, n))
    y.square().mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_he_initialisation_statistics():
    torch.manual_seed(0)
    net = UNet(depth=3, width=32)
    checked = 0
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            w = m.weight.detach()
            if isinstance(m, nn.ConvTranspose2d):
                fan_in = w.shape[0]          # stride 2 = kernel: one input pixel per channel
            else:
                fan_in = w.shape[1] * w.shape[2] * w.shape[3]
            want = math.sqrt(2.0 / fan_in)
            if w.numel() >= 500:             # enough samples for a 10 % check of the std
                assert w.std().item() == pytest.approx(want, rel=0.1), m
                assert abs(w.mean().item()) < 3 * want / math.sqrt(w.numel()) + 1e-3
                checked += 1
            assert torch.all(m.bias == 0)
    assert checked >= 15


@pytest.mark.parametrize("kw", [dict(norm="batch"), dict(norm="group"), dict(norm="instance"),
                                dict(dropout=0.5), dict(upsampling="bilinear"),
                                dict(upsampling="bilinear", padding="same", norm="batch")])
def test_variants_build_and_run(kw):
    torch.manual_seed(0)
    net = UNet(depth=2, width=8, **kw)
    n = net.valid_input_size(1) + (net.lattice if net.padding == "same" else 0)
    x = torch.randn(2, 1, n, n)
    y = net(x)
    assert y.shape == (2, 2, net.output_size(n), net.output_size(n))
    y.mean().backward()
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(x), net(x))              # eval is deterministic (no dropout)
    if kw.get("dropout"):
        net.train()
        with torch.no_grad():
            assert not torch.equal(net(x), net(x))      # dropout active in training


def test_bad_arguments():
    for kw in [dict(depth=-1), dict(width=0), dict(padding="reflect"), dict(norm="layer"),
               dict(dropout=1.5), dict(upsampling="nearest"), dict(num_classes=1)]:
        with pytest.raises(ValueError):
            UNet(**kw)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_round_trip(tmp_path):
    torch.manual_seed(0)
    net = UNet(depth=2, width=8).eval()
    n = net.valid_input_size(1)
    x = torch.randn(1, 1, n, n)
    with torch.no_grad():
        traced = torch.jit.trace(net, x)
    path = tmp_path / "net.ts"
    traced.save(str(path))
    loaded = torch.jit.load(str(path))
    x2 = torch.randn(1, 1, n + 4, n + 8)                # another valid size (depth 2: n ≡ 0 mod 4)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x), rtol=0, atol=0)
        torch.testing.assert_close(loaded(x2), net(x2), rtol=1e-6, atol=1e-6)


def test_config_round_trip():
    net = UNet(in_channels=2, num_classes=3, depth=3, width=12, padding="same", norm="group",
               dropout=0.25, upsampling="bilinear")
    cfg = net.config()
    again = UNet.from_config(cfg)
    assert again.config() == cfg
    assert sum(p.numel() for p in again.parameters()) == sum(p.numel() for p in net.parameters())
    again.load_state_dict(net.state_dict())
    with pytest.raises(ValueError, match="unknown UNet option"):
        UNet.from_config({**cfg, "colour": 1})
