"""Fuzzing the edges: truncated / garbled PNG and TIFF bytes and random shapes and dtypes into the
readers of :mod:`unetlab.data`, random arrays into :mod:`unetlab.metrics`.

The property everywhere: a call either succeeds with a sane result or raises a clean
:class:`unetlab.errors.UnetlabError` (a ``ValueError``) naming the file — never an IndexError,
struct.error, zlib.error, MemoryError, a crash or a hang. ``max_examples`` is kept modest so the
whole file runs in ~20 s on a loaded machine; the seeds are derandomised for reproducibility.
"""
from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from unetlab import data, metrics  # noqa: E402
from unetlab.errors import UnetlabError  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning",
                                        "ignore::UserWarning", "ignore::RuntimeWarning")
SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])
WORK = Path(tempfile.mkdtemp(prefix="unetlab-fuzz-"))


def _png_bytes(arr: np.ndarray) -> bytes:
    import imageio.v3 as iio

    return iio.imwrite("<bytes>", arr, extension=".png")


def _tiff_bytes(arr: np.ndarray, **kw) -> bytes:
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, arr, **kw)
    return buf.getvalue()


def _seed_files() -> dict[str, list[bytes]]:
    rng = np.random.default_rng(0)
    g8 = rng.integers(0, 255, (23, 17), dtype=np.uint8)
    g16 = rng.integers(0, 65535, (9, 31), dtype=np.uint16)
    rgb = rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)
    f32 = rng.normal(size=(8, 8)).astype(np.float32)
    stack = rng.integers(0, 255, (3, 10, 12), dtype=np.uint8)
    return {
        ".png": [_png_bytes(g8), _png_bytes(g16), _png_bytes(rgb)],
        ".tif": [_tiff_bytes(g8), _tiff_bytes(g16, compression="zlib"), _tiff_bytes(rgb),
                 _tiff_bytes(f32), _tiff_bytes(stack, photometric="minisblack"), _tiff_bytes(g8, tile=(16, 16)),
                 _tiff_bytes(g16, compression="zlib", tile=(16, 16))],
    }


SEEDS = _seed_files()


def _read(raw: bytes, suffix: str, name: str = "f") -> np.ndarray | None:
    """read_image on ``raw`` written to a file: returns the array or None after a clean error."""
    path = WORK / f"{name}{suffix}"
    path.write_bytes(raw)
    try:
        arr = data.read_image(path, max_pixels=1 << 22)
    except UnetlabError as e:
        msg = str(e)
        assert str(path) in msg, f"error does not name the file: {msg}"
        assert "\n" not in msg.strip(), f"error is not one line: {msg!r}"
        return None
    assert isinstance(arr, np.ndarray)
    assert arr.size > 0 and arr.dtype.kind in "uif"
    if arr.dtype.kind == "f":
        assert np.isfinite(arr).all()
    return arr


# ------------------------------------------------------------------ truncated / garbled bytes
@SETTINGS
@given(suffix=st.sampled_from([".png", ".tif"]), which=st.integers(0, 6),
       cut=st.floats(0.0, 1.0, exclude_max=True))
def test_truncated_files_give_clean_errors(suffix, which, cut):
    seeds = SEEDS[suffix]
    raw = seeds[which % len(seeds)]
    _read(raw[: int(len(raw) * cut)], suffix, "trunc")


@SETTINGS
@given(suffix=st.sampled_from([".png", ".tif"]), which=st.integers(0, 6),
       edits=st.lists(st.tuples(st.floats(0.0, 1.0, exclude_max=True), st.integers(0, 255)),
                      min_size=1, max_size=8))
def test_garbled_files_give_clean_errors(suffix, which, edits):
    seeds = SEEDS[suffix]
    raw = bytearray(seeds[which % len(seeds)])
    for pos, byte in edits:
        raw[int(pos * len(raw))] = byte
    _read(bytes(raw), suffix, "garbled")


@SETTINGS
@given(suffix=st.sampled_from([".png", ".tif", ".tiff", ".jpg", ".bmp", ".dat"]),
       raw=st.binary(min_size=0, max_size=300))
def test_random_bytes_give_clean_errors(suffix, raw):
    _read(raw, suffix, "random")


@SETTINGS
@given(head=st.sampled_from([b"II*\0", b"MM\0*", b"II+\0", b"\x89PNG\r\n\x1a\n"]),
       raw=st.binary(min_size=0, max_size=200))
def test_random_bytes_after_a_valid_magic(head, raw):
    suffix = ".png" if head.startswith(b"\x89") else ".tif"
    _read(head + raw, suffix, "magic")


# ------------------------------------------------------------------ random shapes and dtypes
DTYPES = ["uint8", "int8", "uint16", "int16", "uint32", "int32", "int64", "uint64", "float16",
          "float32", "float64", "complex64", "bool"]
SPECIAL = [np.nan, np.inf, -np.inf, 0.0, -1.0, 1e30]


@st.composite
def arrays(draw, max_dims=4, max_side=6):
    ndim = draw(st.integers(0, max_dims))
    shape = tuple(draw(st.lists(st.integers(0, max_side), min_size=ndim, max_size=ndim)))
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    if dtype.kind == "b":
        a = rng.integers(0, 2, shape).astype(bool)
    elif dtype.kind in "ui":
        info = np.iinfo(dtype)
        a = rng.integers(max(info.min, -1000), min(info.max, 1000), shape, endpoint=True)
        a = a.astype(dtype)
    else:
        a = (rng.normal(size=shape) * 10).astype(dtype)
        if a.size and draw(st.booleans()):
            a.flat[draw(st.integers(0, a.size - 1))] = draw(st.sampled_from(SPECIAL))
    return a


