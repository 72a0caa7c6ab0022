"""Reading training data, intensity normalisation, and the random tile sampler.

This is the edge of the library where files are read (architecture: "files are read and written
only at the edges"). Everything else works on :class:`Sample` objects.

Readers
-------
* :func:`read_image` reads one PNG / TIFF / JPEG (8-bit, 16-bit, 32-bit integer or float) and
  returns the raw array (no normalisation). Before anything is decoded the declared size is read
  from the file header (TIFF: tifffile's page/series metadata; PNG/JPEG/BMP: the Pillow header)
  and files declaring more than ``max_pixels`` values (height × width × channels × pages; default
  :data:`MAX_PIXELS` = 2^31) are refused: a decompression bomb never reaches the decoder.
* :func:`read_stack` opens a multi-page TIFF as a lazy (S, H, W) array: a ``numpy.memmap`` when the
  pages are stored uncompressed and contiguously (``tifffile.memmap``), otherwise a read-only zarr
  array over the TIFF (``tifffile.imread(aszarr=True)``) that decodes pages on access.
* :func:`read_dataset` autodetects the layouts of the paper's data sets (Sec. 3) and common tools:

  (a) a folder with ``image/`` (``images/``, ``img/``) and ``label/`` (``labels/``, ``mask/``,
      ``masks/``, ``gt/``) sub-folders; pairs are matched by file stem (a label stem may carry a
      ``_mask``/``_label``/``_seg``/``_gt`` suffix). An image without a label, or a label without
      an image, is an error naming the file. Hidden files and files that are not images are
      skipped. ``read_dataset(images_dir, labels=labels_dir)`` names the two folders explicitly.
  (b) the ISBI 2012 stacks ``train-volume.tif`` + ``train-labels.tif`` in one folder (one sample
      per slice), or explicitly ``read_dataset("vol.tif", labels="lab.tif")`` (a stack pair, or
      two single images, see :func:`read_pair`).
  (c) the Cell Tracking Challenge layout ``DIR/01/t000.tif`` + ``DIR/01_GT/SEG/man_seg000.tif``
      (``DIR`` or ``DIR/01`` may be given): one sample per annotated 2D frame. 3D slice
      annotations (``man_seg_000_012.tif``) are not read. See "partial annotation" below.
  (d) one image file and one label file: :func:`read_pair`.

Labels (:func:`label_to_instances`)
-----------------------------------
A label image whose values are a subset of {0, v} (a binary mask such as ISBI's 0 = membrane,
255 = cell) becomes the 4-connected components of its non-zero pixels, numbered 1..n, as in the
paper's Fig. 3 (cells separated by one-pixel membranes). Any other non-negative integer image is
an instance image and is kept as is (ids need not be contiguous; 0 = background). An image with
only zeros is allowed (all background). Colour labels, float labels with non-integer values,
negative values, values beyond int32, NaN/Inf, and lossy JPEG labels are refused with an error
naming the file.

Partial annotation (CTC)
------------------------
Sample instances use -1 for pixels whose class is unknown (ignored by the loss). In the Cell
Tracking Challenge, "SEG" ground truth often annotates only some of the cells of a frame; the
other cells are 0 there, which would teach the network that they are background. With
``ctc_ignore_unannotated=True`` (default) a frame is treated as partial unless it can be shown to
be complete: when the tracking markers ``01_GT/TRA/man_trackTTT.tif`` exist and every marker
overlaps an annotated cell, the frame is complete and used as is. Otherwise (a marker without a
segmented cell, or no TRA file) only background within ``ctc_margin`` pixels (Euclidean) of an
annotated cell is trusted; farther background becomes -1. The ring keeps the gaps between
touching cells — where the paper's border weights matter most — labelled.

Normalisation (:func:`normalize_image`)
--------------------------------------
Each channel is scaled by its own robust range: ``(x - p_lo) / (p_hi - p_lo)`` with ``p_lo``,
``p_hi`` the 1st and 99.8th percentiles of that channel in the whole image (no clipping). This is
the percentile normalisation used for fluorescence (CSBDeep / StarDist); it is insensitive to
a few hot pixels and to the storage dtype (8-bit EM and 12-in-16-bit fluorescence look alike
afterwards, most values in [0, 1]). If the percentiles coincide, min and max are used; a constant
channel becomes 0. Percentiles of images with more than 2^22 values per channel are estimated on
a regular subsample (deterministic). Training and prediction must both call this function (or
:func:`normalization_stats` once for a whole image, then :func:`normalize_image` with ``stats`` on
its tiles) so the network sees the same intensities.

Tile sampler
------------
:class:`TileSampler` draws random training tiles: the network input (T×T) with mirror-padded
context where the image ends, and the matching centre crop (O×O) of class labels and weights, in
which pixels outside the image are ignored (class 255, weight 0) — labels are never mirrored.
"""
from __future__ import annotations

import contextlib
import glob as _glob
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from .errors import UnetlabError

__all__ = [
    "MAX_PIXELS",
    "IMAGE_SUFFIXES",
    "IGNORE_INDEX",
    "Sample",
    "read_image",
    "read_stack",
    "read_pair",
    "read_dataset",
    "list_images",
    "normalize_image",
    "normalization_stats",
    "to_channels_first",
    "label_to_instances",
    "reflect_indices",
    "TileSampler",
]

