"""The napari plugin, headless (QT_QPA_PLATFORM=offscreen): manifest, prediction widget on a
real image (layers equal to the library's result), cancel, and the training widget.

The widgets are tested on napari's ``ViewerModel`` (the viewer without its OpenGL canvas, which
a headless machine cannot draw): they use only its layer list and ``add_image``/``add_labels``."""
import os

import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
napari = pytest.importorskip("napari", reason="the napari extra is not installed")
pytest.importorskip("pytestqt", reason="pytest-qt is not installed")

from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from unetlab.checkpoint import save_model  # noqa: E402
from unetlab.model import UNet  # noqa: E402

MANIFEST = Path(__file__).parents[1] / "src" / "unetlab" / "napari_plugin" / "napari.yaml"


def test_manifest_validates_and_is_registered():
    from importlib.metadata import entry_points

    from npe2 import PluginManifest

    pm = PluginManifest.from_file(MANIFEST)
    assert pm.name == "unetlab"
    assert {w.display_name for w in pm.contributions.widgets} == {"Predict (U-Net)",
                                                                  "Train (U-Net)"}
    for cmd in pm.contributions.commands:                   # every python_name imports
        module, attr = cmd.python_name.split(":")
        assert hasattr(__import__(module, fromlist=[attr]), attr)
    eps = [e for e in entry_points(group="napari.manifest") if e.name == "unetlab"]
    assert eps and eps[0].value == "unetlab.napari_plugin:napari.yaml"


@pytest.fixture
def model_file(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "model.pt"
    save_model(UNet(width=2, depth=2).eval(), path)
    return path


@pytest.fixture
def viewer(qapp):
    from napari.components import ViewerModel

    return ViewerModel()


def _image(size=120, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random((size, size)) * 200).astype(np.uint8)


def test_predict_widget_adds_probability_and_label_layers(viewer, qtbot, model_file):
    from unetlab.checkpoint import load_model
    from unetlab.napari_plugin.widgets import PredictWidget
    from unetlab.predict import predict_tiled

    img = _image()
    viewer.add_image(img, name="cells")
    w = PredictWidget(viewer)
    w.model.setCurrentText(str(model_file))
    w.precision.setCurrentText("fp32")
    assert w.image.currentText() == "cells"
    w.run()
    qtbot.waitUntil(lambda: "cells instances" in viewer.layers, timeout=60_000)
    prob = viewer.layers["cells P(class 1)"].data
    ref = predict_tiled(load_model(model_file), img, precision="fp32")
    assert prob.shape == img.shape
    np.testing.assert_allclose(prob, ref[1], atol=1e-6)
    labels = viewer.layers["cells instances"].data
    assert labels.shape == img.shape and labels.dtype == np.int32
    assert w.job.bar.value() == w.job.bar.maximum() > 0
    assert w.job.status.text().startswith("done")


def test_cancel_stops_the_prediction_and_adds_nothing(viewer, qtbot, model_file):
    from unetlab.napari_plugin.widgets import PredictWidget

    viewer.add_image(_image(900), name="big")
    w = PredictWidget(viewer)
    w.model.setCurrentText(str(model_file))
    w.tile.setValue(w.tile.minimum() or 0)
    w.tta.setChecked(True)
    w.run()
    w.job.cancel()
    qtbot.waitUntil(lambda: w.job.run_button.isEnabled(), timeout=60_000)
    assert w.job.status.text() == "cancelled"
    assert "big instances" not in viewer.layers and len(viewer.layers) == 1


def test_predict_widget_asks_for_a_model(viewer):
    from unetlab.napari_plugin.widgets import PredictWidget

    w = PredictWidget(viewer)
    w.run()
    assert "choose a model" in w.job.status.text()


def test_npe2_validate_accepts_the_installed_plugin():
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "npe2", "validate", "unetlab"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "valid" in res.stdout.lower(), res.stdout + res.stderr


def test_train_widget_trains_within_its_budget_and_hands_the_model_over(
        viewer, qtbot, tmp_path):
    from unetlab.checkpoint import load_model
    from unetlab.napari_plugin.widgets import PredictWidget, TrainWidget
    from unetlab.synthetic import touching_cells_arrays

    ((img, lab),) = touching_cells_arrays(1, 96, 0)
    viewer.add_image(img, name="cells")
    viewer.add_labels(lab.astype(np.int32), name="truth")
    w = TrainWidget(viewer)
    predictor = PredictWidget(viewer)
    assert (w.image.currentText(), w.labels.currentText()) == ("cells", "truth")
    w.minutes.setValue(0.1)
    w.run_dir.setText(str(tmp_path / "runs"))
    w.run()
    qtbot.waitUntil(lambda: w.trained is not None, timeout=120_000)
    net = load_model(w.trained)
    assert net.width == 16 and w.job.status.text().startswith("trained")
    assert predictor.model.currentText() == w.trained          # handed to the predictor
    assert (tmp_path / "runs" / "data" / "labels" / "00.tif").is_file()


def test_train_widget_cancel_keeps_a_checkpoint(tmp_path):
    from unetlab.napari_plugin.widgets import Cancelled, train_from_arrays
    from unetlab.synthetic import touching_cells_arrays

    class CancelAtOnce:
        total, n = None, 0

        def update(self, k=1):
            raise Cancelled()

    ((img, lab),) = touching_cells_arrays(1, 96, 0)
    with pytest.raises(Cancelled):
        train_from_arrays(img, lab, str(tmp_path), 0.2, CancelAtOnce(), width=2, depth=1,
                          tile=36)
    runs = list(tmp_path.glob("run-*"))
    assert len(runs) == 1 and (runs[0] / "checkpoint.pt").is_file()
