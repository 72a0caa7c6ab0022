"""Reading single image files and TIFF stacks (the edge where pixels enter the library).

* :func:`read_image` reads one PNG / TIFF / JPEG (8-bit, 16-bit, 32-bit integer or float) and
  returns the raw array (no normalisation). Before anything is decoded the declared size is read
  from the file header (TIFF: tifffile's page/series metadata; PNG/JPEG/BMP: the Pillow header)
  and files declaring more than ``max_pixels`` values (height × width × channels × pages; default
  :data:`MAX_PIXELS` = 2^31) are refused: a decompression bomb never reaches the decoder.
* :func:`read_stack` opens a multi-page TIFF as a lazy (S, H, W) array: a ``numpy.memmap`` when the
  pages are stored uncompressed and contiguously (``tifffile.memmap``), otherwise a read-only zarr
  array over the TIFF (``tifffile.imread(aszarr=True)``) that decodes pages on access.
"""
from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import UnetlabError

__all__ = ["MAX_PIXELS", "IMAGE_SUFFIXES", "read_image", "read_stack"]


#: Largest number of values (height × width × channels × pages) a file may declare.
#: ``read_image(max_pixels=...)`` overrides it per call; changing this constant changes the default.
MAX_PIXELS: int = 2**31
#: File suffixes read as images (lower case).
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
_TIFF_SUFFIXES = (".tif", ".tiff")
_PIL_LOCK = threading.Lock()


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    msg = text[0] if text else ""
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def _check_file(path: Path) -> None:
    if not path.exists():
        raise UnetlabError(f"{path}: no such file")
    if path.is_dir():
        raise UnetlabError(f"{path}: is a folder, expected an image file")
    if path.stat().st_size == 0:
        raise UnetlabError(f"{path}: file is empty (0 bytes)")


def check_size(path: Path, shape: Sequence[int], limit: int) -> None:
    shape = tuple(int(s) for s in shape)
    if len(shape) == 0 or any(s <= 0 for s in shape):
        raise UnetlabError(f"{path}: image has zero size (shape {shape})")
    n = int(np.prod(shape, dtype=np.float64))
    if n > limit:
        raise UnetlabError(
            f"{path}: image declares {n} values (shape {shape}), more than the limit of {limit} "
            "(raise max_pixels / unetlab.data.MAX_PIXELS if this file is genuine)")