#: Largest number of values (height × width × channels × pages) a file may declare.
#: ``read_image(max_pixels=...)`` overrides it per call; changing this constant changes the default.
MAX_PIXELS: int = 2**31

#: File suffixes read as images (lower case).
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")

#: Class label of ignored pixels in class-label images (same value as ``unetlab.weights``).
IGNORE_INDEX: int = 255

_TIFF_SUFFIXES = (".tif", ".tiff")
_JPEG_SUFFIXES = (".jpg", ".jpeg")
_PERCENTILES = (1.0, 99.8)
_SUBSAMPLE_LIMIT = 2**22
_PIL_LOCK = threading.Lock()


# ----------------------------------------------------------------------------------------------
# Sample
# ----------------------------------------------------------------------------------------------

@dataclass(eq=False)
class Sample:
    """One training image with its instance labels.

    image:     (C, H, W) float32, normalised (:func:`normalize_image`); a (H, W) array is accepted
               and becomes (1, H, W). Must be finite.
    instances: (H, W) int32; 0 = background, > 0 = instance ids (need not be contiguous),
               -1 = unlabelled / ignored pixels (partial annotation). Any integer dtype whose values
               fit is converted to int32.
    name:      a short name for logs and pictures (e.g. the file stem).
    path:      the image file it came from, or None (generated data).
    """

    image: np.ndarray
    instances: np.ndarray
    name: str = ""
    path: str | None = None

    def __post_init__(self) -> None:
        who = f"sample {self.name!r}" if self.name else "sample"
        img = np.asarray(self.image)
        if img.ndim == 2:
            img = img[None]
        if img.ndim != 3:
            raise UnetlabError(f"{who}: image must be (C, H, W), got shape {img.shape}")
        if not (np.issubdtype(img.dtype, np.floating) or np.issubdtype(img.dtype, np.integer)):
            raise UnetlabError(f"{who}: image must be a real number array, got dtype {img.dtype}")
        img = np.ascontiguousarray(img, dtype=np.float32)
        if img.size == 0:
            raise UnetlabError(f"{who}: image is empty, shape {img.shape}")
        if not np.isfinite(img).all():
            raise UnetlabError(f"{who}: image contains NaN or Inf")
        ins = np.asarray(self.instances)
        if ins.ndim != 2:
            raise UnetlabError(f"{who}: instances must be (H, W), got shape {ins.shape}")
        if ins.shape != img.shape[1:]:
            raise UnetlabError(
                f"{who}: instances shape {ins.shape} does not match image shape {img.shape[1:]}")
        if ins.dtype != np.int32:
            if not np.issubdtype(ins.dtype, np.integer) and ins.dtype != bool:
                raise UnetlabError(f"{who}: instances must be integers, got dtype {ins.dtype}")
            if ins.size and (ins.min() < -1 or ins.max() > np.iinfo(np.int32).max):
                raise UnetlabError(f"{who}: instance ids must be in [-1, 2^31 - 1]")
            ins = ins.astype(np.int32)
        elif ins.size and ins.min() < -1:
            raise UnetlabError(f"{who}: instances must be >= -1 (-1 = ignored), got {ins.min()}")
        self.image = img
        self.instances = np.ascontiguousarray(ins)
        self.name = str(self.name)
        self.path = None if self.path is None else str(self.path)

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of the sample."""
        return self.instances.shape  # type: ignore[return-value]

    @property
    def channels(self) -> int:
        return self.image.shape[0]


# ----------------------------------------------------------------------------------------------
# reading single files
# ----------------------------------------------------------------------------------------------

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


def _check_size(path: Path, shape: Sequence[int], limit: int) -> None:
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


def _read_tiff(path: Path, limit: int) -> np.ndarray:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            if not tf.series:
                raise UnetlabError(f"{path}: TIFF file contains no images")
            series = tf.series[0]
            _check_size(path, series.shape, limit)
            return np.asarray(series.asarray())
    except UnetlabError:
        raise
    except Exception as e:  # noqa: BLE001 - any decoder failure is a bad file
        raise UnetlabError(f"{path}: cannot read TIFF ({_first_line(e)})") from e


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
            _check_size(path, (h, w, bands), limit)
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
        _check_size(path, props.shape, limit)
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
            if not tf.series:
                raise UnetlabError(f"{path}: TIFF file contains no images")
            shape = tuple(tf.series[0].shape)
            dtype = np.dtype(tf.series[0].dtype)
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


# ----------------------------------------------------------------------------------------------
# channels and normalisation
# ----------------------------------------------------------------------------------------------

def to_channels_first(img: np.ndarray, channels: int | None = None,
                      path: str | os.PathLike | None = None) -> np.ndarray:
    """Bring a 2D image to (C, H, W) (same dtype).

    (H, W) → (1, H, W); (H, W, c) with c ≤ 4 (RGB, RGBA, grey+alpha from PNG/JPEG/TIFF) →
    (c, H, W); (c, H, W) with c ≤ 4 and W > 4 → unchanged.
    channels=None keeps all channels. channels=1 converts to grey (ITU-R 601 luma for ≥ 3
    channels, ignoring alpha; the first channel for grey+alpha). channels=k > 1 takes the first
    k channels, or repeats a grey image k times. Anything else raises :class:`UnetlabError`.
    """
    who = str(path) if path is not None else "image"
    a = np.asarray(img)
    if a.size == 0:
        raise UnetlabError(f"{who}: empty image (shape {a.shape})")
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)
            or a.dtype == bool):
        raise UnetlabError(f"{who}: unsupported pixel type {a.dtype} (expected integers or floats)")
    if a.ndim == 2:
        a = a[None]
    elif a.ndim == 3:
        if a.shape[-1] <= 4 and a.shape[0] > 4:
            a = np.moveaxis(a, -1, 0)
        elif a.shape[0] <= 4 and a.shape[-1] > 4:
            pass
        elif a.shape[0] == 1 and a.shape[-1] > 1:
            pass  # tiny (1, H, W): one channel first, so that a second call changes nothing
        elif a.shape[-1] <= 4 and a.shape[0] <= 4:
            a = np.moveaxis(a, -1, 0)  # tiny image: assume channels last (PNG convention)
        else:
            raise UnetlabError(
                f"{who}: shape {a.shape} is a stack of {a.shape[0]} images, not a 2D image "
                "(give a label stack too, or read it with read_stack)")
    else:
        raise UnetlabError(f"{who}: expected a 2D image, got shape {a.shape}")
    c = a.shape[0]
    if channels is None or channels == c:
        return np.ascontiguousarray(a)
    if channels < 1:
        raise UnetlabError(f"channels: must be >= 1, got {channels}")
    if channels == 1:
        if c >= 3:
            rgb = a[:3].astype(np.float32)
            grey = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
            return grey[None]
        return np.ascontiguousarray(a[:1])
    if c == 1:
        return np.ascontiguousarray(np.repeat(a, channels, axis=0))
    if c > channels:
        return np.ascontiguousarray(a[:channels])
    raise UnetlabError(f"{who}: has {c} channels, cannot make {channels}")


def subsample_step(height: int, width: int) -> int:
    """Stride of the regular subsample ``[::step, ::step]`` that the normalisation statistics
    read: 1 up to 2^22 pixels per channel, then just enough to stay near that many. Lazy readers
    (the predict CLI, Dask) read this subsample only and pass it to :func:`sample_stats`."""
    return max(1, int(np.ceil(np.sqrt(height * width / _SUBSAMPLE_LIMIT))))


def sample_stats(sample: np.ndarray,
                 percentiles: tuple[float, float] = _PERCENTILES) -> np.ndarray:
    """Per-channel (low, high) of an already subsampled (C, h, w) array: (C, 2) float64.

    low/high are the given percentiles (default 1 and 99.8) of each channel; if they coincide,
    the channel's min and max."""
    out = np.empty((sample.shape[0], 2), dtype=np.float64)
    for c in range(sample.shape[0]):
        sub = np.asarray(sample[c], dtype=np.float64).ravel()
        lo, hi = np.percentile(sub, percentiles)
        if not hi > lo:
            lo, hi = float(sub.min()), float(sub.max())
        out[c] = lo, hi
    return out