@SETTINGS
@given(a=arrays())
def test_tiff_of_any_shape_and_dtype(a):
    import tifffile

    path = WORK / "shape.tif"
    try:
        tifffile.imwrite(path, a)
    except Exception:  # noqa: BLE001 - tifffile cannot write this one: not our concern
        return
    arr = _read(path.read_bytes(), ".tif", "shape")
    if arr is not None:
        assert arr.size == a.size
        assert a.dtype.kind != "c" and a.size > 0


@SETTINGS
@given(a=arrays(max_dims=3))
def test_png_of_any_shape_and_dtype(a):
    from PIL import Image

    ok_shape = a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (1, 3, 4) and a.dtype == np.uint8)
    if a.dtype not in (np.uint8, np.uint16, np.bool_) or not ok_shape or 0 in a.shape:
        return                      # PNG cannot store it; the TIFF test covers these arrays
    buf = io.BytesIO()
    im = a[..., 0] if a.ndim == 3 and a.shape[-1] == 1 else a
    Image.fromarray(im.astype(np.uint8) if im.dtype == bool else im).save(buf, format="PNG")
    arr = _read(buf.getvalue(), ".png", "shape")
    assert arr is not None and arr.size == a.size


def _clean(fn, *args, **kw):
    """Call ``fn``; only ValueError (UnetlabError is one) may come out."""
    try:
        return fn(*args, **kw)
    except ValueError as e:
        assert str(e).strip(), f"{fn.__name__}: empty error message"
        assert "\n" not in str(e).strip(), f"{fn.__name__}: multi-line error {e!r}"
        return None


@SETTINGS
@given(a=arrays())
def test_to_channels_first_random_arrays(a):
    img = _clean(data.to_channels_first, a)
    if img is not None:
        assert img.ndim == 3 and img.size == a.size


@SETTINGS
@given(a=arrays())
def test_normalize_image_random_arrays(a):
    norm = _clean(data.normalize_image, a)
    if norm is not None:
        assert norm.dtype == np.float32 and norm.ndim == 3 and norm.size == a.size


@SETTINGS
@given(a=arrays())
def test_label_to_instances_random_arrays(a):
    ins = _clean(data.label_to_instances, a, "lab.tif")
    if ins is not None:
        assert ins.dtype == np.int32 and ins.ndim == 2 and ins.min() >= 0


@SETTINGS
@given(a=arrays(), b=arrays())
def test_sample_random_arrays(a, b):
    s = _clean(data.Sample, a, b, "s")
    if s is not None:
        assert s.image.dtype == np.float32 and s.instances.dtype == np.int32
        assert s.image.shape[1:] == s.instances.shape
        assert np.isfinite(s.image).all() and s.instances.min() >= -1


# ------------------------------------------------------------------ metrics
@st.composite
def metric_pair(draw):
    """A (ground truth, probability) pair: usually matching shapes and sane values, sometimes
    not (the cases the metrics must reject cleanly)."""
    ndim = draw(st.sampled_from([2, 2, 3, 1, 4]))
    shape = tuple(draw(st.lists(st.integers(0, 7), min_size=ndim, max_size=ndim)))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, draw(st.integers(1, 5)), shape)
    gt = gt.astype(draw(st.sampled_from(["uint8", "int32", "int64", "float32", "bool", "int8"])))
    prob = rng.random(shape)
    kind = draw(st.sampled_from(["ok", "ok", "ok", "nan", "range", "shape", "dtype", "ints"]))
    if kind == "nan" and prob.size:
        prob.flat[0] = np.nan
    elif kind == "range":
        prob = prob * 3 - 1
    elif kind == "shape":
        prob = rng.random(tuple(s + 1 for s in shape))
    elif kind == "dtype":
        prob = prob.astype(np.complex64)
    elif kind == "ints":
        gt = gt.astype(np.int64) - 2     # negative labels
    return gt, prob.astype(draw(st.sampled_from(["float32", "float64", "float16"]))
                           if prob.dtype.kind == "f" else prob.dtype)


@SETTINGS
@given(pair=metric_pair(), th=st.floats(-0.5, 1.5))
def test_isbi_metrics_random_arrays(pair, th):
    gt, prob = pair
    for fn in (metrics.pixel_fscore, metrics.rand_fscore):
        v = _clean(fn, gt, prob, th)
        if v is not None:
            assert 0.0 <= v <= 1.0


@settings(max_examples=15, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(pair=metric_pair())
def test_isbi2012_random_arrays(pair):
    """The full challenge metric (with the warping error) on tiny random arrays."""
    gt, prob = pair
    r = _clean(metrics.isbi2012, gt, prob, radius=2, classic=False)
    if r is not None:
        for k in ("pixel_error", "rand_error", "warping_error"):
            assert 0.0 <= r[k] <= 1.0, (k, r[k])


@SETTINGS
@given(pair=metric_pair(), thresholds=st.lists(
    st.one_of(st.floats(-0.5, 1.5), st.just(float("nan"))), min_size=1, max_size=3))
def test_cell_metrics_random_arrays(pair, thresholds):
    gt, pred = pair
    rng = np.random.default_rng(gt.size)
    pred_inst = (pred * 4).astype(np.int32) if pred.dtype.kind == "f" and \
        np.isfinite(pred).all() and (pred >= 0).all() else pred
    v = _clean(metrics.iou, gt, pred_inst)
    if v is not None:
        assert 0.0 <= v <= 1.0
    v = _clean(metrics.seg, gt, pred_inst)
    if v is not None:
        assert 0.0 <= v <= 1.0
    rows = _clean(metrics.matching, gt, pred_inst, thresholds)
    if rows is not None:
        for r in rows:
            assert r["tp"] + r["fn"] == r["n_true"] and r["tp"] + r["fp"] == r["n_pred"]
            assert 0.0 <= r["f1"] <= 1.0
    del rng
