"""napari widgets: segment an image layer with a U-Net, and train one from an image and a
labels layer. Both run their work in a worker thread, show a progress bar and can be
cancelled; results arrive as new layers.

* :class:`PredictWidget` — model (a shipped model's name, a model file or a run folder),
  image layer, 8-fold test-time augmentation on/off, tile size (0 = automatic), precision; adds
  ``<image> P(class k)`` (an image layer, float32 in [0, 1]) and ``<image> instances`` (a labels
  layer, watershed instances of P(cell), :func:`unetlab.postprocess.to_instances`).
* :class:`TrainWidget` — image layer, labels layer (instances or a binary mask), time budget in
  minutes, run folder; trains with the device-aware defaults of ``unetlab train`` and then
  offers the trained model to the predict widget.

The computation is the library's (:func:`unetlab.predict.predict_tiled`,
:func:`unetlab.training.train`); the widgets only collect settings and show results.
"""
from __future__ import annotations

import threading
import weakref
from pathlib import Path

import numpy as np
from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QFileDialog, QFormLayout,
                            QHBoxLayout, QLabel, QLineEdit, QProgressBar, QPushButton, QSpinBox,
                            QVBoxLayout, QWidget)

__all__ = ["PredictWidget", "TrainWidget", "Cancelled", "resolve_model_path"]


class Cancelled(Exception):
    """Raised inside the worker when the user pressed Cancel."""


_CANCELLED = object()     # what a cancelled worker returns
_PREDICT_WIDGETS: "weakref.WeakSet[PredictWidget]" = weakref.WeakSet()   # the live ones


class _Progress(QObject):
    """A tqdm-like counter (``total``, ``update(n)``) that reports to the GUI thread through a
    Qt signal and stops the computation (raises :class:`Cancelled`) once cancelled."""

    changed = Signal(int, int)

    def __init__(self):
        super().__init__()
        self.total: int | None = None
        self.n = 0
        self.cancel = threading.Event()

    def update(self, k: int = 1) -> None:
        if self.cancel.is_set():
            raise Cancelled()
        self.n += int(k)
        self.changed.emit(self.n, int(self.total or 0))


def resolve_model_path(text: str) -> str:
    """A model file, or a run folder's ``best.pt`` (else its ``model.pt``); other text (e.g.
    a shipped model's name, which :func:`unetlab.load_model` resolves) is returned as is."""
    p = Path(text).expanduser()
    if p.is_dir():
        for name in ("best.pt", "model.pt"):
            if (p / name).is_file():
                return str(p / name)
    return str(p) if p.exists() else text


def _load(text: str):
    from ..checkpoint import load_model

    return load_model(resolve_model_path(text))


def _layer_choice(viewer, kind: str, box: QComboBox) -> None:
    """Keep ``box`` listing the viewer's layers of type ``kind`` ("Image" or "Labels")."""
    def refresh(*_):
        current = box.currentText()
        box.clear()
        names = [lay.name for lay in viewer.layers if type(lay).__name__ == kind]
        box.addItems(names)
        if current in names:
            box.setCurrentText(current)
    viewer.layers.events.inserted.connect(refresh)
    viewer.layers.events.removed.connect(refresh)
    refresh()


class _Job(QWidget):
    """Run / Cancel buttons, a progress bar and a status line around one worker."""

    def __init__(self, run_text: str):
        super().__init__()
        self.run_button = QPushButton(run_text)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.bar = QProgressBar()
        self.status = QLabel("")
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(buttons)
        lay.addWidget(self.bar)
        lay.addWidget(self.status)
        self.progress: _Progress | None = None
        self.worker = None
        self.cancel_button.clicked.connect(self.cancel)

    def start(self, fn, on_done) -> None:
        from napari.qt.threading import create_worker

        self.progress = _Progress()
        self.progress.changed.connect(self._show)

        def work(progress):
            try:
                return fn(progress)
            except Cancelled:
                return _CANCELLED

        def done(result):
            if result is _CANCELLED:
                self.status.setText("cancelled")
            else:
                on_done(result)

        self.worker = create_worker(work, self.progress, _start_thread=False)
        self.worker.returned.connect(done)
        self.worker.errored.connect(self._failed)
        self.worker.finished.connect(self._finished)
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.bar.setValue(0)
        self.status.setText("running…")
        self.worker.start()

    def cancel(self) -> None:
        if self.progress is not None:
            self.progress.cancel.set()
            self.status.setText("cancelling…")

    def _show(self, n: int, total: int) -> None:
        self.bar.setMaximum(max(total, 1))
        self.bar.setValue(n)

    def _failed(self, e: Exception) -> None:
        self.status.setText(f"error: {e}")

    def _finished(self) -> None:
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)