def normalization_stats(img: np.ndarray,
                        percentiles: tuple[float, float] = _PERCENTILES) -> np.ndarray:
    """Per-channel (low, high) intensities of a (C, H, W) image: shape (C, 2), float64.

    low/high are the given percentiles (default 1 and 99.8) of each channel; if they coincide,
    the channel's min and max. Channels with more than 2^22 values are subsampled regularly
    (:func:`subsample_step`).
    """
    a = np.asarray(img)
    if a.ndim != 3:
        raise ValueError(f"normalization_stats expects (C, H, W), got shape {a.shape}")
    step = subsample_step(a.shape[1], a.shape[2])
    return sample_stats(a[:, ::step, ::step], percentiles)


def normalize_image(img: np.ndarray, channels: int | None = None,
                    stats: np.ndarray | None = None) -> np.ndarray:
    """The intensity normalisation used for training AND prediction: (C, H, W) float32.

    ``img`` may be (H, W), (H, W, c) or (C, H, W) of any real dtype (see
    :func:`to_channels_first`). Each channel becomes ``(x - lo) / (hi - lo)`` with (lo, hi) from
    :func:`normalization_stats` (1st / 99.8th percentile), not clipped; a constant channel becomes
    all zeros. Pass ``stats`` (from :func:`normalization_stats` on the whole image) to normalise
    a tile exactly like the whole image.
    """
    a = to_channels_first(img, channels)
    if stats is None:
        stats = normalization_stats(a)
    stats = np.asarray(stats, dtype=np.float64)
    if stats.shape != (a.shape[0], 2):
        raise ValueError(f"stats must have shape ({a.shape[0]}, 2), got {stats.shape}")
    out = np.empty(a.shape, dtype=np.float32)
    for c in range(a.shape[0]):
        lo, hi = stats[c]
        if hi > lo:
            scale = 1.0 / (hi - lo)
            np.subtract(a[c], lo, out=out[c], casting="unsafe")
            out[c] *= np.float32(scale)
        else:
            out[c] = 0.0
    return out


