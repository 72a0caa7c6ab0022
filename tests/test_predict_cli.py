"""``unetlab predict`` end to end on a tiny saved model, and its bad inputs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from unetlab.checkpoint import load_model, save_model
from unetlab.cli import main
from unetlab.commands.predict import safe_stem
from unetlab.data import normalize_image
from unetlab.model import UNet
from unetlab.predict import predict_tiled


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _model(path: Path, **kw) -> Path:
    torch.manual_seed(0)
    opts = dict(depth=2, width=3)
    opts.update(kw)
    save_model(UNet(**opts), path)
    return path


def _cells(shape=(45, 52), seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    img = 30 + rng.normal(0, 5, shape)
    for cy, cx in [(12, 14), (30, 35), (20, 40)]:
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < 64] += 150
    return img.clip(0, 255).astype(np.uint8)


def _files(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def test_predict_png_and_stack_end_to_end(tmp_path, capsys):
    import imageio.v3 as iio

    model = _model(tmp_path / "model.pt")
    img = _cells()
    iio.imwrite(tmp_path / "a.png", img)
    stack = np.stack([_cells(seed=s) for s in range(3)])
    tifffile.imwrite(tmp_path / "vol.tif", stack, photometric="minisblack")
    out = tmp_path / "out"
    rc = main(["predict", str(model), str(tmp_path / "a.png"), str(tmp_path / "vol.tif"),
               "--out", str(out), "--instances", "--tile", "60", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    names = _files(out)
    assert {"a_prob.tif", "a_labels.tif", "a_overlay.png", "vol_prob.tif", "vol_labels.tif",
            "vol_overlay_z0000.png"} <= set(names)
    assert not [n for n in names if n.startswith(".") or ".tmp" in n]
    net = load_model(model)
    prob = tifffile.imread(out / "a_prob.tif")
    assert prob.dtype == np.float32 and prob.shape == img.shape
    ref = predict_tiled(net, normalize_image(img)[0], tile_size=60)[1]     # P(cell) = class 1
    assert np.abs(prob - ref).max() < 1e-5
    vol = tifffile.imread(out / "vol_prob.tif")
    assert vol.shape == stack.shape
    assert np.abs(vol[2] - predict_tiled(net, normalize_image(stack[2])[0],
                                         tile_size=60)[1]).max() < 1e-5
    lab = tifffile.imread(out / "a_labels.tif")
    assert lab.shape == img.shape and lab.dtype == np.int32
    ov = iio.imread(out / "a_overlay.png")
    assert ov.shape == img.shape + (3,)


def test_predict_zarr_png_tta_multiclass(tmp_path, capsys):
    import imageio.v3 as iio
    import zarr

    model = _model(tmp_path / "m3.pt", num_classes=3)
    img = _cells()
    iio.imwrite(tmp_path / "x.png", img)
    out = tmp_path / "o"
    assert main(["predict", str(model), str(tmp_path / "x.png"), "--out", str(out),
                 "--format", "zarr", "--tta", "--quiet", "--no-overlay"]) == 0
    z = zarr.open_array(store=str(out / "x_prob.zarr"), mode="r")
    assert z.attrs["unetlab"]["complete"] is True
    ref = predict_tiled(load_model(model), normalize_image(img)[0], tta=True)
    assert z.shape == (3,) + img.shape and np.abs(np.asarray(z[:]) - ref).max() < 1e-5
    assert main(["predict", str(model), str(tmp_path / "x.png"), "--out", str(out),
                 "--format", "png", "--quiet"]) == 0
    assert {"x_prob_c0.png", "x_prob_c1.png", "x_prob_c2.png", "x_overlay.png"} <= set(_files(out))
    p0 = iio.imread(out / "x_prob_c0.png")
    assert p0.dtype == np.uint8 and p0.shape == img.shape


def test_big_tiff_is_read_lazily(tmp_path, monkeypatch):
    from unetlab.commands import predict as cmd

    model = _model(tmp_path / "model.pt")
    img = _cells((70, 90)).astype(np.uint16) * 100
    tifffile.imwrite(tmp_path / "big.tif", img, tile=(32, 32), compression="zlib")
    monkeypatch.setattr(cmd, "LAZY_PIXELS", 100)       # treat it as huge: zarr over the TIFF
    opened = {}
    real = cmd._open_lazy

    def spy(path):
        opened["lazy"] = real(path)
        return opened["lazy"]

    monkeypatch.setattr(cmd, "_open_lazy", spy)
    assert main(["predict", str(model), str(tmp_path / "big.tif"), "--out", str(tmp_path / "o"),
                 "--quiet", "--tile", "80"]) == 0
    assert "lazy" in opened and not isinstance(opened["lazy"], np.ndarray)
    prob = tifffile.imread(tmp_path / "o" / "big_prob.tif")
    ref = predict_tiled(load_model(model), normalize_image(img)[0], tile_size=80)[1]
    assert np.abs(prob - ref).max() < 1e-5


def test_tiff_with_tta_keeps_p_cell(tmp_path):
    """2-class TIFF output stores only P(class 1); with --tta the 8 terms are added into it."""
    import imageio.v3 as iio

    model = _model(tmp_path / "model.pt")
    img = _cells((40, 33))
    iio.imwrite(tmp_path / "t.png", img)
    assert main(["predict", str(model), str(tmp_path / "t.png"), "--out", str(tmp_path / "o"),
                 "--tta", "--quiet", "--no-overlay", "--tile", "60"]) == 0
    prob = tifffile.imread(tmp_path / "o" / "t_prob.tif")
    ref = predict_tiled(load_model(model), normalize_image(img)[0], tta=True, tile_size=60)[1]
    assert np.abs(prob - ref).max() < 1e-5


def test_output_names_stay_inside(tmp_path):
    assert safe_stem(Path("../../etc/passwd.png")) == "passwd"
    assert safe_stem(Path("..png")) == "image"
    assert safe_stem(Path("a b/ü*x.tif")) == "_x"
    assert "/" not in safe_stem(Path("x\\..\\y.png"))
    import imageio.v3 as iio

    model = _model(tmp_path / "model.pt")
    src = tmp_path / "in"
    src.mkdir()
    iio.imwrite(src / "..png", _cells())
    out = tmp_path / "out"
    assert main(["predict", str(model), str(src / "..png"), "--out", str(out), "--quiet",
                 "--no-overlay"]) == 0
    assert _files(out) == ["image_prob.tif"]
    assert _files(tmp_path) == ["in", "model.pt", "out"]


def _fails(capsys, argv, *words):
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and err.startswith("unetlab: error:")
    for w in words:
        assert w in err, err
    return err


def test_bad_inputs_one_clear_error_nothing_written(tmp_path, capsys):
    import imageio.v3 as iio

    model = _model(tmp_path / "model.pt")
    good = tmp_path / "good.png"
    iio.imwrite(good, _cells())
    out = tmp_path / "out"
    # a model file that is not a unetlab model
    junk = tmp_path / "junk.pt"
    junk.write_text("not a model")
    _fails(capsys, ["predict", str(junk), str(good), "--out", str(out)], "junk.pt")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    _fails(capsys, ["predict", str(foreign), str(good), "--out", str(out)], "foreign.pt",
           "not a unetlab model")
    # channel count that does not match the model
    rgb = tmp_path / "rgb.png"
    iio.imwrite(rgb, np.stack([_cells()] * 3, -1))
    _fails(capsys, ["predict", str(model), str(rgb), "--out", str(out)], "rgb.png", "channel")
    # unreadable images
    bad = tmp_path / "bad.png"
    bad.write_text("this is not a picture")
    _fails(capsys, ["predict", str(model), str(bad), "--out", str(out)], "bad.png")
    trunc = tmp_path / "trunc.tif"
    tifffile.imwrite(tmp_path / "full.tif", _cells())
    trunc.write_bytes((tmp_path / "full.tif").read_bytes()[:100])
    _fails(capsys, ["predict", str(model), str(trunc), "--out", str(out)], "trunc.tif")
    _fails(capsys, ["predict", str(model), str(good), "--out", str(out), "--tile", "0"], "--tile")
    assert not out.exists() or _files(out) == []


def test_interrupted_write_leaves_nothing_complete(tmp_path, capsys, monkeypatch):
    import imageio.v3 as iio

    import unetlab.predict as pr

    model = _model(tmp_path / "model.pt")
    iio.imwrite(tmp_path / "a.png", _cells())
    real = pr.predict_tiled

    def boom(*a, **k):
        raise KeyboardInterrupt

    for fmt in ("tif", "zarr"):
        out = tmp_path / f"out_{fmt}"
        monkeypatch.setattr(pr, "predict_tiled", boom)
        assert main(["predict", str(model), str(tmp_path / "a.png"), "--out", str(out),
                     "--format", fmt, "--quiet"]) == 130
        assert [n for n in _files(out) if not n.startswith(".")] == []
        assert _files(out) == []            # temporaries removed as well
        monkeypatch.setattr(pr, "predict_tiled", real)


def _identity_model(path: Path) -> Path:
    """A depth-2 "same" U-Net whose cell logit is 10·relu(image) − 2 (the image as normalised
    by predict): only the identity path through the first level and the top skip is non-zero."""
    net = UNet(depth=2, width=3, padding="same")
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        route = [*net.down[0].modules(), *net.up_blocks[-1].modules()]
        for conv in (m for m in route if isinstance(m, torch.nn.Conv2d)):
            conv.weight[0, 0, 1, 1] = 1.0                   # 3×3 centre tap: channel 0 passes
        net.head.weight[1, 0] = 10.0
        net.head.bias[1] = -2.0
    save_model(net, path)
    return path


def test_seed_h_reaches_the_watershed(tmp_path, capsys):
    """--seed-h is passed to postprocess.to_instances(h=...): two discs joined by a neck (the
    smaller disc's distance maximum is ~4 px above the neck) are two cells with --seed-h 1 and
    one with --seed-h 6; the default h (2) would give two for both."""
    import imageio.v3 as iio

    from unetlab.postprocess import to_instances

    model = _identity_model(tmp_path / "model.pt")
    yy, xx = np.mgrid[:48, :64]
    img = np.zeros((48, 64), np.uint8)
    img[((yy - 24) ** 2 + (xx - 22) ** 2 <= 100) | ((yy - 24) ** 2 + (xx - 38) ** 2 <= 81)] = 200
    iio.imwrite(tmp_path / "a.png", img)
    counts = {}
    for h in (1, 6):
        out = tmp_path / f"out{h}"
        rc = main(["predict", str(model), str(tmp_path / "a.png"), "--out", str(out),
                   "--instances", "--quiet", "--seed-h", str(h), "--no-overlay"])
        assert rc == 0, capsys.readouterr().err
        prob = tifffile.imread(out / "a_prob.tif")
        lab = tifffile.imread(out / "a_labels.tif")
        assert np.array_equal(lab, to_instances(prob, h=float(h)))
        counts[h] = int(lab.max())
    assert counts == {1: 2, 6: 1}
    assert main(["predict", str(model), str(tmp_path / "a.png"), "--out", str(out),
                 "--seed-h", "nan"]) == 2
    assert "--seed-h" in capsys.readouterr().err