def _lay_out(widget, run_text: str, rows) -> _Job:
    """A form of (label, widget or layout) rows above a :class:`_Job` whose run button calls
    ``widget.run``; returns the job."""
    form = QFormLayout()
    for label, item in rows:
        form.addRow(label, item)
    job = _Job(run_text)
    job.run_button.clicked.connect(widget.run)
    lay = QVBoxLayout(widget)
    lay.addLayout(form)
    lay.addWidget(job)
    lay.addStretch(1)
    return job


class PredictWidget(QWidget):
    """Overlap-tile prediction of an image layer (see the module docstring)."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        _PREDICT_WIDGETS.add(self)
        self.model = QComboBox()
        self.model.setEditable(True)
        from ..hardware import PRECISIONS
        from ..shipped import pretrained_models

        self.model.addItems(sorted(pretrained_models()))     # the shipped models, by name
        browse = QPushButton("…")
        browse.clicked.connect(self._browse)
        row = QHBoxLayout()
        row.addWidget(self.model, 1)
        row.addWidget(browse)
        self.image = QComboBox()
        _layer_choice(napari_viewer, "Image", self.image)
        self.tta = QCheckBox("8-fold test-time augmentation")
        self.tile = QSpinBox()
        self.tile.setRange(0, 8192)
        self.tile.setSpecialValueText("automatic")
        self.precision = QComboBox()
        self.precision.addItems(list(PRECISIONS))
        self.instances = QCheckBox("instances (watershed)")
        self.instances.setChecked(True)
        self.job = _lay_out(self, "Predict", [
            ("model", row), ("image", self.image), ("", self.tta),
            ("tile size (px)", self.tile), ("precision", self.precision), ("", self.instances)])

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "U-Net model", "", "Models (*.pt *.zip)")
        if path:
            self.model.setCurrentText(path)

    def settings(self) -> dict:
        return dict(model=self.model.currentText().strip(), image=self.image.currentText(),
                    tta=self.tta.isChecked(), tile=self.tile.value() or None,
                    precision=self.precision.currentText(),
                    instances=self.instances.isChecked())

    def run(self) -> None:
        s = self.settings()
        if not s["model"] or not s["image"]:
            self.job.status.setText("choose a model and an image layer")
            return
        data = np.asarray(self.viewer.layers[s["image"]].data)
        self.job.start(lambda progress: _predict(data, s, progress), self._add_layers)

    def _add_layers(self, result) -> None:
        name = self.settings()["image"]
        prob, labels = result
        for k in range(1, prob.shape[-3]):
            self.viewer.add_image(prob[..., k, :, :], name=f"{name} P(class {k})",
                                  colormap="magma", contrast_limits=(0.0, 1.0), blending="additive")
        if labels is not None:
            self.viewer.add_labels(labels, name=f"{name} instances")
        self.job.status.setText(f"done: {prob.shape[-3]} classes"
                                + ("" if labels is None else f", {int(labels.max())} objects"))


def _predict(data: np.ndarray, s: dict, progress: _Progress):
    """Worker: (probabilities (K, H, W) or (S, K, H, W), instance labels or None)."""
    from ..hardware import resolve_precision
    from ..postprocess import to_instances
    from ..predict import predict_tiled

    net = _load(s["model"])
    precision = resolve_precision(s["precision"], "cpu")
    prob = predict_tiled(net, data, tile_size=s["tile"], tta=s["tta"], progress=progress,
                         precision=precision)
    labels = None
    if s["instances"]:
        cells = prob[..., -1, :, :]
        labels = (to_instances(cells) if cells.ndim == 2 else
                  np.stack([to_instances(c) for c in cells])).astype(np.int32)
    return prob, labels


class TrainWidget(QWidget):
    """Train a U-Net from an image layer and a labels layer within a time budget."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.image = QComboBox()
        _layer_choice(napari_viewer, "Image", self.image)
        self.labels = QComboBox()
        _layer_choice(napari_viewer, "Labels", self.labels)
        self.minutes = QDoubleSpinBox()
        self.minutes.setRange(0.1, 24 * 60)
        self.minutes.setValue(15.0)
        self.minutes.setSuffix(" min")
        self.run_dir = QLineEdit(str(Path.home() / "unetlab-runs" / "napari"))
        self.trained: str | None = None
        self.job = _lay_out(self, "Train", [
            ("image", self.image), ("labels", self.labels), ("time budget", self.minutes),
            ("run folder", self.run_dir)])

    def run(self) -> None:
        if not self.image.currentText() or not self.labels.currentText():
            self.job.status.setText("choose an image layer and a labels layer")
            return
        image = np.asarray(self.viewer.layers[self.image.currentText()].data)
        labels = np.asarray(self.viewer.layers[self.labels.currentText()].data)
        out, minutes = self.run_dir.text().strip(), float(self.minutes.value())
        self.job.start(lambda progress: train_from_arrays(image, labels, out, minutes, progress),
                       self._done)

    def _done(self, model_path: str) -> None:
        self.trained = model_path
        self.job.status.setText(f"trained: {model_path}")
        for w in list(_PREDICT_WIDGETS):         # hand the model to this viewer's predictors
            if w.viewer is self.viewer:
                w.model.setCurrentText(model_path)


