"""unetlab.elastic3d and Augment on volumes (Sec. 3.1 carried to 3D as in Çiçek et al. 2016)
against slow references: scipy's cubic B-spline for the field, ``scipy.ndimage.map_coordinates``
(order 1 and 0, mode "mirror") on the same coordinates, and a per-voxel loop over the 64 Keys
taps for the tricubic kernel."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.ndimage as ndi

from reference import naive_elastic as ref
from unetlab.augment import Augment, AugmentParams
from unetlab.elastic3d import (coordinates_3d, elastic_deform_3d, elastic_field_3d,
                               random_grid_3d, resample_3d)
from unetlab.errors import UnetlabError


def naive_cubic_3d(vol: np.ndarray, zs, ys, xs) -> np.ndarray:
    """Tricubic Keys (a = −0.75) with mirrored taps, one voxel and one tap at a time."""
    nz, ny, nx = vol.shape
    out = np.zeros(zs.shape)
    for idx in np.ndindex(zs.shape):
        z, y, x = zs[idx], ys[idx], xs[idx]
        z0, y0, x0 = math.floor(z), math.floor(y), math.floor(x)
        v = 0.0
        for a in (-1, 0, 1, 2):
            for b in (-1, 0, 1, 2):
                for c in (-1, 0, 1, 2):
                    w = ref.keys(z - z0 - a) * ref.keys(y - y0 - b) * ref.keys(x - x0 - c)
                    v += w * float(vol[ref.mirror(z0 + a, nz), ref.mirror(y0 + b, ny),
                                       ref.mirror(x0 + c, nx)])
        out[idx] = v
    return out


def _coords(shape=(9, 11, 13), sigma=4.0, angle=25.0, seed=3):
    d = random_grid_3d(3, sigma, rng=seed)
    return coordinates_3d(shape, d, angle, (1.5, -2.0, 0.75))


# ------------------------------------------------------------------ field and coordinates
def test_field_equals_scipy_bspline_and_grid_values():
    d = random_grid_3d((3, 4, 3), 5.0, rng=2)
    shape = (9, 13, 11)                                  # odd: grid points fall on voxels
    f = elastic_field_3d(d, shape)
    g = np.meshgrid(*[np.arange(n) * (k - 1) / (n - 1) for n, k in zip(shape, d.shape[1:])],
                    indexing="ij")
    for c in range(3):
        np.testing.assert_allclose(f[c], ndi.map_coordinates(d[c], g, order=3, mode="mirror"),
                                   atol=1e-10)
    np.testing.assert_allclose(f[:, 4, 8, 5], d[:, 1, 2, 1], atol=1e-10)   # y: 0, 4, 8, 12
    np.testing.assert_allclose(f[:, 0, 0, 10], d[:, 0, 0, 2], atol=1e-10)


def test_coordinates_rotation_about_z_and_shift():
    zs, ys, xs = coordinates_3d((4, 9, 9), None, 90.0, (0.0, 0.0, 0.0))
    z, y, x = np.indices((4, 9, 9))
    np.testing.assert_array_equal(zs, z)                 # z untouched by the rotation
    vol = np.random.default_rng(0).random((4, 9, 9))
    out = resample_3d([vol], [1], zs, ys, xs)[0]
    np.testing.assert_allclose(out, np.rot90(vol, 1, axes=(1, 2)), atol=1e-12)
    zs, ys, xs = coordinates_3d((4, 9, 9), None, 0.0, (1.0, -2.0, 3.0))
    np.testing.assert_array_equal(zs, z + 1)
    np.testing.assert_array_equal(ys, y - 2)
    np.testing.assert_array_equal(xs, x + 3)


# ------------------------------------------------------------------ resampling vs references
def test_linear_and_nearest_equal_scipy_map_coordinates():
    rng = np.random.default_rng(1)
    vol = rng.random((9, 11, 13))
    lab = rng.integers(0, 7, (9, 11, 13)).astype(np.int16)
    zs, ys, xs = _coords(sigma=6.0)                      # reaches past the borders: mirrored
    assert min(zs.min(), ys.min(), xs.min()) < 0
    lin, near = resample_3d([vol, lab], [1, 0], zs, ys, xs)
    np.testing.assert_allclose(lin, ndi.map_coordinates(vol, [zs, ys, xs], order=1,
                                                        mode="mirror"), atol=1e-12)
    exp = ndi.map_coordinates(lab, [zs, ys, xs], order=0, mode="mirror")
    np.testing.assert_array_equal(near, exp)
    assert near.dtype == np.int16


def test_cubic_equals_the_naive_loop():
    vol = np.random.default_rng(2).random((2, 6, 7, 8)).astype(np.float32)
    zs, ys, xs = _coords((6, 7, 8), sigma=3.0)
    out = resample_3d([vol], [3], zs, ys, xs)[0]
    assert out.dtype == np.float32 and out.shape == vol.shape
    for c in range(2):
        np.testing.assert_allclose(out[c], naive_cubic_3d(vol[c], zs, ys, xs), atol=2e-6)


# ------------------------------------------------------------------ elastic_deform_3d
def test_identity_when_sigma_zero_and_no_rotation():
    rng = np.random.default_rng(3)
    img = rng.random((2, 5, 6, 7)).astype(np.float32)
    lab = rng.integers(0, 2 ** 30, (5, 6, 7)).astype(np.int32)
    w = rng.random((5, 6, 7)).astype(np.float32)
    for out, a in zip(elastic_deform_3d([img, lab, w], [3, 0, 1], sigma=0, rng=1),
                      (img, lab, w)):
        np.testing.assert_array_equal(out, a)
    # zero displacements through the kernels: exact too (Keys and linear interpolate)
    coords = coordinates_3d((5, 6, 7), np.zeros((3, 3, 3, 3)))
    for out, a in zip(resample_3d([img, lab, w], [3, 0, 1], *coords), (img, lab, w)):
        np.testing.assert_array_equal(out, a)


def test_labels_are_never_invented():
    rng = np.random.default_rng(4)
    lab = rng.choice(np.array([0, 5, 2 ** 30 + 1, 255], np.int64), (12, 14, 16))
    out = elastic_deform_3d([lab], [0], sigma=10, rng=9)[0]
    assert out.dtype == np.int64
    assert set(np.unique(out)) <= set(np.unique(lab))
    assert not np.array_equal(out, lab)


def test_displacement_std_at_the_centre_is_sigma():
    """Ramps z, y, x through trilinear resampling give back the source coordinate, so the
    output at the centre minus the centre is the displacement there (the middle lattice point);
    over many draws its std per axis is σ (z: σ·dx/dz with spacing)."""
    n, sigma, draws = 21, 2.0, 400
    ramps = np.stack(np.indices((n, n, n)).astype(np.float64))
    c = n // 2
    rng = np.random.default_rng(5)
    d = np.array([elastic_deform_3d([ramps], [1], sigma=sigma, rng=rng)[0][:, c, c, c] - c
                  for _ in range(draws)])
    std = d.std(axis=0)
    assert np.all(np.abs(std - sigma) < 0.15 * sigma), std      # 400 draws: ±3.5 % (1 sd)
    assert np.all(np.abs(d.mean(axis=0)) < 0.25 * sigma)
    dz = np.array([random_grid_3d(3, 10.0, rng=rng, spacing=(4.0, 1.0, 1.0))[:, 1, 1, 1]
                   for _ in range(draws)]).std(axis=0)
    np.testing.assert_allclose(dz, [2.5, 10.0, 10.0], rtol=0.15)


def test_errors_are_one_line():
    v = np.zeros((4, 5, 6), np.float32)
    with pytest.raises(UnetlabError, match="same"):
        elastic_deform_3d([v, v[:, :-1]], [3, 0])
    with pytest.raises(UnetlabError, match="orders"):
        elastic_deform_3d([v], [2])
    with pytest.raises(UnetlabError, match="grid"):
        random_grid_3d(1)
    with pytest.raises(UnetlabError, match="spacing"):
        random_grid_3d(3, 10, spacing=(0, 1, 1))
    with pytest.raises(UnetlabError, match="at least 2"):
        elastic_deform_3d([np.zeros((1, 5, 6))], [1])


# ------------------------------------------------------------------ Augment on volumes
def _triplet(seed=0, shape=(10, 16, 16)):
    rng = np.random.default_rng(seed)
    img = rng.random((2, *shape)).astype(np.float32)
    cls = rng.choice(np.array([0, 1, 255], np.uint8), shape)
    w = rng.random(shape).astype(np.float32)
    return img, cls, w


def test_augment_volume_shapes_labels_and_determinism():
    img, cls, w = _triplet()
    aug = Augment(seed=1)
    a_img, a_cls, a_w = aug(img, cls, w, rng=7)
    assert a_img.shape == img.shape and a_cls.shape == cls.shape and a_w.shape == w.shape
    assert a_img.dtype == np.float32 and a_cls.dtype == np.uint8 and a_w.dtype == np.float32
    assert set(np.unique(a_cls)) <= {0, 1, 255}
    again = aug(img, cls, w, rng=7)
    for u, v in zip((a_img, a_cls, a_w), again):
        np.testing.assert_array_equal(u, v)
    p = aug.sample(cls.shape, rng=7)
    assert p.displacements.shape == (3, 3, 3, 3) and len(p.shift) == 3
    # a (Z, Y, X) image with its classes comes back as (Z, Y, X)
    one = aug(img[0], cls, w, rng=7)[0]
    assert one.shape == cls.shape


def test_augment_volume_geometry_is_joint_and_matches_elastic3d():
    img, cls, w = _triplet(1)
    p = AugmentParams(displacements=random_grid_3d(3, 3.0, rng=2), angle=20.0,
                      shift=(1.0, 2.0, -1.0), quarter_turns=1, flip=True, flip_z=True)
    a_img, a_cls, a_w = Augment.none().apply(p, img, cls, w)
    coords = coordinates_3d(cls.shape, p.displacements, 20.0, (1.0, 2.0, -1.0))
    e_img, e_cls, e_w = resample_3d([img, cls, w], [3, 0, 1], *coords)

    def dihedral(a):
        return np.rot90(a, 1, axes=(-2, -1))[..., ::-1, :, :][..., ::-1]

    np.testing.assert_array_equal(a_img, dihedral(e_img))
    np.testing.assert_array_equal(a_cls, dihedral(e_cls))
    np.testing.assert_array_equal(a_w, dihedral(e_w))


def test_augment_none_is_identity_on_volumes_and_spacing_scales_z():
    img, cls, w = _triplet(2)
    for u, v in zip(Augment.none()(img, cls, w, rng=0), (img, cls, w)):
        np.testing.assert_array_equal(u, v)
    flat = Augment(spacing=(5.0, 1.0, 1.0), rotation=0, flips=False, shift=10.0)
    p = flat.sample((10, 16, 16), rng=3)
    iso = Augment(rotation=0, flips=False, shift=10.0).sample((10, 16, 16), rng=3)
    np.testing.assert_allclose(p.displacements[0], iso.displacements[0] / 5)
    np.testing.assert_allclose(p.displacements[1:], iso.displacements[1:])
    assert p.shift[0] == pytest.approx(iso.shift[0] / 5) and p.shift[1:] == iso.shift[1:]
    with pytest.raises(UnetlabError, match="spacing"):
        Augment(spacing=(1.0, 1.0))
    with pytest.raises(UnetlabError, match="Z, Y, X"):
        Augment()(img, cls[:, :-1], w)
