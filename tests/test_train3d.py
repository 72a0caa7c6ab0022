"""``unetlab train --dims 3``: volumes end to end (Çiçek et al. 2016). A tiny run through the
CLI, exact resume, sparse labels (only annotated voxels reach the loss, counted), the 3D loss
against a naive reference, the 3D validation scores against a naive SEG, the 3D presets, and
one-line errors. Tiny networks (width 2, depth 1, 28³ tiles → 12³ outputs) on small generated
volumes keep every run to seconds."""
from __future__ import annotations

import csv
import dataclasses
import inspect
import tomllib

import numpy as np
import pytest
import tifffile
import torch

from cli_helpers import run_cli
from unetlab.checkpoint import load_model, safe_load
from unetlab.errors import UnetlabError
from unetlab.synthetic import touching_cells_3d
from unetlab.training import TrainConfig, TrainingInterrupted, load_config, train
from unetlab.training import presets
from unetlab.training.build import build_net, tile_sizes
from unetlab.training.config import config_to_toml, resolve_config
from unetlab.weights import IGNORE_INDEX, sparsify

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: whether predict_tiled predicts volumes yet (branch h16pred); until then runs here validate
#: nothing and the validation tests skip
VOLUME_PREDICT = "spacing" in inspect.signature(
    __import__("unetlab.predict", fromlist=["predict_tiled"]).predict_tiled).parameters
needs_volume_predict = pytest.mark.skipif(not VOLUME_PREDICT,
                                          reason="predict_tiled does not predict volumes yet")

TINY = dict(dims=3, synthetic_images=2, synthetic_size=32, width=2, depth=1, tile=28,
            iterations=6, warmup=2, dropout=0.3, lr=0.01, checkpoint_every=2, log_every=2,
            val_every=3, progress=False, prefetch=2, seed=3, threads=1, precision="fp32",
            select="loss")

CLI = ["--dims", "3", "--synthetic-images", "2", "--synthetic-size", "32", "--width", "2",
       "--depth", "1", "--tile", "28", "--iterations", "3", "--warmup", "1", "--no-progress",
       "--checkpoint-every", "2", "--threads", "1", "--precision", "fp32", "--select", "loss"]


def tiny(tmp_path, name="run", **kw) -> TrainConfig:
    return TrainConfig(data="synthetic", out=str(tmp_path / name), **{**TINY, **kw})


def _state(path):
    return safe_load(path)["model"]["state_dict"]


def _one_line_error(res) -> str:
    err = res.err.strip()
    assert res.rc == 2 and err.startswith("unetlab: error: ") and "\n" not in err \
        and "Traceback" not in err, err
    return err


# ------------------------------------------------------------------------------ CLI run
def test_tiny_3d_run_through_the_cli(tmp_path, capsys):
    out = tmp_path / "vol"
    res = run_cli(["train", "synthetic", "--out", out, *CLI], capsys)
    assert res.rc == 0, res.err
    names = {p.name for p in out.iterdir()}
    assert {"config.toml", "checkpoint.pt", "model.pt", "log.csv", "curves.png"} <= names
    cfg = load_config(out / "config.toml")
    assert (cfg.dims, cfg.tile, cfg.tile_z, cfg.pooling) == (3, 28, 0, "")
    net = load_model(out / "model.pt")
    assert net.spatial_dims == 3 and net.output_size(28) == 12
    meta = safe_load(out / "model.pt")["meta"]
    assert tuple(meta["tile"]) == (28, 28, 28) and tuple(meta["out_size"]) == (12, 12, 12)
    rows = list(csv.DictReader(open(out / "log.csv")))
    assert list(rows[0]) == ["iteration", "loss", "lr", "seconds", "val_loss", "val_iou",
                             "val_seg"]
    assert [r["iteration"] for r in rows] == ["3"]          # log every 10, and the end
    assert all(np.isfinite(float(r["loss"])) for r in rows)
    # --resume to more iterations continues the same run
    res = run_cli(["train", "--out", out, "--resume", "--iterations", "4"], capsys)
    assert res.rc == 0, res.err
    assert safe_load(out / "checkpoint.pt")["iteration"] == 4