def _check_values(path: Path, arr: np.ndarray) -> np.ndarray:
    if arr.size == 0 or any(s == 0 for s in arr.shape):
        raise UnetlabError(f"{path}: image has zero size (shape {arr.shape})")
    if np.iscomplexobj(arr):
        raise UnetlabError(f"{path}: complex-valued images are not supported (dtype {arr.dtype})")
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise UnetlabError(f"{path}: unsupported pixel type {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise UnetlabError(f"{path}: image contains NaN or Inf values")
    return arr


@contextlib.contextmanager
def _pil_unlimited():
    """Switch off Pillow's own decompression-bomb check (ours runs first, with our limit)."""
    from PIL import Image

    with _PIL_LOCK:
        old = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield Image
        finally:
            Image.MAX_IMAGE_PIXELS = old


def _one_series(tf, path: Path):
    """The image series of a TIFF; files holding several (different images, pyramids stored as
    separate series) are refused rather than silently reading the first."""
    if not tf.series:
        raise UnetlabError(f"{path}: TIFF file contains no images")
    if len(tf.series) > 1:
        shapes = ", ".join(str(tuple(x.shape)) for x in tf.series[:4])
        raise UnetlabError(f"{path}: TIFF holds {len(tf.series)} separate images ({shapes}"
                           f"{', ...' if len(tf.series) > 4 else ''}); save one image or stack "
                           "per file")
    return tf.series[0]


def _read_tiff(path: Path, limit: int) -> np.ndarray:
    """The pixels as the file lays them out, colour samples last: (H, W), (H, W, C) for RGB(A)
    (also when stored planar), (C, H, W) for channel axes, (S, H, W) for pages."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            series = _one_series(tf, path)
            check_size(path, series.shape, limit)
            arr, axes = np.asarray(series.asarray()), series.axes
    except UnetlabError:
        raise
    except Exception as e:  # noqa: BLE001 - any decoder failure is a bad file
        raise UnetlabError(f"{path}: cannot read TIFF ({_first_line(e)})") from e
    if "S" in axes and len(axes) == arr.ndim == 3 and axes.index("S") == 0:
        arr = np.moveaxis(arr, 0, -1)           # planar RGB: samples first in the file
    return arr


def _tiff_axes(path: Path) -> str:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            return _one_series(tf, path).axes
    except UnetlabError:
        raise
    except Exception as e:  # noqa: BLE001
        raise UnetlabError(f"{path}: cannot read TIFF ({_first_line(e)})") from e


def _refuse_colour_stack(path: Path, axes: str) -> None:
    if "S" in axes:
        raise UnetlabError(f"{path}: is a colour image (TIFF axes {axes}), not a stack of pages")


def _read_pil(path: Path, limit: int, palette_indices: bool) -> np.ndarray | None:
    """Read with Pillow; None if Pillow does not know the format."""
    with _pil_unlimited() as Image:
        try:
            im = Image.open(path)
        except Image.UnidentifiedImageError:
            return None
        except Exception as e:  # noqa: BLE001
            raise UnetlabError(f"{path}: cannot read image ({_first_line(e)})") from e
        with im:
            w, h = im.size
            bands = len(im.getbands())
            if im.mode == "P" and not palette_indices:
                bands = 4
            check_size(path, (h, w, bands), limit)
            try:
                im.load()
                if im.mode == "P":
                    if not palette_indices:
                        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
                elif im.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                    im = im.convert("RGB")
                elif im.mode == "PA":
                    im = im.convert("RGBA")
                arr = np.array(im)
            except UnetlabError:
                raise
            except Exception as e:  # noqa: BLE001 - truncated / corrupt data
                raise UnetlabError(f"{path}: cannot read image ({_first_line(e)})") from e
    return arr


def _read_imageio(path: Path, limit: int) -> np.ndarray:
    import imageio.v3 as iio

    try:
        props = iio.improps(path)
        check_size(path, props.shape, limit)
        return np.asarray(iio.imread(path))
    except UnetlabError:
        raise
    except Exception as e:  # noqa: BLE001
        raise UnetlabError(f"{path}: cannot read image ({_first_line(e)})") from e


def read_image(path: str | os.PathLike, max_pixels: int | None = None, *,
               palette_indices: bool = False) -> np.ndarray:
    """Read one image file and return its raw pixel array (not normalised).

    TIFF (``.tif``/``.tiff``) is read with tifffile (first series: (H, W), (H, W, C), (C, H, W) or
    a stack (S, H, W)); other formats with Pillow (the decoder imageio uses), or imageio for
    formats Pillow does not know. Palette images are expanded to RGB(A) unless
    ``palette_indices=True`` (used for label images, whose palette indices are the labels).

    The declared size is checked against ``max_pixels`` (default :data:`MAX_PIXELS`) before any
    pixel is decoded. Raises :class:`UnetlabError` naming the file if it is missing, a folder,
    empty, unreadable or truncated, zero-sized, complex-valued, contains NaN/Inf, or too large.
    Boolean images are returned as uint8 (0/1).
    """
    path = Path(path)
    limit = MAX_PIXELS if max_pixels is None else int(max_pixels)
    _check_file(path)
    if path.suffix.lower() in _TIFF_SUFFIXES:
        arr = _read_tiff(path, limit)
    else:
        arr = _read_pil(path, limit, palette_indices)
        if arr is None:
            if path.suffix.lower() in IMAGE_SUFFIXES:
                raise UnetlabError(f"{path}: not a valid {path.suffix.lstrip('.').upper()} "
                                   "image (unrecognised content)")
            arr = _read_imageio(path, limit)
    return _check_values(path, arr)


def read_stack(path: str | os.PathLike, lazy: bool = True, max_pixels: int | None = None):
    """Open a multi-page TIFF as an (S, H, W) array (a 2D TIFF gives S = 1).

    lazy=True: a ``numpy.memmap`` (read-only) when the data are uncompressed and contiguous in the
    file, else a read-only ``zarr`` array over the TIFF (pages decoded when indexed; use
    ``numpy.asarray(stack[i])`` for one slice). Nothing is decoded by this call, so there is no
    pixel limit. lazy=False: the whole stack in memory, with :func:`read_image`'s checks.
    Multi-channel stacks with more than three dimensions are refused.
    """
    path = Path(path)
    _check_file(path)
    if path.suffix.lower() not in _TIFF_SUFFIXES:
        raise UnetlabError(f"{path}: a stack must be a multi-page TIFF (.tif/.tiff)")
    _refuse_colour_stack(path, _tiff_axes(path))
    if not lazy:
        arr = read_image(path, max_pixels=max_pixels)
        if arr.ndim == 2:
            arr = arr[None]
        if arr.ndim != 3:
            raise UnetlabError(f"{path}: expected a (pages, H, W) stack, got shape {arr.shape}")
        return arr
    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            series = _one_series(tf, path)
            shape, dtype = tuple(series.shape), np.dtype(series.dtype)
    except UnetlabError:
        raise
    except Exception as e:  # noqa: BLE001
        raise UnetlabError(f"{path}: cannot read TIFF ({_first_line(e)})") from e
    if len(shape) not in (2, 3):
        raise UnetlabError(f"{path}: expected a (pages, H, W) stack, got shape {shape}")
    if any(s == 0 for s in shape):
        raise UnetlabError(f"{path}: image has zero size (shape {shape})")
    if dtype.kind == "c":
        raise UnetlabError(f"{path}: complex-valued images are not supported (dtype {dtype})")
    try:
        arr = tifffile.memmap(path, mode="r")
    except Exception:  # noqa: BLE001 - compressed or non-contiguous: fall back to zarr
        import zarr

        try:
            arr = zarr.open(tifffile.imread(path, aszarr=True), mode="r")
        except Exception as e:  # noqa: BLE001
            raise UnetlabError(f"{path}: cannot open TIFF lazily ({_first_line(e)})") from e
    if arr.ndim == 2:
        arr = arr[None] if isinstance(arr, np.ndarray) else np.asarray(arr)[None]
    return arr
