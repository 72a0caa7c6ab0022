"""3D data: synthetic touching-cell volumes, Sample and TileSampler on volumes (the 2D
sampler's semantics on every axis), read_volume (ImageJ / OME-TIFF / plain TIFF, zarr and
OME-Zarr spacing) and read_dataset_3d (image/ + label/ folders, Cell Tracking Challenge 3D with
full and slice annotations). Files are written small in tmp_path."""
from __future__ import annotations

import functools

import numpy as np
import pytest
import tifffile

from unetlab.data import (IGNORE_INDEX, Sample, TileSampler, normalize_volume, read_dataset_3d,
                          read_volume, volume_to_instances)
from unetlab.errors import UnetlabError
from unetlab.synthetic import touching_cells_3d, touching_pairs
from unetlab.weights import training_targets


# ------------------------------------------------------------------ synthetic volumes
@pytest.fixture(scope="module")
def vol():
    return touching_cells_3d(1, (24, 48, 40), seed=5, cells=20)[0]


def test_synthetic_volume_shapes_determinism_and_touching(vol):
    img, lab = vol
    assert img.shape == lab.shape == (24, 48, 40)
    assert img.dtype == np.float32 and lab.dtype == np.int32 and np.isfinite(img).all()
    again = touching_cells_3d(1, (24, 48, 40), seed=5, cells=20)[0]
    np.testing.assert_array_equal(again[0], img)
    np.testing.assert_array_equal(again[1], lab)
    other = touching_cells_3d(2, (24, 48, 40), seed=6, cells=20)
    assert not np.array_equal(other[0][1], lab) and not np.array_equal(other[0][1], other[1][1])
    k = lab.max()
    np.testing.assert_array_equal(np.unique(lab), np.arange(k + 1))   # ids 1..K
    assert k >= 15
    pairs = touching_pairs(lab)                      # faces in 3D
    assert len(pairs) >= k                           # many touch
    assert (lab == 0).mean() > 0.05                  # and there are gaps / background
    # cells brighter than the background and than their membranes (the faces between cells)
    rim = np.zeros(lab.shape, bool)
    rim[:, :, :-1] |= (lab[:, :, :-1] != lab[:, :, 1:]) & (lab[:, :, :-1] > 0) & (lab[:, :, 1:] > 0)
    inner = (lab > 0) & ~rim
    assert img[inner].mean() > img[lab == 0].mean() + 0.2
    assert img[inner].mean() > img[rim].mean()


def test_synthetic_each_cell_one_piece_and_spacing_flattens_cells():
    from skimage.measure import label as sk_label

    (_, lab), = touching_cells_3d(1, (16, 48, 48), seed=1, cells=15, spacing=(3.0, 1.0, 1.0))
    assert sk_label(lab, connectivity=1, background=0).max() == lab.max()
    # round in µm, so in voxels a cell spans ~3× more in y than in z
    ext = [np.ptp(np.argwhere(lab == k), axis=0) + 1 for k in range(1, lab.max() + 1)]
    z, y = np.median([e[0] for e in ext]), np.median([e[1] for e in ext])
    assert 1.8 < y / z < 4.5


@pytest.mark.slow
def test_synthetic_about_100_cells_in_128_cubed():
    (_, lab), = touching_cells_3d(1, 128, seed=0)
    assert 85 <= lab.max() <= 100 and len(touching_pairs(lab)) > 150


# ------------------------------------------------------------------ Sample and the sampler
def _coord_volume(z, y, x, name="v"):
    """Image = flat index; instances: the index parity (as the 2D sampler tests)."""
    img = np.arange(z * y * x, dtype=np.float32).reshape(z, y, x)
    inst = (np.arange(z * y * x).reshape(z, y, x) % 2).astype(np.int32)
    return Sample(img, inst, name=name)


def coord_targets(inst, spacing=None):
    """classes = instances (0/1), weights = 1 + flat index: the position of every target."""
    n = inst.size
    return inst.astype(np.uint8), (np.arange(n, dtype=np.float32) + 1).reshape(inst.shape)


def test_sample_volume_layouts_and_spacing():
    s = Sample(np.zeros((4, 5, 6)), np.zeros((4, 5, 6), np.int64), spacing=(2, 1, 1))
    assert s.image.shape == (1, 4, 5, 6) and s.ndim == 3 and s.spacing == (2.0, 1.0, 1.0)
    assert Sample(np.zeros((2, 4, 5, 6)), np.zeros((4, 5, 6), int)).channels == 2
    with pytest.raises(UnetlabError, match=r"\(C, Z, Y, X\)"):
        Sample(np.zeros((2, 2, 4, 5, 6)), np.zeros((4, 5, 6), int))
    with pytest.raises(UnetlabError, match="spacing"):
        Sample(np.zeros((4, 5, 6)), np.zeros((4, 5, 6), int), spacing=(1, 1))
    with pytest.raises(UnetlabError, match="does not match"):
        Sample(np.zeros((4, 5, 7)), np.zeros((4, 5, 6), int))