def train_from_arrays(image: np.ndarray, labels: np.ndarray, out: str, minutes: float,
                      progress=None, **options) -> str:
    """Train on one image and its labels (instances or a binary mask, same (H, W); 0 =
    background) within ``minutes`` of wall-clock time; returns the path of the model to use
    (``best.pt`` when validation ran, else ``model.pt``).

    The pair is written as ``out/data/images/00.tif`` and ``out/data/labels/00.tif`` and the
    run goes to a new folder ``out/run-YYYYmmdd-HHMMSS`` (self-contained, never replacing an
    earlier run). The recipe is ``unetlab train``'s for this device
    (:func:`unetlab.training.presets.recipe`, preset 'auto'); ``options`` override it (any
    :class:`TrainConfig` field).
    ``progress``: a :class:`_Progress`-like object; cancelling it stops training after the
    current step, with a checkpoint saved (``unetlab train --resume`` continues it)."""
    import time

    from ..errors import UnetlabError
    from ..training import TrainingInterrupted, train
    from ..training.presets import recipe
    from ..writers import write_tiff

    image, labels = np.asarray(image), np.asarray(labels)
    if labels.ndim != 2 or image.shape[-2:] != labels.shape:
        raise UnetlabError(f"labels {labels.shape} must be one (H, W) image matching the "
                           f"image {image.shape}")
    data = Path(out) / "data"
    for sub, arr in (("images", image), ("labels", labels.astype(np.int32))):
        (data / sub).mkdir(parents=True, exist_ok=True)
        write_tiff(data / sub / "00.tif", arr)
    run = Path(out) / time.strftime("run-%Y%m%d-%H%M%S")
    config = recipe("auto", **{"data": str(data), "out": str(run),
                               "time": f"{minutes * 60:.0f}s", "progress": False, **options})
    started, budget = time.monotonic(), max(minutes * 60.0, 1.0)

    def tick(iteration: int, loss: float) -> None:
        if progress is None:
            return
        progress.total = int(budget)
        try:
            progress.update(int(time.monotonic() - started) - progress.n)
        except Cancelled:
            raise KeyboardInterrupt from None       # the trainer saves, then stops

    try:
        train(config, callback=tick, say=lambda msg: None)
    except TrainingInterrupted:
        raise Cancelled() from None
    best = run / "best.pt"
    return str(best if best.is_file() else run / "model.pt")