# ----------------------------------------------------------------------------------------------
# labels
# ----------------------------------------------------------------------------------------------

def label_to_instances(label: np.ndarray, path: str | os.PathLike | None = None) -> np.ndarray:
    """Turn a label image into (H, W) int32 instances (0 = background, > 0 = ids).

    * values ⊆ {0, v}: a binary mask (e.g. ISBI 0/255) → 4-connected components of the non-zero
      pixels (``skimage.measure.label(connectivity=1)``), numbered 1..n;
    * other non-negative integer images → instance ids as they are (as int32);
    * all zeros → all background (allowed).
    (H, W, c) labels whose channels are all equal are read as grey. Colour labels, non-integer or
    non-finite floats, negative values and values beyond int32 raise :class:`UnetlabError`
    naming ``path``.
    """
    who = str(path) if path is not None else "label"
    a = np.asarray(label)
    if a.size == 0:
        raise UnetlabError(f"{who}: empty label image (shape {a.shape})")
    if a.ndim == 3 and a.shape[-1] <= 4 and a.shape[0] > 4:
        chans = a.shape[-1]
        if chans in (2, 4):  # grey+alpha / RGBA: ignore an opaque alpha channel
            alpha = a[..., -1]
            if alpha.min() != alpha.max():
                raise UnetlabError(f"{who}: label image has a varying alpha channel; "
                                   "save labels as single-channel integer images")
            a = a[..., :-1]
        if a.shape[-1] > 1 and not (a == a[..., :1]).all():
            raise UnetlabError(f"{who}: label image is colour (RGB); labels must be a single "
                               "channel of integer ids or a binary mask")
        a = a[..., 0]
    elif a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2:
        raise UnetlabError(f"{who}: label must be a 2D image, got shape {a.shape}")
    if a.size == 0:
        raise UnetlabError(f"{who}: label has zero size (shape {a.shape})")
    if a.dtype == bool:
        a = a.astype(np.uint8)
    if np.iscomplexobj(a) or not (np.issubdtype(a.dtype, np.integer)
                                  or np.issubdtype(a.dtype, np.floating)):
        raise UnetlabError(f"{who}: unsupported label type {a.dtype}")
    if np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise UnetlabError(f"{who}: label contains NaN or Inf values")
        if not (a == np.round(a)).all():
            raise UnetlabError(f"{who}: label has non-integer values; labels must be integer "
                               "ids or a binary mask")
    lo, hi = a.min(), a.max()
    if lo < 0:
        raise UnetlabError(f"{who}: label has negative values (min {lo}); use 0 for background "
                           "and positive instance ids")
    if hi > np.iinfo(np.int32).max:
        raise UnetlabError(f"{who}: label values exceed the int32 range (max {hi})")
    values = np.unique(a) if hi > 0 else np.array([0])
    if len(values) <= 2 and (values[0] == 0 or len(values) == 1):
        from skimage.measure import label as cc_label

        return cc_label(a != 0, connectivity=1, background=0).astype(np.int32)
    return a.astype(np.int32)


# ----------------------------------------------------------------------------------------------
# datasets
# ----------------------------------------------------------------------------------------------

def _natural_key(p: Path | str) -> list:
    s = p.name if isinstance(p, Path) else str(p)
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", s)]


def _stem(p: Path) -> str:
    name = p.name
    for suf in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return p.stem


def _is_image_file(p: Path) -> bool:
    return p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES


def _image_files(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if _is_image_file(p)), key=_natural_key)