@pytest.mark.parametrize("shape", [(9, 20, 17), (3, 5, 4)])
def test_sampler_3d_alignment_mirror_and_ignore(shape):
    z, h, w = shape
    T, O = (10, 12, 14), (4, 6, 8)
    c = [(t - o) // 2 for t, o in zip(T, O)]
    s = _coord_volume(*shape)
    sampler = TileSampler([s], T, O, coord_targets)
    assert sampler.context == (3, 3, 3)
    P = 30
    padded = np.pad(s.image[0], P, mode="reflect")
    rng = np.random.default_rng(0)
    for _ in range(15):
        img, cls, wt = sampler.sample(rng)
        assert img.shape == (1, *T) and cls.shape == O and wt.shape == O
        assert img.dtype == np.float32 and cls.dtype == np.uint8 and wt.dtype == np.float32
        inside = wt > 0
        i, j, k = np.argwhere(inside)[0]
        flat = int(wt[i, j, k]) - 1
        z0, y0, x0 = flat // (h * w) - i, flat // w % h - j, flat % w - k
        for a0, n, o in zip((z0, y0, x0), shape, O):
            assert min(0, n - o) <= a0 <= max(0, n - o)
        exp = padded[P + z0 - c[0]:P + z0 - c[0] + T[0], P + y0 - c[1]:P + y0 - c[1] + T[1],
                     P + x0 - c[2]:P + x0 - c[2] + T[2]]
        np.testing.assert_array_equal(img[0], exp)              # numpy.pad(reflect) context
        zz, yy, xx = np.mgrid[z0:z0 + O[0], y0:y0 + O[1], x0:x0 + O[2]]
        valid = (zz >= 0) & (zz < z) & (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        np.testing.assert_array_equal(inside, valid)
        assert (cls[~valid] == IGNORE_INDEX).all() and (wt[~valid] == 0).all()
        centre = img[0, c[0]:c[0] + O[0], c[1]:c[1] + O[1], c[2]:c[2] + O[2]]
        np.testing.assert_array_equal(wt[valid] - 1, centre[valid])   # targets line up


def test_sampler_3d_augment_full_tile_sparse_targets_and_spacing():
    (img, lab) = touching_cells_3d(1, (20, 32, 32), seed=2, cells=10, spacing=(2, 1, 1))[0]
    from unetlab.weights import sparsify

    s = Sample(img, sparsify(lab, every=6, keep=2), name="sparse", spacing=(2.0, 1.0, 1.0))
    seen = []

    def aug(image, classes, weights, rng):
        seen.append((image.shape, classes.shape))
        return image, classes, weights

    fn = functools.partial(training_targets, w0=10, sigma=5)
    sampler = TileSampler([s], (12, 20, 20), (8, 12, 12), fn, augment=aug)
    cls_all, w_all = sampler.targets(0)
    np.testing.assert_array_equal((cls_all, w_all),
                                  training_targets(s.instances, spacing=(2.0, 1.0, 1.0)))
    _, cls, wt = sampler.tile_at(0, 5, 3, 4)
    assert seen == [((1, 12, 20, 20), (12, 20, 20))]
    np.testing.assert_array_equal(cls, cls_all[5:13, 3:15, 4:16])
    assert (cls[s.instances[5:13, 3:15, 4:16] < 0] == IGNORE_INDEX).all()
    # rng as a keyword, and the 2D positional form is refused for volumes
    sampler.tile_at(0, 0, 0, 0, rng=np.random.default_rng(1))
    with pytest.raises(UnetlabError, match="start"):
        sampler.tile_at(0, 1, 2)
    with pytest.raises(UnetlabError, match="mix"):
        TileSampler([s, Sample(np.zeros((8, 8)), np.zeros((8, 8), int))], 8, 8, fn)
    with pytest.raises(UnetlabError, match="depth"):
        TileSampler([s], (12, 20), (8, 12), fn)


# ------------------------------------------------------------------ readers
def test_read_volume_imagej_ome_plain(tmp_path):
    a = np.random.default_rng(0).integers(0, 999, (5, 2, 8, 9)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "ij.tif", a, imagej=True, resolution=(1 / 0.25, 1 / 0.5),
                     metadata={"spacing": 2.0, "unit": "um", "axes": "ZCYX"})
    arr, sp = read_volume(tmp_path / "ij.tif")
    np.testing.assert_array_equal(arr, a.transpose(1, 0, 2, 3))         # (C, Z, Y, X)
    assert sp == pytest.approx((2.0, 0.5, 0.25))
    tifffile.imwrite(tmp_path / "x.ome.tif", a[:, 0],
                     metadata={"axes": "ZYX", "PhysicalSizeX": 0.3, "PhysicalSizeY": 0.4,
                               "PhysicalSizeZ": 1.5})
    arr, sp = read_volume(tmp_path / "x.ome.tif")
    np.testing.assert_array_equal(arr, a[:, 0])
    assert sp == pytest.approx((1.5, 0.4, 0.3))
    tifffile.imwrite(tmp_path / "plain.tif", a[:, 1], resolution=(72, 72))
    arr, sp = read_volume(tmp_path / "plain.tif")                        # no metadata: 1
    np.testing.assert_array_equal(arr, a[:, 1])
    assert sp == (1.0, 1.0, 1.0)


def test_read_volume_zarr_array_and_ome_zarr(tmp_path):
    import zarr

    a = np.arange(4 * 6 * 7, dtype=np.uint8).reshape(4, 6, 7)
    z = zarr.open_array(str(tmp_path / "plain.zarr"), mode="w", shape=a.shape, dtype=a.dtype)
    z[...] = a
    z.attrs["spacing"] = [3.0, 0.5, 0.5]
    arr, sp = read_volume(tmp_path / "plain.zarr")
    np.testing.assert_array_equal(arr, a)
    assert sp == (3.0, 0.5, 0.5)
    g = zarr.open_group(str(tmp_path / "ome.zarr"), mode="w")
    lvl = g.create_array("0", shape=(1, 2, 4, 6, 7), dtype="uint8")
    lvl[...] = np.stack([a, a + 1])[None]
    g.attrs["multiscales"] = [{
        "version": "0.4", "axes": [{"name": n, "type": t} for n, t in zip(
            "tczyx", ["time", "channel", "space", "space", "space"])],
        "datasets": [{"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": [1.0, 1.0, 2.0, 0.25, 0.25]}]}]}]
    arr, sp = read_volume(tmp_path / "ome.zarr")
    assert arr.shape == (2, 4, 6, 7) and sp == (2.0, 0.25, 0.25)
    np.testing.assert_array_equal(arr[1], a + 1)


