"""Tests of unetlab.augment (Sec. 3.1) against the slow reference tests/reference/naive_elastic.py.

Tolerances: the fast path and the reference both work with float64 coordinates and float64
accumulation; the only difference is the float32 output (relative 6e-8) and the summation order,
so images with values in [0, 1] must agree to 1e-6 and labels exactly.
"""
from __future__ import annotations

import re
import pickle

import numpy as np
import pytest
import scipy.ndimage as ndi

from reference import naive_elastic as ref
from unetlab.augment import (Augment, AugmentParams, bspline_upsampling_matrix, elastic_deform,
                             elastic_field, random_grid, resample)
from unetlab.errors import UnetlabError


def _data(h=33, w=41, c=2, seed=1):
    rng = np.random.default_rng(seed)
    img = rng.random((c, h, w)).astype(np.float32)
    lbl = rng.choice(np.array([0, 3, 7, 255], np.uint8), size=(h, w))
    wts = rng.random((h, w)).astype(np.float32)
    return img, lbl, wts


# -- the field ----------------------------------------------------------------------------------

@pytest.mark.parametrize("grid", [2, 3, 4, 5])
@pytest.mark.parametrize("n", [2, 7, 64, 572])
def test_bspline_matrix_equals_scipy_cubic_spline(grid, n):
    a = bspline_upsampling_matrix(n, grid)
    t = np.arange(n) * (grid - 1) / (n - 1)
    expected = np.stack([ndi.map_coordinates(np.eye(grid)[k], [t], order=3, mode="mirror")
                         for k in range(grid)], axis=1)
    np.testing.assert_allclose(a, expected, atol=1e-12, rtol=0)
    # interpolating: first/last output samples are the first/last grid values; partition of unity
    np.testing.assert_allclose(a[0], np.eye(grid)[0], atol=1e-12)
    np.testing.assert_allclose(a[-1], np.eye(grid)[-1], atol=1e-12)
    np.testing.assert_allclose(a.sum(axis=1), 1.0, atol=1e-12)


