"""Overlap-tile prediction of volumes (3D networks, Çiçek et al. 2016) through the one engine:
per-axis tile plans and mirror padding, tiled == one pass over the whole mirror-padded volume,
the 48 / 16 rotations/flips of test-time averaging (exactly equivariant), outputs in any array,
normalisation over the whole volume, and the errors for bad inputs."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from unetlab.errors import UnetlabError
from unetlab.model import UNet
from unetlab.predict import predict_tiled
from unetlab.sources import VolumeView
from unetlab.tiling import (TileGeometry, apply_transform, choose_tile_size, estimate_memory,
                            invert_transform, plan_tiles, read_padded, transform_rect_to_image,
                            transform_shape, tta_transforms)

TOL = 1e-5


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def whole_volume(net, vol: np.ndarray) -> np.ndarray:
    """Reference: ONE forward pass over the volume mirror-padded with numpy.pad(mode="reflect")
    by each axis's margin before and up to the smallest valid size after, soft-max, cropped
    ("same" nets: the margin cropped from the output too)."""
    g = TileGeometry.from_net(net)
    spatial = vol.shape[-3:]
    pads, sizes = [], []
    smallest = net.valid_input_size((1, 1, 1))
    for a, n in enumerate(spatial):
        m = g.margins[a]
        k = 2 * m + 1
        while True:                  # the smallest valid size whose kept output covers n
            size = tuple(k if b == a else smallest[b] for b in range(3))
            if net.is_valid_input_size(size):
                if net.output_size(size)[a] - (2 * m if net.padding == "same" else 0) >= n:
                    break
            k += 1
        pads.append((m, k - n - m))
        sizes.append(k)
    lead = [(0, 0)] * (vol.ndim - 3)
    p = np.pad(vol.astype(np.float64), lead + pads, mode="reflect").astype(np.float32)
    with torch.no_grad():
        y = torch.softmax(net.eval()(torch.from_numpy(p).reshape(1, -1, *sizes)), 1)[0].numpy()
    if net.padding == "same":
        y = y[(slice(None),) + tuple(slice(m, None) for m in g.margins)]
    return y[(slice(None),) + tuple(slice(0, n) for n in spatial)]


def _net(seed=0, **kw):
    torch.manual_seed(seed)
    opts = dict(spatial_dims=3, width=2, depth=2)
    opts.update(kw)
    return UNet(**opts)


def _vol(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# ----------------------------------------------------------------------------- geometry
@pytest.mark.parametrize("kw", [dict(depth=2), dict(depth=2, pooling=(1, 2, 2)),
                                dict(depth=2, padding="same"), dict(depth=3)],
                         ids=["iso", "aniso", "same", "d3"])
@pytest.mark.parametrize("shape,tile", [((1, 1, 1), None), ((9, 13, 11), 30),
                                        ((17, 40, 23), (20, 50, 36))])
def test_plan_partitions_volume_on_each_axis_lattice(kw, shape, tile):
    net = _net(**kw)
    geom = TileGeometry.from_net(net)
    plan = plan_tiles(geom, shape, tile)
    assert net.is_valid_input_size(plan.tile_in)
    count = np.zeros(shape, int)
    for t in plan:
        count[t.own[0]:t.own[1], t.own[2]:t.own[3], t.own[4]:t.own[5]] += 1
        for a in range(3):
            assert t.out[2 * a] % geom.lattices[a] == 0
            assert t.inp[2 * a] == t.out[2 * a] - geom.margins[a]
            assert t.inp[2 * a + 1] - t.inp[2 * a] == plan.tile_in[a]
    assert (count == 1).all()
    kept = tuple(o - (2 * m if net.padding == "same" else 0)
                 for o, m in zip(net.output_size(plan.tile_in), geom.margins))
    assert kept == plan.tile_out


def test_anisotropic_geometry_per_axis():
    geom = TileGeometry.from_net(_net(pooling=(1, 2, 2)))
    assert geom.lattices == (1, 4, 4) and geom.margins == (10, 20, 20)
    assert geom.lattice == (1, 4, 4) and geom.margin == (10, 20, 20)
    assert geom.smallest_input(5, axis=0) == 25 and geom.smallest_input(5, axis=2) == 48
    same = TileGeometry.from_net(_net(pooling=(1, 2, 2), padding="same"))
    assert same.margins == (10, 24, 24)           # receptive radius (+ lattice − 1) rounded up


def test_read_padded_volume_matches_numpy_pad():
    rng = np.random.default_rng(0)
    vol = rng.integers(0, 255, (2, 4, 5, 7)).astype(np.uint8)
    big = np.pad(vol, ((0, 0), (9, 9), (9, 9), (9, 9)), mode="reflect").astype(np.float32)
    for z0, y0, x0, d, h, w in [(-9, -9, -9, 22, 23, 25), (1, 2, 3, 2, 3, 4),
                                (-3, 4, -2, 9, 7, 11)]:
        got = read_padded(vol, (z0, z0 + d), (y0, y0 + h), (x0, x0 + w))
        assert got.dtype == np.float32 and got.flags.c_contiguous
        assert np.array_equal(got, big[:, z0 + 9:z0 + 9 + d, y0 + 9:y0 + 9 + h,
                                       x0 + 9:x0 + 9 + w])
    assert np.array_equal(read_padded(vol, (-2, 3), (0, 5), (0, 7), lead=(1,)),
                          big[1, 7:12, 9:14, 9:16])


def test_choose_tile_size_3d_within_budget():
    geom = TileGeometry.from_net(_net(width=8, pooling=(1, 2, 2)))
    budget = 128 << 20
    t = choose_tile_size(geom, (500, 500, 500), batch=2, budget=budget)
    assert len(t) == 3 and estimate_memory(geom, t, 2) <= budget
    assert max(t) - min(t) < 4                      # a cube as far as the lattices allow
    assert estimate_memory(geom, [v + 4 for v in t], 2) > budget     # and the largest
    # a flat volume: z covered by a thin tile, y/x grow into the freed budget
    flat = choose_tile_size(geom, (3, 5000, 5000), batch=2, budget=budget)
    assert flat[0] == geom.smallest_input(3, 0) and flat[1] > t[1]
    assert estimate_memory(geom, flat, 2) <= budget


# ----------------------------------------------------------------------------- seamless
@pytest.mark.parametrize("kw,tiles", [
    (dict(depth=1), [None, 20, (14, 30, 26)]),
    (dict(depth=2), [None, 30, (46, 52, 44)]),
    (dict(depth=2, pooling=(1, 2, 2)), [None, 30, (22, 48, 44)]),
    (dict(depth=2, padding="same"), [None, (52, 56, 60)]),
], ids=["d1", "d2", "aniso", "same"])
def test_tiled_equals_whole_volume(kw, tiles):
    net = _net(**kw)
    vol = _vol((9, 13, 11), 1)
    ref = whole_volume(net, vol)
    geom = TileGeometry.from_net(net)
    for tile in tiles:
        got = predict_tiled(net, vol, tile_size=tile, batch_size=2, normalize=False)
        assert got.shape == (2, 9, 13, 11) and got.dtype == np.float32
        assert np.abs(got - ref).max() < TOL, (tile, np.abs(got - ref).max())
        if tile is not None:
            assert len(plan_tiles(geom, (9, 13, 11), tile)) > 1     # really tiled
    assert np.allclose(got.sum(0), 1.0, atol=1e-5)


def test_multichannel_volume_and_more_classes():
    net = _net(in_channels=2, num_classes=3, depth=1)
    vol = _vol((2, 7, 12, 10), 2)
    ref = whole_volume(net, vol)
    got = predict_tiled(net, vol, tile_size=(16, 20, 18), normalize=False)
    assert got.shape == (3, 7, 12, 10)
    assert np.abs(got - ref).max() < TOL


# ----------------------------------------------------------------------------- TTA
def test_transform_groups():
    iso = tta_transforms(TileGeometry.from_net(_net()), True)
    aniso = tta_transforms(TileGeometry.from_net(_net(pooling=(1, 2, 2))), True)
    assert len(iso) == 48 and len(aniso) == 16
    assert iso[0] == aniso[0] == ((0, 1, 2), (False, False, False))
    assert all(p[0] == 0 for p, _ in aniso)                      # z stays z
    assert len(tta_transforms(TileGeometry.from_net(_net()), True, spacing=(3, 1, 1))) == 16
    assert len(tta_transforms(TileGeometry.from_net(_net()), 16)) == 16
    a = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    images = {apply_transform(a, g).tobytes() + bytes(apply_transform(a, g).shape)
              for g in iso}
    assert len(images) == 48                                     # 48 distinct transforms
    for g in iso:
        b = apply_transform(a, g)
        assert b.shape[1:] == transform_shape(a.shape, g)
        assert np.array_equal(invert_transform(b, g), a)
        assert np.array_equal(apply_transform(torch.from_numpy(a), g).numpy(), b)
    # group: closed under composition
    keys = {apply_transform(a, g).tobytes() + bytes(apply_transform(a, g).shape) for g in iso}
    for g, h in itertools.product(iso[::7], iso[::5]):
        c = apply_transform(apply_transform(a, g), h)
        assert c.tobytes() + bytes(c.shape) in keys


def test_transform_rect_maps_back():
    rng = np.random.default_rng(1)
    vol = rng.random((4, 6, 5))
    big = np.pad(vol, 5, mode="reflect")
    for g in tta_transforms(TileGeometry.from_net(_net()), True)[::5]:
        gi = apply_transform(big, g)                             # g(pad(v)) = pad(g(v))
        gs = transform_shape(vol.shape, g)
        for rect in [(0, 2, 1, 4, 0, 3), (-4, gs[0] + 3, -2, 3, 1, gs[2] + 4)]:
            back = transform_rect_to_image(rect, vol.shape, g)
            patch = read_padded(vol, back[0:2], back[2:4], back[4:6])
            want = gi[tuple(slice(rect[2 * i] + 5, rect[2 * i + 1] + 5) for i in range(3))]
            assert np.allclose(apply_transform(patch, g), want)


@pytest.mark.parametrize("kw,n,shape,tile", [
    (dict(depth=1), 48, (4, 6, 5), None),
    (dict(depth=2, pooling=(1, 2, 2)), 16, (6, 9, 7), (23, 48, 52)),
], ids=["iso48", "aniso16"])
def test_tta_is_exactly_equivariant(kw, n, shape, tile):
    net = _net(**kw)
    vol = _vol(shape, 3)
    group = tta_transforms(TileGeometry.from_net(net), True)
    assert len(group) == n
    base = predict_tiled(net, vol, tile_size=tile, tta=True, batch_size=2, normalize=False)
    for g in group[1::5]:
        gv = np.ascontiguousarray(apply_transform(vol, g))
        got = predict_tiled(net, gv, tile_size=tile, tta=True, normalize=False)
        assert np.abs(got - apply_transform(base, g)).max() < TOL, g
    # TTA is the mean of g⁻¹(P(g(x))) with P the whole-volume prediction
    ref = np.mean([invert_transform(
        whole_volume(net, np.ascontiguousarray(apply_transform(vol, g))), g) for g in group],
        axis=0)
    assert np.abs(base - ref).max() < TOL
    # without TTA the network is not equivariant (so the test above could fail)
    g = group[-1]
    plain = predict_tiled(net, vol, normalize=False)
    moved = predict_tiled(net, np.ascontiguousarray(apply_transform(vol, g)), normalize=False)
    assert np.abs(moved - apply_transform(plain, g)).max() > 1e-3


def test_tta_count_options_and_refusals():
    aniso = _net(pooling=(1, 2, 2), depth=1)
    vol = _vol((4, 6, 5))
    with pytest.raises(UnetlabError, match="pooling factors"):
        predict_tiled(aniso, vol, tta=48, normalize=False)
    with pytest.raises(UnetlabError, match="not a group"):
        predict_tiled(aniso, vol, tta=8, normalize=False)
    iso = _net(depth=1)
    a = predict_tiled(iso, vol, tta=16, normalize=False)
    b = predict_tiled(iso, vol, tta=True, spacing=(4.0, 1.0, 1.0), normalize=False)
    assert np.abs(a - b).max() < TOL                        # spacing keeps z: the same 16


# ----------------------------------------------------------------------------- outputs, inputs
def test_outputs_in_zarr_and_memmap_with_tta(tmp_path):
    zarr = pytest.importorskip("zarr")
    net = _net(depth=1, pooling=(1, 2, 2))                 # 16 transforms
    vol = _vol((6, 10, 9), 4)
    for tta in (False, True):
        ref = predict_tiled(net, vol, tile_size=(16, 22, 22), tta=tta, normalize=False)
        z = zarr.open_array(store=str(tmp_path / f"o{tta}.zarr"), mode="w",
                            shape=(2, 6, 10, 9), chunks=(1, 3, 4, 4), dtype="float32")
        predict_tiled(net, vol, tile_size=(16, 22, 22), tta=tta, out=z, normalize=False)
        assert np.abs(np.asarray(z[:]) - ref).max() < TOL
        mm = np.lib.format.open_memmap(tmp_path / f"o{tta}.npy", mode="w+", dtype=np.float32,
                                       shape=(2, 6, 10, 9))
        mm[:] = 7.0                                        # every voxel must be overwritten
        predict_tiled(net, vol, tile_size=(16, 22, 22), tta=tta, out=mm, normalize=False)
        assert np.abs(np.asarray(mm) - ref).max() < TOL
    zin = zarr.open_array(store=str(tmp_path / "in.zarr"), mode="w", shape=vol.shape,
                          chunks=(2, 4, 4), dtype="float32")
    zin[:] = vol
    ref = predict_tiled(net, vol, tile_size=16, normalize=False)
    assert np.abs(predict_tiled(net, zin, tile_size=16, normalize=False) - ref).max() < TOL


def test_reads_only_tiles_and_progress():
    net = _net(depth=1)
    vol = _vol((12, 20, 20), 5)
    seen, calls = [], []

    class Spy:
        shape, ndim, dtype = vol.shape, 3, vol.dtype

        def __getitem__(self, key):
            seen.append(key)
            return vol[key]

    class Bar:
        def update(self, n):
            calls.append(n)

    got = predict_tiled(net, Spy(), tile_size=16, normalize=False, progress=Bar())
    assert np.abs(got - predict_tiled(net, vol, tile_size=16, normalize=False)).max() == 0
    plan = plan_tiles(TileGeometry.from_net(net), vol.shape, 16)
    assert sum(calls) == len(plan) > 4 and len(seen) == len(plan)
    for key in seen:                       # one basic slice no larger than an input tile
        assert all(k.stop - k.start <= n for k, n in zip(key[-3:], plan.tile_in))


def test_normalisation_over_the_whole_volume():
    net = _net(depth=1)
    vol = (_vol((6, 10, 9), 6) * 30 + 200).astype(np.float32)
    vol[3] += 500                                 # one bright slice: per-slice stats would hide it
    lo, hi = np.percentile(vol.astype(np.float64), (1.0, 99.8))
    manual = ((vol - lo) / (hi - lo)).astype(np.float32)
    got = predict_tiled(net, vol, tile_size=16)
    assert np.abs(got - predict_tiled(net, manual, tile_size=16, normalize=False)).max() < 1e-4
    stats = predict_tiled(net, vol, tile_size=16, normalize=np.array([[lo, hi]]))
    assert np.abs(stats - got).max() < 1e-5
    # the same statistics as training's normalisation of volumes, also when subsampled
    from unetlab.data import normalize_volume
    from unetlab.sources import volume_source, volume_stats

    big = np.random.default_rng(1).gamma(2.0, 30.0, (40, 330, 330)).astype(np.float32)
    got = VolumeView(volume_source(big))[:, :, :, :]
    assert np.abs(got - normalize_volume(big)).max() < 1e-5
    assert volume_stats(volume_source(big)).shape == (1, 2)


def test_bf16_close_to_fp32():
    net = _net(depth=1, width=4)
    vol = _vol((5, 9, 8), 7)
    a = predict_tiled(net, vol, normalize=False)
    b = predict_tiled(net, vol, normalize=False, precision="bf16")
    assert b.dtype == np.float32 and 0 < np.abs(a - b).max() < 5e-2


def test_bad_inputs():
    net = _net(depth=1)
    with pytest.raises(UnetlabError, match="expects"):
        predict_tiled(net, _vol((10, 10)), normalize=False)            # an image, not a volume
    with pytest.raises(UnetlabError, match=r"\(2, Z, Y, X\)"):
        predict_tiled(_net(depth=1, in_channels=2), _vol((3, 5, 6, 7)), normalize=False)
    with pytest.raises(UnetlabError, match=r"\(d, h, w\)"):
        predict_tiled(net, _vol((5, 6, 7)), tile_size=(20, 20), normalize=False)
    with pytest.raises(UnetlabError, match="positive"):
        predict_tiled(net, _vol((5, 6, 7)), tile_size=(0, 20, 20), normalize=False)
    with pytest.raises(UnetlabError, match="empty"):
        predict_tiled(net, np.zeros((0, 6, 7), np.float32), normalize=False)
    with pytest.raises(UnetlabError, match="out has shape"):
        predict_tiled(net, _vol((5, 6, 7)), out=np.zeros((2, 5, 6, 8), np.float32),
                      normalize=False)
    with pytest.raises(UnetlabError, match="shape"):
        predict_tiled(net, _vol((5, 6, 7)), normalize=np.zeros((2, 2)))


# ----------------------------------------------------------------------------- Dask, zarr
@pytest.mark.parametrize("kw,tta,chunk,shape", [
    (dict(depth=1), False, 10, (20, 37, 30)),
    (dict(depth=2, pooling=(1, 2, 2)), True, (5, 24, 24), (13, 30, 26))], ids=["iso", "aniso-tta16"])
def test_dask_volume_equals_predict_tiled(kw, tta, chunk, shape):
    dask = pytest.importorskip("dask")
    from unetlab.dask_predict import predict_dask

    net = _net(**kw)
    vol = _vol(shape, 8) * 10 + 3
    ref = predict_tiled(net, vol, tta=tta)                      # normalised over the volume
    with dask.config.set(scheduler="synchronous"):
        lazy = predict_dask(net, vol, chunk=chunk, tta=tta)
        assert lazy.shape == (2,) + shape and min(lazy.numblocks[1:]) > 1
        got = lazy.compute()
    assert np.abs(got - ref).max() < TOL


def test_predict_to_zarr_reads_a_tiff_volume_from_a_model_file(tmp_path):
    dask = pytest.importorskip("dask")
    tifffile = pytest.importorskip("tifffile")
    zarr = pytest.importorskip("zarr")
    from unetlab.checkpoint import save_model
    from unetlab.dask_predict import predict_to_zarr

    net = _net(depth=1, in_channels=2)
    save_model(net, tmp_path / "m.pt")
    vol = (_vol((9, 2, 16, 15), 10) * 50 + 100).astype(np.float32)       # ImageJ order ZCYX
    tifffile.imwrite(tmp_path / "v.tif", vol, imagej=True, metadata={"axes": "ZCYX"})
    with dask.config.set(scheduler="synchronous"):
        predict_to_zarr(tmp_path / "m.pt", tmp_path / "v.tif", tmp_path / "o.zarr", chunk=10)
    got = np.asarray(zarr.open_group(str(tmp_path / "o.zarr"))["probabilities"][:])
    czyx = np.ascontiguousarray(vol.transpose(1, 0, 2, 3))
    ref = predict_tiled(net, czyx)
    assert got.shape == (2, 9, 16, 15) and np.abs(got - ref).max() < TOL
    with pytest.raises(UnetlabError, match="chunk"), dask.config.set(scheduler="synchronous"):
        predict_to_zarr(net, czyx, tmp_path / "x.zarr", chunk=0)
    with pytest.raises(UnetlabError, match=r"\(2, Z, Y, X\)"):
        predict_to_zarr(net, vol[:, 0], tmp_path / "y.zarr")


def test_predict_to_zarr_volume_resumes(tmp_path):
    dask = pytest.importorskip("dask")
    zarr = pytest.importorskip("zarr")
    from unetlab.dask_predict import predict_to_zarr

    net = _net(depth=1, num_classes=3)
    vol = _vol((14, 25, 21), 9)
    ref = predict_tiled(net, vol, normalize=False)
    out = tmp_path / "p.zarr"
    with dask.config.set(scheduler="synchronous"):
        res = predict_to_zarr(net, vol, out, chunk=12, normalize=False)
        g = zarr.open_group(str(out), mode="r")
        probs = g["probabilities"]
        assert probs.shape == (3, 14, 25, 21) and probs.chunks == (3, 12, 12, 12)
        assert list(probs.metadata.dimension_names) == ["class", "z", "y", "x"]
        assert g["chunk_done"].shape == (2, 3, 2) and res["total"] == 12
        assert np.abs(np.asarray(probs[:]) - ref).max() < TOL
        # an interrupted run: one marker unset, one data chunk lost → only those two again
        g = zarr.open_group(str(out), mode="r+")
        g["chunk_done"][1, 2, 0] = 0
        attrs = dict(g.attrs)["unetlab"]
        g.attrs["unetlab"] = dict(attrs, complete=False)
        (out / "probabilities" / "c" / "0" / "0" / "1" / "1").unlink()
        res = predict_to_zarr(net, vol, out, chunk=12, normalize=False)
    assert sorted(res["computed"]) == [(0, 1, 1), (1, 2, 0)] and res["skipped"] == 10
    assert np.abs(np.asarray(zarr.open_group(str(out))["probabilities"][:]) - ref).max() < TOL


# ----------------------------------------------------------------------------- CLI
def _cells_volume(shape=(10, 30, 34), seed=0):
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.mgrid[:shape[0], :shape[1], :shape[2]]
    vol = 30 + rng.normal(0, 5, shape)
    for c in [(4, 8, 9), (6, 20, 22)]:
        vol[(zz - c[0]) ** 2 * 4 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 < 40] += 150
    return vol.clip(0, 255).astype(np.uint8)


def test_cli_predicts_a_stack_as_one_volume_with_a_3d_model(tmp_path, capsys, monkeypatch):
    tifffile = pytest.importorskip("tifffile")
    from unetlab.checkpoint import load_model, save_model
    from unetlab.cli import main

    monkeypatch.setenv("UNETLAB_NO_NATIVE_BF16", "1")           # --precision auto = fp32
    torch.manual_seed(0)
    save_model(_net(depth=1, pooling=(1, 2, 2)), tmp_path / "m3d.pt")
    vol = _cells_volume()
    tifffile.imwrite(tmp_path / "vol.tif", vol, photometric="minisblack")
    out = tmp_path / "out"
    rc = main(["predict", str(tmp_path / "m3d.pt"), str(tmp_path / "vol.tif"), "--out", str(out),
               "--instances", "--tta", "--quiet", "--threads", "1"])
    assert rc == 0, capsys.readouterr().err
    names = set(p.name for p in out.iterdir())
    assert {"vol_prob.tif", "vol_labels.tif", "vol_overlay_z0000.png"} <= names
    assert not [n for n in names if n.startswith(".") or ".tmp" in n]
    net = load_model(tmp_path / "m3d.pt")
    prob = tifffile.imread(out / "vol_prob.tif")
    assert prob.shape == vol.shape and prob.dtype == np.float32       # (Z, Y, X) P(class 1)
    ref = predict_tiled(net, vol, tta=True)                           # 16 transforms, 3D
    assert np.abs(prob - ref[1]).max() < 1e-5
    labels = tifffile.imread(out / "vol_labels.tif")
    assert labels.shape == vol.shape and labels.dtype == np.int32
    from unetlab.postprocess import to_instances
    assert np.array_equal(labels, to_instances(ref[1], spatial_dims=3))   # 3D instances
    # zarr output: all classes, (K, Z, Y, X)
    zarr = pytest.importorskip("zarr")
    assert main(["predict", str(tmp_path / "m3d.pt"), str(tmp_path / "vol.tif"), "--out",
                 str(out), "--format", "zarr", "--quiet", "--no-overlay", "--tile", "20",
                 "--threads", "1"]) == 0
    z = zarr.open_array(str(out / "vol_prob.zarr"), mode="r")
    assert z.shape == (2,) + vol.shape and z.attrs["unetlab"]["layout"] == "(K, Z, Y, X)"
    assert np.abs(np.asarray(z[:]) - predict_tiled(net, vol, tile_size=20)).max() < 1e-5


def test_cli_tta_follows_the_voxel_size_of_the_file_or_spacing(tmp_path, capsys, monkeypatch):
    """An isotropic-pooling network: 48 rotations/flips for cubic voxels, 16 (z kept) when the
    file declares z coarser; --spacing overrides the file; the 3D instances use the size."""
    tifffile = pytest.importorskip("tifffile")
    from unetlab.checkpoint import save_model
    from unetlab.cli import main
    from unetlab.postprocess import to_instances

    monkeypatch.setenv("UNETLAB_NO_NATIVE_BF16", "1")
    net = _net(depth=1)
    save_model(net, tmp_path / "m.pt")
    vol = _cells_volume((12, 24, 24))
    tifffile.imwrite(tmp_path / "coarse.tif", vol, imagej=True, resolution=(1.0, 1.0),
                     metadata={"spacing": 2.0, "axes": "ZYX"})
    tifffile.imwrite(tmp_path / "plain.tif", vol, photometric="minisblack")

    def run(name, *extra):
        out = tmp_path / f"out-{name}-{len(extra)}"
        rc = main(["predict", str(tmp_path / "m.pt"), str(tmp_path / f"{name}.tif"), "--out",
                   str(out), "--tta", "--instances", "--quiet", "--threads", "1", *extra])
        printed = capsys.readouterr()
        assert rc == 0, printed.err
        return (tifffile.imread(out / f"{name}_prob.tif"),
                tifffile.imread(out / f"{name}_labels.tif"), printed.out + printed.err)

    prob, labels, text = run("coarse")
    assert "2x1x1 (declared by the file)" in text and "over 16 rotations" in text
    ref = predict_tiled(net, vol, tta=True, spacing=(2.0, 1.0, 1.0))
    assert np.abs(prob - ref[1]).max() < 1e-5
    assert np.array_equal(labels, to_instances(ref[1], spatial_dims=3, spacing=(2, 1, 1)))
    prob, _, text = run("plain")
    assert "over 48 rotations" in text
    assert np.abs(prob - predict_tiled(net, vol, tta=True)[1]).max() < 1e-5
    prob, _, text = run("coarse", "--spacing", "1,1,1")
    assert "(--spacing)" in text and "over 48 rotations" in text
    assert main(["predict", str(tmp_path / "m.pt"), str(tmp_path / "plain.tif"), "--out",
                 str(tmp_path / "bad"), "--spacing", "1,0,1"]) == 2
    assert "--spacing" in capsys.readouterr().err


def test_volume_spacing_reads_metadata_only(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    zarr = pytest.importorskip("zarr")
    from unetlab.data import read_volume, volume_spacing

    vol = np.zeros((4, 8, 8), np.uint8)
    tifffile.imwrite(tmp_path / "a.tif", vol, imagej=True, resolution=(1 / 0.5, 1 / 0.5),
                     metadata={"spacing": 3.0, "axes": "ZYX"})
    assert volume_spacing(tmp_path / "a.tif") == pytest.approx((3.0, 0.5, 0.5))
    assert volume_spacing(tmp_path / "a.tif") == pytest.approx(read_volume(tmp_path / "a.tif")[1])
    z = zarr.open_array(str(tmp_path / "v.zarr"), mode="w", shape=vol.shape, dtype="uint8")
    z.attrs["spacing"] = [2, 1, 1]
    assert volume_spacing(tmp_path / "v.zarr") == (2.0, 1.0, 1.0)
    (tmp_path / "n.png").write_bytes(b"not an image")
    assert volume_spacing(tmp_path / "n.png") is None
    assert volume_spacing(tmp_path / "missing.tif") is None
