"""unetlab.weights (Eq. 2, Fig. 3c) against a naive reference, hand-computed cases, scikit-image;
and the ``unetlab weights`` command."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage
from skimage.measure import label as sk_label

from reference.naive_weights import naive_border_weight_map, naive_border_weight_map_lowmem
from unetlab.errors import UnetlabError
from unetlab.weights import (IGNORE_INDEX, as_instances, border_radius, border_weight_map,
                             class_balance_map, instances_from_mask, separate_instances,
                             training_targets, weight_map)


def random_touching(seed: int, shape=(72, 80), n=14, ignore=True, split=True) -> np.ndarray:
    """Voronoi cells of random seeds clipped by discs: many touching instances, some gaps,
    ids not contiguous, optionally an id in two pieces and an ignored (-1) block."""
    rng = np.random.default_rng(seed)
    pts = rng.uniform(0, 1, (n, 2)) * shape
    yy, xx = np.indices(shape)
    d = np.hypot(yy[..., None] - pts[:, 0], xx[..., None] - pts[:, 1])
    near = d.argmin(-1)
    radius = rng.uniform(5, 14, n)
    inside = d.min(-1) < radius[near]
    ids = rng.permutation(np.arange(3, 3 + 3 * n, 3))          # non-contiguous ids
    inst = np.where(inside, ids[near], 0).astype(np.int32)
    if split:                                                   # same id, far-away piece
        inst[2:6, 2:6] = ids[0]
    if ignore:
        inst[-10:-4, 30:45] = -1
    return inst


# ------------------------------------------------------------------ border term vs reference
@pytest.mark.parametrize("seed", range(5))
def test_border_matches_naive_on_random_touching(seed):
    inst = random_touching(seed)
    w0, sigma = [(10.0, 5.0), (10.0, 5.0), (5.0, 3.0), (20.0, 8.0), (10.0, 2.0)][seed]
    fast = border_weight_map(inst, w0, sigma)
    ref = naive_border_weight_map(inst, w0, sigma)
    assert fast.dtype == np.float32 and fast.shape == inst.shape
    assert np.abs(fast - ref).max() <= 1e-5
    assert ref.max() > 1.0                       # the case does exercise the term


def test_border_matches_naive_on_nuclei(shared_file):
    import tifffile

    m = tifffile.imread(shared_file("dsb2018_nuclei", "mask2d.tif")).astype(np.int32)
    fast = border_weight_map(m)
    ref = naive_border_weight_map_lowmem(m)      # same as the stacked one, less memory
    assert np.abs(fast - ref).max() <= 1e-5
    assert ref.max() > 5


def test_two_naive_references_agree_and_tol0_is_exact():
    inst = random_touching(4)
    ref = naive_border_weight_map(inst)
    np.testing.assert_array_equal(naive_border_weight_map_lowmem(inst), ref)
    assert np.abs(border_weight_map(inst, tol=0) - ref).max() <= 1e-6


def test_border_3d_matches_naive():
    rng = np.random.default_rng(7)
    inst = np.zeros((12, 20, 22), np.int32)
    for k in range(1, 6):
        z, y, x = rng.integers(0, 10), rng.integers(0, 16), rng.integers(0, 18)
        inst[z:z + 3, y:y + 5, x:x + 4] = k
    assert np.abs(border_weight_map(inst, 10, 2) - naive_border_weight_map(inst, 10, 2)).max() \
        <= 1e-5


def test_documented_error_bound_holds_for_coarse_tolerance():
    # a coarse tol gives a small window radius, so the bound is really exercised
    inst = random_touching(3, shape=(90, 90), n=10, ignore=False)
    tol = 1e-2
    r = border_radius(10.0, 5.0, tol)
    assert r == pytest.approx(5 * math.sqrt(2 * math.log(10 / tol)) - 1)
    err = np.abs(border_weight_map(inst, tol=tol) - naive_border_weight_map(inst)).max()
    assert 0 < err <= tol
    assert border_radius(10.0, 5.0, 0) == math.inf


def test_hand_computed_two_pixels():
    inst = np.zeros((20, 20), np.int32)
    inst[5, 5] = 1
    inst[5, 12] = 2
    w = border_weight_map(inst, w0=10, sigma=5)
    # between them at (5, 8): d1 = 3, d2 = 4
    assert w[5, 8] == pytest.approx(10 * math.exp(-49 / 50), rel=1e-6)
    # corner (0, 0): d1 = sqrt(25 + 25), d2 = sqrt(25 + 144) = 13
    assert w[0, 0] == pytest.approx(10 * math.exp(-(math.sqrt(50) + 13) ** 2 / 50), rel=1e-5)
    assert w[5, 5] == 0 and w[5, 12] == 0      # foreground


def test_fewer_than_two_instances_is_zero():
    z = np.zeros((30, 30), np.int32)
    assert not border_weight_map(z).any()
    one = z.copy()
    one[3:8, 3:8] = 4
    one[20:25, 20:25] = 4                        # one id in two pieces: still one instance
    one[10:12, 0:5] = -1
    assert not border_weight_map(one).any()
    two = one.copy()
    two[20:25, 20:25] = 5                        # now two instances
    assert border_weight_map(two)[15, 15] > 0


def test_split_id_is_one_instance():
    inst = np.zeros((40, 40), np.int32)
    inst[5:10, 5:10] = 1
    inst[5:10, 14:19] = 1                        # same id, second piece 4 px away
    inst[30:35, 5:10] = 2
    w = border_weight_map(inst)
    np.testing.assert_allclose(w, naive_border_weight_map(inst), atol=1e-5)
    # between the pieces: d1 = 2 (one instance), d2 = distance to id 2 (~23 px) → tiny
    assert w[7, 12] < 1e-3
    relabelled = inst.copy()
    relabelled[5:10, 14:19] = 3                  # as two instances: d1 + d2 = 3 + 2
    assert border_weight_map(relabelled)[7, 12] == pytest.approx(10 * math.exp(-25 / 50),
                                                                  rel=1e-6)


def test_ignored_pixels_zero_and_not_instances():
    inst = np.zeros((30, 30), np.int32)
    inst[5:10, 5:10] = 1
    inst[5:10, 15:20] = -1
    assert not border_weight_map(inst).any()     # -1 is not a second instance
    inst[20:25, 5:10] = 2
    w = border_weight_map(inst)
    assert (w[inst < 0] == 0).all() and (w[inst > 0] == 0).all()
    assert (w[inst == 0] > 0).all()


def test_bad_inputs_raise_one_line_errors():
    with pytest.raises(UnetlabError, match="non-integer"):
        border_weight_map(np.array([[0.5, 1.0], [0, 2]]))
    with pytest.raises(UnetlabError, match="sigma"):
        border_weight_map(np.zeros((4, 4), int), sigma=0)
    # float images with integer values are fine
    f = np.zeros((10, 10))
    f[1, 1], f[8, 8] = 1, 2
    assert border_weight_map(f)[5, 5] > 0


# ------------------------------------------------------------------ class balance
def test_class_balance_formula_mean_and_ratio():
    lab = np.zeros((10, 10), np.int32)           # 60 of class 0
    lab[:3] = 1                                  # 30 of class 1
    lab[3, :] = 2                                # 10 of class 2 ... minus ignored below
    lab[9, :5] = IGNORE_INDEX                    # 5 ignored
    w = class_balance_map(lab, ignore_label=IGNORE_INDEX)
    keep = lab != IGNORE_INDEX
    n = keep.sum()
    counts = {c: (lab == c).sum() for c in (0, 1, 2)}
    for c, nc in counts.items():
        assert np.allclose(w[lab == c], n / (3 * nc))
    assert w[keep].mean() == pytest.approx(1.0, rel=1e-6)
    assert w[lab == 2][0] / w[lab == 1][0] == pytest.approx(counts[1] / counts[2])
    assert (w[~keep] == 0).all() and w.dtype == np.float32


def test_class_balance_negative_ignored_and_single_class():
    lab = np.full((4, 4), 3)
    lab[0] = -1
    w = class_balance_map(lab)
    assert (w[1:] == 1).all() and (w[0] == 0).all()
    assert not class_balance_map(np.full((3, 3), -1)).any()


# ------------------------------------------------------------------ separation (Fig. 3c)
def two_touching_squares():
    inst = np.zeros((20, 30), np.int32)
    inst[4:12, 4:12] = 1
    inst[4:12, 12:20] = 2
    return inst


def test_separate_two_touching_squares():
    inst = two_touching_squares()
    mask = separate_instances(inst)
    cc = sk_label(mask, connectivity=1)
    assert cc.max() == 2
    for k in (1, 2):                             # each component lies inside one instance
        assert len(np.unique(inst[cc == k])) == 1
    removed = (inst > 0) & ~mask
    # exactly the contact column of the larger id: one-pixel border, nothing else eroded
    expected = np.zeros_like(removed)
    expected[4:12, 12] = True
    np.testing.assert_array_equal(removed, expected)


@pytest.mark.parametrize("seed", range(3))
def test_separate_random_no_4_adjacency_and_minimal(seed):
    inst = random_touching(seed, split=False)
    mask = separate_instances(inst)
    sep = np.where(mask, inst, 0)
    for ax in (0, 1):
        a = np.moveaxis(sep, ax, 0)
        lo, hi = a[:-1], a[1:]
        assert not ((lo > 0) & (hi > 0) & (lo != hi)).any()
    # removed pixels all touch (4-neighbourhood) a smaller positive id
    removed = (inst > 0) & ~mask
    assert removed.any()
    pad = np.pad(inst, 1)
    for y, x in zip(*np.nonzero(removed)):
        nb = [pad[y, x + 1], pad[y + 2, x + 1], pad[y + 1, x], pad[y + 1, x + 2]]
        assert any(0 < v < inst[y, x] for v in nb)
    assert not mask[inst <= 0].any()


def test_instances_from_mask_matches_skimage():
    rng = np.random.default_rng(1)
    m = ndimage.binary_opening(rng.random((60, 70)) > 0.45).astype(np.uint8) * 255
    ours = instances_from_mask(m)
    ref = sk_label(m > 0, connectivity=1)
    assert ours.dtype == np.int32 and ours.max() == ref.max() > 5
    # same partition (bijection between the ids)
    pairs = np.unique(np.stack([ours.ravel(), ref.ravel()]), axis=1)
    assert pairs.shape[1] == ref.max() + 1


def test_separation_keeps_4_connected_components_of_a_mask():
    rng = np.random.default_rng(2)
    m = rng.random((50, 50)) > 0.4
    np.testing.assert_array_equal(separate_instances(instances_from_mask(m)), m)


def test_isbi_label_targets(shared_file):
    import imageio.v3 as iio

    lab = iio.imread(shared_file("isbi2012", "train", "label", "00.png"))
    inst = as_instances(lab)
    assert inst.max() > 50                          # cells = white 4-connected regions
    classes, w = training_targets(inst)
    np.testing.assert_array_equal(classes, (lab > 127).astype(np.uint8))  # membranes stay 0
    # thin membranes between two cells get the border term, cell interiors do not
    assert np.median(w[classes == 0]) > 5 * np.median(w[classes == 1])


def test_as_instances_binary_ids_and_errors():
    inst = two_touching_squares()
    binary = (inst > 0).astype(np.uint8) * 255
    b = as_instances(binary)
    assert b.max() == 1                          # the two squares touch: one component
    ids = as_instances(inst.astype(np.uint16) * 7)
    np.testing.assert_array_equal(ids, inst * 7)
    assert ids.dtype == np.int32
    assert as_instances(np.where(inst == 2, 9, inst), ignore_label=9).min() == -1
    with pytest.raises(UnetlabError, match="non-integer"):
        as_instances(np.array([[0.0, 0.3]]))


# ------------------------------------------------------------------ full map and targets
def test_weight_map_on_separation_line():
    inst = two_touching_squares()
    classes, w = training_targets(inst)
    assert classes.dtype == np.uint8 and w.dtype == np.float32
    n = inst.size
    n1 = (classes == 1).sum()
    wc0, wc1 = n / (2 * (n - n1)), n / (2 * n1)
    # the separation pixel (6, 12): background, d1 = d2 = 1
    assert classes[6, 12] == 0
    assert w[6, 12] == pytest.approx(wc0 + 10 * math.exp(-4 / 50), rel=1e-5)
    assert w[6, 6] == pytest.approx(wc1, rel=1e-6)   # inside a cell: w_c only
    assert w.max() == pytest.approx(w[6, 12], rel=1e-6)
    nb = weight_map(inst, balance=False)
    assert nb[6, 6] == pytest.approx(1.0) and nb[6, 12] == pytest.approx(1 + 10 * math.exp(-0.08))


def test_training_targets_ignore():
    inst = random_touching(0)
    inst[0:5, 0:5] = 50                            # a named ignore id
    classes, w = training_targets(inst, ignore_label=50)
    ign = (inst < 0) | (inst == 50)
    assert set(np.unique(classes)) == {0, 1, IGNORE_INDEX}
    assert (classes[ign] == IGNORE_INDEX).all() and (w[ign] == 0).all()
    assert (w[~ign] > 0).all()
    assert w[(classes == 1)].mean() > 0
    np.testing.assert_array_equal(weight_map(inst, ignore_label=50), w)
    # balance: mean of w_c over labelled pixels is 1
    _, wb = training_targets(inst, w0=0, ignore_label=50)
    assert wb[~ign].mean() == pytest.approx(1.0, rel=1e-5)


# ------------------------------------------------------------------ the CLI verb
def test_cli_weights_writes_png_and_tiff(tmp_path, capsys):
    import tifffile
    from unetlab.cli import main

    inst = random_touching(2, ignore=False).astype(np.uint16)
    src = tmp_path / "lab.tif"
    tifffile.imwrite(src, inst)
    out, tif = tmp_path / "pics" / "w.png", tmp_path / "w.tif"
    assert main(["weights", str(src), "--out", str(out), "--tiff", str(tif)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    np.testing.assert_allclose(tifffile.imread(tif), weight_map(inst), atol=1e-6)
    assert "instances" in capsys.readouterr().out


@pytest.mark.parametrize("case, msg", [
    ("missing", "no such file"), ("rgb", "RGB"), ("float", "non-integer"),
    ("page", "--page"), ("intensity", "intensity"),
])
def test_cli_weights_errors_are_one_line(tmp_path, capsys, case, msg):
    import tifffile
    from unetlab.cli import main

    p = tmp_path / f"{case}.tif"
    extra = []
    if case == "rgb":  # a colour picture (grey saved as RGB is read as grey, as train does)
        rgb = np.zeros((16, 16, 3), np.uint8)
        rgb[4:9, 4:9, 0] = 255
        tifffile.imwrite(p, rgb)
    elif case == "float":
        tifffile.imwrite(p, np.random.default_rng(0).random((16, 16)).astype(np.float32))
    elif case == "page":
        tifffile.imwrite(p, np.zeros((2, 16, 16), np.uint8))
        extra = ["--page", "5"]
    elif case == "intensity":
        tifffile.imwrite(p, np.random.default_rng(0).integers(0, 200, (128, 128), np.uint8))
    assert main(["weights", str(p), "--out", str(tmp_path / "w.png"), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert msg in err and "\n" not in err and err.startswith("unetlab: error:")
    assert not (tmp_path / "w.png").exists()


def test_cli_weights_never_overwrites_the_labels_and_needs_overwrite(tmp_path, capsys):
    import tifffile
    from unetlab.cli import main

    lab = tmp_path / "lab.tif"
    tifffile.imwrite(lab, (two_touching_squares() > 0).astype(np.uint8) * 255)
    before = lab.read_bytes()
    for argv in (["--out", str(lab)], ["--out", str(tmp_path / "w.png"), "--tiff", str(lab)],
                 ["--out", str(tmp_path / "w.png"), "--tiff", str(lab), "--overwrite"]):
        assert main(["weights", str(lab), *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert "lab.tif" in err and "input" in err and "\n" not in err
    assert lab.read_bytes() == before and not (tmp_path / "w.png").exists()
    out = tmp_path / "w.png"
    assert main(["weights", str(lab), "--out", str(out)]) == 0
    first = out.read_bytes()
    assert main(["weights", str(lab), "--out", str(out), "--w0", "3"]) == 2
    assert "--overwrite" in capsys.readouterr().err and out.read_bytes() == first
    assert main(["weights", str(lab), "--out", str(out), "--w0", "3", "--overwrite"]) == 0


def test_weight_map_of_a_binary_mask_equals_the_cli(tmp_path):
    """weight_map(0/255 mask) splits the mask into 4-connected cells as train does, so the
    border term appears between cells; the API and `unetlab weights` give the same map."""
    import tifffile
    from unetlab.cli import main

    mask = np.zeros((40, 50), np.uint8)
    mask[5:35, 5:22] = 255
    mask[5:35, 24:45] = 255                     # two cells, a 2-pixel gap
    w_api = weight_map(mask)
    assert w_api[20, 22:24].min() > 8           # the gap carries ~w0 = 10 (not max 2.28)
    np.testing.assert_allclose(w_api, weight_map(as_instances(mask)))
    tifffile.imwrite(tmp_path / "m.tif", mask)
    assert main(["weights", str(tmp_path / "m.tif"), "--out", str(tmp_path / "w.png"),
                 "--tiff", str(tmp_path / "w.tif")]) == 0
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "w.tif"), w_api)