# ------------------------------------------------------------------------------ exact resume
@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """An uninterrupted 3D run (3D elastic augmentation, dropout; tiles made in the loop)."""
    return train(tiny(tmp_path_factory.mktemp("ref3d"), "ref", prefetch=0))


@pytest.mark.parametrize("cut", [1, 3])
def test_interrupted_and_resumed_3d_run_is_bit_identical(tmp_path, reference_run, cut):
    def interrupt(it, loss):
        if it == cut:
            raise KeyboardInterrupt

    cfg = tiny(tmp_path, "cut")
    with pytest.raises(TrainingInterrupted):
        train(cfg, callback=interrupt)
    assert safe_load(tmp_path / "cut" / "checkpoint.pt")["iteration"] == cut
    train(cfg, resume=True)
    ref, got = _state(reference_run / "checkpoint.pt"), _state(tmp_path / "cut" /
                                                                "checkpoint.pt")
    assert ref.keys() == got.keys()
    for k in ref:
        assert torch.equal(ref[k], got[k]), k
    assert (reference_run / "log.csv").read_text().splitlines()[1:] != []
    rows_ref = [r["loss"] for r in csv.DictReader(open(reference_run / "log.csv"))]
    rows_got = [r["loss"] for r in csv.DictReader(open(tmp_path / "cut" / "log.csv"))]
    assert rows_ref == rows_got


# ------------------------------------------------------------------------------ sparse labels
UNLABELLED = 65535


def _write_volumes(root, n, shape, spacing, every=None, keep=None, seed=0, cells=None):
    """image/ + label/ TIFF volumes (ImageJ voxel size); with ``every``: only ``keep`` of
    every ``every`` z-slices annotated, the rest marked UNLABELLED. Returns the dense labels."""
    (root / "image").mkdir(parents=True)
    (root / "label").mkdir()
    dense = []
    for i, (img, lab) in enumerate(touching_cells_3d(n, shape, seed, spacing=spacing,
                                                     cells=cells)):
        tifffile.imwrite(root / "image" / f"v{i}.tif", img.astype(np.float32),
                         imagej=True, resolution=(1 / spacing[2], 1 / spacing[1]),
                         metadata={"spacing": spacing[0], "unit": "um", "axes": "ZYX"})
        stored = lab.astype(np.uint16)
        if every:
            stored = np.where(sparsify(lab, every, keep) < 0, UNLABELLED, stored)
        tifffile.imwrite(root / "label" / f"v{i}.tif", stored.astype(np.uint16))
        dense.append(lab)
    return dense


def _record_loss_inputs(monkeypatch):
    """The classes each training step hands to the loss."""
    from unetlab import loss as loss_mod

    seen, real = [], loss_mod.weighted_cross_entropy

    def spy(logits, classes, weights=None, **kw):
        seen.append(classes.detach().clone())
        value = real(logits, classes, weights, **kw)
        assert torch.isfinite(value)
        return value

    monkeypatch.setattr(loss_mod, "weighted_cross_entropy", spy)
    return seen


def test_sparse_labels_only_annotated_slices_reach_the_loss(tmp_path, monkeypatch):
    every, keep = 8, 2
    _write_volumes(tmp_path / "sparse", 2, (24, 36, 36), (2.0, 1.0, 1.0), every, keep)
    seen = _record_loss_inputs(monkeypatch)
    base = dict(TINY, augment=False, iterations=6, prefetch=0)
    train(TrainConfig(data=str(tmp_path / "sparse"), out=str(tmp_path / "r"),
                      unlabelled=UNLABELLED, **base))
    assert len(seen) == 6
    oz, oy, ox = seen[0].shape[1:]
    assert (oz, oy, ox) == (12, 12, 12)
    for c in seen:
        per_slice = (c[0] != IGNORE_INDEX).reshape(oz, -1).sum(1).numpy()
        # a slice is annotated entirely (the window lies inside the volume) or not at all
        assert set(per_slice.tolist()) <= {0, oy * ox}, per_slice
        # the annotated slices are keep of every `every`, for some window start z0
        got = per_slice > 0
        assert any(np.array_equal(got, (z0 + np.arange(oz)) % every < keep)
                   for z0 in range(24 - oz + 1)), got
        # and the loss counted exactly those voxels
        assert int((c != IGNORE_INDEX).sum()) == int(got.sum()) * oy * ox
    # the same volumes densely annotated: every output voxel counts
    seen.clear()
    _write_volumes(tmp_path / "dense", 2, (24, 36, 36), (2.0, 1.0, 1.0))
    train(TrainConfig(data=str(tmp_path / "dense"), out=str(tmp_path / "d"), **base))
    assert [int((c != IGNORE_INDEX).sum()) for c in seen] == [oz * oy * ox] * 6


