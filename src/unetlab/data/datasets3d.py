"""3D training sets on disk (Çiçek et al. 2016): volumes with dense or sparse (slice)
annotations, read into :class:`Sample` objects that carry their voxel size.

:func:`read_dataset_3d` reads these layouts:

  (a) a folder with ``image/`` and ``label/`` sub-folders (the same names as
      :func:`unetlab.data.read_dataset` accepts) of volumes — TIFF stacks or ``.zarr`` stores
      (:func:`unetlab.data.read_volume`) — matched by stem; or ``read_dataset_3d(images_dir,
      labels=labels_dir)``; or one volume and its label volume given as two files.
  (b) the Cell Tracking Challenge 3D layout ``DIR/01/t000.tif`` (one (Z, Y, X) stack per time
      point) with ``DIR/01_GT/SEG/``: a full 3D annotation ``man_seg000.tif`` (Z, Y, X), or
      2D annotations of single slices ``man_seg_000_012.tif`` (time 000, slice z = 12), as the
      CTC gives for many 3D data sets. Slice annotations become a sparse volume: the annotated
      slices hold their instances, every other voxel is -1 (unlabelled, ignored by the loss —
      the sparse annotation of Çiçek et al.); a frame with both kinds uses the full one. Ids of
      different slices are taken as they are (CTC slices number their cells independently;
      annotated slices are rarely adjacent, so this does not matter to the separation).

Partial annotation (CTC): as in 2D (see :mod:`unetlab.data.datasets`), a frame — or an
annotated slice — counts as complete when every TRA marker (``01_GT/TRA/man_trackTTT.tif``,
in the slice for slice annotations) overlaps an annotated cell; otherwise only background
within ``ctc_margin`` of an annotated cell stays background and the rest becomes -1. The
margin is measured in x-voxel units with the voxel aspect of the image's spacing (so a z step
of 5 x-voxels counts as 5).

Images are normalised per channel (:func:`unetlab.data.normalize.normalize_volume`); label
volumes follow the one label rule (:func:`unetlab.data.labels.volume_to_instances`).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from ..errors import UnetlabError
from .datasets import (_IMAGE_DIRS, _LABEL_DIRS, _ctc_sequences, _find_file, _find_subdir,
                       _match_by_stem, _natural_key, _stem, existing_paths)
from .labels import label_to_instances, read_label_image, volume_to_instances
from .normalize import normalize_volume
from .sample import Sample
from .volumes import read_volume

__all__ = ["read_dataset_3d"]


def _volume_entries(folder: Path) -> list[Path]:
    """TIFF files and zarr stores of a folder (hidden entries skipped), natural order."""
    out = [p for p in folder.iterdir() if not p.name.startswith(".")
           and ((p.is_file() and p.suffix.lower() in (".tif", ".tiff"))
                or (p.is_dir() and p.suffix.lower() == ".zarr"))]
    return sorted(out, key=_natural_key)


def _instances(raw: np.ndarray, path: Path, unlabelled: int | None, convert=volume_to_instances
               ) -> np.ndarray:
    """``convert(raw, path)`` (the one label rule), with the voxels whose raw value is
    ``unlabelled`` (if not None) read as background first and set to -1 (not annotated)
    after."""
    if unlabelled is None:
        return convert(raw, path)
    mask = np.asarray(raw) == unlabelled
    inst = convert(np.where(mask, 0, raw), path)
    inst[mask.reshape(inst.shape)] = -1
    return inst


def _read_pair_3d(ip: Path, lp: Path, max_pixels: int | None, name: str | None = None,
                  unlabelled: int | None = None) -> Sample:
    img, spacing = read_volume(ip, max_pixels)
    lab = _instances(read_volume(lp, max_pixels)[0], lp, unlabelled)
    if img.shape[-3:] != lab.shape:
        raise UnetlabError(f"{ip} and {lp}: volume size {img.shape[-3:]} differs from label "
                           f"size {lab.shape}")
    return Sample(normalize_volume(img), lab, name=name or _stem(ip), path=str(ip),
                  spacing=spacing)


def _pair_folders_3d(img_dir: Path, lab_dir: Path, max_pixels, unlabelled=None
                     ) -> list[Sample]:
    images = _volume_entries(img_dir)
    if not images:
        raise UnetlabError(f"{img_dir}: folder contains no volumes (TIFF stacks or .zarr)")
    pairs = _match_by_stem(images, _volume_entries(lab_dir), img_dir, lab_dir)
    return [_read_pair_3d(ip, lp, max_pixels, unlabelled=unlabelled) for ip, lp in pairs]


def _untrusted_background(inst: np.ndarray, margin: float, sampling) -> np.ndarray:
    """``inst`` with background farther than ``margin`` from every annotated cell set to -1
    (all -1 when nothing is annotated)."""
    from scipy import ndimage

    if inst.max() <= 0:
        return np.full_like(inst, -1)
    dist = ndimage.distance_transform_edt(inst == 0, sampling=sampling)
    return np.where((inst == 0) & (dist > margin), -1, inst).astype(np.int32)


def _complete(seg: np.ndarray, tra: np.ndarray | None, where: Path) -> bool:
    """Every TRA marker overlaps an annotated cell (no markers → not known to be complete)."""
    if tra is None:
        return False
    if tra.shape != seg.shape:
        raise UnetlabError(f"{where}: TRA marker shape {tra.shape} differs from the "
                           f"segmentation's {seg.shape}")
    markers = np.unique(tra[tra > 0])
    return len(np.setdiff1d(markers, np.unique(tra[(tra > 0) & (seg > 0)]))) == 0


def _ctc_segs(seg_dir: Path) -> tuple[dict[str, Path], dict[str, list[tuple[int, Path]]]]:
    """Full 3D annotations {t: path} and slice annotations {t: [(z, path)]} of a SEG folder."""
    full: dict[str, Path] = {}
    slices: dict[str, list[tuple[int, Path]]] = {}
    for f in sorted(seg_dir.iterdir(), key=_natural_key):
        m = re.fullmatch(r"man_seg(\d+)\.tiff?", f.name, flags=re.IGNORECASE)
        if m:
            full[m.group(1)] = f
            continue
        m = re.fullmatch(r"man_seg_?(\d+)_(\d+)\.tiff?", f.name, flags=re.IGNORECASE)
        if m:
            slices.setdefault(m.group(1), []).append((int(m.group(2)), f))
    return full, slices


def _ctc_frame(seq: Path, seg_dir: Path, t: str, full: Path | None, slices, ignore: bool,
               margin: float, max_pixels, unlabelled: int | None = None) -> Sample:
    """One CTC time point: the image volume and its full or slice annotation."""
    img_path = _find_file(seq, f"t{t}")
    where = full if full is not None else slices[0][1]
    if img_path is None:
        raise UnetlabError(f"{where}: no image t{t}.tif in {seq}")
    img, spacing = read_volume(img_path, max_pixels)
    shape = img.shape[-3:]
    aspect = tuple(s / spacing[-1] for s in spacing)
    tra_path = _find_file(seg_dir.parent / "TRA", f"man_track{t}") if ignore else None
    tra = read_volume(tra_path, max_pixels)[0] if tra_path is not None else None
    if full is not None:
        inst = _instances(read_volume(full, max_pixels)[0], full, unlabelled)
        if inst.shape != shape:
            raise UnetlabError(f"{img_path} and {full}: volume size {shape} differs from label "
                               f"size {inst.shape}")
        if ignore and not _complete(inst, tra, full):
            inst = _untrusted_background(inst, margin, aspect)
    else:
        inst = np.full(shape, -1, np.int32)
        for z, p in slices:
            sl = _instances(read_label_image(p, max_pixels), p, unlabelled, label_to_instances)
            if not 0 <= z < shape[0] or sl.shape != shape[1:]:
                raise UnetlabError(f"{p}: slice {z} of size {sl.shape} does not fit the volume "
                                   f"{img_path} of size {shape}")
            if ignore and not _complete(sl, None if tra is None else tra[z], p):
                sl = _untrusted_background(sl, margin, aspect[1:])
            inst[z] = sl
    return Sample(normalize_volume(img), inst, name=f"{seq.name}/t{t}", path=str(img_path),
                  spacing=spacing)


def _read_ctc_3d(sequences, ignore: bool, margin: float, max_pixels, unlabelled=None
                 ) -> list[Sample]:
    out = []
    for seq, seg_dir in sequences:
        full, slices = _ctc_segs(seg_dir)
        for t in sorted(set(full) | set(slices), key=lambda s: (int(s), s)):
            out.append(_ctc_frame(seq, seg_dir, t, full.get(t), slices.get(t), ignore, margin,
                                  max_pixels, unlabelled))
    if not out:
        where = sequences[0][1] if sequences else "?"
        raise UnetlabError(f"{where}: no man_segTTT.tif or man_seg_TTT_ZZZ.tif annotations")
    return out


def read_dataset_3d(path: str | os.PathLike, labels: str | os.PathLike | None = None, *,
                    ctc_ignore_unannotated: bool = True, ctc_margin: float = 10.0,
                    max_pixels: int | None = None, unlabelled: int | None = None
                    ) -> list[Sample]:
    """Read a 3D training set into normalised volume :class:`Sample` objects with their
    spacing (layouts and partial annotation: module docstring).

    path: a dataset folder (image/ + label/, or CTC), an image folder (with ``labels`` = the
    label folder) or one volume (with ``labels`` = its label volume). Returns the samples in
    natural file-name order; every problem raises :class:`UnetlabError` naming the file.
    ``unlabelled``: a label value that marks voxels nobody annotated; they become -1 (ignored
    by the loss, Çiçek et al.'s sparse annotation) and the rest follows the one label rule.
    """
    p, lp = existing_paths(path, labels)
    if lp is not None:
        is_vol = [x.is_dir() and x.suffix.lower() != ".zarr" for x in (p, lp)]
        if all(is_vol):
            return _pair_folders_3d(p, lp, max_pixels, unlabelled)
        if any(is_vol):
            raise UnetlabError(f"{p} and {lp}: give two folders or two volumes")
        return [_read_pair_3d(p, lp, max_pixels, unlabelled=unlabelled)]
    if p.is_file() or p.suffix.lower() == ".zarr":
        raise UnetlabError(f"{p}: is a single volume; give its labels too (labels=...)")
    img_dir, lab_dir = _find_subdir(p, _IMAGE_DIRS), _find_subdir(p, _LABEL_DIRS)
    if img_dir is not None and lab_dir is not None:
        return _pair_folders_3d(img_dir, lab_dir, max_pixels, unlabelled)
    seqs = _ctc_sequences(p)
    if seqs:
        return _read_ctc_3d(seqs, ctc_ignore_unannotated, ctc_margin, max_pixels, unlabelled)
    raise UnetlabError(f"{p}: unknown 3D dataset layout; expected image/ + label/ folders of "
                       f"volumes or a Cell Tracking Challenge folder (01/, 01_GT/SEG/)")
