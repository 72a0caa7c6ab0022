"""bioimage.io packages: valid format 0.5, bioimageio.core's own model test, equal predictions,
and the package read back as a UNet."""
import zipfile

import numpy as np
import pytest
import torch

pytest.importorskip("bioimageio.core", reason="the bioimageio extra is not installed")
from bioimageio.core import create_prediction_pipeline, predict  # noqa: E402
from bioimageio.core import test_model as core_model_test  # noqa: E402
from bioimageio.spec import load_description  # noqa: E402

from unetlab.bioimageio import export_bioimageio, is_bioimageio_package, load_bioimageio  # noqa: E402
from unetlab.data import normalize_image  # noqa: E402
from unetlab.errors import UnetlabError  # noqa: E402
from unetlab.model import UNet  # noqa: E402


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    torch.manual_seed(0)
    net = UNet(width=2, depth=4).eval()          # the paper's geometry: 188 + 16 n, −184
    rng = np.random.default_rng(1)
    img = (rng.random((300, 300)) * 200 + 20).astype(np.float32)
    path = export_bioimageio(net, tmp_path_factory.mktemp("bio") / "m.zip", test_image=img,
                             authors=["Test Author"])
    return net, path


def test_description_is_valid_and_holds_the_geometry(package):
    net, path = package
    d = load_description(path)
    assert d.validation_summary.status == "valid-format", d.validation_summary
    assert str(d.format_version).startswith("0.5")
    y = next(a for a in d.inputs[0].axes if str(a.id) == "y")
    assert (y.size.min, y.size.step) == (188, 16)
    y_out = next(a for a in d.outputs[0].axes if str(a.id) == "y")
    assert y_out.size.offset == -184
    assert d.weights.pytorch_state_dict is not None and d.weights.torchscript is not None
    assert any("10.1007/978-3-319-24574-4_28" in str(c.doi) for c in d.cite)
    assert [p.id for p in d.inputs[0].preprocessing if p.id != "ensure_dtype"] == ["scale_range"]
    assert d.covers and d.documentation


def test_bioimageio_core_model_test_passes_offline(package):
    summary = core_model_test(package[1])
    assert summary.status == "passed", summary.format()


@pytest.mark.parametrize("weights", ["pytorch_state_dict", "torchscript"])
def test_core_prediction_equals_unetlab(package, weights):
    net, path = package
    with zipfile.ZipFile(path) as z:
        with z.open("test_input.npy") as f:
            x = np.load(f)
    pipeline = create_prediction_pipeline(load_description(path), weight_format=weights)
    out = predict(model=pipeline, inputs=x)
    got = next(iter(out.members.values())).data.values
    xn = normalize_image(x[0])                                   # unetlab's normalisation
    with torch.no_grad():
        mine = torch.softmax(net(torch.from_numpy(xn)[None]), 1).numpy()
    assert got.shape == mine.shape
    np.testing.assert_allclose(got, mine, atol=1e-4)


def test_package_reads_back_as_the_same_unet(package, tmp_path):
    net, path = package
    assert is_bioimageio_package(path)
    back = load_bioimageio(path)
    assert back.config() == net.config()
    for a, b in zip(net.state_dict().values(), back.state_dict().values()):
        assert torch.equal(a, b)
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as z:
        z.writestr("notes.txt", "hello")
    assert not is_bioimageio_package(other)
    with pytest.raises(UnetlabError, match="not a bioimage.io package"):
        load_bioimageio(other)


def test_existing_output_needs_overwrite(package, tmp_path):
    net, path = package
    with pytest.raises(UnetlabError, match="--overwrite"):
        export_bioimageio(net, path)


def test_same_padding_declares_a_halo_and_3d_packages_pass(tmp_path):
    torch.manual_seed(0)
    same = UNet(width=2, depth=2, padding="same").eval()
    d = load_description(export_bioimageio(same, tmp_path / "same.zip"))
    y_out = next(a for a in d.outputs[0].axes if str(a.id) == "y")
    assert y_out.halo == same.receptive_radius + same.lattice - 1 and y_out.size.offset == 0
    vol = UNet(spatial_dims=3, depth=1, width=2).eval()
    p3 = export_bioimageio(vol, tmp_path / "vol.zip")
    assert core_model_test(p3).status == "passed"
    assert [str(a.id) for a in load_description(p3).inputs[0].axes][-3:] == ["z", "y", "x"]


def test_cli_export_and_predict_with_a_package(tmp_path, capsys):
    import tifffile

    from unetlab.checkpoint import save_model
    from unetlab.cli import main

    torch.manual_seed(0)
    net = UNet(width=2, depth=2).eval()
    save_model(net, tmp_path / "model.pt")
    zip_path = tmp_path / "unet.zip"
    assert main(["export", str(tmp_path / "model.pt"), "--format", "bioimageio",
                 "--out", str(zip_path)]) == 0
    assert is_bioimageio_package(zip_path)
    img = (np.random.default_rng(0).random((70, 90)) * 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "a.tif", img)
    for model, out in ((zip_path, "p1"), (tmp_path / "model.pt", "p2")):
        assert main(["predict", str(model), str(tmp_path / "a.tif"), "--out",
                     str(tmp_path / out), "--precision", "fp32", "--quiet"]) == 0
    a, b = (tifffile.imread(tmp_path / o / "a_prob.tif") for o in ("p1", "p2"))
    np.testing.assert_array_equal(a, b)
    capsys.readouterr()
    assert main(["export", str(tmp_path / "model.pt"), "--format", "bioimageio",
                 "--out", str(zip_path)]) == 2                       # exists: --overwrite
    assert "--overwrite" in capsys.readouterr().err
