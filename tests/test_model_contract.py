"""The contract every ``UNet`` variant keeps (in the style of segmentation_models_pytorch's
shared model tests): run over padding × normalisation × depth × width × upsampling × dropout ×
input channels × classes, each variant tiny so that the whole file stays fast.

For every variant: the output shape for several valid input sizes (square and not) is
``(N, K, n − 2·context, m − 2·context)`` for unpadded convolutions (Sec. 2: 572 → 388 for the
paper's net) and ``(N, K, n, m)`` for "same" padding; a backward pass gives a finite gradient on
every parameter; an invalid size is refused with the ``ValueError`` naming the nearest valid
sizes; a TorchScript export reproduces the network's outputs within 1e-5 at a size other than
the one it was traced at.
"""
from __future__ import annotations

import pytest
import torch

from unetlab.export import example_size, export_torchscript
from unetlab.model import GeometryError, UNet

_KEYS = ("padding", "norm", "depth", "width", "upsampling", "dropout", "in_channels",
         "num_classes")
#: every value of every option appears, and every padding meets every norm and upsampling
_ROWS = [
    ("valid", None, 2, 2, "upconv", 0.0, 1, 2),
    ("same", None, 3, 3, "bilinear", 0.5, 3, 2),
    ("valid", "batch", 3, 2, "bilinear", 0.0, 2, 3),
    ("same", "batch", 2, 4, "upconv", 0.2, 1, 4),
    ("valid", "group", 4, 2, "upconv", 0.5, 1, 2),
    ("same", "group", 5, 2, "bilinear", 0.0, 1, 3),
    ("valid", "instance", 2, 3, "bilinear", 0.1, 3, 2),
    ("same", "instance", 4, 2, "upconv", 0.0, 2, 2),
    ("valid", None, 5, 2, "bilinear", 0.0, 1, 2),
    ("same", None, 2, 2, "upconv", 0.0, 1, 2),
    ("valid", "batch", 5, 2, "upconv", 0.3, 1, 2),
    ("same", "batch", 4, 3, "bilinear", 0.0, 1, 2),
    ("valid", None, 1, 4, "upconv", 0.0, 1, 2),
    ("same", "group", 3, 8, "upconv", 0.0, 1, 2),
]
VARIANTS = [dict(zip(_KEYS, row)) for row in _ROWS]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _id(kw: dict) -> str:
    return "{padding}-{norm}-d{depth}-w{width}-{upsampling}-p{dropout}-c{in_channels}-k{num_classes}" \
        .format(**kw)


def _net(kw: dict) -> UNet:
    torch.manual_seed(0)
    return UNet(**kw)


def _sizes(net: UNet) -> list[int]:
    """Three valid sizes (pixels): the second smallest and the next two on the lattice."""
    first = net.valid_input_size(2 * net.lattice if net.padding == "same" else 1)
    return [first + k * net.lattice for k in (1, 2, 3)]


def _expected(net: UNet, n: int) -> int:
    return n if net.padding == "same" else n - 2 * net.context


@pytest.mark.parametrize("kw", VARIANTS, ids=_id)
def test_output_shapes_for_several_valid_sizes(kw):
    net = _net(kw).eval()
    a, b, c = _sizes(net)
    with torch.no_grad():
        for h, w in [(a, a), (b, c), (c, a)]:
            assert net.is_valid_input_size(h) and net.is_valid_input_size(w)
            y = net(torch.randn(2, kw["in_channels"], h, w))
            assert y.shape == (2, kw["num_classes"], _expected(net, h), _expected(net, w))
            assert (net.output_size(h), net.output_size(w)) == tuple(y.shape[-2:])
            assert torch.isfinite(y).all()


@pytest.mark.parametrize("kw", VARIANTS, ids=_id)
def test_backward_gives_finite_gradients_everywhere(kw):
    net = _net(kw).train()
    n = _sizes(net)[0]
    y = net(torch.randn(2, kw["in_channels"], n, n))
    y.square().mean().backward()
    grads = {name: p.grad for name, p in net.named_parameters()}
    missing = [name for name, g in grads.items() if g is None]
    assert not missing, missing
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert grads["head.weight"].abs().sum() > 0


@pytest.mark.parametrize("kw", VARIANTS, ids=_id)
def test_invalid_size_is_refused_clearly(kw):
    net = _net(kw)
    n = _sizes(net)[0] + 1                               # off the 2^depth lattice
    assert not net.is_valid_input_size(n)
    with pytest.raises(ValueError, match=rf"input size {n} is not valid.*nearest valid sizes"):
        net.output_size(n)
    with pytest.raises(GeometryError, match=rf"input size {n} is not valid"):
        net(torch.zeros(1, kw["in_channels"], n - 1, n))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("kw", VARIANTS, ids=_id)
def test_torchscript_round_trip(kw, tmp_path):
    net = _net(kw).eval()
    path = export_torchscript(net, tmp_path / "net.ts")
    loaded = torch.jit.load(str(path))
    n = _sizes(net)[2]
    assert n != example_size(net)                        # a size other than the traced one
    x = torch.randn(1, kw["in_channels"], n, n)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x), rtol=0, atol=1e-5)
