"""Readers, normalisation, label conversion and the tile sampler (unetlab.data)."""
from __future__ import annotations

import functools
import pickle
import struct
import zlib

import numpy as np
import pytest
import tifffile
from PIL import Image
from scipy import ndimage as ndi
from skimage.measure import label as sk_label

from unetlab import data
from unetlab.data import (
    Sample,
    TileSampler,
    label_to_instances,
    list_images,
    normalize_image,
    read_dataset,
    read_image,
    read_pair,
    read_stack,
)
from unetlab.errors import UnetlabError


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------

def _png(path, arr):
    Image.fromarray(arr).save(path)
    return path


def _blobs(h=40, w=48, seed=0):
    """A small instance image with touching squares (ids not contiguous)."""
    lab = np.zeros((h, w), np.int32)
    lab[2:12, 3:13] = 7
    lab[12:22, 3:13] = 3      # touches 7
    lab[25:35, 20:40] = 11
    return lab


def _patch_png_size(path, width, height):
    """Rewrite the IHDR chunk of a PNG to declare another size (a decompression bomb header)."""
    b = bytearray(path.read_bytes())
    assert b[12:16] == b"IHDR"
    b[16:24] = struct.pack(">II", width, height)
    b[29:33] = struct.pack(">I", zlib.crc32(bytes(b[12:29])) & 0xFFFFFFFF)
    path.write_bytes(bytes(b))


# ------------------------------------------------------------------------------------------------
# real data (../shared/data)
# ------------------------------------------------------------------------------------------------

def test_isbi_png_folder(shared_file):
    root = shared_file("isbi2012", "train")
    samples = read_dataset(root)
    assert len(samples) == 25
    assert [s.name for s in samples] == [f"{i:02d}" for i in range(25)]
    for s in samples[:3] + samples[-1:]:
        assert s.image.shape == (1, 512, 512) and s.image.dtype == np.float32
        assert s.instances.shape == (512, 512) and s.instances.dtype == np.int32
    # independent reference: 4-connected components of the white (255) cell interiors
    raw = np.asarray(Image.open(root / "label" / "07.png"))
    ref = sk_label(raw == 255, connectivity=1)
    np.testing.assert_array_equal(samples[7].instances, ref)
    assert samples[7].instances.max() > 50          # many cells
    assert ((samples[7].instances == 0) == (raw == 0)).all()  # membranes are background
    # normalisation: percentiles of the raw image map to 0 and 1
    img = np.asarray(Image.open(root / "image" / "07.png")).astype(np.float64)
    lo, hi = np.percentile(img, [1, 99.8])
    np.testing.assert_allclose(samples[7].image[0], (img - lo) / (hi - lo), rtol=1e-5, atol=1e-5)


def test_nuclei_mask_instances(shared_file):
    path = shared_file("dsb2018_nuclei", "mask2d.tif")
    raw = read_image(path)
    inst = label_to_instances(raw, path)
    ids = np.unique(inst[inst > 0])
    assert inst.dtype == np.int32 and len(ids) == 125 and inst.max() == 183
    np.testing.assert_array_equal(inst, raw.astype(np.int32))   # ids kept, split id not split
    pieces = [sk_label(inst == i, connectivity=1).max() for i in ids]
    assert sorted(pieces)[-1] == 2 and sum(p == 2 for p in pieces) == 1
    s = read_pair(shared_file("dsb2018_nuclei", "img2d.tif"), path)
    assert s.image.shape == (1, 512, 512) and s.instances.max() == 183


# ------------------------------------------------------------------------------------------------
# layouts built in tmp_path
# ------------------------------------------------------------------------------------------------

