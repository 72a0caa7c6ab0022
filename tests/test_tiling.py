"""Overlap-tile geometry (unetlab.tiling): mirror padding vs numpy.pad, tile plans on the pooling
lattice that partition the image, the dihedral group, the memory-bounded tile choice."""
from __future__ import annotations

import numpy as np
import pytest

from unetlab.model import UNet
from unetlab.tiling import (DIHEDRAL, TileGeometry, apply_dihedral, axis_starts, choose_tile_size,
                            dihedral_rect_to_image, dihedral_shape, estimate_memory,
                            invert_dihedral, plan_tiles, read_padded, reflect_indices)


@pytest.mark.parametrize("n", [1, 2, 3, 7])
@pytest.mark.parametrize("before,after", [(0, 0), (2, 1), (9, 13), (30, 0)])
def test_reflect_indices_match_numpy_pad(n, before, after):
    a = np.arange(n) * 10
    ref = np.pad(a, (before, after), mode="reflect")
    assert np.array_equal(a[reflect_indices(-before, n + after, n)], ref)


def test_read_padded_matches_numpy_pad():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (2, 5, 7)).astype(np.uint8)
    big = np.pad(img, ((0, 0), (20, 20), (20, 20)), mode="reflect").astype(np.float32)
    for r0, c0, h, w in [(-20, -20, 45, 47), (1, 2, 3, 4), (-3, 4, 9, 20), (5, -20, 15, 10)]:
        got = read_padded(img, (r0, r0 + h), (c0, c0 + w))
        assert got.dtype == np.float32 and got.flags.c_contiguous
        assert np.array_equal(got, big[:, r0 + 20:r0 + 20 + h, c0 + 20:c0 + 20 + w])


@pytest.mark.parametrize("size,out,lat", [(1, 4, 4), (100, 36, 8), (17, 16, 16), (388, 388, 16),
                                          (1000, 388, 16), (65, 20, 4)])
def test_axis_starts_on_lattice_and_cover(size, out, lat):
    starts = axis_starts(size, out, lat)
    assert starts[0] == 0
    assert all(s % lat == 0 for s in starts)
    assert all(b > a for a, b in zip(starts, starts[1:]))
    assert all(b - a <= out for a, b in zip(starts, starts[1:]))   # no gaps
    assert starts[-1] + out >= size                                 # covers the end
    assert starts[-1] + out < size + lat or len(starts) == 1        # wastes < one lattice step


def _nets():
    return [UNet(width=2, depth=1), UNet(width=2, depth=2), UNet(width=2, depth=3),
            UNet(width=2, depth=2, padding="same"), UNet(width=1, depth=4)]


@pytest.mark.parametrize("net", _nets(), ids=lambda n: f"d{n.depth}{n.padding}")
@pytest.mark.parametrize("shape,tile", [((1, 1), None), ((5, 130), 60), ((97, 64), 40),
                                        ((300, 211), (120, 90)), ((1000, 700), 572)])
def test_plan_partitions_image_with_valid_tiles(net, shape, tile):
    geom = TileGeometry.from_net(net)
    plan = plan_tiles(geom, shape, tile)
    H, W = shape
    count = np.zeros(shape, int)
    th, tw = plan.tile_in
    assert net.is_valid_input_size(th) and net.is_valid_input_size(tw)
    if tile is not None:   # rounded down, unless a smaller tile covers the image
        req = (tile, tile) if isinstance(tile, int) else tile
        assert th <= max(req[0], geom.smallest_input(geom.lattice)) or th == geom.smallest_input(H)
    for t in plan:
        y0, y1, x0, x1 = t.own
        count[y0:y1, x0:x1] += 1
        assert t.out[0] % geom.lattice == 0 and t.out[2] % geom.lattice == 0
        assert t.out[0] <= y0 < y1 <= t.out[1] and t.out[2] <= x0 < x1 <= t.out[3]
        assert t.inp == (t.out[0] - geom.margin, t.out[0] - geom.margin + th,
                         t.out[2] - geom.margin, t.out[2] - geom.margin + tw)
        # the network's output for this input tile is exactly the output tile
        oh = net.output_size(th) - (2 * geom.margin if net.padding == "same" else 0)
        assert oh == t.out[1] - t.out[0]
    assert (count == 1).all()


def test_paper_tile_steps_by_384():
    geom = TileGeometry.from_net(UNet(width=1, depth=4))
    plan = plan_tiles(geom, (1000, 1000), 572)
    assert plan.tile_in == (572, 572) and plan.tile_out == (388, 388)
    assert sorted({t.out[0] for t in plan}) == [0, 384, 624]   # 624 = ceil((1000-388)/16)·16


def test_dihedral_group():
    a = np.arange(12).reshape(3, 4)
    images = [apply_dihedral(a, g) for g in DIHEDRAL]
    expected = [np.rot90(a, k) for k in range(4)] + [np.rot90(a.T, k) for k in range(4)]
    keys = {(x.shape, x.tobytes()) for x in images}
    assert len(keys) == 8
    assert keys == {(x.shape, np.ascontiguousarray(x).tobytes()) for x in expected}
    for g in DIHEDRAL:
        assert np.array_equal(invert_dihedral(apply_dihedral(a, g), g), a)
        assert apply_dihedral(a, g).shape == dihedral_shape(a.shape, g)
    import torch
    t = torch.arange(12).reshape(1, 3, 4)
    for g in DIHEDRAL:
        assert np.array_equal(apply_dihedral(t, g).numpy(), apply_dihedral(t.numpy(), g))


def test_dihedral_rect_maps_back():
    rng = np.random.default_rng(1)
    img = rng.random((7, 10))
    pad = 6
    big = np.pad(img, pad, mode="reflect")
    for g in DIHEDRAL:
        gi = apply_dihedral(big, g)    # g(pad(img)) = pad(g(img))
        Hg, Wg = dihedral_shape(img.shape, g)
        for y0, y1, x0, x1 in [(0, 3, 0, 4), (-5, 2, 3, Wg + 4), (1, Hg, -6, Wg)]:
            rect = dihedral_rect_to_image((y0, y1, x0, x1), img.shape, g)
            patch = read_padded(img, rect[:2], rect[2:])
            assert np.allclose(apply_dihedral(patch, g), gi[y0 + pad:y1 + pad, x0 + pad:x1 + pad])


@pytest.mark.parametrize("net", [UNet(width=4, depth=2), UNet(width=32, depth=4),
                                 UNet(width=8, depth=3, padding="same")],
                         ids=["w4d2", "w32d4", "w8d3same"])
def test_choose_tile_size_largest_within_budget(net):
    geom = TileGeometry.from_net(net)
    budget = 200 << 20
    th, tw = choose_tile_size(geom, (5000, 5000), batch=2, budget=budget)
    assert th == tw and net.is_valid_input_size(th)
    assert estimate_memory(geom, (th, tw), 2) <= budget
    nxt = geom.smallest_input(geom.out_size(th) + 1)
    assert estimate_memory(geom, (nxt, nxt), 2) > budget
    # a small image gets the tile that covers it, a thin one a long tile
    assert choose_tile_size(geom, (3, 3), budget=budget) == (geom.smallest_input(3),) * 2
    h, w = choose_tile_size(geom, (10, 100000), budget=budget)
    assert h == geom.smallest_input(10) and w > th
    assert estimate_memory(geom, (h, w)) <= budget