@pytest.mark.parametrize("case, msg", [("2d", "not a volume"), ("time", "time points"),
                                       ("missing", "no such"), ("png", "not a volume file"),
                                       ("spacing", "spacing")])
def test_read_volume_errors_name_the_file(tmp_path, case, msg):
    p = tmp_path / f"{case}.tif"
    if case == "2d":
        tifffile.imwrite(p, np.zeros((8, 9), np.uint8))
    elif case == "time":
        tifffile.imwrite(p, np.zeros((2, 3, 8, 9), np.uint8), imagej=True,
                         metadata={"axes": "TZYX"})
    elif case == "png":
        p = tmp_path / "x.png"
        p.write_bytes(b"\x89PNG")
    elif case == "spacing":
        import zarr

        p = tmp_path / "bad.zarr"
        z = zarr.open_array(str(p), mode="w", shape=(2, 3, 4), dtype="uint8")
        z.attrs["spacing"] = [1, 2]
    with pytest.raises(UnetlabError, match=msg) as e:
        read_volume(p)
    assert p.name in str(e.value) and "\n" not in str(e.value)


def test_volume_labels_and_normalisation():
    m = np.zeros((4, 6, 6), np.uint8)
    m[0:2, 0:2, 0:2] = 255
    m[2:4, 2:4, 2:4] = 255                       # touches the first only along an edge
    inst = volume_to_instances(m)
    assert inst.max() == 2                       # face-connected components
    ids = np.where(m > 0, 7, 0).astype(np.uint16)
    ids[3, 5, 5] = 9
    np.testing.assert_array_equal(volume_to_instances(ids), ids)
    with pytest.raises(UnetlabError, match="negative"):
        volume_to_instances(np.full((2, 2, 2), -1))
    v = np.random.default_rng(1).normal(500, 20, (2, 6, 7, 8))
    out = normalize_volume(v)
    assert out.shape == v.shape and out.dtype == np.float32
    for c in range(2):
        lo, hi = np.percentile(v[c], (1, 99.8))
        np.testing.assert_allclose(out[c], (v[c] - lo) / (hi - lo), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ datasets
def _write_pair(folder_img, folder_lab, stem, seed, spacing=(2.0, 0.5, 0.5)):
    img, lab = touching_cells_3d(1, (8, 20, 22), seed=seed, cells=5)[0]
    folder_img.mkdir(parents=True, exist_ok=True)
    folder_lab.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(folder_img / f"{stem}.tif", (img * 1000).astype(np.uint16), imagej=True,
                     resolution=(1 / spacing[2], 1 / spacing[1]),
                     metadata={"spacing": spacing[0], "axes": "ZYX"})
    tifffile.imwrite(folder_lab / f"{stem}_mask.tif", lab.astype(np.uint16))
    return lab


def test_read_dataset_3d_folders(tmp_path):
    labs = [_write_pair(tmp_path / "image", tmp_path / "label", f"v{i}", i) for i in (1, 2)]
    samples = read_dataset_3d(tmp_path)
    assert [s.name for s in samples] == ["v1", "v2"]
    for s, lab in zip(samples, labs):
        assert s.image.shape == (1, 8, 20, 22) and s.spacing == pytest.approx((2.0, 0.5, 0.5))
        np.testing.assert_array_equal(s.instances, lab)
    same = read_dataset_3d(tmp_path / "image", labels=tmp_path / "label")
    np.testing.assert_array_equal(same[1].image, samples[1].image)
    one = read_dataset_3d(tmp_path / "image" / "v2.tif", labels=tmp_path / "label" / "v2_mask.tif")
    np.testing.assert_array_equal(one[0].instances, labs[1])
    (tmp_path / "label" / "v3_mask.tif").write_bytes((tmp_path / "label" / "v2_mask.tif")
                                                     .read_bytes())
    with pytest.raises(UnetlabError, match="v3_mask.tif"):
        read_dataset_3d(tmp_path)


def _ctc(tmp_path, kind):
    img, lab = touching_cells_3d(1, (10, 24, 24), seed=3, cells=8)[0]
    (tmp_path / "01").mkdir()
    seg = tmp_path / "01_GT" / "SEG"
    seg.mkdir(parents=True)
    tifffile.imwrite(tmp_path / "01" / "t000.tif", (img * 1000).astype(np.uint16))
    if kind == "full":
        tifffile.imwrite(seg / "man_seg000.tif", lab.astype(np.uint16))
    else:
        for z in (2, 7):
            tifffile.imwrite(seg / f"man_seg_000_{z:03d}.tif", lab[z].astype(np.uint16))
    return lab


def test_read_dataset_3d_ctc_full_with_tra_complete(tmp_path):
    lab = _ctc(tmp_path, "full")
    tra = tmp_path / "01_GT" / "TRA"
    tra.mkdir()
    markers = np.zeros_like(lab, np.uint16)
    for k in range(1, lab.max() + 1):               # one marker voxel inside every cell
        markers[tuple(np.argwhere(lab == k)[0])] = k
    tifffile.imwrite(tra / "man_track000.tif", markers)
    (s,) = read_dataset_3d(tmp_path)
    assert s.name == "01/t000" and s.image.shape == (1, 10, 24, 24)
    np.testing.assert_array_equal(s.instances, lab)  # complete: used as is
    (s2,) = read_dataset_3d(tmp_path / "01", ctc_margin=1.0)
    np.testing.assert_array_equal(s2.instances, lab)


def test_read_dataset_3d_ctc_slices_are_sparse(tmp_path):
    lab = _ctc(tmp_path, "slices")
    (s,) = read_dataset_3d(tmp_path, ctc_ignore_unannotated=False)
    other = [z for z in range(10) if z not in (2, 7)]
    assert (s.instances[other] == -1).all()
    np.testing.assert_array_equal(s.instances[2] > 0, lab[2] > 0)
    np.testing.assert_array_equal(s.instances[7] > 0, lab[7] > 0)
    classes, w = training_targets(s.instances)
    assert (classes[other] == IGNORE_INDEX).all() and (w[other] == 0).all()
    # without TRA the slices are partial: background far from every cell becomes -1 too
    (p,) = read_dataset_3d(tmp_path, ctc_margin=1.0)
    far = (lab[2] == 0) & (p.instances[2] == -1)
    assert far.any() and ((p.instances[2] == -1) <= (lab[2] == 0)).all()
    assert (p.instances[2][lab[2] > 0] > 0).all()