def test_sparse_labels_train_with_3d_augmentation(tmp_path, monkeypatch):
    # 1 annotated slice of every 16: many tiles hold (almost) nothing, the loss stays finite
    _write_volumes(tmp_path / "sparse", 1, (20, 32, 32), (2.0, 1.0, 1.0), 16, 1)
    seen = _record_loss_inputs(monkeypatch)
    run = train(TrainConfig(data=str(tmp_path / "sparse"), out=str(tmp_path / "r"),
                            unlabelled=UNLABELLED, **dict(TINY, iterations=4)))
    counts = [int((c != IGNORE_INDEX).sum()) for c in seen]
    assert len(counts) == 4 and max(counts) < 12 ** 3 / 4, counts   # ≤ 2 of 12 slices
    assert all(np.isfinite(float(r["loss"])) for r in csv.DictReader(open(run / "log.csv")))


def test_unlabelled_value_reads_as_not_annotated(tmp_path):
    from unetlab.data import read_dataset_3d

    dense = _write_volumes(tmp_path / "d", 1, (12, 20, 20), (1.0, 1.0, 1.0), 4, 1, cells=6)[0]
    assert len(np.unique(dense)) > 3
    s = read_dataset_3d(tmp_path / "d", unlabelled=UNLABELLED)[0]
    assert (s.instances[1:4] == -1).all() and (s.instances[0] >= 0).all()
    np.testing.assert_array_equal(s.instances[::4], dense[::4])
    assert s.spacing == pytest.approx((1.0, 1.0, 1.0))
    # without the option the marker would be a cell: the option is what makes it ignored
    assert (read_dataset_3d(tmp_path / "d")[0].instances >= 0).all()


# ------------------------------------------------------------------------------ loss in 3D
def test_3d_loss_matches_a_naive_reference():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 4, 5, 6, generator=g)
    classes = torch.randint(0, 3, (2, 6, 7, 8), generator=g).to(torch.uint8)
    classes[0, 2:4] = IGNORE_INDEX
    weights = torch.rand(2, 6, 7, 8, generator=g) * 5
    from unetlab.loss import weighted_cross_entropy

    got = float(weighted_cross_entropy(logits, classes, weights))
    num = den = 0.0
    c, w = classes[:, 1:5, 1:6, 1:7], weights[:, 1:5, 1:6, 1:7]    # the centre crop
    for idx in np.ndindex(*c.shape):
        k = int(c[idx])
        if k == IGNORE_INDEX:
            continue
        n, z, y, x = idx
        p = torch.softmax(logits[n, :, z, y, x].double(), 0)[k]
        num += -float(torch.log(p)) * float(w[idx])
        den += 1
    assert got == pytest.approx(num / den, rel=1e-5)
    with pytest.raises(ValueError, match="smaller than the network output"):
        weighted_cross_entropy(logits, classes[:, :3], weights[:, :3])


# ------------------------------------------------------------------------------ 3D scores
def _naive_seg(gt, pred):
    """CTC SEG of 3D objects: each reference cell R, the predicted S with |R∩S| > |R|/2."""
    js = []
    for r in np.unique(gt[gt > 0]):
        R = gt == r
        cand = [s for s in np.unique(pred[R]) if s and 2 * np.sum(R & (pred == s)) > R.sum()]
        S = pred == cand[0] if cand else np.zeros_like(R)
        js.append(np.sum(R & S) / np.sum(R | S) if cand else 0.0)
    return float(np.mean(js))


