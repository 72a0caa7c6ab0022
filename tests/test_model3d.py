"""The 3D U-Net (Çiçek et al. 2016) on the same class: geometry, parameters, shapes, export."""
import io
import math

import pytest
import torch
from torch import nn

from unetlab.model import GeometryError, UNet, valid_output_size


def test_cicek2016_geometry_and_parameter_count():
    net = UNet.cicek2016()
    # Sec. 2 of the paper: 132×132×116 (x, y, z) → 44×44×28; our axes are (z, y, x)
    assert net.output_size((116, 132, 132)) == (28, 44, 44)
    assert net.context == 44 and net.lattice == 8
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    assert trainable == 19_073_187
    # the paper's count: conv weights + one bias per 3×3×3 conv channel + the head's biases
    weights = sum(m.weight.numel() for m in net.modules()
                  if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d)))
    convs3 = [m for m in net.modules() if isinstance(m, nn.Conv3d) and m.kernel_size == (3, 3, 3)]
    assert weights + sum(m.out_channels for m in convs3) + 3 == 19_069_955
    chans = [m.out_channels for m in net.down[0] if isinstance(m, nn.Conv3d)]
    assert chans == [32, 64]                                # doubled before pooling
    assert [m.out_channels for m in net.bottom if isinstance(m, nn.Conv3d)] == [256, 512]
    assert all(isinstance(m, nn.BatchNorm3d) for m in list(net.down[0])[1::3])


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("padding", ["valid", "same"])
def test_3d_shapes_for_many_valid_sizes(depth, padding):
    net = UNet(spatial_dims=3, depth=depth, width=2, padding=padding).eval()
    n0 = net.valid_input_size(1)
    sizes = [n0, net.valid_input_size(n0 + 1)]
    with torch.no_grad():
        for d in sizes:
            shape = (d, sizes[0], sizes[-1])
            y = net(torch.randn(1, 1, *shape))
            assert tuple(y.shape[2:]) == net.output_size(shape)
            assert y.shape[1] == 2


def test_anisotropic_pooling_geometry_matches_the_network():
    net = UNet(spatial_dims=3, depth=2, width=2, pooling=(1, 2, 2)).eval()
    assert net.lattices == (1, 4, 4) and net.lattice == (1, 4, 4)
    assert net.contexts == (10, 20, 20)
    shape = net.valid_input_size((25, 45, 47))
    assert shape[0] == 25                                     # no pooling along z: any size
    with torch.no_grad():
        y = net(torch.randn(1, 1, *shape))
    assert tuple(y.shape[2:]) == net.output_size(shape)
    assert tuple(s - o for s, o in zip(shape, y.shape[2:])) == tuple(2 * c for c in net.contexts)
    with pytest.raises(ValueError, match="one size per spatial axis|give 3 sizes"):
        net.output_size((13, 45))


def test_valid_output_size_per_axis_factors_agree_with_a_hand_trace():
    # factors (1, 2): 30 → 26 → (pool 1) 26 → 22 → (pool 2) 11 → 7 → up 14 → 10 → up 10 → 6
    assert valid_output_size(30, 2, (1, 2)) == 6
    assert valid_output_size(31, 2, (2, 2)) is None


def test_invalid_3d_size_names_the_axis_and_nearest_sizes():
    net = UNet(spatial_dims=3, depth=2, width=2)
    with pytest.raises(GeometryError, match=r"nearest valid sizes"):
        net(torch.randn(1, 1, 45, 44, 44))
    with pytest.raises(ValueError, match=r"\(N, C, D, H, W\)"):
        net(torch.randn(1, 1, 44, 44))


def test_3d_backward_and_he_init():
    torch.manual_seed(0)
    net = UNet(spatial_dims=3, depth=1, width=8)
    conv = net.down[0][0]
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / 27), rel=0.2)
    up = net.ups[0].up
    assert isinstance(up, nn.ConvTranspose3d) and up.kernel_size == (2, 2, 2)
    x = torch.randn(1, 1, *net.valid_input_size((20, 20, 20)))
    net(x).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


@pytest.mark.parametrize("upsampling", ["upconv", "bilinear"])
def test_3d_torchscript_round_trip_and_config(upsampling):
    net = UNet(spatial_dims=3, depth=1, width=2, upsampling=upsampling,
               pooling=(1, 2, 2)).eval()
    again = UNet.from_config(net.config())
    assert again.config() == net.config() and again.pools == net.pools
    x = torch.randn(1, 1, *net.valid_input_size((9, 20, 20)))
    buf = io.BytesIO()
    torch.jit.save(torch.jit.trace(net, x), buf)
    buf.seek(0)
    loaded = torch.jit.load(buf)
    x2 = torch.randn(1, 1, *net.valid_input_size((11, 28, 24)))   # another size than traced
    with torch.no_grad():
        assert torch.allclose(loaded(x2), net(x2), atol=1e-5)


def test_2d_config_is_unchanged_by_the_3d_options():
    assert set(UNet.paper().config()) == {"in_channels", "num_classes", "depth", "width",
                                          "padding", "norm", "dropout", "upsampling"}
    with pytest.raises(ValueError, match="spatial_dims"):
        UNet(spatial_dims=4)
    with pytest.raises(ValueError, match="pooling"):
        UNet(pooling=(2, 3))
