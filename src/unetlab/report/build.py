"""The one-page HTML report of a run folder (:func:`build_report`).
"""
from __future__ import annotations

import html
import os
import time
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_text
from ..errors import UnetlabError
from .curves import _validation_columns, png_curves
from .page import _CSS, _Page, _caption, _fmt, _metrics_html, _note, _picture, _seconds, _table
from .pictures import (_compute_weight_map, png_augmented, png_errors, png_prediction,
                       png_samples, png_weight_map)
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
    page = _Page(embed, files_dir, files_dir.name)
    timing = dict(data.timing)

    # -- summary
    body = []
    if data.headline:
        body.append('<div class="cards">' + "".join(
            f'<div class="card"><div class="v">{_fmt(v)}</div><div class="k">{html.escape(str(k))}'
            f"</div></div>" for k, v in data.headline.items()) + "</div>")
    for n in data.notes:
        body.append(_note(n))
    if not body:
        body.append("<p>No headline numbers were saved for this run.</p>")
    body.append(_caption(f"Run folder: <code>{html.escape(str(run_dir.resolve()))}</code>"))
    page.section("summary", "Summary", "\n".join(body))

    # -- training images
    if data.train_images and data.train_instances:
        body = [_caption("Top: training images. Bottom: the annotated instances, each tinted "
                         "and outlined in its own colour (the paper's Fig. 3a–b).")]
        body.append(_picture(page, lambda: png_samples(data.train_images, data.train_instances),
                             "training images with labels", "samples"))
    else:
        body = [_note("No training samples were saved with this run "
                      "(report_data/train.npz; unetlab demo writes it).")]
    page.section("training-images", "Training images and labels", "\n".join(body))

    # -- weight map
    if data.train_instances:
        lab = np.asarray(data.train_instances[0])
        img = data.train_images[0]

        def make_w():
            w, sep = _compute_weight_map(lab, float(config.get("w0", 10.0)),
                                         float(config.get("sigma", 5.0)))
            if data.weight_maps:
                w = data.weight_maps[0]
            return png_weight_map(img, lab, w, sep)

        body = [_caption("Eq. 2: w(x) = w<sub>c</sub>(x) + w<sub>0</sub>·exp(−(d<sub>1</sub>(x) + "
                         "d<sub>2</sub>(x))² / 2σ²), here for the first training image. The class "
                         "balance w<sub>c</sub> lifts the rarer class; the border term is large in "
                         "the thin gaps between touching cells, forcing the network to learn "
                         "them."),
                _picture(page, make_w, "weight map", "weights")]
    else:
        body = [_note("No training labels available, so no weight map to show.")]
    page.section("weight-map", "Weight map", "\n".join(body))

    # -- augmentation
    if data.augmented:
        body = [_caption("Random augmentations as the trainer sees them (Sec. 3.1: elastic "
                         "deformation on a 3×3 grid with σ = 10 px, rotation, flips, shifts, grey "
                         "values). Top: deformed image with the deformed cell outlines (yellow; "
                         "grey = ignored pixels). Bottom: the deformed weight map."),
                _picture(page, lambda: png_augmented(data.augmented), "augmented samples",
                         "augmented")]
    else:
        body = [_note("No augmented samples were saved with this run "
                      "(report_data/augmented.npz).")]
    page.section("augmentation", "Augmented samples", "\n".join(body))

    # -- curves
    log_path = run_dir / "log.csv"
    log = None
    if log_path.exists():
        try:
            log = read_log(log_path)
        except UnetlabError as e:
            body = [_note(str(e))]
    if log is not None:
        body = [_picture(page, lambda: png_curves(log), "training curves", "curves")]
        if not _validation_columns(log):
            body.append(_note("This run logged no validation metrics (no validation set)."))
        it = log.get("iteration")
        if it is not None and len(it):
            body.append(_caption(f"{len(it)} log rows, last iteration {int(np.nanmax(it))}."))
        tcol = next((c for c in ("seconds", "time", "elapsed") if c in log), None)
        if tcol and np.isfinite(log[tcol]).any() and not any(k.startswith("training")
                                                              for k in timing):
            timing["training (log.csv)"] = float(np.nanmax(log[tcol]))
    elif not log_path.exists():
        body = [_note("No log.csv in the run folder: no training curves.")]
    page.section("curves", "Training curves", "\n".join(body))

    # -- prediction
    if data.pred_image is not None and data.pred_prob is not None:
        body = [_caption("Overlap-tile prediction (Fig. 2) of the image below: P(cell) from the "
                         "pixel-wise soft-max, and the instances split from it. The yellow box "
                         "marks the full-resolution crop of the second row."),
                _picture(page, lambda: png_prediction(data.pred_image, data.pred_prob,
                                                      data.pred_instances),
                         "prediction", "prediction")]
    else:
        body = [_note("No prediction was saved with this run (report_data/prediction.npz).")]
    page.section("prediction", "Prediction", "\n".join(body))

    # -- errors
    if data.gt_instances is not None and data.pred_instances is not None:
        body = [_caption("Object-level errors of the predicted instances against the ground "
                         "truth: a <b>merge</b> is a predicted object holding most of two or more "
                         "true cells, a <b>split</b> a true cell most of whose area falls in two or "
                         "more predicted pieces, <b>missed</b> a true cell predicted mostly as "
                         "background, <b>false positive</b> a predicted object lying mostly on "
                         "background."),
                _picture(page, lambda: png_errors(data.pred_image if data.pred_image is not None
                                                  else data.gt_instances > 0,
                                                  data.gt_instances, data.pred_instances),
                         "split and merge errors", "errors")]
    else:
        body = [_note("No ground truth for the predicted image: no error map.")]
    page.section("errors", "Split and merge errors", "\n".join(body))

    # -- metrics
    if data.metrics:
        body = [_metrics_html(data.metrics)]
    else:
        body = [_note("No metrics were saved with this run (report_data/metrics.json).")]
    page.section("metrics", "Metrics", "\n".join(body))

    # -- configuration
    cfg = run_dir / "config.toml"
    if cfg.exists():
        try:
            text = cfg.read_text(encoding="utf-8")
            body = [f"<pre>{html.escape(text)}</pre>"]
        except (OSError, UnicodeDecodeError) as e:
            body = [_note(f"{cfg}: unreadable ({e})")]
    else:
        body = [_note("No config.toml in the run folder.")]
    page.section("configuration", "Configuration", "\n".join(body))

    # -- timing
    timing["report"] = time.perf_counter() - t0
    before = timing.pop("total before the report", None)
    if isinstance(before, (int, float)):
        timing["total"] = before + timing["report"]
    rows = [(k, _seconds(v)) for k, v in timing.items() if isinstance(v, (int, float))]
    body = [_table(["stage", "wall-clock time"], rows)]
    page.section("timing", "Timing", "\n".join(body))

    from .. import __version__

    nav = "".join(f'<a href="#{a}">{html.escape(h)}</a>' for a, h in SECTIONS)
    doc = (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
           f"<title>{html.escape(data.title)} — unetlab report</title><style>{_CSS}</style>"
           f"</head><body><header><h1>{html.escape(data.title)}</h1><p>unetlab {__version__} · "
           f"U-Net (Ronneberger, Fischer &amp; Brox, MICCAI 2015) · report written "
           f"{time.strftime('%Y-%m-%d %H:%M')}</p></header><nav>{nav}</nav><main>\n"
           + "\n".join(page.parts) + "\n</main></body></html>\n")
    try:
        atomic_write_text(out, doc)
    except OSError as e:
        raise UnetlabError(f"{out}: cannot write the report ({e.strerror or e})") from None
    _readable(out)
    return out
