"""The one-page HTML report of a run folder (:func:`build_report`).
"""
from __future__ import annotations

import html
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_write_text
from ..errors import UnetlabError
from .curves import _validation_columns, png_curves
from .page import _CSS, _Page, _caption, _fmt, _metrics_html, _note, _picture, _seconds, _table
from .pictures import (_compute_weight_map, png_augmented, png_errors, png_prediction,
                       png_samples, png_weight_map)
from .summary import explain, headline_numbers
from .rundata import (ReportData, _read_config, _readable, _samples_from_config, load_report_data,
                      read_log)

__all__ = ["SECTIONS", "build_report"]


#: (anchor id, heading) of every section, in page order
SECTIONS = (
    ("summary", "Summary"),
    ("training-images", "Training images and labels"),
    ("weight-map", "Weight map"),
    ("augmentation", "Augmented samples"),
    ("curves", "Training curves"),
    ("prediction", "Prediction"),
    ("errors", "Split and merge errors"),
    ("metrics", "Metrics"),
    ("configuration", "Configuration"),
    ("timing", "Timing"),
)


def build_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None,
                 data: ReportData | None = None, embed: bool = True) -> Path:
    """Write the HTML report of the run in ``run_dir``; returns its path.

    ``out``: the HTML file (default ``run_dir/report.html``). ``data``: the arrays and numbers to
    show (default: :func:`load_report_data(run_dir)`). ``embed``: pictures as base64 ``data:``
    URIs in the page (self-contained, the default) or PNG files in ``<out stem>_files/``
    beside it. The configuration and curves come from ``config.toml`` and ``log.csv``.
    Missing parts are omitted with a note. Raises :class:`UnetlabError` when ``run_dir`` is not
    a folder or ``out`` cannot be written.
    """
    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UnetlabError(f"{run_dir}: no such run folder")
    out = Path(out) if out is not None else run_dir / "report.html"
    if out.is_dir():
        raise UnetlabError(f"{out}: is a folder, expected the report's file name")
    if not out.parent.is_dir():
        raise UnetlabError(f"{out}: the folder {out.parent} does not exist")
    _check_not_a_run_file(out)
    run = _open_run(run_dir, out, data, embed)
    for anchor, heading in SECTIONS:
        if anchor == "timing":  # includes the report's own time, so it is measured last
            run.timing["report"] = time.perf_counter() - t0
        run.page.section(anchor, heading, "\n".join(_SECTION_BODIES[anchor](run)))
    try:
        atomic_write_text(out, _document(run))
    except OSError as e:
        raise UnetlabError(f"{out}: cannot write the report ({e.strerror or e})") from None
    _readable(out)
    return out


def _check_not_a_run_file(out: Path) -> None:
    """The report may replace an earlier report, never another file (log.csv, config.toml …)."""
    if not out.exists():
        return
    try:
        with open(out, "rb") as f:
            head = f.read(4096)
    except OSError as e:
        raise UnetlabError(f"{out}: cannot read it to check it is a report ({e.strerror or e})") \
            from None
    if not (head.startswith(b"<!DOCTYPE html>") and b"unetlab report" in head):
        raise UnetlabError(f"{out}: exists and is not a unetlab report (a file of the run?); "
                           "choose another --out")


@dataclass
class _Run:
    """What every section reads: the run folder, its config, data, log and the page."""

    run_dir: Path
    config: dict[str, Any]
    data: ReportData
    page: _Page
    timing: dict[str, Any]
    log: dict[str, np.ndarray] | None
    log_note: str | None
    notes: list[str]


def _open_run(run_dir: Path, out: Path, data: ReportData | None, embed: bool) -> _Run:
    config = _read_config(run_dir)
    if data is None:
        data = load_report_data(run_dir)
        if not data.train_images:
            imgs, labs, aug, note = _samples_from_config(config)
            data.train_images, data.train_instances = imgs, labs
            data.augmented = data.augmented or aug
            if note:
                data.notes.append(note)
    files_dir = out.parent / f"{out.stem}_files"
    log, log_note = None, None
    log_path = run_dir / "log.csv"
    if log_path.exists():
        try:
            log = read_log(log_path)
        except UnetlabError as e:
            log_note = str(e)
    else:
        log_note = "No log.csv in the run folder: no training curves."
    return _Run(run_dir, config, data, _Page(embed, files_dir, files_dir.name),
                dict(data.timing), log, log_note, [])


def _summary(run: _Run) -> list[str]:
    data, body = run.data, []
    headline = headline_numbers(run.run_dir, data.headline, run.log)
    if headline:
        body.append('<div class="cards">' + "".join(
            f'<div class="card"><div class="v">{_fmt(v)}</div><div class="k">{html.escape(str(k))}'
            f"</div></div>" for k, v in headline.items()) + "</div>")
        meanings = [explain(k) for k in headline]
        body.append("<ul class=\"caption\">" + "".join(
            f"<li>{html.escape(m)}</li>" for m in dict.fromkeys(meanings) if m) + "</ul>")
    for n in data.notes + run.notes:
        body.append(_note(n))
    if not body:
        body.append("<p>No headline numbers were saved for this run.</p>")
    body.append(_caption(f"Run folder: <code>{html.escape(str(run.run_dir.resolve()))}</code>"))
    return body


def _training_images(run: _Run) -> list[str]:
    data = run.data
    if not (data.train_images and data.train_instances):
        return [_note("No training samples were saved with this run "
                      "(report_data/train.npz; unetlab demo writes it).")]
    return [_caption("Top: training images. Bottom: the annotated instances, each tinted "
                     "and outlined in its own colour (the paper's Fig. 3a–b)."),
            _picture(run.page, lambda: png_samples(data.train_images, data.train_instances),
                     "training images with labels", "samples")]


