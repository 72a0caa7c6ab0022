"""unetlab.writers: PNG/TIFF round trips with the array as given, atomic failure."""
from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from unetlab.errors import UnetlabError
from unetlab.writers import write_png, write_tiff


@pytest.mark.parametrize("arr", [
    np.arange(12, dtype=np.uint8).reshape(3, 4),
    (np.arange(12, dtype=np.uint16) * 5000).reshape(3, 4),
    np.arange(36, dtype=np.uint8).reshape(3, 4, 3),
])
def test_png_round_trip(tmp_path, arr):
    write_png(tmp_path / "a.png", arr)
    back = np.asarray(Image.open(tmp_path / "a.png"))
    assert back.dtype == arr.dtype and np.array_equal(back, arr)


def test_png_bool_is_0_255_and_float_refused(tmp_path):
    write_png(tmp_path / "m.png", np.array([[True, False]]))
    assert np.asarray(Image.open(tmp_path / "m.png")).tolist() == [[255, 0]]
    with pytest.raises(UnetlabError, match="f.png.*float32"):
        write_png(tmp_path / "f.png", np.zeros((2, 2), np.float32))
    assert not (tmp_path / "f.png").exists()


@pytest.mark.parametrize("arr", [
    np.linspace(-3e38, 3e38, 12, dtype=np.float32).reshape(3, 4),
    np.arange(24, dtype=np.int32).reshape(2, 3, 4),
    np.arange(36, dtype=np.uint8).reshape(3, 4, 3),
])
def test_tiff_round_trip(tmp_path, arr):
    write_tiff(tmp_path / "a.tif", arr)
    back = tifffile.imread(tmp_path / "a.tif")
    assert back.dtype == arr.dtype and np.array_equal(back, arr)


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    import imageio.v3 as iio

    def half_written(tmp, *a, **k):
        open(tmp, "wb").write(b"partial")
        raise OSError("disk full")

    target = tmp_path / "keep.png"
    target.write_bytes(b"old")
    monkeypatch.setattr(iio, "imwrite", half_written)
    with pytest.raises(OSError):
        write_png(target, np.zeros((2, 2), np.uint8))
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.png"]
