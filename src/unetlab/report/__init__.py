"""Pictures and a one-page HTML report of a run (inputs, weight maps, curves, predictions, errors).

* :mod:`.pictures` — pure functions of numpy arrays that return PNG bytes (the paper's Fig. 3,
  augmentation, prediction, object-level errors);
* :mod:`.curves` — :func:`png_curves`, training curves from ``log.csv``;
* :mod:`.rundata` — :class:`ReportData` and its files in ``RUN/report_data/``, :func:`read_log`;
* :mod:`.page` — HTML building blocks;
* :mod:`.build` — :func:`build_report`, one self-contained ``report.html`` per run folder
  (pictures embedded as base64 ``data:`` URIs, or with ``embed=False`` written beside it).
  Sections a run lacks are omitted with a note; the page always builds.
"""
from __future__ import annotations

from .build import SECTIONS, build_report
from .curves import png_curves
from .pictures import (DISPLAY_MAX, overlay, png_augmented, png_errors, png_prediction,
                       png_samples, png_weight_map)
from .rundata import ReportData, load_report_data, read_log, save_report_data

__all__ = [
    "ReportData", "build_report", "save_report_data", "load_report_data", "read_log",
    "png_samples", "png_weight_map", "png_augmented", "png_curves", "png_prediction",
    "png_errors", "overlay", "SECTIONS", "DISPLAY_MAX",
]
