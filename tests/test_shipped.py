"""The models shipped with unetlab (``unetlab.pretrained``, ``unetlab models``, ``predict
--model NAME``): present, small, loaded ``weights_only``, and segmenting EM membranes."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import unetlab
from unetlab.cli import main
from unetlab.shipped import pretrained_models, resolve_model_path, shipped_model_path

from conftest import SHARED_DATA

ISBI = SHARED_DATA / "isbi2012"


def test_em_membranes_is_shipped_small_and_weights_only():
    models = pretrained_models()
    assert "em-membranes" in models
    path = models["em-membranes"].path
    assert path.stat().st_size <= 25 * 2**20
    obj = torch.load(path, map_location="cpu", weights_only=True)   # no pickled code
    assert obj["format"] == "unetlab-model"
    net = unetlab.pretrained("em-membranes")
    assert not net.training and net.in_channels == 1 and net.num_classes == 2


def test_names_resolve_but_files_win(tmp_path, monkeypatch):
    assert resolve_model_path("em-membranes") == shipped_model_path("em-membranes")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "em-membranes").write_bytes(b"")            # a file of that name wins
    assert str(resolve_model_path("em-membranes")) == "em-membranes"
    with pytest.raises(unetlab.UnetlabError, match="no shipped model of that name"):
        unetlab.pretrained("em-membrane")


def test_models_verb_lists_them(capsys):
    assert main(["models", "--paths"]) == 0
    out = capsys.readouterr().out
    assert "em-membranes" in out and "MiB" in out and "em-membranes.pt" in out


def test_unknown_name_is_a_one_line_error(tmp_path, capsys):
    img = tmp_path / "a.png"
    from unetlab.writers import write_png

    write_png(img, np.zeros((64, 64), np.uint8))
    assert main(["predict", "--model", "em-membrane", str(img), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "no such file (nor a shipped model: em-membranes)" in err and "Traceback" not in err


@pytest.mark.skipif(not ISBI.is_dir(), reason=f"{ISBI} not present (shared data)")
def test_predict_with_the_shipped_model_segments_membranes(tmp_path, capsys):
    """On a training slice (seen in training: a check that the shipped weights are the trained
    ones, not a held-out score) the pixel error is that of a trained model."""
    from unetlab.data import read_image
    from unetlab.metrics import pixel_fscore

    out = tmp_path / "o"
    args = ["predict", "--model", "em-membranes", str(ISBI / "train/image/03.png"), "--out",
            str(out), "--threads", "1", "--quiet", "--precision", "fp32", "--no-overlay"]
    assert main(args) == 0
    import tifffile

    prob = tifffile.imread(out / "03_prob.tif")
    label = read_image(ISBI / "train/label/03.png") > 0
    assert prob.shape == label.shape and 0 <= prob.min() and prob.max() <= 1
    pixel_error = 1 - max(pixel_fscore(label, prob, t) for t in np.linspace(0, 1, 11))
    assert pixel_error < 0.06
