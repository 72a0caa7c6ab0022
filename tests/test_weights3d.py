"""unetlab.weights on (Z, Y, X) volumes with voxel spacing, and sparse annotation (Çiçek et al.
2016): the windowed border term against the naive reference (one full
``distance_transform_edt(instances != i, sampling=spacing)`` per instance), hand-computed
anisotropic distances, the 6-neighbour separation, and ``sparsify`` → ignored targets."""
from __future__ import annotations

import math

import numpy as np
import pytest

from reference.naive_weights import naive_border_weight_map
from unetlab.errors import UnetlabError
from unetlab.synthetic import touching_cells_3d
from unetlab.weights import (IGNORE_INDEX, border_radius, border_weight_map, class_balance_map,
                             separate_instances, sparsify, training_targets, weight_map)


def random_volume(seed: int, shape=(14, 30, 34), n=9) -> np.ndarray:
    """Nearest-centre cells clipped by a radius: touching faces and gaps, ids not contiguous, an
    id in two pieces and an ignored (-1) block."""
    rng = np.random.default_rng(seed)
    pts = rng.uniform(0, 1, (n, 3)) * shape
    zz, yy, xx = np.indices(shape)
    d = np.sqrt((zz[..., None] - pts[:, 0]) ** 2 * 4 + (yy[..., None] - pts[:, 1]) ** 2
                + (xx[..., None] - pts[:, 2]) ** 2)
    near = d.argmin(-1)
    inside = d.min(-1) < rng.uniform(5, 11, n)[near]
    ids = rng.permutation(np.arange(2, 2 + 5 * n, 5))
    inst = np.where(inside, ids[near], 0).astype(np.int32)
    inst[0:2, 0:3, 0:3] = ids[0]                      # the same id, far away
    inst[-3:, 20:26, 2:9] = -1
    return inst


# ------------------------------------------------------------------ against the reference
@pytest.mark.parametrize("seed, spacing, w0, sigma", [
    (0, (2.0, 1.0, 1.0), 10.0, 5.0),
    (1, (3.0, 0.5, 0.5), 10.0, 2.0),
    (2, (1.3, 0.7, 0.9), 5.0, 3.0),
    (3, (1.0, 1.0, 1.0), 10.0, 5.0),
    (4, (0.5, 2.0, 1.0), 20.0, 4.0),
])
@pytest.mark.parametrize("method", ["separable", "windows"])
def test_border_3d_anisotropic_matches_naive(seed, spacing, w0, sigma, method):
    inst = random_volume(seed)
    fast = border_weight_map(inst, w0, sigma, spacing=spacing, method=method)
    ref = naive_border_weight_map(inst, w0, sigma, sampling=spacing)
    assert fast.dtype == np.float32 and fast.shape == inst.shape
    assert np.abs(fast - ref).max() <= 1e-5
    assert ref.max() > 0.5 * w0                   # the term is really exercised
    # and the spacing matters: the isotropic map differs where the voxels are not cubes
    if spacing != (1.0, 1.0, 1.0):
        assert np.abs(border_weight_map(inst, w0, sigma) - fast).max() > 0.1


@pytest.mark.parametrize("method", ["separable", "windows"])
def test_coarse_tolerance_bound_holds_with_spacing(method):
    inst = random_volume(5, shape=(16, 40, 40), n=7)
    sp, tol = (2.5, 0.8, 0.8), 1e-2
    err = np.abs(border_weight_map(inst, tol=tol, spacing=sp, method=method)
                 - naive_border_weight_map(inst, sampling=sp)).max()
    assert 0 < err <= tol                        # the cut-off really leaves something out
    assert border_radius(10, 5, tol, step=0.8) == pytest.approx(
        5 * math.sqrt(2 * math.log(10 / tol)) - 0.8)


def test_separable_and_windows_agree_in_2d_and_exactly_without_cutoff():
    img = random_volume(8, shape=(3, 60, 70), n=12)[1]
    ref = naive_border_weight_map(img, sampling=(1.5, 1.0))
    for m in ("separable", "windows"):
        assert np.abs(border_weight_map(img, spacing=(1.5, 1.0), method=m) - ref).max() <= 1e-5
    vol = random_volume(9)
    np.testing.assert_array_equal(border_weight_map(vol, tol=0, method="separable"),
                                  border_weight_map(vol, tol=0, method="windows"))
    with pytest.raises(UnetlabError, match="method"):
        border_weight_map(vol, method="fast")


def test_synthetic_volume_matches_naive():
    (_, inst), = touching_cells_3d(1, (20, 40, 40), seed=2, cells=12, spacing=(2.0, 1.0, 1.0))
    sep = np.where(separate_instances(inst), inst, 0)
    sp = (2.0, 1.0, 1.0)
    ref = naive_border_weight_map(sep, sampling=sp)
    assert np.abs(border_weight_map(sep, spacing=sp) - ref).max() <= 1e-5
    assert ref.max() > 8                         # touching cells: separation voxels near w0


def test_hand_computed_anisotropic_distances():
    inst = np.zeros((9, 5, 5), np.int32)
    inst[1, 2, 2] = 1
    inst[7, 2, 2] = 2
    sp = (2.0, 1.0, 0.5)
    w = border_weight_map(inst, 10, 5, spacing=sp)
    # (3, 2, 2): d1 = 2 slices · 2 = 4, d2 = 4 slices · 2 = 8
    assert w[3, 2, 2] == pytest.approx(10 * math.exp(-144 / 50), rel=1e-6)
    # (1, 0, 0): d1 = sqrt(2² + 1²), d2 = sqrt(12² + 2² + 1²)
    d1, d2 = math.hypot(2, 1), math.sqrt(144 + 5)
    assert w[1, 0, 0] == pytest.approx(10 * math.exp(-(d1 + d2) ** 2 / 50), rel=1e-5)
    assert w[1, 2, 2] == 0 and w[7, 2, 2] == 0


