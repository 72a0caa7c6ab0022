"""Training data: reading files, labels, intensity normalisation and the random tile sampler.

This is the edge of the library where files are read; everything else works on
:class:`Sample` objects. One concept per module:

* :mod:`.readers` — :func:`read_image`, :func:`read_stack` (one file, size checked before
  decoding);
* :mod:`.datasets` — :func:`list_images`, :func:`read_pair`, :func:`read_dataset` (folder layouts
  of the paper's data sets, Sec. 3, and the Cell Tracking Challenge);
* :mod:`.labels` — :func:`label_to_instances`, the one rule that turns a label image into
  instances (Fig. 3);
* :mod:`.normalize` — :func:`normalize_image` and its statistics, shared by training and
  prediction;
* :mod:`.sample` — :class:`Sample`;
* :mod:`.sampler` — :class:`TileSampler`, random tiles for the overlap-tile strategy (Fig. 2),
  2D and 3D;
* :mod:`.volumes` — :func:`read_volume` (TIFF stack / zarr → voxels and voxel size);
* :mod:`.datasets3d` — :func:`read_dataset_3d` (volume folders, Cell Tracking Challenge 3D with
  full or slice annotations).
"""
from __future__ import annotations

from ..weights import IGNORE_INDEX
from .datasets import list_images, read_dataset, read_pair
from .datasets3d import read_dataset_3d
from .labels import label_to_instances, read_label_image, read_labels, volume_to_instances
from .normalize import (normalization_stats, normalize_image, normalize_volume, sample_stats,
                        subsample_step, to_channels_first)
from .readers import IMAGE_SUFFIXES, MAX_PIXELS, check_size, read_image, read_stack
from .sample import Sample
from .sampler import TileSampler
from .volumes import read_volume, volume_spacing

__all__ = [
    "MAX_PIXELS",
    "check_size",
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
    "sample_stats",
    "subsample_step",
    "to_channels_first",
    "label_to_instances",
    "read_label_image",
    "read_labels",
    "TileSampler",
    "read_volume",
    "volume_spacing",
    "read_dataset_3d",
    "volume_to_instances",
    "normalize_volume",
]
