"""Segmentation metrics of the U-Net paper, computed exactly as the challenges did.

* :func:`isbi2012` — the ISBI 2012 EM challenge's *pixel error*, *Rand error* and *warping
  error* (U-Net paper Sec. 4, Table 1), reproducing the organisers' Fiji code (Trainable
  Segmentation ``metrics``) to 1e-9 (:mod:`.isbi`).
* :func:`seg` — the Cell Tracking Challenge SEG score (the "IOU" of Table 2).
* :func:`matching` — instance matching at IoU thresholds (precision, recall, F1, the DSB 2018
  "AP" = TP/(TP+FP+FN), panoptic quality).
* :func:`iou` — intersection over union of two binary masks; :func:`iou_by_threshold` and
  :func:`best_iou_threshold` — the IoU of a probability map over thresholds, and the best one.
* :func:`split_merge_map` — which true objects a prediction merges, splits or misses
  (object categories ``CATEGORY_*``; not to be confused with the pixel flags ``WARP_*`` of
  :func:`warping_classes`).
"""
from __future__ import annotations

from .._isbi import (HOLE_ADDITION, HOLE_DELETION, OBJECT_ADDITION, OBJECT_DELETION, WARP_MERGE,
                     WARP_SPLIT)
from .instances import (CATEGORY_FALSE_POSITIVE, CATEGORY_MATCHED, CATEGORY_MERGE,
                        CATEGORY_MISSED, CATEGORY_SPLIT, DEFAULT_IOU_THRESHOLDS,
                        best_iou_threshold, iou, iou_by_threshold, matching, seg,
                        split_merge_map)
from .isbi import (WARPING_THRESHOLDS, isbi2012, isbi_thresholds, pixel_fscore, rand_counts,
                   rand_fscore, warping_classes)

__all__ = [
    "isbi_thresholds", "isbi2012", "pixel_fscore", "rand_fscore", "rand_counts",
    "warping_classes", "WARPING_THRESHOLDS", "seg", "matching", "iou", "iou_by_threshold",
    "best_iou_threshold", "DEFAULT_IOU_THRESHOLDS",
    "split_merge_map", "WARP_MERGE", "WARP_SPLIT", "HOLE_ADDITION", "HOLE_DELETION",
    "OBJECT_ADDITION", "OBJECT_DELETION", "CATEGORY_MATCHED", "CATEGORY_MERGE", "CATEGORY_SPLIT",
    "CATEGORY_MISSED", "CATEGORY_FALSE_POSITIVE",
]