def _weight_map(run: _Run) -> list[str]:
    data, config = run.data, run.config
    if not data.train_instances:
        return [_note("No training labels available, so no weight map to show.")]
    lab = np.asarray(data.train_instances[0])
    img = data.train_images[0]

    def make_w():
        w, sep = _compute_weight_map(lab, float(config.get("w0", 10.0)),
                                     float(config.get("sigma", 5.0)))
        if data.weight_maps:
            w = data.weight_maps[0]
        return png_weight_map(img, lab, w, sep)

    return [_caption("Eq. 2: w(x) = w<sub>c</sub>(x) + w<sub>0</sub>·exp(−(d<sub>1</sub>(x) + "
                     "d<sub>2</sub>(x))² / 2σ²), here for the first training image. The class "
                     "balance w<sub>c</sub> lifts the rarer class; the border term is large in "
                     "the thin gaps between touching cells, forcing the network to learn "
                     "them."),
            _picture(run.page, make_w, "weight map", "weights")]


def _augmentation(run: _Run) -> list[str]:
    data = run.data
    if not data.augmented:
        return [_note("No augmented samples were saved with this run "
                      "(report_data/augmented.npz).")]
    return [_caption("Random augmentations as the trainer sees them (Sec. 3.1: elastic "
                     "deformation on a 3×3 grid with σ = 10 px, rotation, flips, shifts, grey "
                     "values). Top: deformed image with the deformed cell outlines (yellow; "
                     "grey = ignored pixels). Bottom: the deformed weight map."),
            _picture(run.page, lambda: png_augmented(data.augmented), "augmented samples",
                     "augmented")]


def _curves(run: _Run) -> list[str]:
    log = run.log
    if log is None:
        return [_note(run.log_note or "No training curves.")]
    body = [_picture(run.page, lambda: png_curves(log), "training curves", "curves")]
    if not _validation_columns(log):
        body.append(_note("This run logged no validation metrics (no validation set)."))
    it = log.get("iteration")
    if it is not None and len(it) and np.isfinite(it).any():
        body.append(_caption(f"{len(it)} log rows, last iteration {int(np.nanmax(it))}."))
    tcol = next((c for c in ("seconds", "time", "elapsed") if c in log), None)
    if tcol and np.isfinite(log[tcol]).any() and not any(k.startswith("training")
                                                          for k in run.timing):
        run.timing["training (log.csv)"] = float(np.nanmax(log[tcol]))
    return body


def _prediction(run: _Run) -> list[str]:
    data = run.data
    if data.pred_image is None or data.pred_prob is None:
        return [_note("No prediction was saved with this run (report_data/prediction.npz).")]
    return [_caption("Overlap-tile prediction (Fig. 2) of the image below: P(cell) from the "
                     "pixel-wise soft-max, and the instances split from it. The yellow box "
                     "marks the full-resolution crop of the second row."),
            _picture(run.page, lambda: png_prediction(data.pred_image, data.pred_prob,
                                                      data.pred_instances),
                     "prediction", "prediction")]


def _errors(run: _Run) -> list[str]:
    data = run.data
    if data.gt_instances is None or data.pred_instances is None:
        return [_note("No ground truth for the predicted image: no error map.")]
    background = data.pred_image if data.pred_image is not None else data.gt_instances > 0
    return [_caption("Object-level errors of the predicted instances against the ground "
                     "truth: a <b>merge</b> is a predicted object holding most of two or more "
                     "true cells, a <b>split</b> a true cell most of whose area falls in two or "
                     "more predicted pieces, <b>missed</b> a true cell predicted mostly as "
                     "background, <b>false positive</b> a predicted object lying mostly on "
                     "background."),
            _picture(run.page, lambda: png_errors(background, data.gt_instances,
                                                  data.pred_instances),
                     "split and merge errors", "errors")]


def _metrics(run: _Run) -> list[str]:
    if not run.data.metrics:
        return [_note("No metrics were saved with this run (report_data/metrics.json).")]
    return [_metrics_html(run.data.metrics)]


def _configuration(run: _Run) -> list[str]:
    cfg = run.run_dir / "config.toml"
    if not cfg.exists():
        return [_note("No config.toml in the run folder.")]
    try:
        return [f"<pre>{html.escape(cfg.read_text(encoding='utf-8'))}</pre>"]
    except (OSError, UnicodeDecodeError) as e:
        return [_note(f"{cfg}: unreadable ({e})")]


def _timing(run: _Run) -> list[str]:
    timing = run.timing
    before = timing.pop("total before the report", None)
    if isinstance(before, (int, float)) and isinstance(timing.get("report"), (int, float)):
        timing["total"] = before + timing["report"]
    rows = [(k, _seconds(v)) for k, v in timing.items() if isinstance(v, (int, float))]
    return [_table(["stage", "wall-clock time"], rows)]


_SECTION_BODIES = {
    "summary": _summary, "training-images": _training_images, "weight-map": _weight_map,
    "augmentation": _augmentation, "curves": _curves, "prediction": _prediction,
    "errors": _errors, "metrics": _metrics, "configuration": _configuration,
    "timing": _timing,
}


def _document(run: _Run) -> str:
    from .. import __version__

    title = html.escape(run.data.title)
    nav = "".join(f'<a href="#{a}">{html.escape(h)}</a>' for a, h in SECTIONS)
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{title} — unetlab report</title><style>{_CSS}</style>"
            f"</head><body><header><h1>{title}</h1><p>unetlab {__version__} · "
            f"U-Net (Ronneberger, Fischer &amp; Brox, MICCAI 2015) · report written "
            f"{time.strftime('%Y-%m-%d %H:%M')}</p></header><nav>{nav}</nav><main>\n"
            + "\n".join(run.page.parts) + "\n</main></body></html>\n")
