"""Images opened lazily for prediction, in one canonical layout (S, C, H, W).

:func:`open_image` opens a TIFF (series 0, honouring its axes: ``YXS`` = channels last,
``SYX`` = channels first, pages = slices), a zarr array, an OME-Zarr group (multiscale level 0,
its axis names), a PNG/JPEG/other picture (read whole), or an array already in memory (numpy,
memmap, zarr, dask). The result, :class:`ImageSource`, is a picklable array-like of shape
(S, C, H, W) that reads only the block it is indexed with; ``stack`` says whether the input was
a stack of slices (the output then keeps the slice axis).

:class:`NormalizedView` is the same source normalised per (slice, channel) as training does
(Sec. 3 trains on normalised intensities): ``(x − lo) / (hi − lo)`` with the 1st/99.8th
percentiles of a regular subsample (:func:`unetlab.data.subsample_step`,
:func:`unetlab.data.sample_stats`), computed in float64 so that finite extremes stay finite.

Volumes (for a 3D network, Çiçek et al. 2016): :func:`volume_source` reads an array as one
volume (Z, Y, X) or (C, Z, Y, X) — an :class:`ImageSource` whose slice axis is z — and
:class:`VolumeView` presents a source as the (C, Z, Y, X) float32 array the network reads,
normalised per channel with percentiles of the *whole volume* (:func:`volume_stats`: a regular
3-D subsample of about 2^22 voxels), not per slice: a volume is one image.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import UnetlabError

__all__ = ["ImageSource", "NormalizedView", "open_image", "from_array", "canonical_axes",
           "lazy_tiff", "source_stats", "normalize_block", "LAZY_PIXELS", "VolumeView",
           "volume_source", "volume_stats"]

#: TIFF images with more pixels than this are read lazily (memmap or zarr over the TIFF).
LAZY_PIXELS = 1 << 26
#: tifffile / OME axis letters that hold channels, and letters of slice-like axes
_CHANNEL_AXES = ("s", "c")


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return (s.splitlines()[0] if s else type(e).__name__)[:200]


# ----------------------------------------------------------------------------- layout
def canonical_axes(shape: Sequence[int], names: Sequence[str] | None, in_channels: int,
                   where: str) -> tuple[tuple[int | None, int | None, int, int], bool]:
    """Which axis of an array of ``shape`` is (slice, channel, y, x), and whether it is a stack.

    ``names``: one letter per axis ("y", "x", "s"/"c" for channels, anything else a slice
    axis: "z", "t", "q", "i"); None or "q"/"i" (tifffile's "unknown") fall back to the rule
    of :func:`unetlab.predict.image_layout` (a 3-D array is a stack for one-channel networks,
    channels when its first axis equals the network's channels > 1). Axes other than these
    must have length 1. Returns ``((s, c, y, x), stack)``, None for an absent axis.
    """
    shape = tuple(int(v) for v in shape)
    if names is not None and len(names) == len(shape) and "y" in names and "x" in names:
        names = [str(n).lower() for n in names]
        y, x = names.index("y"), names.index("x")
        c = next((i for i, n in enumerate(names) if n in _CHANNEL_AXES), None)
        rest = [i for i in range(len(shape)) if i not in (y, x, c)]
        unknown = [i for i in rest if names[i] in ("q", "i")]
        if c is None and len(rest) == 1 and unknown and shape[rest[0]] == in_channels > 1:
            c, rest = rest[0], []
        big = [i for i in rest if shape[i] > 1]
        if len(big) > 1:
            raise UnetlabError(f"{where}: more than one slice axis besides y, x (axes "
                               f"{''.join(names).upper()}, shape {shape}); select one first")
        s = big[0] if big else (rest[0] if rest else None)
        return (s, c, y, x), bool(big)
    from types import SimpleNamespace

    from .predict import image_layout

    try:
        stack, _ = image_layout(SimpleNamespace(in_channels=in_channels, num_classes=1), shape)
    except UnetlabError as e:
        raise UnetlabError(f"{where}: {e}") from None
    n = len(shape)
    if n == 2:
        return (None, None, 0, 1), False
    if n == 3:
        return ((0, None, 1, 2), True) if stack else ((None, 0, 1, 2), False)
    return (0, 1, 2, 3), True


class ImageSource:
    """A lazy (S, C, H, W) view of ``raw`` (any array-like with basic slicing) through the axis
    map of :func:`canonical_axes`; axes of ``raw`` not in the map have length 1 and are read
    at 0. Indexing returns numpy arrays; decoder failures become one-line errors naming
    ``path``. Picklable when ``raw`` is."""

    def __init__(self, raw, axes: tuple, stack: bool, path: str | None = None,
                 description: dict | None = None):
        self.raw, self.axes, self.stack, self.path = raw, tuple(axes), bool(stack), path
        rs = tuple(int(v) for v in raw.shape)
        self.shape = tuple(1 if a is None else rs[a] for a in self.axes)
        self.ndim, self.dtype = 4, np.dtype(getattr(raw, "dtype", np.float32))
        self.description = dict(description or {"kind": "array"},
                                shape=list(rs), dtype=str(self.dtype))

    def __getitem__(self, key) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (4 - len(key))
        raw_key = [0] * len(self.raw.shape)
        for ax, k in zip(self.axes, key):
            if ax is not None:
                raw_key[ax] = k
        order = sorted((ax, i) for i, ax in enumerate(self.axes)
                       if ax is not None and not isinstance(key[i], (int, np.integer)))
        kept = [i for _, i in order]           # canonical axes read, in raw order
        block = self._read(tuple(raw_key))
        want = [i for i in range(4) if not isinstance(key[i], (int, np.integer))]
        block = np.transpose(block, [kept.index(i) for i in want if i in kept])
        for pos, i in enumerate(want):
            if i not in kept:                  # an absent axis indexed with a slice
                block = np.expand_dims(block, pos)
        return block

    def _read(self, key):
        try:
            return np.asarray(self.raw[key])
        except UnetlabError:
            raise
        except Exception as e:  # noqa: BLE001 - any decoder failure is a bad file
            who = self.path or "input array"
            raise UnetlabError(f"{who}: cannot decode the image data ({type(e).__name__}: "
                               f"{_first_line(e)})") from None

    def to_dask(self, chunks, name: str | None = None):
        """The source as a dask array with ``chunks``; a dask ``raw`` stays a graph."""
        import dask.array as da

        if isinstance(self.raw, da.Array):
            x = self.raw[tuple(slice(None) if a in self.axes else 0
                               for a in range(self.raw.ndim))]
            present = sorted(a for a in self.axes if a is not None)
            x = x.transpose([present.index(a) for a in self.axes if a is not None])
            for i, a in enumerate(self.axes):
                if a is None:
                    x = da.expand_dims(x, i)
            return x.rechunk(chunks)
        return da.from_array(self, chunks=chunks, name=name or False, asarray=False,
                             meta=np.empty((0, 0, 0, 0), self.dtype))


# ----------------------------------------------------------------------------- opening
class _LazyTiff:
    """A picklable, lazily opened array over series 0, level 0 of a TIFF file: a memmap when
    the data are contiguous, else zarr over tifffile; opened in the process that reads."""

    def __init__(self, path: str, shape: tuple, dtype):
        self.path, self.shape, self.dtype = str(path), tuple(shape), np.dtype(dtype)
        self.ndim = len(self.shape)
        self._arr = None

    def _open(self):
        if self._arr is None:
            import tifffile

            try:
                self._arr = tifffile.memmap(self.path, mode="r", series=0)
            except Exception:  # noqa: BLE001 - compressed or not contiguous
                import zarr

                self._arr = zarr.open(tifffile.imread(self.path, aszarr=True, series=0,
                                                      level=0), mode="r")
        return self._arr

    def __getitem__(self, key):
        return np.asarray(self._open()[key])

    def __getstate__(self):
        return dict(self.__dict__, _arr=None)


def _tiff_series(path: Path) -> tuple[tuple[int, ...], Any, str]:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            series = tf.series
            if not series:
                raise UnetlabError(f"{path}: TIFF file contains no images")
            if len(series) > 1:
                raise UnetlabError(f"{path}: TIFF file holds {len(series)} image series of "
                                   "different shapes; save each as its own file")
            s = series[0]
            return tuple(int(v) for v in s.shape), np.dtype(s.dtype), str(s.axes)
    except UnetlabError:
        raise
    except Exception as e:  # noqa: BLE001 - tifffile raises many types
        raise UnetlabError(f"{path}: cannot read TIFF ({_first_line(e)})") from None


def lazy_tiff(path: str | os.PathLike):
    """Series 0 of a TIFF as a lazy, picklable array (``shape``, ``dtype``, basic slicing
    returning numpy): a memmap when the data are contiguous, else zarr over tifffile. Refuses
    files with several series and empty images with a one-line error naming the file."""
    path = Path(path)
    shape, dtype, _ = _tiff_series(path)
    if any(v == 0 for v in shape):
        raise UnetlabError(f"{path}: image has zero size (shape {shape})")
    return _LazyTiff(str(path), shape, dtype)


def _open_tiff(path: Path, in_channels: int, lazy_pixels: int) -> ImageSource:
    from .data import MAX_PIXELS, check_size, read_image

    shape, dtype, axes = _tiff_series(path)
    if any(v == 0 for v in shape):
        raise UnetlabError(f"{path}: image has zero size (shape {shape})")
    check_size(path, shape, MAX_PIXELS)  # a decompression bomb never reaches the decoder
    if dtype.kind not in "biuf":
        raise UnetlabError(f"{path}: unsupported pixel type {dtype}")
    names = [a.lower() for a in axes] if len(axes) == len(shape) else None
    amap, stack = canonical_axes(shape, names, in_channels, str(path))
    if int(np.prod(shape)) > lazy_pixels:
        raw = _LazyTiff(str(path), shape, dtype)
    else:
        raw = read_image(path).reshape(shape)
    return ImageSource(raw, amap, stack, str(path),
                       {"kind": "path", "path": str(path.resolve())})


def _ome_level0(group, where: str):
    """(array, axis letters or None) of OME-Zarr multiscale level 0, or of a group's only
    array."""
    attrs = dict(group.attrs)
    ms = attrs.get("multiscales") or (attrs.get("ome") or {}).get("multiscales")
    if ms:
        try:
            ds_path = ms[0]["datasets"][0]["path"]
            axes = ms[0].get("axes")
        except (KeyError, IndexError, TypeError):
            raise UnetlabError(f"{where}: malformed OME-Zarr 'multiscales' metadata") from None
        names = [a["name"] if isinstance(a, dict) else str(a) for a in axes] if axes else None
        try:
            return group[ds_path], names
        except KeyError:
            raise UnetlabError(f"{where}: OME-Zarr level 0 dataset {ds_path!r} is "
                               "missing") from None
    arrays = [k for k, _ in group.arrays()]
    if len(arrays) == 1:
        return group[arrays[0]], None
    raise UnetlabError(f"{where}: a zarr group without OME-Zarr 'multiscales' metadata; point "
                       f"to the array inside it (arrays: {', '.join(sorted(arrays)) or 'none'})")


def _open_zarr(node, where: str):
    import zarr

    if isinstance(node, zarr.Group):
        return _ome_level0(node, where)
    return node, None


def open_image(source, in_channels: int = 1, *, lazy_pixels: int | None = None) -> ImageSource:
    """Open ``source`` as an :class:`ImageSource` (S, C, H, W) for a network with
    ``in_channels`` input channels.

    ``source``: a path to a TIFF (series 0; several series are refused), a zarr folder (array,
    or OME-Zarr level 0), a PNG/JPEG/BMP picture (read whole, channels last), or an array
    (numpy, memmap, zarr array or group, dask; layout as :func:`unetlab.predict.image_layout`).
    TIFFs of more than ``lazy_pixels`` (default :data:`LAZY_PIXELS`) pixels stay on disk and
    are read block by block. Bad files raise :class:`UnetlabError` naming the file."""
    if isinstance(source, ImageSource):
        return source
    if not isinstance(source, (str, os.PathLike)):
        return from_array(source, in_channels)
    path = Path(source)
    if not path.exists():
        raise UnetlabError(f"{path}: no such file or folder")
    lazy = LAZY_PIXELS if lazy_pixels is None else int(lazy_pixels)
    if path.suffix.lower() in (".tif", ".tiff"):
        return _open_tiff(path, in_channels, lazy)
    desc = {"kind": "path", "path": str(path.resolve())}
    if path.is_dir():
        import zarr

        try:
            node = zarr.open(str(path), mode="r")
        except Exception as e:  # noqa: BLE001
            raise UnetlabError(f"{path}: not a readable zarr store ({_first_line(e)})") from None
        arr, names = _open_zarr(node, str(path))
        amap, stack = canonical_axes(arr.shape, names, in_channels, str(path))
        return ImageSource(arr, amap, stack, str(path), desc)
    from .data import read_image, to_channels_first

    arr = to_channels_first(read_image(path), None, path)
    amap, stack = canonical_axes(arr.shape, ["c", "y", "x"], in_channels, str(path))
    return ImageSource(arr, amap, stack, str(path), desc)


def from_array(array, in_channels: int = 1) -> ImageSource:
    """An :class:`ImageSource` over an array in memory or on disk (numpy, memmap, torch,
    zarr array or OME-Zarr group, dask, h5py), laid out as :func:`unetlab.predict.image_layout`
    says: (H, W), (C, H, W), (S, H, W) or (S, C, H, W)."""
    names = None
    try:
        import zarr

        if isinstance(array, (zarr.Array, zarr.Group)):
            array, names = _open_zarr(array, "zarr input")
    except ImportError:  # pragma: no cover
        pass
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    if not hasattr(array, "shape") or not hasattr(array, "__getitem__"):
        array = np.asarray(array)
    dtype = np.dtype(getattr(array, "dtype", np.float32))
    if dtype.kind not in "biuf":
        raise UnetlabError(f"input array: unsupported dtype {dtype}")
    amap, stack = canonical_axes(array.shape, names, in_channels, "input array")
    return ImageSource(array, amap, stack)


# ----------------------------------------------------------------------------- normalisation
def source_stats(source: ImageSource) -> np.ndarray:
    """(low, high) of every (slice, channel) of ``source``: (S, C, 2) float64, from the same
    regular subsample and percentiles as :func:`unetlab.data.normalization_stats`."""
    from .data import sample_stats, subsample_step

    S, C, H, W = source.shape
    st = subsample_step(H, W)
    return np.stack([sample_stats(np.asarray(source[s, :, ::st, ::st], dtype=np.float64))
                     for s in range(S)])


def normalize_block(block: np.ndarray, stats: np.ndarray) -> np.ndarray:
    """``(block − lo) / (hi − lo)`` per channel, computed in float64 and returned as float32;
    ``block`` (C, h, w), ``stats`` (C, 2); a constant channel (hi ≤ lo) becomes zeros."""
    st = np.asarray(stats, dtype=np.float64)
    lo, hi = st[:, 0], st[:, 1]
    ok = hi > lo
    scale = np.where(ok, 1.0 / np.where(ok, hi - lo, 1.0), 0.0)
    b = np.asarray(block, dtype=np.float64)
    shape = (-1,) + (1,) * (b.ndim - 1)
    return ((b - lo.reshape(shape)) * scale.reshape(shape)).astype(np.float32)


class NormalizedView:
    """``source`` (S, C, H, W) normalised per (slice, channel) with ``stats`` (S, C, 2)
    (default :func:`source_stats`); float32, read lazily. Index with a slice number first."""

    def __init__(self, source: ImageSource, stats: np.ndarray | None = None):
        self.source = source
        self.stats = source_stats(source) if stats is None else np.asarray(stats, np.float64)
        self.shape, self.ndim, self.dtype = source.shape, 4, np.dtype(np.float32)
        self.stack, self.path = source.stack, source.path
        if self.stats.shape != (source.shape[0], source.shape[1], 2):
            raise UnetlabError(f"normalize: stats must have shape ({source.shape[0]}, "
                               f"{source.shape[1]}, 2), got {self.stats.shape}")

    def __getitem__(self, key) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        s, c, ys, xs = key + (slice(None),) * (4 - len(key))
        if not isinstance(s, (int, np.integer)):
            raise TypeError("index a normalised view with a slice number first")
        one = isinstance(c, (int, np.integer))
        cs = slice(int(c), int(c) + 1) if one else c
        out = normalize_block(self.source[s, cs, ys, xs], self.stats[int(s)][cs])
        return out[0] if one else out


# ----------------------------------------------------------------------------- volumes
def volume_source(array, in_channels: int = 1) -> ImageSource:
    """An :class:`ImageSource` (Z, C, Y, X) over one volume for a 3D network: an
    :class:`ImageSource` as it is (from :func:`open_image`: its slice axis is z); an array
    (Z, Y, X) (one channel) or (C, Z, Y, X) (C = ``in_channels``, channels first). Other
    layouts raise :class:`UnetlabError` naming the shape."""
    if isinstance(array, ImageSource):
        return array
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    if not hasattr(array, "shape") or not hasattr(array, "__getitem__"):
        array = np.asarray(array)
    shape = tuple(int(v) for v in array.shape)
    dtype = np.dtype(getattr(array, "dtype", np.float32))
    if dtype.kind not in "biuf":
        raise UnetlabError(f"input volume: unsupported dtype {dtype}")
    if len(shape) == 3 and in_channels == 1:
        return ImageSource(array, (0, None, 1, 2), True)
    if len(shape) == 4 and shape[0] == in_channels:
        return ImageSource(array, (1, 0, 2, 3), True)
    want = "(Z, Y, X) or (1, Z, Y, X)" if in_channels == 1 else f"({in_channels}, Z, Y, X)"
    raise UnetlabError(f"input volume of shape {shape}: a 3D model with {in_channels} input "
                       f"channel(s) expects {want}")


def volume_stats(source: ImageSource) -> np.ndarray:
    """(low, high) of every channel of a volume source (Z, C, Y, X) over the whole volume:
    (C, 2) float64, the percentiles of :func:`unetlab.data.sample_stats` on the regular
    subsample ``[::s, :, ::s, ::s]`` (about 2^22 voxels per channel) that training's
    :func:`unetlab.data.normalize_volume` reads — the same statistics, read lazily."""
    from .data import sample_stats

    Z, C, Y, X = source.shape
    step = max(1, int(np.ceil((np.prod((Z, Y, X), dtype=np.float64) / (1 << 22)) ** (1 / 3))))
    sub = np.asarray(source[::step, :, ::step, ::step], dtype=np.float64)
    return sample_stats(np.moveaxis(sub, 1, 0))


class VolumeView:
    """A volume ``source`` (Z, C, Y, X) seen as the lazy (C, Z, Y, X) float32 array a 3D
    network reads: indexing reads only the block asked for (basic slices), normalised per
    channel with ``stats`` (C, 2) — default :func:`volume_stats` — or as it is with
    ``stats=False``."""

    def __init__(self, source: ImageSource, stats=None):
        Z, C, Y, X = source.shape
        self.source, self.path = source, source.path
        self.shape, self.ndim, self.dtype = (C, Z, Y, X), 4, np.dtype(np.float32)
        if stats is False:
            self.stats = None
        else:
            self.stats = volume_stats(source) if stats is None else \
                np.asarray(stats, np.float64).reshape(-1, 2)
            if self.stats.shape != (C, 2):
                raise UnetlabError(f"normalize: stats must have shape ({C}, 2) for a volume "
                                   f"with {C} channel(s), got {self.stats.shape}")

    def __getitem__(self, key) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        c, z, y, x = key + (slice(None),) * (4 - len(key))
        one = isinstance(c, (int, np.integer))
        cs = slice(int(c), int(c) + 1) if one else c
        block = self.source[z, cs, y, x]
        block = np.moveaxis(block, 1, 0) if not isinstance(z, (int, np.integer)) else block
        if self.stats is None:
            out = np.asarray(block, dtype=np.float32)
        else:
            out = normalize_block(block, self.stats[cs])
        return out[0] if one else out