def test_folder_pairs_png_16bit_and_suffix_match(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    rng = np.random.default_rng(0)
    lab = _blobs()
    for i, stem in enumerate(["a2", "a10", "b"]):
        img = rng.integers(0, 4000, lab.shape).astype(np.uint16)
        _png(tmp_path / "images" / f"{stem}.png", img)
        name = f"{stem}_mask.tif" if stem == "b" else f"{stem}.tif"
        tifffile.imwrite(tmp_path / "masks" / name, lab.astype(np.uint16))
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    (tmp_path / "images" / ".hidden.png").write_bytes(b"")
    samples = read_dataset(tmp_path)
    assert [s.name for s in samples] == ["a2", "a10", "b"]          # natural order
    for s in samples:
        np.testing.assert_array_equal(s.instances, lab)              # ids as in the file
    raw = np.asarray(Image.open(tmp_path / "images" / "a10.png"))
    assert raw.dtype == np.uint16 and read_image(tmp_path / "images" / "a10.png").dtype == np.uint16
    # explicit folders give the same
    again = read_dataset(tmp_path / "images", labels=tmp_path / "masks")
    np.testing.assert_array_equal(again[1].image, samples[1].image)


def test_rgb_image_channels(tmp_path):
    (tmp_path / "image").mkdir()
    (tmp_path / "label").mkdir()
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[..., 0] = np.arange(30)[None] * 5
    rgb[..., 1] = 100
    rgb[..., 2] = np.arange(20)[:, None] * 7
    _png(tmp_path / "image" / "x.png", rgb)
    _png(tmp_path / "label" / "x.png", (np.arange(600).reshape(20, 30) % 7 == 0).astype(np.uint8))
    s3 = read_dataset(tmp_path)[0]
    assert s3.image.shape == (3, 20, 30)
    assert (s3.image[1] == 0).all()             # constant channel -> 0
    s1 = read_dataset(tmp_path, channels=1)[0]
    grey = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    lo, hi = np.percentile(grey, [1, 99.8])
    np.testing.assert_allclose(s1.image[0], (grey - lo) / (hi - lo), atol=1e-4)


def test_isbi_tiff_stacks(tmp_path):
    rng = np.random.default_rng(1)
    vol = rng.integers(0, 255, (4, 32, 36)).astype(np.uint8)
    labs = np.zeros((4, 32, 36), np.uint8)
    labs[:, 2:10, 2:10] = 255
    labs[:, 11:20, 2:10] = 255      # separated by one membrane row -> two cells
    labs[2] = 0                     # an all-membrane slice is allowed
    tifffile.imwrite(tmp_path / "train-volume.tif", vol, photometric="minisblack")
    tifffile.imwrite(tmp_path / "train-labels.tif", labs, compression="zlib",
                     photometric="minisblack")  # zarr path
    tifffile.imwrite(tmp_path / "test-volume.tif", vol, photometric="minisblack")  # ignored
    samples = read_dataset(tmp_path)
    assert len(samples) == 4
    assert [s.name for s in samples] == [f"train-volume_{i:03d}" for i in range(4)]
    assert samples[0].instances.max() == 2 and samples[2].instances.max() == 0
    np.testing.assert_array_equal(samples[1].instances, sk_label(labs[1] > 0, connectivity=1))
    np.testing.assert_allclose(samples[3].image, normalize_image(vol[3]))
    # explicit pair syntax
    explicit = read_dataset(tmp_path / "train-volume.tif", labels=tmp_path / "train-labels.tif")
    np.testing.assert_array_equal(explicit[1].instances, samples[1].instances)
    # read_stack is lazy: memmap for the plain file, zarr for the compressed one
    assert isinstance(read_stack(tmp_path / "train-volume.tif"), np.memmap)
    z = read_stack(tmp_path / "train-labels.tif")
    assert not isinstance(z, np.ndarray) and np.array_equal(np.asarray(z[1]), labs[1])


def _ctc(tmp_path, with_tra):
    root = tmp_path / "Fluo-Test"
    (root / "01").mkdir(parents=True)
    (root / "01_GT" / "SEG").mkdir(parents=True)
    (root / "02").mkdir()                      # a sequence without ground truth is skipped
    rng = np.random.default_rng(2)
    seg = np.zeros((60, 60), np.uint16)
    seg[5:15, 5:15] = 1
    seg[15:25, 5:15] = 2
    for t in range(3):
        frame = rng.integers(0, 9, (60, 60)).astype(np.uint16)
        tifffile.imwrite(root / "01" / f"t{t:03d}.tif", frame)
        tifffile.imwrite(root / "02" / f"t{t:03d}.tif", np.zeros((60, 60), np.uint16))
    for t in (0, 2):   # frame 1 not annotated
        tifffile.imwrite(root / "01_GT" / "SEG" / f"man_seg{t:03d}.tif", seg)
    tifffile.imwrite(root / "01_GT" / "SEG" / "man_seg_000_005.tif", seg)   # 3D slice: ignored
    if with_tra:
        (root / "01_GT" / "TRA").mkdir()
        tra = np.zeros((60, 60), np.uint16)
        tra[9:11, 9:11] = 1
        tra[19:21, 9:11] = 2
        tifffile.imwrite(root / "01_GT" / "TRA" / "man_track000.tif", tra)    # complete
        tra[50:52, 50:52] = 3                                                  # unannotated cell
        tifffile.imwrite(root / "01_GT" / "TRA" / "man_track002.tif", tra)
    return root, seg


def test_ctc_layout_partial_annotation(tmp_path):
    root, seg = _ctc(tmp_path, with_tra=False)
    samples = read_dataset(root)
    assert [s.name for s in samples] == ["01/t000", "01/t002"]
    dist = ndi.distance_transform_edt(seg == 0)
    expected = np.where((seg == 0) & (dist > 10), -1, seg.astype(np.int32))
    np.testing.assert_array_equal(samples[0].instances, expected)
    assert (samples[0].instances == -1).any() and (samples[0].instances == 0).any()
    # the sequence folder itself, and the option off
    one = read_dataset(root / "01", ctc_ignore_unannotated=False)
    assert len(one) == 2 and one[0].instances.min() == 0
    np.testing.assert_array_equal(one[1].instances, seg)


def test_ctc_tracking_markers_decide_completeness(tmp_path):
    root, seg = _ctc(tmp_path, with_tra=True)
    s0, s2 = read_dataset(root, ctc_margin=3)
    np.testing.assert_array_equal(s0.instances, seg)          # every marker annotated: complete
    assert (s2.instances == -1).any()                          # marker 3 has no mask: partial
    assert s2.instances[51, 51] == -1 and s2.instances[26, 8] == 0


def test_ctc_missing_image_names_file(tmp_path):
    root, _ = _ctc(tmp_path, with_tra=False)
    (root / "01" / "t002.tif").unlink()
    with pytest.raises(UnetlabError, match="man_seg002.tif"):
        read_dataset(root)


def test_list_images(tmp_path):
    for n in ["t10.tif", "t2.tif", "t1.png", "readme.md"]:
        (tmp_path / n).write_bytes(b"x")
    assert [p.name for p in list_images(tmp_path)] == ["t1.png", "t2.tif", "t10.tif"]
    assert [p.name for p in list_images(str(tmp_path / "t*.tif"))] == ["t2.tif", "t10.tif"]
    assert list_images(tmp_path / "t2.tif") == [tmp_path / "t2.tif"]
    with pytest.raises(UnetlabError, match="nothing"):
        list_images(tmp_path / "nothing*.png")
    with pytest.raises(UnetlabError, match="missing.png"):
        list_images(tmp_path / "missing.png")


# ------------------------------------------------------------------------------------------------
# labels and normalisation
# ------------------------------------------------------------------------------------------------

def test_label_to_instances_rules():
    binary = np.zeros((10, 10), np.uint8)
    binary[1:4, 1:4] = 255
    binary[4, 4] = 255          # diagonal neighbour only: a separate 4-connected component
    binary[6:9, 1:9] = 255
    inst = label_to_instances(binary)
    np.testing.assert_array_equal(inst, sk_label(binary > 0, connectivity=1))
    assert inst.max() == 3
    ids = np.zeros((10, 10), np.uint16)
    ids[0:3, 0:3] = 5
    ids[5:7, 5:7] = 300
    ids[8, 8] = 1
    np.testing.assert_array_equal(label_to_instances(ids), ids.astype(np.int32))
    assert label_to_instances(np.zeros((4, 4), np.uint8)).max() == 0
    assert label_to_instances(np.full((4, 4), 255, np.uint8)).max() == 1
    assert label_to_instances(np.array([[0.0, 2.0], [3.0, 0.0]])).tolist() == [[0, 2], [3, 0]]
    grey_rgba = np.zeros((10, 10, 4), np.uint8)     # a grey label saved as RGBA: accepted
    grey_rgba[..., :3] = (ids % 256)[..., None]
    grey_rgba[..., 3] = 255
    np.testing.assert_array_equal(label_to_instances(grey_rgba), ids % 256)


def test_normalize_image_properties():
    rng = np.random.default_rng(3)
    img = rng.normal(1000, 50, (64, 64)).astype(np.uint16)
    img[0, 0] = 65535                                  # a hot pixel does not matter
    out = normalize_image(img)
    assert out.shape == (1, 64, 64) and out.dtype == np.float32
    assert abs(np.percentile(out, 1)) < 1e-5 and abs(np.percentile(out, 99.8) - 1) < 1e-5
    # same numbers whatever the storage dtype and offset/scale
    np.testing.assert_allclose(normalize_image(img.astype(np.float32) * 3 + 7), out, atol=1e-5)
    # a tile normalised with the whole image's stats equals the crop of the whole
    stats = data.normalization_stats(img[None])
    np.testing.assert_allclose(normalize_image(img[10:30, 5:50], stats=stats), out[:, 10:30, 5:50])
    assert (normalize_image(np.full((5, 5), 3.0)) == 0).all()


def test_sample_validation():
    s = Sample(np.zeros((4, 5)), np.zeros((4, 5), np.int64), name="x")
    assert s.image.shape == (1, 4, 5) and s.image.dtype == np.float32
    assert s.instances.dtype == np.int32
    with pytest.raises(UnetlabError, match="'x'"):
        Sample(np.zeros((1, 4, 5)), np.zeros((4, 6), np.int32), name="x")
    with pytest.raises(UnetlabError, match="NaN"):
        Sample(np.full((1, 2, 2), np.nan), np.zeros((2, 2), np.int32), name="x")
    with pytest.raises(UnetlabError, match=">= -1"):
        Sample(np.zeros((1, 2, 2)), np.full((2, 2), -2, np.int32), name="x")
    with pytest.raises(UnetlabError, match="integers"):
        Sample(np.zeros((1, 2, 2)), np.zeros((2, 2), np.float32), name="x")


# ------------------------------------------------------------------------------------------------
# bad input: one UnetlabError naming the file
# ------------------------------------------------------------------------------------------------

def _bad_files(tmp_path):
    """name -> (callable that reads, file name that must appear in the message)."""
    cases = {}
    good = _png(tmp_path / "good.png", np.zeros((8, 8), np.uint8))

    cases["missing"] = (lambda: read_image(tmp_path / "missing.png"), "missing.png")
    (tmp_path / "afolder.png").mkdir()
    cases["folder"] = (lambda: read_image(tmp_path / "afolder.png"), "afolder.png")
    (tmp_path / "empty.png").write_bytes(b"")
    cases["empty"] = (lambda: read_image(tmp_path / "empty.png"), "empty.png")
    (tmp_path / "garbage.png").write_bytes(b"this is not a png at all" * 10)
    cases["garbage"] = (lambda: read_image(tmp_path / "garbage.png"), "garbage.png")
    (tmp_path / "garbage.tif").write_bytes(b"II*\x00garbage" * 10)
    cases["garbage_tif"] = (lambda: read_image(tmp_path / "garbage.tif"), "garbage.tif")

    noise = np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8)
    big = _png(tmp_path / "trunc.png", noise)
    b = big.read_bytes()
    big.write_bytes(b[: len(b) // 2])
    cases["truncated_png"] = (lambda: read_image(tmp_path / "trunc.png"), "trunc.png")
    tifffile.imwrite(tmp_path / "trunc.tif",
                     np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8),
                     compression="zlib")
    t = (tmp_path / "trunc.tif").read_bytes()
    (tmp_path / "trunc.tif").write_bytes(t[: len(t) // 2])
    cases["truncated_tif"] = (lambda: read_image(tmp_path / "trunc.tif"), "trunc.tif")
    tifffile.imwrite(tmp_path / "trunc_raw.tif", np.ones((64, 64), np.uint8))
    t = (tmp_path / "trunc_raw.tif").read_bytes()
    (tmp_path / "trunc_raw.tif").write_bytes(t[: len(t) // 2])
    cases["truncated_raw_tif"] = (lambda: read_image(tmp_path / "trunc_raw.tif"), "trunc_raw.tif")

    with pytest.warns(UserWarning):
        tifffile.imwrite(tmp_path / "zero.tif", np.zeros((0, 5), np.uint8))
    cases["zero_size"] = (lambda: read_image(tmp_path / "zero.tif"), "zero.tif")
    nan = np.ones((6, 6), np.float32)
    nan[2, 2] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", nan)
    cases["nan"] = (lambda: read_image(tmp_path / "nan.tif"), "nan.tif")
    tifffile.imwrite(tmp_path / "inf.tif", np.full((6, 6), np.inf, np.float32))
    cases["inf"] = (lambda: read_image(tmp_path / "inf.tif"), "inf.tif")
    tifffile.imwrite(tmp_path / "complex.tif", np.ones((6, 6), np.complex64))
    cases["complex"] = (lambda: read_image(tmp_path / "complex.tif"), "complex.tif")
    cases["too_many"] = (lambda: read_image(good, max_pixels=63), "good.png")

    bomb = _png(tmp_path / "bomb.png", np.zeros((1, 1), np.uint8))
    _patch_png_size(bomb, 100_000, 100_000)          # declares 10^10 pixels in 70 bytes
    cases["png_bomb"] = (lambda: read_image(bomb), "bomb.png")
    tifffile.imwrite(tmp_path / "bomb.tif", np.zeros((2, 2), np.uint8))
    with tifffile.TiffFile(tmp_path / "bomb.tif") as tf:
        offs = [tf.pages[0].tags[k].valueoffset for k in ("ImageWidth", "ImageLength")]
        types = [tf.pages[0].tags[k].dtype for k in ("ImageWidth", "ImageLength")]
    raw = bytearray((tmp_path / "bomb.tif").read_bytes())
    for off, ty in zip(offs, types):
        fmt = "<I" if int(ty) == 4 else "<H"
        raw[off:off + struct.calcsize(fmt)] = struct.pack(fmt, 65535)
    (tmp_path / "bomb.tif").write_bytes(bytes(raw))
    cases["tif_bomb"] = (lambda: read_image(tmp_path / "bomb.tif"), "bomb.tif")

    img = tmp_path / "img.png"
    _png(img, np.zeros((10, 10), np.uint8))
    rgb = np.zeros((10, 10, 3), np.uint8)
    rgb[2:5, 2:5] = (255, 0, 0)
    rgb[6:8, 6:8] = (0, 255, 0)
    _png(tmp_path / "rgb_label.png", rgb)
    cases["rgb_label"] = (lambda: read_pair(img, tmp_path / "rgb_label.png"), "rgb_label.png")
    tifffile.imwrite(tmp_path / "float_label.tif", np.full((10, 10), 0.5, np.float32))
    cases["float_label"] = (lambda: read_pair(img, tmp_path / "float_label.tif"), "float_label.tif")
    tifffile.imwrite(tmp_path / "neg_label.tif", np.full((10, 10), -3, np.int16))
    cases["negative_label"] = (lambda: read_pair(img, tmp_path / "neg_label.tif"), "neg_label.tif")
    tifffile.imwrite(tmp_path / "nan_label.tif", np.full((10, 10), np.nan, np.float32))
    cases["nan_label"] = (lambda: read_pair(img, tmp_path / "nan_label.tif"), "nan_label.tif")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "label.jpg")
    cases["jpeg_label"] = (lambda: read_pair(img, tmp_path / "label.jpg"), "label.jpg")
    _png(tmp_path / "small_label.png", np.zeros((9, 10), np.uint8))
    cases["shape_mismatch"] = (lambda: read_pair(img, tmp_path / "small_label.png"),
                               "small_label.png")

    d = tmp_path / "ds_missing"
    (d / "image").mkdir(parents=True)
    (d / "label").mkdir()
    _png(d / "image" / "01.png", np.zeros((8, 8), np.uint8))
    _png(d / "image" / "02.png", np.zeros((8, 8), np.uint8))
    _png(d / "label" / "01.png", np.zeros((8, 8), np.uint8))
    cases["missing_label"] = (lambda: read_dataset(d), "02.png")
    e = tmp_path / "ds_extra"
    (e / "images").mkdir(parents=True)
    (e / "labels").mkdir()
    _png(e / "images" / "01.png", np.zeros((8, 8), np.uint8))
    _png(e / "labels" / "01.png", np.zeros((8, 8), np.uint8))
    _png(e / "labels" / "zz_orphan.png", np.zeros((8, 8), np.uint8))
    cases["orphan_label"] = (lambda: read_dataset(e), "zz_orphan.png")
    m = tmp_path / "ds_mismatch"
    (m / "image").mkdir(parents=True)
    (m / "label").mkdir()
    _png(m / "image" / "a.png", np.zeros((8, 8), np.uint8))
    _png(m / "label" / "a.png", np.zeros((8, 9), np.uint8))
    cases["folder_mismatch"] = (lambda: read_dataset(m), "a.png")
    (tmp_path / "emptydir").mkdir()
    cases["empty_folder"] = (lambda: read_dataset(tmp_path / "emptydir"), "emptydir")
    u = tmp_path / "unknown_layout"
    u.mkdir()
    (u / "x.txt").write_text("?")
    cases["unknown_layout"] = (lambda: read_dataset(u), "unknown_layout")
    s = tmp_path / "stacks"
    s.mkdir()
    tifffile.imwrite(s / "train-volume.tif", np.zeros((3, 8, 8), np.uint8),
                     photometric="minisblack")
    cases["stack_partner"] = (lambda: read_dataset(s), "train-volume.tif")
    tifffile.imwrite(s / "train-labels.tif", np.zeros((2, 8, 8), np.uint8),
                     photometric="minisblack")
    cases["stack_mismatch"] = (lambda: read_dataset(s), "train-labels.tif")
    return cases


_CASES = [
    "missing", "folder", "empty", "garbage", "garbage_tif", "truncated_png", "truncated_tif",
    "truncated_raw_tif", "zero_size", "nan", "inf", "complex", "too_many", "png_bomb", "tif_bomb",
    "rgb_label", "float_label", "negative_label", "nan_label", "jpeg_label", "shape_mismatch",
    "missing_label", "orphan_label", "folder_mismatch", "empty_folder", "unknown_layout",
    "stack_partner", "stack_mismatch",
]


@pytest.mark.parametrize("case", _CASES)
def test_bad_input_raises_one_line_naming_file(tmp_path, case):
    fn, name = _bad_files(tmp_path)[case]
    with pytest.raises(UnetlabError) as info:
        fn()
    msg = str(info.value)
    assert name in msg and "\n" not in msg, msg


def test_bomb_is_refused_before_decoding(tmp_path, monkeypatch):
    bomb = _png(tmp_path / "bomb.png", np.zeros((1, 1), np.uint8))
    _patch_png_size(bomb, 50_000, 50_000)

    def boom(*a, **k):
        raise AssertionError("decoder was called")

    monkeypatch.setattr(Image.Image, "load", boom)
    with pytest.raises(UnetlabError, match="more than the limit"):
        read_image(bomb)
    monkeypatch.setattr(data.readers, "MAX_PIXELS", 10**11)  # the module constant is the default
    with pytest.raises(UnetlabError, match="decoder was called"):
        read_image(bomb)


# ------------------------------------------------------------------------------------------------
# tile sampler
# ------------------------------------------------------------------------------------------------

def coord_targets(instances):
    """classes = instances % 2 (toy); weights = 1 + flat pixel index (encodes coordinates)."""
    h, w = instances.shape
    weights = 1.0 + np.arange(h * w, dtype=np.float32).reshape(h, w)
    return (instances % 2).astype(np.uint8), weights


def _coord_sample(h, w, name="c"):
    """Image whose value is the flat index y*w + x (not normalised: exact float32 integers)."""
    img = np.arange(h * w, dtype=np.float32).reshape(1, h, w)
    inst = (np.arange(h * w).reshape(h, w) % 5).astype(np.int32)
    return Sample(img, inst, name=name)


def test_reflect_indices_match_numpy_pad():
    from unetlab.tiling import reflect_indices  # the one mirror-index rule the sampler uses

    for n in (1, 2, 3, 5):
        a = np.arange(n)
        pad = 23
        padded = np.pad(a, pad, mode="reflect")
        for start in (-23, -7, -1, 0, 2):
            for length in (1, 4, n + 20):
                if start + length > n + pad:
                    continue
                np.testing.assert_array_equal(
                    reflect_indices(start, start + length, n), padded[start + pad:start + pad + length])


@pytest.mark.parametrize("shape", [(50, 61), (7, 5), (3, 2)])
def test_sampler_alignment_mirror_and_ignore(shape):
    h, w = shape
    T, O = 20, 12
    c = (T - O) // 2
    s = _coord_sample(h, w)
    sampler = TileSampler([s], T, O, coord_targets)
    P = 40
    padded = np.pad(s.image[0], P, mode="reflect")
    rng = np.random.default_rng(0)
    for _ in range(25):
        img, cls, wt = sampler.sample(rng)
        assert img.shape == (1, T, T) and cls.shape == (O, O) and wt.shape == (O, O)
        assert img.dtype == np.float32 and cls.dtype == np.uint8 and wt.dtype == np.float32
        inside = wt > 0
        assert inside.any()
        # recover the output window's position from a labelled pixel, then check everything
        i, j = np.argwhere(inside)[0]
        flat = int(wt[i, j]) - 1
        y0, x0 = flat // w - i, flat % w - j
        assert min(0, h - O) <= y0 <= max(0, h - O) and min(0, w - O) <= x0 <= max(0, w - O)
        # the input tile is numpy.pad(reflect) around the output window
        np.testing.assert_array_equal(
            img[0], padded[P + y0 - c:P + y0 - c + T, P + x0 - c:P + x0 - c + T])
        yy, xx = np.mgrid[y0:y0 + O, x0:x0 + O]
        valid = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        np.testing.assert_array_equal(inside, valid)
        assert (cls[~valid] == 255).all() and (wt[~valid] == 0).all()
        # label crop lines up with the input centre: weight - 1 == image value at the centre
        np.testing.assert_array_equal(wt[valid] - 1, img[0, c:c + O, c:c + O][valid])
        np.testing.assert_array_equal(cls[valid], (s.instances[yy[valid], xx[valid]] % 2))
        if h < O and w < O:
            assert valid.sum() == h * w            # the small image is entirely in the window


def test_sampler_ignored_pixels_and_same_padding():
    s = _coord_sample(16, 16)
    s.instances[:, :8] = -1
    sampler = TileSampler([s], 16, 16, coord_targets)        # "same" padding: O = T
    img, cls, wt = sampler.sample(np.random.default_rng(1))
    assert img.shape == (1, 16, 16)
    np.testing.assert_array_equal(img[0], s.image[0])
    assert (cls[:, :8] == 255).all() and (wt[:, :8] == 0).all() and (wt[:, 8:] > 0).all()


def _transpose_aug(image, classes, weights, rng):
    _transpose_aug.seen.append((image.shape, classes.copy(), weights.copy(), rng))
    return image.transpose(0, 2, 1), classes.T, weights.T


_transpose_aug.seen = []


def test_sampler_augment_gets_full_tile_then_centre_crop():
    h, w, T, O = 9, 30, 24, 8
    c = (T - O) // 2
    s = _coord_sample(h, w)
    sampler = TileSampler([s], T, O, coord_targets, augment=_transpose_aug)
    _transpose_aug.seen.clear()
    rng = np.random.default_rng(5)
    img, cls, wt = sampler.sample(rng)
    (shape, full_cls, full_w, got_rng), = _transpose_aug.seen
    assert shape == (1, T, T) and full_cls.shape == (T, T) and got_rng is rng
    assert (full_cls == 255).sum() > 0 and ((full_cls == 255) == (full_w == 0)).all()
    np.testing.assert_array_equal(wt, full_w.T[c:c + O, c:c + O])
    np.testing.assert_array_equal(cls, full_cls.T[c:c + O, c:c + O])
    # after the (joint) transform the crop still lines up with the image centre
    v = wt > 0
    np.testing.assert_array_equal(wt[v] - 1, img[0, c:c + O, c:c + O][v])


def test_sampler_deterministic_picklable_and_cached():
    calls = []

    samples = [_coord_sample(10, 10, "a"), _coord_sample(30, 30, "b")]
    fn = functools.partial(coord_targets)
    sa = TileSampler(samples, 12, 4, fn)
    sb = pickle.loads(pickle.dumps(sa))
    for _ in range(5):
        ta, tb = sa.sample(np.random.default_rng(7)), sb.sample(np.random.default_rng(7))
        for x, y in zip(ta, tb):
            np.testing.assert_array_equal(x, y)
    # area weighting: 100 vs 900 pixels
    np.testing.assert_allclose(sa.probabilities, [0.1, 0.9])
    rng = np.random.default_rng(0)
    n_big = sum(sa.sample(rng)[0].max() >= 100 for _ in range(400))
    assert 330 <= n_big <= 390
    uniform = TileSampler(samples, 12, 4, fn, weighting="uniform")
    np.testing.assert_allclose(uniform.probabilities, [0.5, 0.5])

    def counting(inst):
        calls.append(1)
        return coord_targets(inst)

    sc = TileSampler(samples, 12, 4, counting)
    for k in range(20):
        sc.sample(k)
    assert len(calls) == 2


def test_sampler_geometry_errors_and_for_network():
    s = _coord_sample(8, 8)
    with pytest.raises(UnetlabError, match="out_size"):
        TileSampler([s], 12, 5, coord_targets)
    with pytest.raises(UnetlabError, match="no training samples"):
        TileSampler([], 12, 4, coord_targets)

    class Net:
        def output_size(self, n):
            return n - 8

    sampler = TileSampler.for_network([s], Net(), 20, coord_targets)
    assert sampler.out_size == (12, 12) and sampler.context == (4, 4)


def test_normalize_keeps_finite_extremes_finite_and_sane():
    rng = np.random.default_rng(0)
    img = rng.uniform(-3e38, 3e38, (40, 50)).astype(np.float32)
    img[0, 0], img[0, 1] = np.finfo(np.float32).min, np.finfo(np.float32).max
    out = normalize_image(img)
    assert out.shape == (1, 40, 50) and out.dtype == np.float32
    assert np.isfinite(out).all()
    assert -0.1 < np.percentile(out, 50) < 1.1 and out.min() > -1 and out.max() < 2
    # a few huge outliers next to a narrow range saturate, they do not become inf
    small = np.zeros((40, 50), np.float32)
    small[:20] = 1.0
    small[5, 5], small[6, 6] = -3e38, 3e38
    assert np.isfinite(normalize_image(small)).all()


def test_tiff_axes_are_honoured_and_multi_series_refused(tmp_path):
    rgb = np.zeros((10, 12, 3), np.uint8)
    rgb[..., 1] = 200
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(rgb, -1, 0), photometric="rgb",
                     planarconfig="separate")
    np.testing.assert_array_equal(read_image(tmp_path / "planar.tif"), rgb)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    with pytest.raises(UnetlabError, match=r"rgb\.tif: is a colour image"):
        read_stack(tmp_path / "rgb.tif")
    with tifffile.TiffWriter(tmp_path / "two.tif") as w:
        w.write(np.zeros((10, 12), np.uint8))
        w.write(np.zeros((5, 6), np.uint8))
    for fn in (read_image, read_stack):
        with pytest.raises(UnetlabError, match=r"two\.tif: TIFF holds 2 separate images"):
            fn(tmp_path / "two.tif")


def test_class_images_without_background_and_intensity_images_are_refused(tmp_path):
    ilastik = np.ones((30, 30), np.uint8)
    ilastik[10:20, 10:20] = 2
    with pytest.raises(UnetlabError, match=r"lab\.png: label has no background.*\{1, 2\}"):
        label_to_instances(ilastik, "lab.png")
    shifted = label_to_instances(ilastik - 1, "lab.png")        # 0 = background: fine
    assert shifted.max() == 1
    noise = np.random.default_rng(0).integers(0, 200, (128, 128)).astype(np.uint8)
    with pytest.raises(UnetlabError, match="intensity image"):
        label_to_instances(noise, "x.tif")
    # the same rule through the dataset reader that `unetlab train` uses
    root = tmp_path / "ds"
    (root / "image").mkdir(parents=True)
    (root / "label").mkdir()
    _png(root / "image" / "a.png", np.zeros((30, 30), np.uint8))
    _png(root / "label" / "a.png", ilastik)
    with pytest.raises(UnetlabError, match=r"a\.png: label has no background"):
        read_dataset(root)


def test_label_rule_and_normalisation_are_top_level_exports():
    import unetlab

    assert unetlab.label_to_instances is label_to_instances
    assert unetlab.normalize_image is normalize_image
    assert normalize_image(np.arange(12.0).reshape(3, 4)).shape == (1, 3, 4)
