"""Out-of-core prediction on Dask (issue 8): ``predict_dask`` equals ``predict_tiled``.

The reference is :func:`unetlab.predict.predict_tiled` in one process (itself tested against one
network pass over the mirror-padded image in test_predict.py). The cluster is a real
``dask.distributed.LocalCluster`` with 2 workers (threads in the default run, processes in the
slow test); the networks are tiny (depth 2, width
4) and the images small, but odd-sized (not multiples of the 2^depth lattice, not multiples of
the chunk) so that every border case of the halo arithmetic is exercised.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from unetlab.checkpoint import save_model
from unetlab.data import normalization_stats, normalize_image
from unetlab.dask_predict import (_model_payload, lazy_normalization_stats, model_load_counts,
                                 predict_dask, predict_to_zarr, run_dask_predict)
from unetlab.errors import UnetlabError
from unetlab.model import UNet
from unetlab.predict import predict_tiled

dask = pytest.importorskip("dask")
distributed = pytest.importorskip("distributed")
zarr = pytest.importorskip("zarr")
import dask.array as da  # noqa: E402

TOL = 1e-5
CHUNK = 32          # depth 2: halo = context 20 + lattice 4 = 24 <= 32


def _net(depth=2, width=4, seed=0, **kw) -> UNet:
    torch.manual_seed(seed)
    net = UNet(depth=depth, width=width, **kw).eval()
    # make the biases non-zero so that every class map carries signal
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.Conv2d) and m.bias is not None:
                m.bias.normal_(0, 0.1)
    return net


def _cluster(processes: bool):
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=processes,
                           dashboard_address=":0", memory_limit=0, silence_logs=40)
    return cluster, Client(cluster)


@pytest.fixture(scope="module")
def client():
    """A LocalCluster with 2 workers. In-process workers (threads) keep the default run fast on
    a shared 2-core machine; test_worker_processes_load_the_model_once (slow) uses processes."""
    cluster, c = _cluster(processes=False)
    yield c
    c.close()
    cluster.close()


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(1)
    return rng.random((70, 93)).astype(np.float32)      # 70, 93: not multiples of 4 nor 32


def test_equals_predict_tiled_on_a_two_worker_cluster(client, image):
    net = _net()
    lazy = predict_dask(net, image, chunk=CHUNK)
    assert isinstance(lazy, da.Array)
    assert lazy.shape == (2, 70, 93) and lazy.dtype == np.float32
    assert lazy.chunks[1] == (32, 32, 6) and lazy.chunks[2] == (32, 32, 29)
    assert lazy.numblocks == (1, 3, 3)
    got = lazy.compute()
    ref = predict_tiled(net, image, tile_size=64)
    assert np.abs(got - ref).max() < TOL
    # both workers computed, the 9 chunk tasks built the network once (one shared process)
    key = _model_payload(net)[0].key
    assert model_load_counts().get(key) == 1


@pytest.mark.slow
def test_worker_processes_load_the_model_once(image):
    cluster, c = _cluster(processes=True)
    try:
        net = _net(seed=12)
        got = predict_dask(net, image, chunk=CHUNK).compute()
        assert np.abs(got - predict_tiled(net, image)).max() < TOL
        key = _model_payload(net)[0].key
        per_worker = [cnt.get(key, 0) for cnt in c.run(model_load_counts).values()]
        # each worker process that ran some of the 9 tasks built the network exactly once
        assert max(per_worker) == 1 and sum(per_worker) >= 1, per_worker
    finally:
        c.close()
        cluster.close()


def test_tta_stack_and_multichannel():
    rng = np.random.default_rng(2)
    net = _net(seed=3)
    stack = rng.random((2, 45, 51)).astype(np.float32)
    got = predict_dask(net, stack, tta=True, chunk=CHUNK).compute(scheduler="sync")
    assert got.shape == (2, 2, 45, 51)
    ref = predict_tiled(net, stack, tta=True)
    assert np.abs(got - ref).max() < TOL
    # the 8-fold average is not the identity pass (the test can fail)
    plain = predict_tiled(net, stack)
    assert np.abs(plain - ref).max() > 1e-3

    net3 = _net(seed=4, in_channels=3, num_classes=3)
    img = rng.random((3, 37, 66)).astype(np.float32)
    got = predict_dask(net3, da.from_array(img, chunks=(1, 20, 20)),
                       chunk=CHUNK).compute(scheduler="sync")
    assert got.shape == (3, 37, 66)
    assert np.abs(got - predict_tiled(net3, img)).max() < TOL


def test_tiny_image_and_deeper_net_threaded():
    # an image smaller than the context (repeated reflection) and a depth-3 net whose pooling
    # phases reach context + 4 px: the synchronous scheduler, no cluster needed
    net = _net(depth=3, seed=5)
    img = np.random.default_rng(3).random((13, 70)).astype(np.float32)
    got = predict_dask(net, img, chunk=56).compute(scheduler="sync")
    assert np.abs(got - predict_tiled(net, img)).max() < TOL


def test_model_path_tiff_and_ome_zarr_sources(tmp_path, image):
    import tifffile

    net = _net(seed=6)
    mpath = tmp_path / "model.pt"
    save_model(net, mpath)
    ref = predict_tiled(net, image)

    tif = tmp_path / "img.tif"
    tifffile.imwrite(tif, image, tile=(32, 32))            # tiled TIFF: read through zarr
    got = predict_dask(str(mpath), str(tif), chunk=CHUNK).compute(scheduler="sync")
    assert np.abs(got - ref).max() < TOL

    # OME-Zarr: level 0 is the full image; level 1 (half size) must NOT be used
    ome = tmp_path / "img.ome.zarr"
    g = zarr.open_group(str(ome), mode="w")
    g.create_array("0", data=image[None], chunks=(1, 40, 40))
    g.create_array("1", data=image[None, ::2, ::2], chunks=(1, 40, 40))
    g.attrs["multiscales"] = [{
        "version": "0.4", "axes": [{"name": "c", "type": "channel"},
                                   {"name": "y", "type": "space"},
                                   {"name": "x", "type": "space"}],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale",
                                                                  "scale": [1, 1, 1]}]},
                     {"path": "1", "coordinateTransformations": [{"type": "scale",
                                                                  "scale": [1, 2, 2]}]}]}]
    got = predict_dask(mpath, ome, chunk=CHUNK).compute(scheduler="sync")
    assert got.shape == (2, 70, 93)
    assert np.abs(got - ref).max() < TOL


def test_lazy_normalisation_matches_data_module(image):
    rng = np.random.default_rng(4)
    raw = (rng.random((2, 1, 300, 257)) * 3000).astype(np.uint16)
    with dask.config.set(scheduler="sync"):
        s = lazy_normalization_stats(da.from_array(raw, chunks=(1, 1, 100, 100)))
    for i in range(2):
        assert np.allclose(s[i], normalization_stats(raw[i]), rtol=0, atol=0)
    net = _net(seed=7)
    img = (image * 200).astype(np.uint8)
    with dask.config.set(scheduler="sync"):
        got = predict_dask(net, img, chunk=CHUNK, normalize=True).compute()
    ref = predict_tiled(net, normalize_image(img))
    assert np.abs(got - ref).max() < TOL


def _chunk_files(out: Path) -> dict[str, int]:
    root = out / "probabilities" / "c"
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")
            if p.is_file()}


def test_zarr_output_resumes_only_missing_chunks(client, tmp_path, image):
    net = _net(seed=8)
    out = tmp_path / "pred.zarr"
    ref = predict_tiled(net, image, normalize=False)
    res = predict_to_zarr(net, image, out, chunk=CHUNK, normalize=False, client=client)
    assert res["total"] == 9 and len(res["computed"]) == 9 and res["skipped"] == 0
    g = zarr.open_group(str(out), mode="r")
    assert g.attrs["unetlab"]["complete"] is True
    assert np.abs(g["probabilities"][...] - ref).max() < TOL

    # simulate an interrupted run: two chunks never written (data and marker gone), one chunk
    # written but killed before its marker, and the completion flag not yet set
    before = _chunk_files(out)
    (out / "probabilities" / "c" / "0" / "1" / "2").unlink()               # chunk (iy=1, ix=2)
    (out / "probabilities" / "c" / "0" / "2" / "0").unlink()               # chunk (2, 0) data
    (out / "chunk_done" / "c" / "0" / "1").unlink()                        # marker (0, 1)
    g = zarr.open_group(str(out), mode="r+")
    a = dict(g.attrs["unetlab"])
    a["complete"] = False
    g.attrs["unetlab"] = a
    res = predict_to_zarr(net, image, out, chunk=CHUNK, normalize=False, client=client)
    assert res["computed"] == [(0, 0, 1), (0, 1, 2), (0, 2, 0)]
    assert res["skipped"] == 6
    after = _chunk_files(out)
    untouched = set(before) - {"0/0/1", "0/1/2", "0/2/0"}
    assert all(after[k] == before[k] for k in untouched)      # not rewritten
    g = zarr.open_group(str(out), mode="r")
    assert g.attrs["unetlab"]["complete"] is True
    assert np.abs(g["probabilities"][...] - ref).max() < TOL

    # complete: nothing to do
    assert predict_to_zarr(net, image, out, chunk=CHUNK, normalize=False)["computed"] == []
    # another model on the same output is refused unless overwrite
    with pytest.raises(UnetlabError, match="another model"):
        predict_to_zarr(_net(seed=9), image, out, chunk=CHUNK, normalize=False)


def test_failed_run_then_rerun_completes(tmp_path, image):
    net = _net(seed=10)
    out = tmp_path / "p.zarr"

    def flaky(block, block_info=None):
        loc = block_info[0]["chunk-location"]
        if loc == (2, 2):
            raise RuntimeError("worker lost")
        return block

    bad = da.from_array(image, chunks=CHUNK).map_blocks(flaky, dtype=np.float32)
    with pytest.raises(RuntimeError, match="worker lost"), dask.config.set(scheduler="sync"):
        predict_to_zarr(net, bad, out, chunk=CHUNK, normalize=False)
    g = zarr.open_group(str(out), mode="r")
    assert g.attrs["unetlab"]["complete"] is False
    done_before = int(np.asarray(g["chunk_done"][...]).sum())
    assert done_before < 9
    with dask.config.set(scheduler="sync"):
        res = predict_to_zarr(net, image, out, chunk=CHUNK, normalize=False)
    assert len(res["computed"]) == 9 - done_before
    g = zarr.open_group(str(out), mode="r")
    assert g.attrs["unetlab"]["complete"] is True
    assert np.abs(g["probabilities"][...] - predict_tiled(net, image, normalize=False)).max() < TOL


def test_run_dask_predict_on_existing_scheduler(client, tmp_path, image):
    net = _net(seed=11)
    mpath = tmp_path / "model.pt"
    save_model(net, mpath)
    src = tmp_path / "in.zarr"
    zarr.open_array(str(src), mode="w", shape=image.shape, chunks=(50, 50),
                    dtype="float32")[...] = image
    out = run_dask_predict(mpath, src, tmp_path / "out.zarr", scheduler=client.scheduler.address,
                           chunk=CHUNK, normalize=False, progress=False)
    got = zarr.open_group(str(out), mode="r")["probabilities"][...]
    assert np.abs(got - predict_tiled(net, image, normalize=False)).max() < TOL


def test_bad_inputs_are_one_line_errors(tmp_path, image):
    net = _net()
    with pytest.raises(UnetlabError, match="no such file"):
        predict_dask(net, tmp_path / "missing.zarr")
    with pytest.raises(UnetlabError, match="channel"):
        predict_dask(_net(in_channels=3), image)
    with pytest.raises(UnetlabError, match=r"\.zarr"):
        run_dask_predict(tmp_path / "m.pt", image, tmp_path / "out.tif")
    g = zarr.open_group(str(tmp_path / "two.zarr"), mode="w")
    g.create_array("a", shape=(4, 4), dtype="f4")
    g.create_array("b", shape=(4, 4), dtype="f4")
    with pytest.raises(UnetlabError, match="multiscales"):
        predict_dask(net, tmp_path / "two.zarr")


@pytest.mark.slow
def test_run_dask_predict_starts_a_local_cluster(tmp_path, image, capsys):
    net = _net(seed=13)
    mpath = tmp_path / "model.pt"
    save_model(net, mpath)
    img = (image * 1000).astype(np.uint16)
    src = tmp_path / "in.zarr"
    zarr.open_array(str(src), mode="w", shape=img.shape, chunks=(50, 50),
                    dtype="uint16")[...] = img
    out = run_dask_predict(mpath, src, tmp_path / "out.zarr", workers=2, chunk=CHUNK,
                           progress=True)
    assert "9 chunk(s) computed" in capsys.readouterr().out
    got = zarr.open_group(str(out), mode="r")["probabilities"][...]
    assert np.abs(got - predict_tiled(net, normalize_image(img))).max() < TOL


def test_cli_dask_honours_batch_instances_and_overlays(client, tmp_path, image, capsys):
    """`predict --dask` passes --batch, --tta and the instance options on (they used to be
    ignored); the zarr output equals predict_tiled and the labels equal a direct call."""
    import tifffile

    from unetlab.cli import main
    from unetlab.postprocess import to_instances

    net = _net(seed=12)
    mpath = tmp_path / "model.pt"
    save_model(net, mpath)
    raw = (image * 1000).astype(np.uint16)
    tifffile.imwrite(tmp_path / "img.tif", raw)
    out = tmp_path / "preds"
    args = ["predict", str(mpath), str(tmp_path / "img.tif"), "--out", str(out), "--dask",
            "--scheduler", client.scheduler.address, "--batch", "2", "--instances",
            "--seed-h", "1", "--precision", "fp32", "--quiet"]
    assert main(args) == 0, capsys.readouterr().err
    prob = zarr.open_group(str(out / "img_prob.zarr"), mode="r")["probabilities"][...]
    assert np.abs(prob - predict_tiled(net, raw)).max() < TOL
    labels = tifffile.imread(out / "img_labels.tif")
    assert np.array_equal(labels, to_instances(prob[1], h=1.0))
    assert (out / "img_overlay.png").exists()
    capsys.readouterr()
    assert main(args) == 0                       # all outputs exist: skipped, nothing replaced
    assert "skipped, its outputs exist" in capsys.readouterr().out
    (out / "img_overlay.png").unlink()
    assert main(args) == 2                       # the labels exist: --overwrite needed
    assert "--overwrite" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0     # the finished zarr is kept, pictures redone
    assert main(args[:-6] + ["--workers", "2", "--quiet"]) == 2
    assert "only one" in capsys.readouterr().err