def test_volume_scores_are_3d_seg_and_iou_over_annotated_voxels():
    from unetlab.training.validation import volume_scores

    rng = np.random.default_rng(1)
    gts, probs, classes = [], [], []
    for i in range(2):
        lab = touching_cells_3d(1, (10, 16, 16), seed=i, cells=6)[0][1]
        p = np.where(lab > 0, 0.9, 0.1) + rng.normal(0, 0.3, lab.shape)
        c = (lab > 0).astype(np.uint8)
        gts.append(lab)
        probs.append(p.astype(np.float32))
        classes.append(c)
    got = volume_scores(probs, classes, gts)
    # naive: ids made distinct per volume, scored as one 3D set of objects
    big_gt = np.concatenate([gts[0], np.where(gts[1] > 0, gts[1] + gts[0].max(), 0)])
    from scipy import ndimage

    preds = [ndimage.label(p > 0.5)[0] for p in probs]
    big_pred = np.concatenate([preds[0], np.where(preds[1] > 0, preds[1] + preds[0].max(), 0)])
    assert got["seg"] == pytest.approx(_naive_seg(big_gt, big_pred))
    fg, truth = np.concatenate(probs) > 0.5, np.concatenate(classes) == 1
    assert got["iou"] == pytest.approx((fg & truth).sum() / (fg | truth).sum())
    # 3D objects, not slices: two cells on top of each other predicted as one object score
    # 0.5 each (slice by slice each slice would match perfectly)
    gt = np.zeros((4, 6, 6), np.int32)
    gt[:2, 1:5, 1:5], gt[2:, 1:5, 1:5] = 1, 2
    one = volume_scores([np.where(gt > 0, 0.9, 0.1).astype(np.float32)],
                        [(gt > 0).astype(np.uint8)], [gt])
    assert one["seg"] == 0.5 and one["iou"] == 1.0
    # unannotated voxels count nowhere: a wrong prediction there changes nothing
    c = (gt > 0).astype(np.uint8)
    c[2:] = IGNORE_INDEX
    p = np.where(gt > 0, 0.9, 0.1).astype(np.float32)
    p[2:] = 1 - p[2:]
    sparse = volume_scores([p], [c], [np.where(c == IGNORE_INDEX, -1, gt)])
    assert sparse["iou"] == 1.0 and sparse["seg"] == 1.0


@needs_volume_predict
def test_3d_validation_writes_scores_and_best_model(tmp_path):
    run = train(tiny(tmp_path, val="synthetic", select="seg", iterations=4, val_every=2))
    rows = [r for r in csv.DictReader(open(run / "log.csv")) if r["val_seg"]]
    assert [r["iteration"] for r in rows] == ["2", "4"]
    for r in rows:
        assert 0.0 <= float(r["val_iou"]) <= 1.0 and 0.0 <= float(r["val_seg"]) <= 1.0
    seg = [float(r["val_seg"]) for r in rows]
    best = safe_load(run / "best.pt")["meta"]
    assert str(best["iteration"]) == rows[int(np.argmax(seg))]["iteration"]
    assert best["validation"]["seg"] == pytest.approx(max(seg), abs=1e-5)


# ------------------------------------------------------------------------------ geometry
def test_tile_sizes_of_volumes():
    cfg = TrainConfig(dims=3, depth=3, width=1, select="seg")
    net = build_net(cfg, 1)[0]
    assert tile_sizes(cfg, net) == ((132, 132, 132), (44, 44, 44))    # Çiçek's 132 in-plane
    cfg = dataclasses.replace(cfg, tile_z=116)
    assert tile_sizes(cfg, net) == ((116, 132, 132), (28, 44, 44))
    # no pooling along z: z loses 4 per level only; tile_z 0 = the in-plane tile
    cfg = dataclasses.replace(cfg, pooling="1,2,2", tile_z=0, tile=100)
    net = build_net(cfg, 1)[0]
    assert net.pools == ((1, 2, 2),) * 3
    assert tile_sizes(cfg, net) == ((100, 100, 100), (72, 12, 12))
    cfg = dataclasses.replace(cfg, pooling="1,2,2;2,2,2;2,2,2")
    assert build_net(cfg, 1)[0].pools == ((1, 2, 2), (2, 2, 2), (2, 2, 2))