def test_unit_spacing_is_the_pixel_default_in_2d_and_3d():
    vol = random_volume(6)
    np.testing.assert_array_equal(border_weight_map(vol, spacing=(1, 1, 1)),
                                  border_weight_map(vol))
    np.testing.assert_array_equal(border_weight_map(vol, spacing=1), border_weight_map(vol))
    img = vol[5]
    np.testing.assert_array_equal(weight_map(img, spacing=(1.0, 1.0)), weight_map(img))
    # 2D with rectangular pixels follows the reference too
    assert np.abs(border_weight_map(img, spacing=(2.0, 0.5))
                  - naive_border_weight_map(img, sampling=(2.0, 0.5))).max() <= 1e-5


@pytest.mark.parametrize("spacing, msg", [((1, 1), "3 numbers"), ((1, 0, 1), "> 0"),
                                          ((1, np.nan, 1), "> 0"), ("abc", "one per axis")])
def test_bad_spacing_is_one_line_error(spacing, msg):
    with pytest.raises(UnetlabError, match=msg):
        border_weight_map(random_volume(0), spacing=spacing)


# ------------------------------------------------------------------ separation and targets
def test_separation_3d_no_face_contacts_and_minimal():
    (_, inst), = touching_cells_3d(1, 32, seed=1, cells=10)
    mask = separate_instances(inst)
    sep = np.where(mask, inst, 0)
    for ax in range(3):
        a = np.moveaxis(sep, ax, 0)
        assert not ((a[:-1] > 0) & (a[1:] > 0) & (a[:-1] != a[1:])).any()
    removed = (inst > 0) & ~mask
    assert removed.any()
    pad = np.pad(inst, 1)
    for z, y, x in np.argwhere(removed)[:200]:
        nb = [pad[z, y + 1, x + 1], pad[z + 2, y + 1, x + 1], pad[z + 1, y, x + 1],
              pad[z + 1, y + 2, x + 1], pad[z + 1, y + 1, x], pad[z + 1, y + 1, x + 2]]
        assert any(0 < v < inst[z, y, x] for v in nb)


def test_training_targets_3d_with_spacing():
    inst = random_volume(7)
    sp = (2.0, 1.0, 1.0)
    classes, w = training_targets(inst, spacing=sp)
    ign = inst < 0
    assert classes.shape == inst.shape and set(np.unique(classes)) == {0, 1, IGNORE_INDEX}
    assert (classes[ign] == IGNORE_INDEX).all() and (w[ign] == 0).all()
    sep = np.where(classes == 1, inst, 0)
    sep[ign] = -1
    wc = class_balance_map(classes, ignore_label=IGNORE_INDEX)
    assert wc[~ign].mean() == pytest.approx(1.0, rel=1e-5)
    np.testing.assert_allclose(w, wc + naive_border_weight_map(sep, sampling=sp), atol=2e-5)
    np.testing.assert_array_equal(weight_map(inst, spacing=sp), w)


# ------------------------------------------------------------------ sparse annotation
def test_sparsify_keeps_every_nth_block_of_slices():
    vol = np.arange(1, 70 * 3 * 4 + 1, dtype=np.int32).reshape(70, 3, 4)
    vol[5, 0, 0] = -7
    sp = sparsify(vol, every=32, keep=3)
    kept = [0, 1, 2, 32, 33, 34, 64, 65, 66]
    assert sp.dtype == np.int32
    np.testing.assert_array_equal(sp[kept], vol[kept])
    others = np.setdiff1d(np.arange(70), kept)
    assert (sp[others] == -1).all()
    # offset and another axis
    sp2 = sparsify(vol, every=4, keep=1, axis=2, offset=1)
    np.testing.assert_array_equal(sp2[..., 1], vol[..., 1])
    assert (sp2[..., [0, 2, 3]] == -1).all()
    assert (sparsify(vol, every=8, keep=8)[5, 0, 0]) == -1    # negative stays unlabelled
    for kw, msg in (({"every": 0}, "every"), ({"keep": 5, "every": 4}, "exceed"),
                    ({"axis": 3}, "axis")):
        with pytest.raises(UnetlabError, match=msg):
            sparsify(vol, **kw)


def test_sparse_targets_ignore_unlabelled_and_border_uses_annotated_only():
    (_, dense), = touching_cells_3d(1, (24, 40, 40), seed=4, cells=14)
    sparse = sparsify(dense, every=8, keep=2)
    classes, w = training_targets(sparse)
    unlab = sparse < 0
    assert unlab.mean() > 0.7
    assert (classes[unlab] == IGNORE_INDEX).all() and (w[unlab] == 0).all()
    assert (classes[~unlab] != IGNORE_INDEX).all() and (w[~unlab] > 0).all()
    # class balance over annotated voxels only: mean w_c there is exactly 1
    _, wc = training_targets(sparse, w0=0)
    assert wc[~unlab].mean() == pytest.approx(1.0, rel=1e-5)
    # border term: distances to annotated (separated) voxels only
    sep = np.where(classes == 1, sparse, 0)
    sep[unlab] = -1
    border = w - wc
    np.testing.assert_allclose(border, naive_border_weight_map(sep), atol=2e-5)
    # … which differs from the dense volume's term on the same (annotated) voxels
    dense_border = training_targets(dense)[1] - training_targets(dense, w0=0)[1]
    assert np.abs(border - dense_border)[~unlab].max() > 0.5
