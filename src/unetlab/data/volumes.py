"""Reading 3D volumes and their voxel size (the edge where stacks enter 3D training).

:func:`read_volume` returns ``(array, spacing)``: the raw voxels as (Z, Y, X), or (C, Z, Y, X)
when the file holds several channels, and ``spacing = (dz, dy, dx)`` in the file's physical
unit (usually µm), 1.0 for every axis the file does not describe. Where the spacing comes from:

* **OME-TIFF** (``.ome.tif``): ``PhysicalSizeZ/Y/X`` of the first ``Pixels`` element.
* **ImageJ hyperstack TIFF**: ``spacing`` of the ImageJ metadata (z) and the ``XResolution`` /
  ``YResolution`` tags (pixels per unit: size = 1 / resolution).
* other TIFFs: 1 (a resolution tag alone is often a 72-dpi default, not a voxel size).
* **zarr**: an OME-Zarr group — level 0 of ``multiscales``, its ``scale`` coordinate
  transformation (times a multiscale-wide one) on the z, y, x axes; or an array with a plain
  ``spacing`` attribute (3 numbers, z y x).

Axes: TIFF axis letters (tifffile's series axes) and OME-Zarr axis names are honoured: Z (or
tifffile's generic page axes Q/I), C or S (samples) for channels, T only of length 1 (one time
point per file). Files without a third spatial axis are refused: they are images, not volumes.
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from ..errors import UnetlabError
from .readers import MAX_PIXELS, _check_values, _first_line, _one_series, check_size

__all__ = ["read_volume", "volume_spacing", "VOLUME_SUFFIXES"]

#: File suffixes :func:`read_volume` reads (lower case); zarr stores are folders.
VOLUME_SUFFIXES: tuple[str, ...] = (".tif", ".tiff", ".zarr")


def _to_czyx(arr: np.ndarray, axes: str, path: Path) -> np.ndarray:
    """(Z, Y, X) or (C, Z, Y, X) from an array with one axis letter per dimension."""
    axes = axes.upper()
    generic = [a for a in axes if a in "QIP"]
    if "Z" not in axes and len(generic) == 1:
        axes = axes.replace(generic[0], "Z")
    for i, a in enumerate(axes):
        if a not in "ZYXCST" or axes.count(a) > 1:
            raise UnetlabError(f"{path}: cannot read axes {axes!r} as a volume (expected Z, Y, "
                               f"X and optionally C)")
    if "T" in axes:
        if arr.shape[axes.index("T")] != 1:
            raise UnetlabError(f"{path}: holds {arr.shape[axes.index('T')]} time points; save "
                               f"one volume per file (Cell Tracking Challenge: t000.tif, ...)")
        arr, axes = arr.take(0, axis=axes.index("T")), axes.replace("T", "")
    chan = [a for a in axes if a in "CS"]
    if len(chan) == 2:
        i = axes.index("S")
        if arr.shape[i] != 1:
            raise UnetlabError(f"{path}: has both channel and colour-sample axes ({axes})")
        arr, axes = arr.take(0, axis=i), axes.replace("S", "")
    if not all(a in axes for a in "ZYX"):
        raise UnetlabError(f"{path}: is not a volume (axes {axes}, shape {arr.shape}); "
                           "expected a Z axis (a stack of slices)")
    order = [axes.index(a) for a in ("C" if "C" in axes else "S" if "S" in axes else "")
             + "ZYX"]
    arr = np.transpose(arr, order)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    return arr


def _ome_spacing(xml: str) -> tuple[float, float, float] | None:
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    pix = next((e for e in root.iter() if e.tag.endswith("Pixels")), None)
    if pix is None:
        return None
    names = ("PhysicalSizeZ", "PhysicalSizeY", "PhysicalSizeX")
    if not any(n in pix.attrib for n in names):
        return None
    return tuple(float(pix.attrib.get(n, 1.0)) for n in names)  # type: ignore[return-value]


def _imagej_spacing(tf) -> tuple[float, float, float]:
    meta = tf.imagej_metadata or {}
    tags = tf.pages[0].tags

    def size(tag: str) -> float:
        t = tags.get(tag)
        if t is None:
            return 1.0
        num, den = t.value
        return float(den) / float(num) if num else 1.0

    return float(meta.get("spacing", 1.0)), size("YResolution"), size("XResolution")


def _tiff_spacing(tf) -> tuple[float, float, float] | None:
    """(dz, dy, dx) an open TIFF declares (OME first, then ImageJ), or None."""
    spacing = _ome_spacing(tf.ome_metadata) if tf.is_ome and tf.ome_metadata else None
    if spacing is None and tf.is_imagej:
        spacing = _imagej_spacing(tf)
    return spacing


def volume_spacing(path: str | os.PathLike) -> tuple[float, float, float] | None:
    """The voxel size (dz, dy, dx) that a TIFF stack or zarr volume declares (the metadata
    :func:`read_volume` reads), without reading its voxels; None when it declares none or is
    not a TIFF/zarr volume. Metadata that cannot be read also gives None (the pixels' own
    reader reports a bad file)."""
    p = Path(path)
    try:
        if p.is_dir():
            import zarr

            node = zarr.open(str(p), mode="r")
            if isinstance(node, zarr.Group):
                return _ome_zarr(node, p)[2]
            return _zarr_array_spacing(node, p)
        if p.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(p) as tf:
                return _tiff_spacing(tf)
    except Exception:  # noqa: BLE001 - unreadable metadata: no spacing (the reader reports it)
        return None
    return None


def _read_tiff_volume(path: Path, limit: int):
    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            series = _one_series(tf, path)
            check_size(path, series.shape, limit)
            arr, axes = np.asarray(series.asarray()), series.axes
            spacing = _tiff_spacing(tf)
    except UnetlabError:
        raise
    except Exception as e:  # noqa: BLE001 - any decoder failure is a bad file
        raise UnetlabError(f"{path}: cannot read TIFF ({_first_line(e)})") from e
    return _to_czyx(arr, axes, path), spacing or (1.0, 1.0, 1.0)


def _ome_zarr(group, path: Path):
    """(array, axis letters, spacing) of level 0 of an OME-Zarr multiscale group."""
    attrs = dict(group.attrs)
    ms = attrs.get("multiscales") or (attrs.get("ome") or {}).get("multiscales")
    if not ms:
        raise UnetlabError(f"{path}: a zarr group without OME-Zarr 'multiscales' metadata; "
                           f"point to the array inside it")
    try:
        m = ms[0]
        level = m["datasets"][0]
        names = "".join((a["name"] if isinstance(a, dict) else str(a))[0].upper()
                        for a in m["axes"])
        scale = np.ones(len(names))
        for tr in list(level.get("coordinateTransformations", [])) + \
                list(m.get("coordinateTransformations", [])):
            if tr.get("type") == "scale":
                scale *= np.asarray(tr["scale"], dtype=np.float64)
        arr = group[level["path"]]
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise UnetlabError(f"{path}: malformed OME-Zarr 'multiscales' metadata "
                           f"({_first_line(e)})") from None
    spacing = tuple(float(scale[names.index(a)]) if a in names else 1.0 for a in "ZYX")
    return arr, names, spacing


def _zarr_array_spacing(arr, path: Path) -> tuple[float, float, float] | None:
    """The ``spacing`` attribute (z, y, x) of a plain zarr array, or None without one."""
    raw = arr.attrs.get("spacing")
    if raw is None:
        return None
    try:
        spacing = tuple(float(v) for v in raw)
    except (TypeError, ValueError):
        spacing = ()
    if len(spacing) != 3:
        raise UnetlabError(f"{path}: attribute 'spacing' must be 3 numbers (z, y, x), "
                           f"got {raw!r}")
    return spacing  # type: ignore[return-value]


def _read_zarr_volume(path: Path, limit: int):
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except Exception as e:  # noqa: BLE001
        raise UnetlabError(f"{path}: not a readable zarr store ({_first_line(e)})") from None
    if isinstance(node, zarr.Group):
        arr, axes, spacing = _ome_zarr(node, path)
    else:
        arr = node
        axes = {3: "ZYX", 4: "CZYX"}.get(arr.ndim)
        if axes is None:
            raise UnetlabError(f"{path}: a zarr array of shape {arr.shape} is not a volume "
                               f"(expected (Z, Y, X) or (C, Z, Y, X))")
        spacing = _zarr_array_spacing(arr, path) or (1.0, 1.0, 1.0)
    check_size(path, arr.shape, limit)
    return _to_czyx(np.asarray(arr[...]), axes, path), spacing


def read_volume(path: str | os.PathLike, max_pixels: int | None = None
                ) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Read one volume: ``(array, (dz, dy, dx))`` (module docstring). ``array`` is the raw
    (Z, Y, X), or (C, Z, Y, X) for several channels, not normalised; bool becomes uint8.

    ``path``: a TIFF stack (ImageJ, OME or plain) or a zarr store (OME-Zarr group or array).
    The declared size is checked against ``max_pixels`` (default :data:`MAX_PIXELS`) before
    decoding. Every problem raises :class:`UnetlabError` naming the file: missing, empty, not
    a volume, several time points, bad metadata, NaN/Inf, complex values, non-positive spacing.
    """
    p = Path(path)
    limit = MAX_PIXELS if max_pixels is None else int(max_pixels)
    if not p.exists():
        raise UnetlabError(f"{p}: no such file or folder")
    if p.is_dir():
        arr, spacing = _read_zarr_volume(p, limit)
    elif p.suffix.lower() in (".tif", ".tiff"):
        if p.stat().st_size == 0:
            raise UnetlabError(f"{p}: file is empty (0 bytes)")
        arr, spacing = _read_tiff_volume(p, limit)
    else:
        raise UnetlabError(f"{p}: not a volume file (expected a TIFF stack or a zarr folder)")
    if not all(np.isfinite(s) and s > 0 for s in spacing):
        raise UnetlabError(f"{p}: voxel size {spacing} must be finite numbers > 0")
    return _check_values(p, arr), tuple(float(s) for s in spacing)  # type: ignore[return-value]
