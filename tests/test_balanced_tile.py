"""The automatic tile is the smallest that needs no more tiles than the largest fitting one
(unetlab.engine.balanced_tile), and prediction results do not depend on it."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from unetlab.engine import balanced_tile
from unetlab.model import UNet
from unetlab.predict import _tile_request, predict_tiled
from unetlab.tiling import TileGeometry, choose_tile_size, estimate_memory, plan_tiles

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _count(geom, shape, tile) -> int:
    return len(plan_tiles(geom, shape, tuple(tile)))


def _naive(geom, shape, tile) -> tuple[int, ...]:
    """Reference: per axis, walk the valid sizes down from the planned tile while the tile
    count stays the same (one size per step, nothing clever)."""
    best = list(plan_tiles(geom, shape, tuple(tile)).tile_in)
    n = _count(geom, shape, best)
    for a in range(len(best)):
        k = best[a] - 1
        while k >= 1:
            trial = best[:a] + [k] + best[a + 1:]
            got = plan_tiles(geom, shape, tuple(trial)).tile_in[a]
            if got >= best[a] or _count(geom, shape, trial) > n:
                break                       # no smaller valid size, or more tiles
            best[a] = got
            k = best[a] - 1
    return tuple(best)


@pytest.mark.parametrize("net", [dict(width=16, depth=4), dict(width=4, depth=2),
                                 dict(width=8, depth=3, padding="same")])
@pytest.mark.parametrize("shape,tile", [((1024, 1024), (1180, 1180)), ((300, 1000), (252, 500)),
                                        ((97, 61), (60, 60)), ((64, 64), (400, 400)),
                                        ((2048, 700), (620, 620))])
def test_balanced_tile_is_the_smallest_with_as_many_tiles(net, shape, tile):
    geom = TileGeometry.from_net(UNet(**net))
    got = balanced_tile(geom, shape, tile)
    planned = plan_tiles(geom, shape, tile).tile_in
    assert _count(geom, shape, got) == _count(geom, shape, planned)
    assert all(g <= p for g, p in zip(got, planned))
    assert plan_tiles(geom, shape, got).tile_in == got          # a valid size, kept as is
    assert got == _naive(geom, shape, tile)


def test_the_paper_case_shrinks():
    """1024² with the width-16 net: the 1 GiB tile (1180²) takes 2 × 2 tiles; so does 700²."""
    geom = TileGeometry.from_net(UNet(width=16, depth=4))
    big = choose_tile_size(geom, (1024, 1024))
    small = _tile_request(geom, None, (1024, 1024), 1, None)
    assert big == (1180, 1180) and small == (700, 700)
    assert estimate_memory(geom, small) < estimate_memory(geom, big) / 2


def test_prediction_does_not_depend_on_the_balancing():
    torch.manual_seed(0)
    net = UNet(width=2, depth=2)
    geom = TileGeometry.from_net(net)
    img = np.random.default_rng(1).standard_normal((90, 77)).astype(np.float32)
    budget = estimate_memory(geom, (84, 84))
    largest = choose_tile_size(geom, img.shape, budget=budget)
    auto = _tile_request(geom, None, img.shape, 1, budget)
    assert auto != largest and _count(geom, img.shape, auto) == _count(geom, img.shape, largest)
    for tta in (False, True):
        a = predict_tiled(net, img, normalize=False, memory_budget=budget, tta=tta)
        b = predict_tiled(net, img, tile_size=largest, normalize=False, tta=tta)
        assert np.abs(a - b).max() < 1e-5