def test_field_equals_reference_and_grid_values_at_grid_pixels():
    d = random_grid(3, 10.0, rng=5)
    h, w = 41, 57                                    # odd: the middle grid point is a pixel
    f = elastic_field(d, (h, w))
    np.testing.assert_allclose(f, ref.field(d, h, w), atol=1e-10)
    for i, y in enumerate([0, (h - 1) // 2, h - 1]):
        for j, x in enumerate([0, (w - 1) // 2, w - 1]):
            np.testing.assert_allclose(f[:, y, x], d[:, i, j], atol=1e-10)


# -- against the slow reference -----------------------------------------------------------------

@pytest.mark.parametrize("sigma", [3.0, 10.0, 40.0])        # 40: heavy mirroring at the borders
def test_elastic_deform_matches_naive_reference(sigma):
    img, lbl, wts = _data()
    out = elastic_deform([img, lbl, wts], [3, 0, 1], grid=3, sigma=sigma, rng=7)
    d = random_grid(3, sigma, rng=7)                 # the same draws for the same seed
    exp = ref.elastic_deform([img, lbl, wts], [3, 0, 1], d)
    np.testing.assert_allclose(out[0], exp[0], atol=1e-6, rtol=0)
    np.testing.assert_array_equal(out[1], exp[1])
    np.testing.assert_allclose(out[2], exp[2], atol=1e-6, rtol=0)


def test_paper_size_pixels_match_reference():
    """572² image (the paper's tile): 300 random output pixels against the per-pixel formula."""
    rng = np.random.default_rng(3)
    h = w = 572
    img = ndi.gaussian_filter(rng.random((h, w)), 2).astype(np.float32)
    img = (img - img.min()) / (img.max() - img.min())
    lbl = (rng.random((h, w)) * 5).astype(np.uint8)
    out_img, out_lbl = elastic_deform([img, lbl], [3, 0], 3, 10.0, rng=11)
    f = ref.field(random_grid(3, 10.0, rng=11), h, w)
    for i, j in rng.integers(0, h, size=(300, 2)):
        y, x = i + f[0, i, j], j + f[1, i, j]
        assert abs(out_img[i, j] - ref.sample_pixel(img, y, x, 3)) < 1e-6
        assert out_lbl[i, j] == ref.sample_pixel(lbl, y, x, 0)


def test_rotation_shift_elastic_composed_matches_reference():
    img, lbl, wts = _data(29, 35)
    d = random_grid(3, 6.0, rng=2)
    p = AugmentParams(displacements=d, angle=33.0, shift=(2.5, -4.25))
    ys, xs = Augment.coordinates(p, (29, 35))
    rys, rxs = ref.rotate_shift_elastic_coords(29, 35, 33.0, (2.5, -4.25), d)
    np.testing.assert_allclose(ys, rys, atol=1e-9)
    np.testing.assert_allclose(xs, rxs, atol=1e-9)
    o_img, o_lbl, o_w = Augment.none().apply(p, img, lbl, wts)
    np.testing.assert_allclose(o_img, ref.resample(img, 3, rys, rxs), atol=1e-6)
    np.testing.assert_array_equal(o_lbl, ref.resample(lbl, 0, rys, rxs))
    np.testing.assert_allclose(o_w, ref.resample(wts, 1, rys, rxs), atol=1e-6)


# -- properties ---------------------------------------------------------------------------------

def test_sigma_zero_is_identity():
    img, lbl, wts = _data()
    out = elastic_deform([img, lbl, wts], [3, 0, 1], sigma=0.0, rng=0)
    for a, b in zip(out, (img, lbl, wts)):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
        assert not np.shares_memory(a, b)
    # the resampler itself is exact on the identity map (Keys kernel interpolates)
    yy, xx = np.meshgrid(np.arange(33.0), np.arange(41.0), indexing="ij")
    for a, o in ((img, 3), (lbl, 0), (wts, 1)):
        np.testing.assert_array_equal(resample([a], [o], yy, xx)[0], a)


def test_labels_never_invented_any_dtype():
    img, lbl, _ = _data(48, 48)
    inst = np.where(lbl > 0, lbl.astype(np.int32) * 10_000_019, -1)      # ids beyond 2^24
    for seed in range(5):
        o_lbl, o_inst = elastic_deform([lbl, inst], [0, 0], sigma=10.0, rng=seed)
        assert o_lbl.dtype == np.uint8 and o_inst.dtype == np.int32
        assert set(np.unique(o_lbl)) <= set(np.unique(lbl))
        assert set(np.unique(o_inst)) <= set(np.unique(inst))
        # both label arrays were moved by the same map
        np.testing.assert_array_equal(o_inst, np.where(o_lbl > 0, o_lbl.astype(np.int32)
                                                       * 10_000_019, -1))


def test_weights_stay_in_range_with_linear_order():
    _, _, wts = _data(40, 40)
    out = elastic_deform([wts], [1], sigma=15.0, rng=4)[0]
    assert out.min() >= wts.min() - 1e-7 and out.max() <= wts.max() + 1e-7


def test_displacement_statistics_at_the_centre():
    """The centre of a 3×3 lattice is a grid point, so its displacement is N(0, sigma²) exactly.
    Measured through the deformation itself: a linear ramp resampled linearly gives back the
    source coordinate."""
    sigma, n, h = 10.0, 1500, 81
    c = (h - 1) // 2
    yy, xx = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(h, dtype=np.float64),
                         indexing="ij")
    ramps = np.stack([yy, xx])
    disp = np.empty((n, 2))
    for s in range(n):
        out = elastic_deform([ramps], [1], grid=3, sigma=sigma, rng=s)[0]
        disp[s] = out[:, c, c] - c
        if s < 3:                       # and it is exactly the middle lattice displacement
            np.testing.assert_allclose(disp[s], random_grid(3, sigma, s)[:, 1, 1], atol=1e-9)
    std = disp.std(axis=0, ddof=1)
    # standard error of a std estimate ≈ sigma / sqrt(2n) = 0.18 px: allow ~3.3 of them
    assert np.all(np.abs(std - sigma) < 0.6), std
    assert np.all(np.abs(disp.mean(axis=0)) < 4 * sigma / np.sqrt(n)), disp.mean(axis=0)
    assert abs(np.corrcoef(disp.T)[0, 1]) < 0.1          # the two components are independent


def _blocks(h=96, w=96, seed=0):
    rng = np.random.default_rng(seed)
    lbl = np.zeros((h, w), np.uint8)
    for _ in range(12):
        y, x = rng.integers(0, h - 20), rng.integers(0, w - 20)
        lbl[y:y + rng.integers(8, 20), x:x + rng.integers(8, 20)] = rng.integers(1, 5)
    return lbl


def _interior(lbl, r=3):
    """Pixels whose (2r+1)² neighbourhood (mirrored at the borders) has one label value."""
    size = 2 * r + 1
    return ndi.maximum_filter(lbl, size, mode="mirror") == ndi.minimum_filter(lbl, size,
                                                                                mode="mirror")


def _mirror(k, n):
    p = 2 * (n - 1)
    k = np.mod(k, p)
    return np.where(k >= n, p - k, k)


def _source_interior(lbl, ys, xs):
    """Output pixels whose source point is ≥ 3 px inside one label region: there the bicubic
    4×4 and bilinear 2×2 footprints only see that label."""
    h, w = lbl.shape
    inner = _interior(lbl, 3)
    return inner[_mirror(np.rint(ys).astype(int), h), _mirror(np.rint(xs).astype(int), w)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_image_and_labels_stay_aligned(seed):
    """An image equal to its label map (×1.0) deformed jointly with it: wherever the image's
    interpolation footprint lies inside one region, image value == label value."""
    lbl = _blocks(seed=seed)
    img = lbl.astype(np.float32)[None]
    o_img, o_lbl, o_w = elastic_deform([img, lbl, lbl.astype(np.float32)], [3, 0, 1],
                                       sigma=10.0, rng=seed)
    f = ref.field(random_grid(3, 10.0, rng=seed), *lbl.shape)
    m = _source_interior(lbl, np.arange(96)[:, None] + f[0], np.arange(96)[None, :] + f[1])
    assert m.mean() > 0.4
    np.testing.assert_allclose(o_img[0][m], o_lbl[m], atol=1e-5)
    np.testing.assert_allclose(o_w[m], o_lbl[m], atol=1e-5)
    # and the full pipeline (rotation + shift + elastic + flips; grey values off)
    aug = Augment(contrast=0, brightness=0, gamma=0, noise=0)
    p = aug.sample(lbl.shape, rng=seed)
    a_img, a_lbl, a_w = aug.apply(p, img, lbl, lbl.astype(np.float32))
    ys, xs = Augment.coordinates(p, lbl.shape)
    m = _source_interior(lbl, ys, xs)
    m = np.rot90(m, p.quarter_turns)
    m = m[:, ::-1] if p.flip else m
    assert m.mean() > 0.4
    np.testing.assert_allclose(a_img[0][m], a_lbl[m], atol=1e-5)
    np.testing.assert_allclose(a_w[m], a_lbl[m], atol=1e-5)
    # the pipeline is sample + apply with the same draws
    np.testing.assert_array_equal(aug(img, lbl, None, rng=seed)[1], a_lbl)


def test_deterministic_with_seed():
    img, lbl, wts = _data()
    a = elastic_deform([img, lbl], [3, 0], rng=42)
    b = elastic_deform([img, lbl], [3, 0], rng=np.random.default_rng(42))
    c = elastic_deform([img, lbl], [3, 0], rng=43)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    s1 = [Augment.paper(seed=3)(img, lbl, wts) for _ in range(1)]
    p1, p2 = Augment.paper(seed=3), Augment.paper(seed=3)
    for _ in range(3):
        x, y = p1(img, lbl, wts), p2(img, lbl, wts)
        for u, v in zip(x, y):
            np.testing.assert_array_equal(u, v)
    np.testing.assert_array_equal(s1[0][0], Augment.paper(seed=3)(img, lbl, wts)[0])
    # an explicit rng overrides the pipeline's own generator
    np.testing.assert_array_equal(Augment.paper(seed=1)(img, lbl, wts, rng=9)[0],
                                  Augment.paper(seed=2)(img, lbl, wts, rng=9)[0])


def _dihedral_all(a):
    out = []
    for k in range(4):
        r = np.rot90(a, k, axes=(-2, -1))
        out += [r, r[..., ::-1]]
    return out


def test_flips_and_quarter_turns_are_exact():
    img, lbl, wts = _data(24, 24)
    aug = Augment(elastic_sigma=0, rotation=0, shift=0, flips=True, contrast=0, brightness=0,
                  gamma=0, noise=0)
    seen = set()
    for s in range(64):
        o_img, o_lbl, o_w = aug(img, lbl, wts, rng=s)
        hits = [i for i, t in enumerate(_dihedral_all(img)) if np.array_equal(t, o_img)]
        assert len(hits) == 1
        i = hits[0]
        seen.add(i)
        np.testing.assert_array_equal(o_lbl, _dihedral_all(lbl)[i])
        np.testing.assert_array_equal(o_w, _dihedral_all(wts)[i])
    assert seen == set(range(8))


def test_flips_keep_shape_of_non_square_images():
    img, lbl, wts = _data(20, 30)
    aug = Augment(elastic_sigma=0, rotation=0, shift=0, contrast=0, brightness=0, gamma=0,
                  noise=0)
    for s in range(16):
        o_img, o_lbl, _ = aug(img, lbl, wts, rng=s)
        assert o_img.shape == img.shape and o_lbl.shape == lbl.shape
        assert any(np.array_equal(o_lbl, t) for t in _dihedral_all(lbl))


def test_rotation_by_90_degrees_equals_rot90():
    img, lbl, wts = _data(31, 31)
    o_img, o_lbl, o_w = Augment.none().apply(AugmentParams(angle=90.0), img, lbl, wts)
    np.testing.assert_allclose(o_img, np.rot90(img, 1, axes=(-2, -1)), atol=1e-6)
    np.testing.assert_array_equal(o_lbl, np.rot90(lbl))
    np.testing.assert_allclose(o_w, np.rot90(wts), atol=1e-6)


def test_rotation_of_a_centred_disk():
    h = 65
    yy, xx = np.mgrid[:h, :h] - (h - 1) / 2
    r = np.hypot(yy, xx)
    img = np.exp(-r ** 2 / (2 * 12.0 ** 2)).astype(np.float32)[None]   # smooth, radial
    disk = (r < 20.3).astype(np.uint8)
    for angle in (17.0, 45.0, 133.0):
        o_img, o_lbl, _ = Augment.none().apply(AugmentParams(angle=angle), img, disk)
        inside = r < (h - 1) / 2 - 2           # the corners come from mirrored content
        # Keys a = −0.75 reproduces only linear functions: error ≈ ½·max|f''| = 1/(2·12²) here
        assert np.abs(o_img - img)[0][inside].max() < 5e-3
        diff = (o_lbl != disk) & inside
        assert diff.sum() <= 2 * np.pi * 20.3 / 2        # at most half the rim pixels
        assert np.all(np.abs(r[diff] - 20.3) < 1.0)           # only at the rim
    # a marker off the centre moves counter-clockwise as displayed (like np.rot90)
    m = np.zeros((h, h), np.uint8)
    m[10, 32] = 1                                              # above the centre
    o = Augment.none().apply(AugmentParams(angle=90.0), img, m)[1]
    assert o[32, 10] == 1 and o.sum() == 1                     # now left of the centre


def test_integer_shift_moves_content():
    img, lbl, wts = _data(30, 30)
    o_img, o_lbl, o_w = Augment.none().apply(AugmentParams(shift=(3.0, -2.0)), img, lbl, wts)
    np.testing.assert_allclose(o_img[:, :27, 2:], img[:, 3:, :28], atol=1e-6)
    np.testing.assert_array_equal(o_lbl[:27, 2:], lbl[3:, :28])
    np.testing.assert_allclose(o_w[:27, 2:], wts[3:, :28], atol=1e-6)


def test_grey_values_change_only_the_image():
    img, lbl, wts = _data(32, 32)
    aug = Augment(elastic_sigma=0, rotation=0, shift=0, flips=False, contrast=0.3,
                  brightness=0.5, gamma=0.3, noise=0.2, p_grey=1.0)
    o_img, o_lbl, o_w = aug(img, lbl, wts, rng=0)
    np.testing.assert_array_equal(o_lbl, lbl)
    np.testing.assert_array_equal(o_w, wts)
    assert o_img.dtype == np.float32 and o_img.shape == img.shape
    assert np.abs(o_img - img).mean() > 1e-3
    # brightness alone is a pure offset within its range
    b = Augment(elastic_sigma=0, rotation=0, shift=0, flips=False, contrast=0, gamma=0, noise=0,
                brightness=0.5, p_grey=1.0)
    o = b(img, lbl, wts, rng=1)[0]
    off = o - img
    assert np.ptp(off) < 1e-6 and 0 < abs(off.mean()) <= 0.5


def test_none_returns_equal_copies():
    img, lbl, wts = _data()
    out = Augment.none()(img, lbl, wts, rng=0)
    for a, b in zip(out, (img, lbl, wts)):
        np.testing.assert_array_equal(a, b)
        assert not np.shares_memory(a, b)


def test_output_shapes_and_dtypes():
    img, lbl, wts = _data(60, 44, c=3)
    o_img, o_lbl, o_w = Augment.paper()(img, lbl, wts, rng=0)
    assert (o_img.shape, o_img.dtype) == ((3, 60, 44), np.float32)
    assert (o_lbl.shape, o_lbl.dtype) == ((60, 44), np.uint8)
    assert (o_w.shape, o_w.dtype) == ((60, 44), np.float32)
    assert set(np.unique(o_lbl)) <= {0, 3, 7, 255}
    o_img2, none_c, none_w = Augment.paper()(img, None, None, rng=0)
    assert none_c is None and none_w is None
    np.testing.assert_array_equal(o_img2, o_img)      # same draws with or without labels


def test_leading_axes_are_deformed_identically():
    rng = np.random.default_rng(0)
    stack = rng.random((2, 3, 30, 26)).astype(np.float32)
    labels = rng.integers(0, 4, (2, 30, 26)).astype(np.int16)
    out, out_l = elastic_deform([stack, labels], [3, 0], sigma=8.0, rng=12)
    assert out.shape == stack.shape and out_l.shape == labels.shape
    assert out.dtype == np.float32 and out_l.dtype == np.int16
    for i in range(2):
        single = elastic_deform([stack[i, 1], labels[i]], [3, 0], sigma=8.0, rng=12)
        np.testing.assert_array_equal(out[i, 1], single[0])
        np.testing.assert_array_equal(out_l[i], single[1])


def test_paper_defaults_and_picklable():
    a = Augment.paper(seed=5)
    assert (a.elastic_grid, a.elastic_sigma, a.p_elastic) == (3, 10.0, 1.0)
    assert a.rotation > 0 and a.flips and a.shift > 0
    img, lbl, wts = _data()
    a(img, lbl, wts)                                   # advance the internal generator
    b = pickle.loads(pickle.dumps(a))
    for u, v in zip(a(img, lbl, wts), b(img, lbl, wts)):
        np.testing.assert_array_equal(u, v)


def test_bad_input_raises_clear_errors():
    img, lbl, wts = _data()
    with pytest.raises(UnetlabError, match="same height and width"):
        elastic_deform([img, lbl[:-1]], [3, 0])
    with pytest.raises(UnetlabError, match="one interpolation order per array"):
        elastic_deform([img, lbl], [3])
    with pytest.raises(UnetlabError, match="orders\\[1\\]"):
        elastic_deform([img, lbl], [3, 2])
    with pytest.raises(UnetlabError, match="grid"):
        elastic_deform([img], [3], grid=1)
    with pytest.raises(UnetlabError, match="sigma"):
        elastic_deform([img], [3], sigma=-1)
    with pytest.raises(UnetlabError, match="list of arrays"):
        elastic_deform(img, [3])
    with pytest.raises(UnetlabError, match="rng"):
        elastic_deform([img], [3], rng="seed")
    with pytest.raises(UnetlabError, match="image must have shape \\(C, H, W\\)"):
        Augment()(img[0], lbl, wts)
    with pytest.raises(UnetlabError, match="classes must have shape"):
        Augment()(img, lbl[:, :-1], wts)
    with pytest.raises(UnetlabError, match="weights must have shape"):
        Augment()(img, lbl, wts.T)
    with pytest.raises(UnetlabError, match="p_elastic"):
        Augment(p_elastic=1.5)
    with pytest.raises(UnetlabError, match="elastic_sigma"):
        Augment(elastic_sigma=-2)
    with pytest.raises(ValueError):                     # UnetlabError is a ValueError
        Augment(rotation=float("nan"))


# -- the CLI verb -------------------------------------------------------------------------------

def test_cli_augment_synthetic_writes_checkable_pictures(tmp_path, capsys):
    import imageio.v3 as iio
    import tifffile

    from unetlab.cli import main

    out = tmp_path / "aug"
    assert main(["augment", "synthetic", "--out", str(out), "--n", "2", "--size", "64",
                 "--seed", "1"]) == 0
    assert "grid.png" in capsys.readouterr().out
    grid = iio.imread(out / "grid.png")
    assert grid.ndim == 3 and grid.shape[0] > 300 and grid.shape[1] > 500
    for i in range(2):
        img = tifffile.imread(out / f"aug_{i:03d}_image.tif")
        assert img.shape == (1, 64, 64) and img.dtype == np.float32
        cls = iio.imread(out / f"aug_{i:03d}_classes.png")
        assert cls.shape == (64, 64) and set(np.unique(cls)) <= {0, 1, 255} and cls.max() == 1
        w = tifffile.imread(out / f"aug_{i:03d}_weights.tif")
        assert w.shape == (64, 64) and w.min() >= 0
        assert iio.imread(out / f"aug_{i:03d}_image.png").dtype == np.uint8
    # same seed → same pictures
    out2 = tmp_path / "aug2"
    assert main(["augment", "synthetic", "--out", str(out2), "--n", "1", "--size", "64",
                 "--seed", "1"]) == 0
    np.testing.assert_array_equal(tifffile.imread(out / "aug_000_image.tif"),
                                  tifffile.imread(out2 / "aug_000_image.tif"))


def test_cli_augment_reads_datasets_with_read_dataset(tmp_path, monkeypatch):
    import imageio.v3 as iio

    import unetlab.data
    from unetlab.cli import main
    from unetlab.data import Sample

    seen = {}
    inst = np.zeros((40, 50), np.int32)
    inst[5:20, 5:25], inst[20:35, 10:30], inst[:, 45:] = 1, 2, -1      # -1 = unlabelled

    def fake_read_dataset(path, labels=None, **kw):
        seen["args"] = (path, labels)
        return [Sample(np.random.default_rng(0).standard_normal((1, 40, 50)).astype(np.float32),
                       inst, name="fake")]

    monkeypatch.setattr(unetlab.data, "read_dataset", fake_read_dataset)
    out = tmp_path / "o"
    assert main(["augment", "somewhere", "--labels", "lab", "--out", str(out), "--n", "2",
                 "--tile", "32", "--no-grey"]) == 0
    assert seen["args"] == ("somewhere", "lab")
    cls = iio.imread(out / "aug_001_classes.png")
    assert cls.shape == (32, 32) and set(np.unique(cls)) <= {0, 1, 255}


@pytest.mark.parametrize("argv, message", [
    (["--n", "0"], "--n"),
    (["--sigma", "-1"], "--sigma"),
    (["--grid", "1"], "--grid"),
    (["--tile", "2"], "--tile"),
])
def test_cli_augment_bad_options(tmp_path, capsys, argv, message):
    from unetlab.cli import main

    assert main(["augment", "synthetic", "--out", str(tmp_path / "o")] + argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("unetlab: error:") and message in err and "\n" not in err


def test_cli_augment_missing_data_and_help(tmp_path, capsys):
    from unetlab.cli import main

    assert main(["augment", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "nope" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["augment", "--help"])
    text = capsys.readouterr().out
    assert re.search(r"^examples\b.*:$", text, re.M) and "unetlab augment synthetic --out aug/" in text


def test_cli_augment_keeps_existing_files_unless_overwrite(tmp_path, capsys):
    from unetlab.cli import main

    out = tmp_path / "aug"
    argv = ["augment", "synthetic", "--out", str(out), "--n", "1", "--size", "32"]
    assert main(argv) == 0
    grid = (out / "grid.png").read_bytes()
    (out / "aug_000_image.png").write_bytes(b"my edited picture")
    capsys.readouterr()
    assert main(argv + ["--seed", "5"]) == 2
    err = capsys.readouterr().err.strip()
    assert "already exists" in err and "--overwrite" in err and "\n" not in err
    assert (out / "aug_000_image.png").read_bytes() == b"my edited picture"
    assert (out / "grid.png").read_bytes() == grid
    assert main(argv + ["--seed", "5", "--overwrite"]) == 0
    assert (out / "aug_000_image.png").read_bytes()[:4] == b"\x89PNG"