def list_images(path: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Image files for prediction, in a stable (natural: t2 before t10) order.

    ``path`` is a file, a folder (its image files, not recursive; hidden files skipped), a glob
    pattern (``data/*.tif``), or a list of those. Raises :class:`UnetlabError` if a path does not
    exist or nothing is found.
    """
    if not isinstance(path, (str, os.PathLike)):
        out: list[Path] = []
        for p in path:
            out.extend(list_images(p))
        if not out:
            raise UnetlabError("no input images given")
        return out
    s = str(path)
    p = Path(path)
    if p.is_file():
        return [p]
    if p.is_dir():
        files = _image_files(p)
        if not files:
            raise UnetlabError(f"{p}: folder contains no images ({', '.join(IMAGE_SUFFIXES)})")
        return files
    if any(ch in s for ch in "*?["):
        files = sorted((Path(m) for m in _glob.glob(s) if _is_image_file(Path(m))),
                       key=lambda q: (str(q.parent), _natural_key(q)))
        if not files:
            raise UnetlabError(f"{s}: pattern matches no image files")
        return files
    raise UnetlabError(f"{p}: no such file or folder")


def _read_label(path: Path, max_pixels: int | None) -> np.ndarray:
    if path.suffix.lower() in _JPEG_SUFFIXES:
        raise UnetlabError(f"{path}: JPEG is lossy and cannot hold labels; use PNG or TIFF")
    return read_image(path, max_pixels=max_pixels, palette_indices=True)


def read_pair(image: str | os.PathLike, label: str | os.PathLike, channels: int | None = None,
              name: str | None = None, max_pixels: int | None = None) -> Sample:
    """Read one image file and its label file into a :class:`Sample` (layout d).

    The image is normalised with :func:`normalize_image`; the label converted with
    :func:`label_to_instances`. Image and label must have the same height and width.
    """
    ip, lp = Path(image), Path(label)
    img = to_channels_first(read_image(ip, max_pixels=max_pixels), channels, ip)
    lab = label_to_instances(_read_label(lp, max_pixels), lp)
    if img.shape[1:] != lab.shape:
        raise UnetlabError(f"{ip} and {lp}: image size {img.shape[1:]} differs from label size "
                           f"{lab.shape}")
    return Sample(normalize_image(img), lab, name=name if name is not None else _stem(ip),
                  path=str(ip))


def _read_stack_pair(ip: Path, lp: Path, channels: int | None,
                     max_pixels: int | None) -> list[Sample]:
    """Two multi-page TIFFs (S, H, W): one Sample per slice (layout b)."""
    vol = read_stack(ip)
    lab = read_stack(lp)
    if tuple(vol.shape) != tuple(lab.shape):
        raise UnetlabError(f"{ip} and {lp}: image stack shape {tuple(vol.shape)} differs from "
                           f"label stack shape {tuple(lab.shape)}")
    limit = MAX_PIXELS if max_pixels is None else int(max_pixels)
    _check_size(ip, vol.shape[1:], limit)
    stem = _stem(ip)
    out = []
    for i in range(vol.shape[0]):
        try:
            img = np.asarray(vol[i])
            lab_i = np.asarray(lab[i])
        except Exception as e:  # noqa: BLE001 - corrupt page
            raise UnetlabError(f"{ip}: cannot read slice {i} ({_first_line(e)})") from e
        img = _check_values(ip, img)
        inst = label_to_instances(lab_i, f"{lp} (slice {i})")
        out.append(Sample(normalize_image(img, channels), inst, name=f"{stem}_{i:03d}",
                          path=str(ip)))
    return out


def _pair_folders(img_dir: Path, lab_dir: Path, channels: int | None,
                  max_pixels: int | None) -> list[Sample]:
    """Layout (a): image and label folders matched by file stem."""
    images = _image_files(img_dir)
    labels = _image_files(lab_dir)
    if not images:
        raise UnetlabError(f"{img_dir}: folder contains no images")
    by_stem: dict[str, Path] = {}
    by_key: dict[str, list[Path]] = {}
    for lp in labels:
        s = _stem(lp)
        if s in by_stem:
            raise UnetlabError(f"{lp}: two label files have the stem {s!r} ({by_stem[s].name})")
        by_stem[s] = lp
        k = re.sub(r"[_\-.](mask|masks|label|labels|lbl|seg|gt)$", "", s, flags=re.IGNORECASE)
        by_key.setdefault(k, []).append(lp)
    used: set[Path] = set()
    pairs = []
    for ip in images:
        s = _stem(ip)
        lp = by_stem.get(s)
        if lp is None:
            cands = [c for c in by_key.get(s, []) if c not in used]
            if len(cands) > 1:
                raise UnetlabError(f"{ip}: several label files match it: "
                                   f"{', '.join(c.name for c in cands)}")
            lp = cands[0] if cands else None
        if lp is None:
            raise UnetlabError(f"{ip}: no label file with the same name in {lab_dir}")
        if lp in used:
            raise UnetlabError(f"{lp}: label file matches more than one image")
        used.add(lp)
        pairs.append((ip, lp))
    extra = [lp for lp in labels if lp not in used]
    if extra:
        raise UnetlabError(f"{extra[0]}: label file has no image with the same name in {img_dir}")
    return [read_pair(ip, lp, channels=channels, max_pixels=max_pixels) for ip, lp in pairs]


_IMAGE_DIRS = ("image", "images", "img", "imgs")
_LABEL_DIRS = ("label", "labels", "mask", "masks", "gt")


def _find_subdir(folder: Path, names: Sequence[str]) -> Path | None:
    found = [d for d in folder.iterdir() if d.is_dir() and d.name.lower() in names]
    if len(found) > 1:
        raise UnetlabError(f"{folder}: ambiguous sub-folders "
                           f"{', '.join(sorted(d.name for d in found))}; keep one")
    return found[0] if found else None


def _find_file(folder: Path, stem: str) -> Path | None:
    for suf in _TIFF_SUFFIXES:
        for cand in (folder / f"{stem}{suf}", folder / f"{stem}{suf.upper()}"):
            if cand.is_file():
                return cand
    return None


def _ctc_sequences(folder: Path) -> list[tuple[Path, Path]]:
    """(image folder, SEG folder) pairs of a CTC dataset folder or of one sequence folder."""
    def seg_of(seq: Path) -> Path | None:
        seg = seq.parent / f"{seq.name}_GT" / "SEG"
        return seg if seg.is_dir() else None

    if re.fullmatch(r"\d+", folder.name) and seg_of(folder) is not None:
        return [(folder, seg_of(folder))]  # type: ignore[list-item]
    out = []
    for d in sorted(folder.iterdir(), key=_natural_key):
        if d.is_dir() and re.fullmatch(r"\d+", d.name):
            seg = seg_of(d)
            if seg is not None:
                out.append((d, seg))
    return out


def _ctc_frame_complete(seg: np.ndarray, tra_path: Path | None,
                        max_pixels: int | None) -> bool:
    """True if every TRA marker of the frame overlaps an annotated SEG cell."""
    if tra_path is None:
        return False
    tra = read_image(tra_path, max_pixels=max_pixels)
    if tra.shape != seg.shape:
        raise UnetlabError(f"{tra_path}: marker image shape {tra.shape} differs from the "
                           f"segmentation's {seg.shape}")
    markers = np.unique(tra[tra > 0])
    covered = np.unique(tra[(tra > 0) & (seg > 0)])
    return len(np.setdiff1d(markers, covered)) == 0


def _read_ctc(sequences: list[tuple[Path, Path]], channels: int | None, ignore_unannotated: bool,
              margin: float, max_pixels: int | None) -> list[Sample]:
    """Layout (c): Cell Tracking Challenge, 2D annotated frames only."""
    from scipy import ndimage as ndi

    out: list[Sample] = []
    n_3d = 0
    for seq, seg_dir in sequences:
        tra_dir = seg_dir.parent / "TRA"
        segs = []
        for f in sorted(seg_dir.iterdir(), key=_natural_key):
            m = re.fullmatch(r"man_seg(\d+)\.tiff?", f.name, flags=re.IGNORECASE)
            if m:
                segs.append((m.group(1), f))
            elif re.fullmatch(r"man_seg_?\d+_\d+\.tiff?", f.name, flags=re.IGNORECASE):
                n_3d += 1
        for t, seg_path in segs:
            img_path = _find_file(seq, f"t{t}")
            if img_path is None:
                raise UnetlabError(f"{seg_path}: no image t{t}.tif in {seq}")
            raw = read_image(img_path, max_pixels=max_pixels)
            img = to_channels_first(raw, channels, img_path)
            inst = label_to_instances(read_image(seg_path, max_pixels=max_pixels), seg_path)
            if img.shape[1:] != inst.shape:
                raise UnetlabError(f"{img_path} and {seg_path}: image size {img.shape[1:]} "
                                   f"differs from label size {inst.shape}")
            if ignore_unannotated:
                tra_path = _find_file(tra_dir, f"man_track{t}") if tra_dir.is_dir() else None
                if not _ctc_frame_complete(inst, tra_path, max_pixels):
                    if inst.max() > 0:
                        dist = ndi.distance_transform_edt(inst == 0)
                        inst = np.where((inst == 0) & (dist > margin), -1, inst).astype(np.int32)
                    else:
                        inst = np.full_like(inst, -1)
            out.append(Sample(normalize_image(img), inst, name=f"{seq.name}/t{t}",
                              path=str(img_path)))
    if not out:
        where = sequences[0][1] if sequences else "?"
        extra = f" ({n_3d} 3D slice annotations are not supported)" if n_3d else ""
        raise UnetlabError(f"{where}: no 2D man_segTTT.tif annotations found{extra}")
    return out


def read_dataset(path: str | os.PathLike, labels: str | os.PathLike | None = None,
                 channels: int | None = None, *, ctc_ignore_unannotated: bool = True,
                 ctc_margin: float = 10.0, max_pixels: int | None = None) -> list[Sample]:
    """Read a training set into normalised :class:`Sample` objects (layouts: module docstring).

    path:     a dataset folder (layouts a, b, c), an image folder (with ``labels`` = a label
              folder), or an image / stack file (with ``labels`` = its label file / stack).
    labels:   explicit label folder or file, see above.
    channels: None keeps the images' channels; 1 = grey; k = first k / repeated grey.
    ctc_ignore_unannotated, ctc_margin: partial CTC annotation (module docstring).
    max_pixels: per-file size limit (default :data:`MAX_PIXELS`).
    Returns the samples in a stable (natural file-name) order. Raises :class:`UnetlabError`
    naming the file for every problem (missing partner, size mismatch, bad file, empty folder).
    """
    p = Path(path)
    if not p.exists():
        raise UnetlabError(f"{p}: no such file or folder")
    if labels is not None:
        lp = Path(labels)
        if not lp.exists():
            raise UnetlabError(f"{lp}: no such file or folder")
        if p.is_dir() and lp.is_dir():
            return _pair_folders(p, lp, channels, max_pixels)
        if p.is_dir() or lp.is_dir():
            raise UnetlabError(f"{p} and {lp}: give two folders or two files")
        if lp.suffix.lower() in _TIFF_SUFFIXES:
            import tifffile

            try:
                with tifffile.TiffFile(lp) as tf:
                    lshape = tuple(tf.series[0].shape) if tf.series else ()
            except Exception as e:  # noqa: BLE001
                raise UnetlabError(f"{lp}: cannot read TIFF ({_first_line(e)})") from e
            if len(lshape) == 3 and not (lshape[-1] <= 4 < lshape[0]):
                if p.suffix.lower() not in _TIFF_SUFFIXES:
                    raise UnetlabError(f"{lp}: is a stack of {lshape[0]} labels but {p} is not "
                                       "a TIFF stack")
                return _read_stack_pair(p, lp, channels, max_pixels)
        return [read_pair(p, lp, channels=channels, max_pixels=max_pixels)]
    if p.is_file():
        raise UnetlabError(f"{p}: is a single file; give its labels too "
                           "(read_dataset(image, labels=label) / --labels)")
    entries = [e for e in p.iterdir() if not e.name.startswith(".")]
    if not entries:
        raise UnetlabError(f"{p}: folder is empty")
    img_dir = _find_subdir(p, _IMAGE_DIRS)
    lab_dir = _find_subdir(p, _LABEL_DIRS)
    if img_dir is not None and lab_dir is not None:
        return _pair_folders(img_dir, lab_dir, channels, max_pixels)
    if img_dir is not None:
        raise UnetlabError(f"{p}: has {img_dir.name}/ but no label folder "
                           f"({'/, '.join(_LABEL_DIRS)}/)")
    vol = _find_file(p, "train-volume")
    lab = _find_file(p, "train-labels")
    if vol is not None and lab is not None:
        return _read_stack_pair(vol, lab, channels, max_pixels)
    if vol is not None or lab is not None:
        have = vol if vol is not None else lab
        raise UnetlabError(f"{have}: its partner train-{'labels' if vol else 'volume'}.tif "
                           f"is missing in {p}")
    seqs = _ctc_sequences(p)
    if seqs:
        return _read_ctc(seqs, channels, ctc_ignore_unannotated, ctc_margin, max_pixels)
    raise UnetlabError(
        f"{p}: unknown dataset layout; expected image/ + label/ folders, train-volume.tif + "
        "train-labels.tif, or a Cell Tracking Challenge folder (01/, 01_GT/SEG/)")


# ----------------------------------------------------------------------------------------------
# tile sampler
# ----------------------------------------------------------------------------------------------

def reflect_indices(start: int, length: int, n: int) -> np.ndarray:
    """Indices ``start .. start+length-1`` folded into [0, n) by mirroring without repeating
    the edge pixel (``numpy.pad(mode="reflect")``, repeated as often as needed; period 2(n-1)).
    For n = 1 every index is 0."""
    from .tiling import reflect_indices as _reflect

    return _reflect(start, start + length, n)


def _pair(v: int | Sequence[int], what: str) -> tuple[int, int]:
    if isinstance(v, (int, np.integer)):
        t = (int(v), int(v))
    else:
        t = tuple(int(x) for x in v)  # type: ignore[assignment]
        if len(t) != 2:
            raise UnetlabError(f"{what}: expected one size or (height, width), got {v!r}")
    if min(t) < 1:
        raise UnetlabError(f"{what}: sizes must be >= 1, got {v!r}")
    return t  # type: ignore[return-value]


class TileSampler:
    """Random training tiles: network input with mirrored context, targets of the centre crop.

    samples:    the training :class:`Sample` list.
    tile_size:  T, the network input size (int or (Th, Tw)).
    out_size:   O, the network output size (O = T for "same" padding; T - 2·context for "valid",
                e.g. 572 → 388 for the paper's network). T - O must be even.
    targets_fn: ``targets_fn(instances (H, W) int32) -> (classes (H, W) uint8 with 255 = ignore,
                weights (H, W) float32)``, e.g. ``functools.partial(weights.training_targets,
                w0=10, sigma=5)``. Computed once per sample (lazily, cached). Pixels whose instance
                id is -1 are forced to class 255, weight 0 afterwards.
    augment:    optional ``augment(image (C,T,T), classes (T,T), weights (T,T), rng) -> same``
                applied to the FULL input-sized tile before the centre crop.
    weighting:  "area" (default): a sample is picked with probability proportional to its
                area H·W, so every pixel of the data set is about equally likely to be trained
                on; "uniform": every sample equally likely.

    :meth:`sample` returns ``(image (C, T, T) float32, classes (O, O) uint8, weights (O, O)
    float32)``. The output window (O×O) is placed uniformly at random among the positions inside
    the image (or, where the image is smaller than O, among the positions that contain the image);
    the input tile adds ``(T - O) / 2`` pixels of context on each side, taken from the image where
    it exists and mirrored (``numpy.pad(mode="reflect")``, repeated) where it does not — the
    paper's overlap-tile strategy (Sec. 2, Fig. 2). Targets outside the image are ignored (class
    255, weight 0); labels are never mirrored. Deterministic given ``rng``; picklable if
    ``targets_fn`` and ``augment`` are.
    """

    def __init__(self, samples: Sequence[Sample], tile_size: int | Sequence[int],
                 out_size: int | Sequence[int], targets_fn: Callable[[np.ndarray], Any],
                 augment: Callable | None = None, weighting: str = "area"):
        self.samples = list(samples)
        if not self.samples:
            raise UnetlabError("tile sampler: no training samples")
        for s in self.samples:
            if not isinstance(s, Sample):
                raise TypeError(f"TileSampler expects Sample objects, got {type(s).__name__}")
        chans = {s.channels for s in self.samples}
        if len(chans) != 1:
            raise UnetlabError(f"training samples have different channel counts {sorted(chans)}")
        self.tile_size = _pair(tile_size, "tile_size")
        self.out_size = _pair(out_size, "out_size")
        ctx = []
        for t, o in zip(self.tile_size, self.out_size):
            if o > t or (t - o) % 2:
                raise UnetlabError(f"tile_size {t} and out_size {o}: the output must fit in the "
                                   "tile with equal context on both sides (T - O even, >= 0)")
            ctx.append((t - o) // 2)
        self.context = (ctx[0], ctx[1])
        self.targets_fn = targets_fn
        self.augment = augment
        if weighting not in ("area", "uniform"):
            raise UnetlabError(f"weighting: must be 'area' or 'uniform', got {weighting!r}")
        self.weighting = weighting
        areas = np.array([s.shape[0] * s.shape[1] for s in self.samples], dtype=np.float64)
        p = areas if weighting == "area" else np.ones_like(areas)
        self.probabilities = p / p.sum()
        self._targets: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(self.samples)

    @classmethod
    def for_network(cls, samples: Sequence[Sample], net: Any, tile_size: int,
                    targets_fn: Callable, augment: Callable | None = None,
                    **kw: Any) -> "TileSampler":
        """Sampler whose out_size is ``net.output_size(tile_size)`` (a :class:`unetlab.UNet`)."""
        return cls(samples, tile_size, net.output_size(tile_size), targets_fn, augment, **kw)

    def __len__(self) -> int:
        return len(self.samples)

    def targets(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(classes uint8, weights float32) of sample ``i``, computed once."""
        cached = self._targets[i]
        if cached is not None:
            return cached
        s = self.samples[i]
        classes, weights = self.targets_fn(s.instances)
        classes = np.asarray(classes)
        weights = np.asarray(weights, dtype=np.float32)
        if classes.shape != s.shape or weights.shape != s.shape:
            raise ValueError(f"targets_fn returned shapes {classes.shape}, {weights.shape} for "
                             f"sample {s.name!r} of shape {s.shape}")
        classes = classes.astype(np.uint8, copy=True)
        weights = weights.copy()
        ignored = s.instances < 0
        if ignored.any():
            classes[ignored] = IGNORE_INDEX
            weights[ignored] = 0.0
        cached = (classes, weights)
        self._targets[i] = cached
        return cached

    def precompute(self) -> "TileSampler":
        """Compute every sample's targets now (e.g. before forking data-loader workers)."""
        for i in range(len(self.samples)):
            self.targets(i)
        return self

    def sample(self, rng: np.random.Generator | int | None = None, index: int | None = None):
        """One random tile: (image (C, T, T) float32, classes (O, O) uint8, weights (O, O) f32).

        ``index`` fixes the sample (default: drawn by ``weighting``)."""
        rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
        i = int(rng.choice(len(self.samples), p=self.probabilities)) if index is None else index
        s = self.samples[i]
        h, w = s.shape
        oh, ow = self.out_size
        y0 = int(rng.integers(min(0, h - oh), max(0, h - oh) + 1))
        x0 = int(rng.integers(min(0, w - ow), max(0, w - ow) + 1))
        return self.tile_at(i, y0, x0, rng)

    def tile_at(self, index: int, y0: int, x0: int, rng: np.random.Generator | None = None):
        """The tile whose OUTPUT window starts at (y0, x0) of sample ``index`` (may be negative or
        extend past the image). ``rng`` is passed to ``augment``."""
        s = self.samples[index]
        classes, weights = self.targets(index)
        h, w = s.shape
        (th, tw), (oh, ow), (ch, cw) = self.tile_size, self.out_size, self.context
        iy = reflect_indices(y0 - ch, th, h)
        ix = reflect_indices(x0 - cw, tw, w)
        image = s.image[:, iy[:, None], ix[None, :]]
        if self.augment is not None:
            ty, tx = y0 - ch, x0 - cw  # targets for the full T×T window
            cls_t, w_t = _window(classes, weights, ty, tx, th, tw)
            image, cls_t, w_t = self.augment(image, cls_t, w_t, rng)
            image = np.ascontiguousarray(image, dtype=np.float32)
            cls_out = np.ascontiguousarray(np.asarray(cls_t)[ch:ch + oh, cw:cw + ow],
                                           dtype=np.uint8)
            w_out = np.ascontiguousarray(np.asarray(w_t)[ch:ch + oh, cw:cw + ow],
                                         dtype=np.float32)
            return image, cls_out, w_out
        cls_out, w_out = _window(classes, weights, y0, x0, oh, ow)
        return np.ascontiguousarray(image, dtype=np.float32), cls_out, w_out


def _window(classes: np.ndarray, weights: np.ndarray, y0: int, x0: int, hh: int,
            ww: int) -> tuple[np.ndarray, np.ndarray]:
    """classes/weights of the window [y0, y0+hh) × [x0, x0+ww); outside the image 255 / 0."""
    h, w = classes.shape
    c = np.full((hh, ww), IGNORE_INDEX, dtype=np.uint8)
    wt = np.zeros((hh, ww), dtype=np.float32)
    sy0, sy1 = max(y0, 0), min(y0 + hh, h)
    sx0, sx1 = max(x0, 0), min(x0 + ww, w)
    if sy1 > sy0 and sx1 > sx0:
        c[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = classes[sy0:sy1, sx0:sx1]
        wt[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = weights[sy0:sy1, sx0:sx1]
    return c, wt