def test_presets_for_volumes(capsys):
    res = run_cli(["train", "--dims", "3", "--preset", "cpu", "--print-config"], capsys)
    values = tomllib.loads(res.out)
    assert (values["dims"], values["width"], values["depth"], values["tile"],
            values["select"], values["optimizer"], values["time"]) == \
        (3, 8, 3, 132, "seg", "adam", "60m")
    why = [ln for ln in res.out.splitlines() if ln.startswith("# why (cpu preset)")]
    assert len(why) == len(presets.preset_values("cpu", dims=3))
    res = run_cli(["train", "--dims", "3", "--preset", "paper", "--print-config"], capsys)
    cfg = resolve_config({"dims": 3, "preset": "paper"})
    assert tomllib.loads(res.out)["norm"] == "batch"
    net, tile, out = build_net(cfg, 1)
    from unetlab.model import UNet

    assert net.config() == UNet.cicek2016(in_channels=1, num_classes=2).config()
    assert (tile, out) == ((116, 132, 132), (28, 44, 44))
    # a flag beats the 3D preset; the 2D presets are untouched
    assert resolve_config({"dims": 3, "preset": "cpu", "width": 4}).width == 4
    assert resolve_config({"preset": "cpu", "device": "cpu"}).width == 16
    assert presets.recipe("cpu", dims=3, device="cpu").select == "seg"


def test_old_config_files_load_as_2d(tmp_path):
    new = {"dims", "spacing", "unlabelled", "channels", "pooling", "tile_z"}
    text = config_to_toml(TrainConfig(), comments=False)
    old = "\n".join(ln for ln in text.splitlines() if ln.split(" = ")[0] not in new)
    assert all(f"\n{k} = " not in old for k in new)
    (tmp_path / "old.toml").write_text(old + "\n")
    assert load_config(tmp_path / "old.toml") == TrainConfig()


# ------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("flags, needle", [
    (["--tile-z", "29"], "tile_z (--tile-z): input size 29 is not valid"),
    (["--tile", "29"], "tile (--tile): input size 29 is not valid"),
    (["--pooling", "1,2"], "pooling (--pooling): each level needs three factors"),
    (["--pooling", "1,2,2;2,2,2"], "pooling (--pooling): 2 levels given, the network has "
                                   "depth 1"),
    (["--spacing", "2,1"], "spacing (--spacing): give the voxel size as three numbers"),
    (["--select", "rand_error"], "the Rand error is 2D-only"),
    (["--unlabelled", "-3"], "unlabelled (--unlabelled): must be a label value ≥ 0"),
])
def test_volume_option_errors_are_one_line(tmp_path, capsys, flags, needle):
    out = tmp_path / "r"
    res = run_cli(["train", "synthetic", "--out", out, *CLI, *flags], capsys)
    assert needle in _one_line_error(res)
    assert not out.exists()


@pytest.mark.parametrize("flag", [["--tile-z", "28"], ["--pooling", "1,2,2"],
                                  ["--spacing", "2,1,1"], ["--unlabelled", "0"]])
def test_volume_options_without_dims_3_are_errors(tmp_path, capsys, flag):
    res = run_cli(["train", "synthetic", "--out", tmp_path / "r", *flag], capsys)
    assert "is an option of volumes; add --dims 3" in _one_line_error(res)


def test_2d_data_with_dims_3_is_a_clear_error(tmp_path, capsys):
    for sub in ("image", "label"):
        (tmp_path / "d" / sub).mkdir(parents=True)
        tifffile.imwrite(tmp_path / "d" / sub / "a.tif", np.ones((40, 40), np.uint8))
    res = run_cli(["train", tmp_path / "d", "--out", tmp_path / "r", *CLI], capsys)
    err = _one_line_error(res)
    assert "is not a volume" in err and "--dims 3 trains on volumes" in err
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


def test_dims_must_be_2_or_3():
    with pytest.raises(UnetlabError, match=r"dims \(--dims\): must be 2 \(images\) or 3"):
        TrainConfig(dims=4).check()
