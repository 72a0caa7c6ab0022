"""``unetlab predict`` end to end on a tiny saved model, and its bad inputs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from unetlab.checkpoint import load_model, save_model
from unetlab.cli import main
from unetlab.data import normalize_image
from unetlab.model import UNet
from unetlab.predict import predict_tiled
from unetlab.prediction_io import safe_stem


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def _fp32(monkeypatch):
    """--precision auto means fp32 here, so that the CLI can be compared with fp32 references
    to 1e-5 on a CPU with native bf16 too."""
    monkeypatch.setenv("UNETLAB_NO_NATIVE_BF16", "1")


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
    from unetlab import sources

    model = _model(tmp_path / "model.pt")
    img = _cells((70, 90)).astype(np.uint16) * 100
    tifffile.imwrite(tmp_path / "big.tif", img, tile=(32, 32), compression="zlib")
    monkeypatch.setattr(sources, "LAZY_PIXELS", 100)       # treat it as huge: zarr over the TIFF
    opened = {}
    real = sources._LazyTiff._open

    def spy(self):
        opened["lazy"] = real(self)
        return opened["lazy"]

    monkeypatch.setattr(sources._LazyTiff, "_open", spy)
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


# ------------------------------------------------------------------ never lose a user's work
def test_outputs_never_replace_inputs_or_each_other(tmp_path, capsys):
    import imageio.v3 as iio

    model = _model(tmp_path / "model.pt")
    d = tmp_path / "in"
    d.mkdir()
    iio.imwrite(d / "a.png", _cells())
    tifffile.imwrite(d / "a_prob.tif", np.ones((8, 8), np.float32))    # the user's own file
    before = (d / "a_prob.tif").read_bytes()
    # a.png's output would be in/a_prob.tif, which is also an input: refused, nothing written
    _fails(capsys, ["predict", str(model), str(d / "a.png"), str(d / "a_prob.tif"),
                    "--out", str(d), "--quiet"], "a_prob.tif", "replace the input")
    assert (d / "a_prob.tif").read_bytes() == before and sorted(_files(d)) == ["a.png",
                                                                             "a_prob.tif"]
    # two inputs whose names sanitise to the same stem get distinct outputs
    for sub in ("x", "y"):
        (tmp_path / sub).mkdir()
        iio.imwrite(tmp_path / sub / "c d.png", _cells(seed=ord(sub)))
    iio.imwrite(tmp_path / "x" / "c_d_2.png", _cells(seed=7))    # would collide with a counter
    out = tmp_path / "out"
    assert main(["predict", str(model), str(tmp_path / "x" / "c d.png"),
                 str(tmp_path / "y" / "c d.png"), str(tmp_path / "x" / "c_d_2.png"),
                 "--out", str(out), "--quiet", "--no-overlay"]) == 0
    probs = sorted(n for n in _files(out) if n.endswith("_prob.tif"))
    assert probs == ["c_d_2_prob.tif", "c_d_3_prob.tif", "c_d_prob.tif"]
    a, b = (tifffile.imread(out / n) for n in ("c_d_prob.tif", "c_d_3_prob.tif"))
    assert np.abs(a - b).max() > 1e-3                      # two different images, both kept


def test_existing_outputs_need_overwrite_and_own_outputs_are_skipped(tmp_path, capsys):
    import imageio.v3 as iio

    model = _model(tmp_path / "model.pt")
    d = tmp_path / "imgs"
    d.mkdir()
    iio.imwrite(d / "a.png", _cells())
    args = ["predict", str(model), str(d), "--out", str(d), "--quiet", "--instances"]
    assert main(args) == 0
    first = set(_files(d))
    assert {"a_prob.tif", "a_labels.tif", "a_overlay.png"} <= first
    stamp = (d / "a_prob.tif").stat().st_mtime_ns
    capsys.readouterr()
    assert main(args) == 0                                      # done before: skipped, kept
    assert "skipped, its outputs exist" in capsys.readouterr().out
    assert (d / "a_prob.tif").stat().st_mtime_ns == stamp
    _fails(capsys, args + ["--method", "components", "--format", "zarr"], "--overwrite")
    (d / "a_labels.tif").unlink()                               # only some outputs exist:
    _fails(capsys, args, "a_prob.tif", "--overwrite")           # replacing them is refused
    assert (d / "a_prob.tif").stat().st_mtime_ns == stamp
    assert main(args + ["--overwrite"]) == 0
    out = capsys.readouterr().out
    assert "skipped 2 file(s)" in out                       # a_prob.tif, a_overlay.png
    assert set(_files(d)) == first                              # no a_prob_prob.tif & co.
    assert (d / "a_prob.tif").stat().st_mtime_ns != stamp      # replaced, as asked
    predicted = {ln.split(" -> ")[0] for ln in out.splitlines() if " -> " in ln}
    assert predicted == {str(d / "a.png")}
    _fails(capsys, ["predict", str(model), str(d / "a.png"), "--out", ""], "--out", "empty")


def test_options_that_would_be_ignored_are_errors(tmp_path, capsys):
    import imageio.v3 as iio

    model = _model(tmp_path / "model.pt")
    iio.imwrite(tmp_path / "a.png", _cells())
    base = ["predict", str(model), str(tmp_path / "a.png"), "--out", str(tmp_path / "o")]
    _fails(capsys, base + ["--workers", "2"], "--workers", "--dask")
    _fails(capsys, base + ["--scheduler", "tcp://x:1"], "--scheduler", "--dask")
    _fails(capsys, base + ["--dask", "--format", "tif"], "--dask", "zarr")
    _fails(capsys, base + ["--threads", "-1"], "--threads")
    _fails(capsys, base + ["--device", "tpu"], "--device")
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------ read what the file says
def test_tiff_axes_samples_last_and_multi_series(tmp_path, capsys):
    img5 = np.stack([_cells(seed=s) for s in range(5)], -1)           # (H, W, 5)
    f = tmp_path / "five.tif"
    tifffile.imwrite(f, img5, photometric="minisblack", planarconfig="contig")
    with tifffile.TiffFile(f) as tf:
        assert tf.series[0].axes == "YXS"
    # a 1-channel model: 5 channels, not 45 slices of 52 x 5
    _fails(capsys, ["predict", str(_model(tmp_path / "m1.pt")), str(f), "--out",
                    str(tmp_path / "o")], "five.tif", "5 channel")
    m5 = _model(tmp_path / "m5.pt", in_channels=5)
    assert main(["predict", str(m5), str(f), "--out", str(tmp_path / "o"), "--quiet",
                 "--no-overlay", "--tile", "60"]) == 0
    prob = tifffile.imread(tmp_path / "o" / "five_prob.tif")
    assert prob.shape == img5.shape[:2]
    ref = predict_tiled(load_model(m5), np.moveaxis(img5, -1, 0), tile_size=60)[1]
    assert np.abs(prob - ref).max() < 1e-5
    two = tmp_path / "two.tif"
    tifffile.imwrite(two, _cells())
    tifffile.imwrite(two, _cells((20, 20)), append=True)
    _fails(capsys, ["predict", str(_model(tmp_path / "m1.pt")), str(two), "--out",
                    str(tmp_path / "o2")], "two.tif", "2 image series")


def test_finite_extremes_give_finite_probabilities(tmp_path, capsys):
    model = _model(tmp_path / "model.pt")
    img = np.where(_cells() > 100, 3e38, -3e38).astype(np.float32)
    tifffile.imwrite(tmp_path / "x.tif", img)
    assert main(["predict", str(model), str(tmp_path / "x.tif"), "--out", str(tmp_path / "o"),
                 "--quiet", "--no-overlay"]) == 0
    prob = tifffile.imread(tmp_path / "o" / "x_prob.tif")
    assert np.isfinite(prob).all() and prob.min() >= 0 and prob.max() <= 1
    direct = predict_tiled(load_model(model), img)
    assert np.isfinite(direct).all()


# ------------------------------------------------------------------ the API does what the CLI does
def test_api_equals_cli_on_the_same_file(tmp_path, capsys):
    from unetlab.prediction_io import predict_files

    model = _model(tmp_path / "model.pt")
    raw = (_cells((70, 90)).astype(np.uint16) * 37)
    tifffile.imwrite(tmp_path / "raw.tif", raw)
    assert main(["predict", str(model), str(tmp_path / "raw.tif"), "--out", str(tmp_path / "o"),
                 "--quiet", "--no-overlay", "--tta", "--format", "zarr"]) == 0
    import zarr

    cli = np.asarray(zarr.open_array(str(tmp_path / "o" / "raw_prob.zarr"), mode="r")[...])
    api = predict_tiled(load_model(model), raw, tta=True)       # raw uint16, normalised inside
    assert api.shape == (2,) + raw.shape
    assert np.abs(api - cli).max() <= 1e-6
    written = predict_files(model, [tmp_path / "raw.tif"], tmp_path / "p", tta=True,
                            format="zarr", overlays=False, progress=False)
    assert [f.name for _, f in written] == ["raw_prob.zarr"]
    again = np.asarray(zarr.open_array(str(tmp_path / "p" / "raw_prob.zarr"), mode="r")[...])
    assert np.abs(again - cli).max() <= 1e-6
    # README: a (1, H, W) normalised image gives (K, H, W), not (1, K, H, W)
    one = predict_tiled(load_model(model), normalize_image(raw), normalize=False)
    assert one.shape == (2,) + raw.shape


def test_zarr_folder_is_one_input(tmp_path, capsys):
    import zarr

    model = _model(tmp_path / "model.pt")
    img = _cells((50, 61))
    zarr.open_array(str(tmp_path / "img.zarr"), mode="w", shape=img.shape, chunks=(32, 32),
                    dtype="uint8")[...] = img
    assert main(["predict", str(model), str(tmp_path / "img.zarr"), "--out",
                 str(tmp_path / "o"), "--quiet", "--no-overlay"]) == 0
    prob = tifffile.imread(tmp_path / "o" / "img_prob.tif")
    assert np.abs(prob - predict_tiled(load_model(model), img)[1]).max() < 1e-5


def test_precision_and_threads_are_chosen_and_said(tmp_path, capsys, monkeypatch):
    import imageio.v3 as iio

    model = _model(tmp_path / "model.pt")
    iio.imwrite(tmp_path / "a.png", _cells())
    assert main(["predict", str(model), str(tmp_path / "a.png"), "--out", str(tmp_path / "o"),
                 "--quiet", "--no-overlay", "--threads", "1", "--precision", "bf16"]) == 0
    out = capsys.readouterr().out
    assert "threads: 1 thread(s) as asked (--threads)" in out and "precision: bf16" in out
    bf = tifffile.imread(tmp_path / "o" / "a_prob.tif")
    ref = predict_tiled(load_model(model), iio.imread(tmp_path / "a.png"))[1]
    assert 0 < np.abs(bf - ref).max() <= 2e-2
