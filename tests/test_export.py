"""unetlab.export: TorchScript / ONNX files reproduce the network's outputs (within 1e-4)."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from unetlab.checkpoint import save_model
from unetlab.cli import main
from unetlab.errors import UnetlabError
from unetlab.export import export_model, export_onnx, export_torchscript
from unetlab.model import UNet

pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.load.*:DeprecationWarning")


def _net(padding: str, **kw) -> UNet:
    torch.manual_seed(0)
    return UNet(depth=2, width=4, padding=padding, **kw).eval()


def _sizes(net: UNet) -> tuple[int, int, int]:
    """(trace size, another height, another width): all valid, all different."""
    t = net.valid_input_size(2 * net.lattice)
    h = net.valid_input_size(t + 1)
    w = net.valid_input_size(h + 1)
    return t, h, w


@pytest.fixture
def model_file(tmp_path):
    net = _net("valid")
    path = tmp_path / "model.pt"
    save_model(net, path)
    return net, path


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_torchscript_reproduces_outputs_at_other_sizes(tmp_path, padding):
    net = _net(padding)
    out = export_torchscript(net, tmp_path / "m.ts")
    ts = torch.jit.load(str(out))
    t, h, w = _sizes(net)
    for shape in [(1, 1, t, t), (2, 1, h, w)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            ref = net(x)
            got = ts(x)
        assert got.shape == ref.shape
        assert (got - ref).abs().max().item() <= 1e-4
    # the second input really is not the trace size, and has the network's geometry
    assert ref.shape[-2:] == (net.output_size(h), net.output_size(w))


def test_torchscript_probabilities_and_metadata(tmp_path):
    net = _net("valid", norm="batch", dropout=0.5)
    out = export_torchscript(net, tmp_path / "p.ts", probabilities=True)
    extra = {"unetlab.json": ""}
    ts = torch.jit.load(str(out), _extra_files=extra)
    meta = json.loads(extra["unetlab.json"])
    assert meta["context"] == net.context and meta["output"] == "probabilities"
    assert UNet.from_config(meta["config"]).config() == net.config()
    _, h, w = _sizes(net)
    x = torch.randn(1, 1, h, w)
    with torch.no_grad():
        ref = torch.softmax(net(x), dim=1)
        got = ts(x)
    assert torch.allclose(got.sum(1), torch.ones(()), atol=1e-5)
    assert (got - ref).abs().max().item() <= 1e-4


def test_export_from_model_file_and_no_leftovers(tmp_path, model_file):
    net, path = model_file
    outdir = tmp_path / "out"
    outdir.mkdir()
    out = export_model(path, outdir / "m.ts", format="torchscript")
    assert [p.name for p in outdir.iterdir()] == ["m.ts"]  # atomic: no temp file left
    _, h, _ = _sizes(net)
    x = torch.randn(1, 1, h, h)
    with torch.no_grad():
        assert (torch.jit.load(str(out))(x) - net(x)).abs().max().item() <= 1e-4


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_onnx_round_trip_with_onnxruntime(tmp_path, padding):
    pytest.importorskip("onnx", reason="the onnx extra (onnx) is not installed")
    ort = pytest.importorskip("onnxruntime", reason="the onnx extra (onnxruntime) is not installed")
    import onnx

    net = _net(padding)
    out = export_onnx(net, tmp_path / "m.onnx")
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(props["unetlab"])["config"] == net.config()
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    t, h, w = _sizes(net)
    for shape in [(1, 1, t, t), (2, 1, h, w)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            ref = net(x).numpy()
        got = sess.run(None, {"image": x.numpy()})[0]
        assert got.shape == ref.shape
        assert np.abs(got - ref).max() <= 1e-4


def test_onnx_missing_extra_is_one_clear_line(tmp_path, monkeypatch, capsys, model_file):
    _, path = model_file
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx -> ImportError
    with pytest.raises(UnetlabError, match="onnx extra is missing"):
        export_onnx(_net("valid"), tmp_path / "m.onnx")
    assert main(["export", str(path), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "onnx extra is missing" in err
    assert not (tmp_path / "m.onnx").exists()


def test_cli_export_writes_working_file(tmp_path, capsys, model_file):
    net, path = model_file
    out = tmp_path / "cli.ts"
    assert main(["export", str(path), "--out", str(out), "--format", "torchscript"]) == 0
    assert str(out) in capsys.readouterr().out
    t, _, _ = _sizes(net)
    x = torch.randn(1, 1, t, t)
    with torch.no_grad():
        assert (torch.jit.load(str(out))(x) - net(x)).abs().max().item() <= 1e-4


@pytest.mark.parametrize("case", ["not_a_model", "text_file", "missing", "format", "out_dir",
                                  "out_parent"])
def test_cli_bad_inputs_give_one_line_and_exit_2(tmp_path, capsys, model_file, case):
    _, path = model_file
    out = tmp_path / "x.ts"
    args = [str(path), "--out", str(out)]
    if case == "not_a_model":
        torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
        args[0] = str(tmp_path / "other.pt")
    elif case == "text_file":
        (tmp_path / "notes.txt").write_text("hello")
        args[0] = str(tmp_path / "notes.txt")
    elif case == "missing":
        args[0] = str(tmp_path / "nope.pt")
    elif case == "format":
        args += ["--format", "tflite"]
    elif case == "out_dir":
        args[2] = str(tmp_path)
    elif case == "out_parent":
        args[2] = str(tmp_path / "no" / "such" / "x.ts")
    assert main(["export", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("unetlab: error:")
    expected = {"not_a_model": "not a unetlab model", "text_file": "notes.txt: not a model file",
                "missing": "no such file", "format": "tflite", "out_dir": "is a folder",
                "out_parent": "does not exist"}[case]
    assert expected in err
    assert not out.exists()


def test_cli_export_never_replaces_the_model_and_needs_overwrite(tmp_path, capsys, model_file):
    _, path = model_file
    before = path.read_bytes()
    assert main(["export", str(path), "--out", str(path)]) == 2
    err = capsys.readouterr().err
    assert "is the model file itself" in err and len(err.strip().splitlines()) == 1
    assert main(["export", str(path), "--out", str(path), "--overwrite"]) == 2
    assert path.read_bytes() == before                      # the model is untouched
    out = tmp_path / "m.ts"
    out.write_text("keep me")
    assert main(["export", str(path), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err and out.read_text() == "keep me"
    assert main(["export", str(path), "--out", str(out), "--overwrite"]) == 0
    assert torch.jit.load(str(out)) is not None
    assert main(["export", str(path), "--out", ""]) == 2
    assert "empty" in capsys.readouterr().err
