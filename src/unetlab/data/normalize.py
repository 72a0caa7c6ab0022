"""Channel layout and the intensity normalisation shared by training and prediction.

Each channel is scaled by its own robust range: ``(x - p_lo) / (p_hi - p_lo)`` with ``p_lo``,
``p_hi`` the 1st and 99.8th percentiles of that channel in the whole image (no clipping). This is
the percentile normalisation used for fluorescence (CSBDeep / StarDist); it is insensitive to
a few hot pixels and to the storage dtype (8-bit EM and 12-in-16-bit fluorescence look alike
afterwards, most values in [0, 1]). If the percentiles coincide, min and max are used; a constant
channel becomes 0. Percentiles of images with more than 2^22 values per channel are estimated on
a regular subsample (deterministic). Training and prediction must both call this function (or
:func:`normalization_stats` once for a whole image, then :func:`normalize_image` with ``stats`` on
its tiles) so the network sees the same intensities.
"""
from __future__ import annotations

import os

import numpy as np

from ..errors import UnetlabError

__all__ = [
    "to_channels_first", "subsample_step", "sample_stats", "normalization_stats",
    "normalize_image", "normalize_volume",
]


_PERCENTILES = (1.0, 99.8)
_SUBSAMPLE_LIMIT = 2**22
_F32_MAX = float(np.finfo(np.float32).max)


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
    a tile exactly like the whole image. The arithmetic is float64 and the result is clipped to the
    float32 range, so any finite input gives a finite output. An (H, W) image returns (1, H, W).
    """
    a = to_channels_first(img, channels)
    if stats is None:
        stats = normalization_stats(a)
    return _apply_stats(a, stats)


def normalize_volume(vol: np.ndarray, stats: np.ndarray | None = None) -> np.ndarray:
    """:func:`normalize_image` for volumes: (Z, Y, X) or (C, Z, Y, X) of any real dtype →
    (C, Z, Y, X) float32, each channel ``(x − lo)/(hi − lo)`` with the 1st / 99.8th percentiles
    of the whole volume (a regular subsample ``[::s, ::s, ::s]`` above 2^22 voxels), or
    ``stats`` (C, 2) given."""
    a = np.asarray(vol)
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4:
        raise UnetlabError(f"volume must be (Z, Y, X) or (C, Z, Y, X), got shape {a.shape}")
    if stats is None:
        step = max(1, int(np.ceil((np.prod(a.shape[1:], dtype=np.float64)
                                   / _SUBSAMPLE_LIMIT) ** (1 / 3))))
        stats = sample_stats(a[:, ::step, ::step, ::step])
    return _apply_stats(a, stats)


def _apply_stats(a: np.ndarray, stats) -> np.ndarray:
    """``(a[c] − lo_c)/(hi_c − lo_c)`` per channel in float64, clipped to the float32 range
    (constant channels → 0); float32 of the shape of ``a`` (channels first)."""
    stats = np.asarray(stats, dtype=np.float64)
    if stats.shape != (a.shape[0], 2):
        raise ValueError(f"stats must have shape ({a.shape[0]}, 2), got {stats.shape}")
    out = np.empty(a.shape, dtype=np.float32)
    for c in range(a.shape[0]):
        lo, hi = stats[c]
        if hi > lo:
            # in float64, one channel at a time: finite extremes (±3e38) stay finite
            v = (np.asarray(a[c], dtype=np.float64) - lo) * (1.0 / (hi - lo))
            np.clip(v, -_F32_MAX, _F32_MAX, out=v)   # far outliers saturate instead of inf
            out[c] = v
        else:
            out[c] = 0.0
    return out
