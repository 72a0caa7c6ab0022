"""The one rule that turns a label image into instances.

A label image whose values are a subset of {0, v} (a binary mask such as ISBI's 0 = membrane,
255 = cell) becomes the 4-connected components of its non-zero pixels, numbered 1..n, as in the
paper's Fig. 3 (cells separated by one-pixel membranes). Any other non-negative integer image is
an instance image and is kept as is (ids need not be contiguous; 0 = background). An image with
only zeros is allowed (all background). Colour labels, float labels with non-integer values,
negative values, values beyond int32, NaN/Inf, and lossy JPEG labels are refused with an error
naming the file. Two more images are refused because reading them either way would silently
train or score the wrong thing:

* no background (no 0 pixel) and two or three distinct values, e.g. the 1/2 class images of
  ilastik's "Simple Segmentation" export: a class image, not instances. Convert it so that
  0 = background (e.g. ``labels - 1`` when 1 is background).
* an intensity image given as labels: many values, each scattered over many 4-connected pieces
  (more than 1000 pieces and more than 4 per value), where instance ids are one piece each.

:func:`read_labels` (one file) and :func:`label_to_instances` (an array) are the rule every
verb applies: ``train``, ``weights`` and ``evaluate`` read labels the same way.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import UnetlabError

__all__ = ["label_to_instances", "volume_to_instances", "read_label_image", "read_labels"]

#: Suffixes of lossy formats that cannot hold labels.
_LOSSY_SUFFIXES = (".jpg", ".jpeg")


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
    return _instances(a, who)


def volume_to_instances(label: np.ndarray, path: str | os.PathLike | None = None) -> np.ndarray:
    """The same rule for a (Z, Y, X) label volume → int32 instances: values ⊆ {0, v} → the
    face-connected (6-neighbour) components of the non-zero voxels, numbered 1..n; other
    non-negative integer volumes keep their ids; the same refusals as
    :func:`label_to_instances` (a (1, Z, Y, X) array loses its channel axis)."""
    who = str(path) if path is not None else "label"
    a = np.asarray(label)
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 3:
        raise UnetlabError(f"{who}: label must be a (Z, Y, X) volume, got shape {a.shape}")
    return _instances(a, who)


def _instances(a: np.ndarray, who: str) -> np.ndarray:
    """Checks and conversion shared by images and volumes (module docstring)."""
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
    _check_instance_image(a, values, who)
    return a.astype(np.int32)


def _check_instance_image(a: np.ndarray, values: np.ndarray, who: str) -> None:
    """Refuse class images without background and intensity images (module docstring)."""
    if values[0] != 0 and len(values) <= 3:
        shown = ", ".join(str(v) for v in values.tolist())
        raise UnetlabError(f"{who}: label has no background (0) and only the values {{{shown}}}: "
                           "a class image (e.g. ilastik's 1/2 export), not instances; save it "
                           "with 0 = background, e.g. labels - 1 when 1 is background")
    if a.size <= 1000:
        return
    from skimage.measure import label as cc_label

    pieces = int(cc_label(a, connectivity=1, background=0).max())
    nvals = len(values) - (values[0] == 0)
    if pieces > 1000 and pieces > 4 * nvals:
        raise UnetlabError(f"{who}: looks like an intensity image, not labels ({nvals} values "
                           f"scattered in {pieces} pieces; instance ids are one piece each)")


def read_label_image(path: str | os.PathLike, max_pixels: int | None = None) -> np.ndarray:
    """The raw array of a label file (PNG palette indices kept, as read by
    :func:`unetlab.data.read_image`); JPEG is refused because it is lossy."""
    from .readers import read_image

    if Path(path).suffix.lower() in _LOSSY_SUFFIXES:
        raise UnetlabError(f"{path}: JPEG is lossy and cannot hold labels; use PNG or TIFF")
    return read_image(path, max_pixels=max_pixels, palette_indices=True)


def read_labels(path: str | os.PathLike, page: int | None = None,
                max_pixels: int | None = None) -> np.ndarray:
    """One label file → (H, W) int32 instances by :func:`label_to_instances`. A multi-page
    stack needs ``page`` (0-based); a 2D file ignores it."""
    a = np.asarray(read_label_image(path, max_pixels))
    is_stack = a.ndim == 3 and not (a.shape[-1] <= 4 and a.shape[0] > 4)
    if is_stack:
        if page is None:
            raise UnetlabError(f"{path}: is a stack of {a.shape[0]} pages; choose one page")
        if not 0 <= page < a.shape[0]:
            raise UnetlabError(f"page {page}: {path} has {a.shape[0]} pages")
        return label_to_instances(a[page], f"{path} (page {page})")
    return label_to_instances(a, path)
