"""Training data sets on disk: file lists, image/label pairs and the layouts of the paper's
data (Sec. 3).

:func:`read_dataset` autodetects the layouts:

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
"""
from __future__ import annotations

import glob as _glob
import os
import re
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..errors import UnetlabError
from .labels import label_to_instances, read_label_image
from .normalize import normalize_image, to_channels_first
from .readers import (IMAGE_SUFFIXES, MAX_PIXELS, _TIFF_SUFFIXES, check_size,
                      _check_values, _first_line, read_image, read_stack)
from .sample import Sample

__all__ = ["list_images", "read_pair", "read_dataset"]


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


def read_pair(image: str | os.PathLike, label: str | os.PathLike, channels: int | None = None,
              name: str | None = None, max_pixels: int | None = None) -> Sample:
    """Read one image file and its label file into a :class:`Sample` (layout d).

    The image is normalised with :func:`normalize_image`; the label converted with
    :func:`label_to_instances`. Image and label must have the same height and width.
    """
    ip, lp = Path(image), Path(label)
    img = to_channels_first(read_image(ip, max_pixels=max_pixels), channels, ip)
    lab = label_to_instances(read_label_image(lp, max_pixels), lp)
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
    check_size(ip, vol.shape[1:], limit)
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
    pairs = _match_by_stem(images, labels, img_dir, lab_dir)
    return [read_pair(ip, lp, channels=channels, max_pixels=max_pixels) for ip, lp in pairs]


def _match_by_stem(images: list[Path], labels: list[Path], img_dir: Path,
                   lab_dir: Path) -> list[tuple[Path, Path]]:
    """(image, label) pairs by file stem (a label stem may add _mask/_label/_seg/_gt); an
    image without a label or a label without an image is an error naming the file."""
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
    return pairs


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
            inst = label_to_instances(read_label_image(seg_path, max_pixels), seg_path)
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


def existing_paths(path, labels=None) -> tuple[Path, Path | None]:
    """``(Path(path), Path(labels) or None)``; a :class:`UnetlabError` naming the first that
    does not exist (the readers' first check, shared by :func:`read_dataset` and
    :func:`unetlab.data.datasets3d.read_dataset_3d`)."""
    found = []
    for x in (path, labels):
        if x is None:
            found.append(None)
            continue
        x = Path(x)
        if not x.exists():
            raise UnetlabError(f"{x}: no such file or folder")
        found.append(x)
    return found[0], found[1]


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
    p, lp = existing_paths(path, labels)
    if lp is not None:
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
