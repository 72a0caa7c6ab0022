"""Overlap-tile prediction (unetlab.predict.predict_tiled) against one pass of the network over
the whole mirror-padded image (the independent reference below), TTA equivariance, stacks,
out-of-core outputs and lazy inputs."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from unetlab.errors import UnetlabError
from unetlab.model import UNet
from unetlab.predict import predict_tiled
from unetlab.tiling import DIHEDRAL, TileGeometry, apply_dihedral, invert_dihedral

TOL = 1e-5


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def whole_image(net, img: np.ndarray) -> np.ndarray:
    """Reference: ONE forward pass over the image mirror-padded with numpy.pad(mode="reflect")
    by the margin on the top/left and up to the smallest valid size on the bottom/right,
    soft-max, cropped to H×W ("same" nets: their margin cropped from the output)."""
    m = TileGeometry.from_net(net).margin
    H, W = img.shape[-2:]

    def total(n):  # smallest valid input whose kept output covers n pixels
        k = 1
        while True:
            if net.is_valid_input_size(k):
                out = net.output_size(k) - (2 * m if net.padding == "same" else 0)
                if out >= n and k >= 2 * m + 1:
                    return k
            k += 1

    nh, nw = total(H), total(W)
    lead = [(0, 0)] * (img.ndim - 2)
    p = np.pad(img.astype(np.float64), lead + [(m, nh - H - m), (m, nw - W - m)], mode="reflect")
    x = torch.from_numpy(p.astype(np.float32)).reshape(1, -1, nh, nw)
    with torch.no_grad():
        y = torch.softmax(net.eval()(x).float(), dim=1)[0].numpy()
    if net.padding == "same":
        y = y[:, m:, m:]
    return y[:, :H, :W]


def _net(seed=0, **kw):
    torch.manual_seed(seed)
    opts = dict(width=2, depth=2)
    opts.update(kw)
    return UNet(**opts)


def _img(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("shape,tiles", [((1, 1), [None]), ((3, 8), [None, 1]),
                                         ((29, 41), [None, 30, 61]),
                                         ((70, 53), [None, 60, (44, 90)])])
def test_tiled_equals_whole_image_valid(depth, shape, tiles):
    net = _net(depth=depth)
    img = _img(shape, depth)
    ref = whole_image(net, img)
    for tile in tiles:
        got = predict_tiled(net, img, tile_size=tile, batch_size=2, normalize=False)
        assert got.shape == (2,) + shape and got.dtype == np.float32
        assert np.abs(got - ref).max() < TOL, (tile, np.abs(got - ref).max())
    assert np.allclose(got.sum(0), 1.0, atol=1e-5)


def test_tiled_uses_several_tiles_and_multichannel():
    net = _net(depth=2, in_channels=3, num_classes=4, width=3)
    img = _img((3, 61, 50), 3)
    ref = whole_image(net, img)
    for tile, bs in [(36, 1), (52, 3), (None, 1)]:
        got = predict_tiled(net, img, tile_size=tile, batch_size=bs, normalize=False)
        assert got.shape == (4, 61, 50)
        assert np.abs(got - ref).max() < TOL


@pytest.mark.parametrize("depth", [2, 3])
def test_same_padding_with_halo_matches_whole_image(depth):
    """"same" nets: the halo (true reach rounded up to the lattice) keeps the zero padding away
    from every kept pixel, so the documented tolerance is the same 1e-5."""
    net = _net(depth=depth, padding="same")
    img = _img((45, 70), 5)
    ref = whole_image(net, img)
    for tile in (None, 96, 120):
        got = predict_tiled(net, img, tile_size=tile, normalize=False)
        assert np.abs(got - ref).max() < TOL
    # without the halo the tile borders would show: the plain network on the bare image differs
    x = torch.from_numpy(np.pad(img, ((0, 3), (0, 2)), mode="reflect"))[None, None]
    with torch.no_grad():
        bare = torch.softmax(net(x), 1)[0, :, :45, :70].numpy()
    assert np.abs(bare - ref).max() > 1e-3


@pytest.mark.parametrize("shape", [(23, 23), (17, 30)])
def test_tta_is_equivariant(shape):
    net = _net(depth=2, width=3)
    img = _img(shape, 7)
    base = predict_tiled(net, img, tile_size=36, tta=True, batch_size=2, normalize=False)
    for g in DIHEDRAL[1:]:
        gi = np.ascontiguousarray(apply_dihedral(img, g))
        got = predict_tiled(net, gi, tile_size=36, tta=True, batch_size=1, normalize=False)
        assert np.abs(got - apply_dihedral(base, g)).max() < TOL, g
    # and TTA is the mean of g⁻¹(P(g(x))) with P the plain (whole-image) prediction
    ref = np.mean([invert_dihedral(whole_image(net, np.ascontiguousarray(apply_dihedral(img, g))), g)
                   for g in DIHEDRAL], axis=0)
    assert np.abs(base - ref).max() < TOL
    # without TTA the network is not equivariant (the test above could fail)
    plain = predict_tiled(net, img, normalize=False)
    t = DIHEDRAL[3]
    assert np.abs(predict_tiled(net, np.ascontiguousarray(apply_dihedral(img, t)), normalize=False)
                  - apply_dihedral(plain, t)).max() > 1e-3


def test_stacks():
    net = _net(depth=1)
    stack = _img((3, 20, 27), 2)
    got = predict_tiled(net, stack, tile_size=24, normalize=False)
    assert got.shape == (3, 2, 20, 27)
    for s in range(3):
        assert np.abs(got[s] - whole_image(net, stack[s])).max() < TOL
    net3 = _net(depth=1, in_channels=2)
    stack4 = _img((2, 2, 15, 16), 4)
    got = predict_tiled(net3, stack4, normalize=False)
    assert got.shape == (2, 2, 15, 16)
    assert np.abs(got[1] - whole_image(net3, stack4[1])).max() < TOL


def test_out_of_core_outputs_and_lazy_inputs(tmp_path):
    zarr = pytest.importorskip("zarr")
    net = _net(depth=2)
    img = _img((50, 61), 9)
    for tta in (False, True):
        ref = predict_tiled(net, img, tile_size=60, tta=tta, normalize=False)
        z = zarr.open_array(store=str(tmp_path / f"o{tta}.zarr"), mode="w", shape=(2, 50, 61),
                            chunks=(1, 16, 16), dtype="float32")
        predict_tiled(net, img, tile_size=60, tta=tta, out=z, normalize=False)
        assert np.abs(np.asarray(z[:]) - ref).max() < TOL
        mm = np.lib.format.open_memmap(tmp_path / f"o{tta}.npy", mode="w+", dtype=np.float32,
                                       shape=(2, 50, 61))
        mm[:] = 7.0    # garbage: every pixel must be overwritten
        predict_tiled(net, img, tile_size=60, tta=tta, out=mm, normalize=False)
        assert np.abs(np.asarray(mm) - ref).max() < TOL
    # lazy inputs: zarr, numpy memmap, dask
    zin = zarr.open_array(store=str(tmp_path / "in.zarr"), mode="w", shape=img.shape,
                          chunks=(16, 16), dtype="float32")
    zin[:] = img
    ref = predict_tiled(net, img, tile_size=60, normalize=False)
    assert np.abs(predict_tiled(net, zin, tile_size=60, normalize=False) - ref).max() < TOL
    da = pytest.importorskip("dask.array")
    lazy = da.from_array(img, chunks=20)
    assert np.abs(predict_tiled(net, lazy, tile_size=60, normalize=False) - ref).max() < TOL
    stack = zarr.open_array(store=str(tmp_path / "s.zarr"), mode="w", shape=(2, 50, 61),
                            chunks=(1, 16, 16), dtype="float32")
    stack[:] = np.stack([img, img[::-1].copy()])
    got = predict_tiled(net, stack, tile_size=60, normalize=False)
    assert np.abs(got[0] - ref).max() < TOL


def test_reads_only_the_tiles():
    """The image is read through basic slices no larger than an input tile."""
    net = _net(depth=2)
    img = _img((90, 90), 1)
    seen = []

    class Spy:
        shape, ndim, dtype = img.shape, 2, img.dtype

        def __getitem__(self, key):
            seen.append(key)
            return img[key]

    got = predict_tiled(net, Spy(), tile_size=48, normalize=False)
    assert np.abs(got - predict_tiled(net, img, tile_size=48, normalize=False)).max() == 0
    assert len(seen) > 4
    for key in seen:
        rows, cols = key[-2], key[-1]
        assert rows.stop - rows.start <= 48 and cols.stop - cols.start <= 48


def test_network_state_restored_and_progress():
    net = _net(depth=2)
    net.train()
    before = {k: (v.clone(), v.stride()) for k, v in net.state_dict().items()}
    calls = []

    class Bar:
        def update(self, n):
            calls.append(n)

    predict_tiled(net, _img((40, 40)), tile_size=28, tta=True, progress=Bar(), batch_size=2,
                  normalize=False)
    assert net.training
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k][0]) and v.stride() == before[k][1]
    from unetlab.tiling import plan_tiles
    ntiles = len(plan_tiles(TileGeometry.from_net(net), (40, 40), 28))
    assert sum(calls) == ntiles > 1


def test_channels_last_and_batch_do_not_change_results():
    net = _net(depth=2, width=4)
    img = _img((33, 47), 2)
    a = predict_tiled(net, img, tile_size=36, channels_last=False, normalize=False)
    b = predict_tiled(net, img, tile_size=36, channels_last=True, batch_size=4, normalize=False)
    assert np.abs(a - b).max() < TOL


def test_bad_inputs():
    net = _net(depth=1)
    with pytest.raises(UnetlabError, match="channels"):
        predict_tiled(_net(depth=1, in_channels=3), _img((2, 20, 20)), normalize=False)
    with pytest.raises(UnetlabError, match="channel"):
        predict_tiled(_net(depth=1, in_channels=3), _img((20, 20)), normalize=False)
    with pytest.raises(UnetlabError, match="out has shape"):
        predict_tiled(net, _img((20, 20)), out=np.zeros((2, 20, 21), np.float32), normalize=False)
    with pytest.raises(UnetlabError, match="batch_size"):
        predict_tiled(net, _img((20, 20)), batch_size=0, normalize=False)
    with pytest.raises(UnetlabError, match="shape"):
        predict_tiled(net, np.zeros((1, 1, 1, 4, 4), np.float32), normalize=False)


def test_bf16_tiled_is_seamless_and_close_to_fp32():
    """precision="bf16": the tiled result matches one bf16 pass over the whole padded image
    (seamless to bf16 rounding), and fp32 to 2e-2; the fp32 default stays exact."""
    from unetlab.hardware import autocast

    net = _net(depth=2, width=4, seed=3)
    img = _img((61, 70), 5)
    tiled = predict_tiled(net, img, tile_size=44, precision="bf16", normalize=False)
    assert tiled.dtype == np.float32 and np.allclose(tiled.sum(0), 1, atol=1e-5)
    with autocast("bf16", "cpu"):
        whole = whole_image(net, img)
    fp32 = predict_tiled(net, img, tile_size=44, normalize=False)
    assert np.abs(tiled - whole).max() <= 2e-2
    assert 0 < np.abs(tiled - fp32).max() <= 2e-2
    assert np.abs(fp32 - whole_image(net, img)).max() < TOL


def test_normalize_default_matches_the_data_module():
    from unetlab.data import normalize_image

    net = _net(depth=2, seed=4)
    raw = (_img((40, 52), 6) * 3000).astype(np.uint16)
    ref = predict_tiled(net, normalize_image(raw)[0], normalize=False)
    assert np.abs(predict_tiled(net, raw) - ref).max() < TOL
    stats = np.array([[float(raw.min()), float(raw.max())]])
    manual = (raw.astype(np.float64) - stats[0, 0]) / (stats[0, 1] - stats[0, 0])
    assert np.abs(predict_tiled(net, raw, normalize=stats)
                  - predict_tiled(net, manual.astype(np.float32), normalize=False)).max() < TOL


@pytest.mark.parametrize("shape,axes,cin,canon,stack", [
    ((20, 30), "YX", 1, lambda a: a[None, None], False),
    ((20, 30, 3), "YXS", 3, lambda a: np.moveaxis(a, -1, 0)[None], False),
    ((3, 20, 30), "SYX", 3, lambda a: a[None], False),
    ((4, 20, 30), "QYX", 1, lambda a: a[:, None], True),
    ((2, 3, 20, 30), "QSYX", 3, lambda a: a, True),
    ((1, 2, 20, 30, 3), "TZYXS", 3, lambda a: np.moveaxis(a[0], -1, 1), True),
])
def test_sources_read_the_axes_the_file_declares(shape, axes, cin, canon, stack):
    """sources.ImageSource is a lazy (S, C, H, W) view through the declared axes; blocks read
    through it equal the same block of the array moved to that layout."""
    from unetlab.sources import ImageSource, canonical_axes

    a = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)
    amap, is_stack = canonical_axes(shape, [c.lower() for c in axes], cin, "x")
    src = ImageSource(a, amap, is_stack)
    ref = canon(a)
    assert src.shape == ref.shape and is_stack == stack
    assert np.array_equal(src[:, :, 3:17, 5:29], ref[:, :, 3:17, 5:29])
    assert np.array_equal(src[ref.shape[0] - 1, :, ::3, ::2], ref[-1, :, ::3, ::2])
    assert np.array_equal(src[0, 0], ref[0, 0])


def test_sources_refuse_two_slice_axes():
    from unetlab.sources import canonical_axes

    with pytest.raises(UnetlabError, match="more than one slice axis"):
        canonical_axes((2, 3, 20, 30), ["t", "z", "y", "x"], 1, "f.tif")
