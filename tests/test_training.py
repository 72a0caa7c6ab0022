"""unetlab.training: the loss falls, exact resume, atomic checkpoints, non-finite loss and Ctrl-C
handling, validation and the run folder, configuration round trip. Tiny networks (width 4,
depth 1, 44² tiles → 28² outputs) on small generated images keep every run to seconds."""
from __future__ import annotations

import csv
import dataclasses
import os
import signal
import tomllib

import pytest
import torch

import unetlab
from unetlab.checkpoint import safe_load
from unetlab.errors import UnetlabError
from unetlab.training import (CHECKPOINT_FORMAT, NonFiniteLossError, TrainConfig,
                              TrainingInterrupted, config_from_mapping, config_to_toml,
                              load_config, lr_at, train)


def tiny(tmp_path, name="run", **kw) -> TrainConfig:
    base = dict(data="synthetic", out=str(tmp_path / name), synthetic_images=2,
                synthetic_size=48, width=4, depth=1, tile=44, iterations=8, warmup=2,
                dropout=0.3, lr=0.01, checkpoint_every=3, log_every=2, val_every=4,
                progress=False, prefetch=2, seed=3, threads=1, precision="fp32")
    base.update(kw)
    return TrainConfig(**base)


def _state(path):
    return safe_load(path)["model"]["state_dict"]


# ------------------------------------------------------------------------------ schedule
def test_lr_schedule():
    c = TrainConfig(lr=0.1, iterations=100, warmup=10, schedule="poly")
    assert lr_at(c, 0) == pytest.approx(0.1 * 0.1 * (1 - 0.0) ** 0.9)
    assert lr_at(c, 9) == pytest.approx(0.1 * 1.0 * (1 - 0.09) ** 0.9)
    assert lr_at(c, 50) == pytest.approx(0.1 * 0.5 ** 0.9)
    c = dataclasses.replace(c, schedule="cosine", warmup=0)
    assert lr_at(c, 50) == pytest.approx(0.05)
    assert lr_at(c, 100) == pytest.approx(0.0, abs=1e-12)
    c = dataclasses.replace(c, schedule="constant")
    assert lr_at(c, 77) == 0.1


@pytest.mark.parametrize("iterations", [1, 2, 3, 7, 100, 1003])
def test_one_cycle_schedule_matches_torch(iterations):
    # independent reference: torch's OneCycleLR with its defaults, without the momentum cycle
    c = TrainConfig(lr=0.01, iterations=iterations, warmup=50, schedule="onecycle")
    if iterations == 1:  # torch needs two steps or more; one step gets a rate in (0, lr]
        assert 0 < lr_at(c, 0) <= 0.01
        return
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.01, total_steps=iterations,
                                                cycle_momentum=False)
    ours = []
    for it in range(iterations):
        assert lr_at(c, it) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9, abs=1e-15)
        ours.append(lr_at(c, it))
        opt.step()
        sched.step()
    if iterations >= 7:  # shorter runs start past the rise (torch's phase bounds, too)
        assert ours[0] == pytest.approx(0.01 / 25)
    assert max(ours) <= 0.01 + 1e-15 and ours[-1] == pytest.approx(0.01 / 25 / 1e4)
    assert lr_at(c, iterations + 5) == ours[-1]  # past the end: stays at the floor


def test_adamw_decouples_weight_decay():
    # hand case: parameter 1, zero loss gradient, lr 0.1, weight decay 0.5. AdamW shrinks the
    # weight by lr·wd (→ 0.95) and its Adam step on a zero gradient is 0; Adam adds wd·p to the
    # gradient, and its normalised first step is lr·sign (→ 0.9)
    from unetlab.training.build import make_optimizer

    result = {}
    for name in ("adam", "adamw"):
        p = torch.nn.Parameter(torch.ones(1))
        opt = make_optimizer(TrainConfig(optimizer=name, lr=0.1, momentum=0.9,
                                         weight_decay=0.5), [p])
        p.grad = torch.zeros(1)
        opt.step()
        result[name] = float(p)
    assert result["adamw"] == pytest.approx(0.95)
    assert result["adam"] == pytest.approx(0.9)


def test_elastic_sigma_reaches_the_sampler(tmp_path):
    from unetlab.training.build import build_net, load_samples, make_sampler

    for sigma in (0.0, 4.5):
        cfg = tiny(tmp_path, elastic_sigma=sigma).check()
        net, tile, out = build_net(cfg, 1)
        sampler = make_sampler(cfg, load_samples(cfg)[0], tile, out)
        assert sampler.augment.elastic_sigma == sigma
        assert sampler.augment.rotation > 0  # the other augmentations stay
    cfg = tiny(tmp_path, augment=False).check()
    assert make_sampler(cfg, load_samples(cfg)[0], tile, out).augment is None
    with pytest.raises(UnetlabError, match=r"elastic_sigma \(--elastic-sigma\): must be a finite"):
        tiny(tmp_path, elastic_sigma=-1.0).check()


# ------------------------------------------------------------------------------ learning
def test_loss_falls_on_synthetic_data(tmp_path):
    # one image, no augmentation: the weighted loss must drop clearly within 40 steps
    cfg = tiny(tmp_path, synthetic_images=1, synthetic_size=64, width=8, depth=2, tile=92,
               iterations=40, warmup=0, optimizer="adam", momentum=0.9, lr=0.003,
               schedule="constant", augment=False, dropout=0.0, checkpoint_every=40,
               log_every=10, seed=0)
    run = train(cfg)
    rows = list(csv.DictReader(open(run / "log.csv")))
    losses = [float(r["loss"]) for r in rows]
    assert len(losses) == 4
    assert losses[-1] < 0.8 * losses[0], losses
    assert losses[-1] < losses[1] < losses[0], losses


# ------------------------------------------------------------------------------ exact resume
@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """An uninterrupted run (augmentation, dropout, validation; tiles made in the loop)."""
    return train(tiny(tmp_path_factory.mktemp("ref"), "ref", val="synthetic", prefetch=0))


@pytest.mark.parametrize("cut", [1, 4, 5])
def test_interrupted_and_resumed_run_is_bit_identical(tmp_path, reference_run, cut):
    ref = reference_run

    def interrupt(it, loss):
        if it == cut:
            raise KeyboardInterrupt

    # the interrupted run makes its tiles in the prefetch thread
    cfg = tiny(tmp_path, "cut", val="synthetic", prefetch=2)
    with pytest.raises(TrainingInterrupted) as e:
        train(cfg, callback=interrupt)
    assert e.value.iteration == cut and e.value.saved
    ck = safe_load(tmp_path / "cut" / "checkpoint.pt")
    assert ck["iteration"] == cut
    train(cfg, resume=True)

    a, b = _state(ref / "checkpoint.pt"), _state(tmp_path / "cut" / "checkpoint.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    oa = safe_load(ref / "checkpoint.pt")["optimizer"]["state"]
    ob = safe_load(tmp_path / "cut" / "checkpoint.pt")["optimizer"]["state"]
    for k in oa:
        assert torch.equal(oa[k]["momentum_buffer"], ob[k]["momentum_buffer"])
    # the same data and dropout: the logged losses agree too
    la = [r["loss"] for r in csv.DictReader(open(ref / "log.csv"))]
    lb = [r["loss"] for r in csv.DictReader(open(tmp_path / "cut" / "log.csv"))]
    assert la == lb
    # and a different seed gives different weights (the test can fail)
    if cut == 5:
        other = train(tiny(tmp_path, "other", seed=4))
        assert not torch.equal(_state(other / "checkpoint.pt")["head.weight"], a["head.weight"])


def test_run_folder(tmp_path):
    run = train(tiny(tmp_path, val="synthetic"))
    for name in ("config.toml", "checkpoint.pt", "model.pt", "best.pt", "log.csv",
                 "curves.png"):
        assert (run / name).is_file(), name
    # every .pt loads with weights_only=True (safe_load uses it) and holds plain types
    ck = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ck["format"] == CHECKPOINT_FORMAT and ck["iteration"] == 8
    assert isinstance(ck["rng"]["torch"], torch.Tensor)
    net = unetlab.load_model(run / "model.pt")
    assert net.width == 4 and net.depth == 1 and not net.training
    best = unetlab.load_model(run / "best.pt")
    assert best.config() == net.config()
    meta = torch.load(run / "best.pt", weights_only=True)["meta"]
    assert meta["iteration"] in (4, 8)
    assert 0.0 <= meta["validation"]["pixel_error"] <= 1.0
    assert 0.0 <= meta["validation"]["rand_error"] <= 1.0
    for k, v in net.state_dict().items():       # model.pt == the checkpoint's model
        assert torch.equal(v, ck["model"]["state_dict"][k])
    rows = list(csv.DictReader(open(run / "log.csv")))
    assert [int(r["iteration"]) for r in rows] == [2, 4, 6, 8]
    assert rows[1]["val_rand_error"] != "" and rows[0]["val_rand_error"] == ""
    assert float(rows[0]["lr"]) > 0
    assert load_config(run / "config.toml") == tiny(tmp_path, val="synthetic").check()
    assert (run / "curves.png").read_bytes()[:4] == b"\x89PNG"
    # no temporary files left behind
    assert not [p for p in os.listdir(run) if p.startswith(".")]


def test_refuses_to_overwrite_and_resume_checks_config(tmp_path):
    cfg = tiny(tmp_path, iterations=2)
    train(cfg)
    with pytest.raises(UnetlabError, match="already holds a run"):
        train(cfg)
    with pytest.raises(UnetlabError, match="option 'width'"):
        train(dataclasses.replace(cfg, width=8), resume=True)
    with pytest.raises(UnetlabError, match="no checkpoint"):
        train(tiny(tmp_path, "nothing"), resume=True)
    # extending a finished run is allowed
    train(dataclasses.replace(cfg, iterations=3), resume=True)
    assert safe_load(tmp_path / "run" / "checkpoint.pt")["iteration"] == 3


# ------------------------------------------------------------------------------ robustness
def test_crash_while_saving_keeps_previous_checkpoint(tmp_path, monkeypatch):
    cfg = tiny(tmp_path, iterations=3, checkpoint_every=3)
    run = train(cfg)
    before = _state(run / "checkpoint.pt")

    real_save = torch.save

    def broken_save(obj, f, *a, **kw):
        with open(f, "wb") as fh:             # half a file, then the "crash"
            fh.write(b"PK\x03\x04 partial")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="simulated"):
        train(dataclasses.replace(cfg, iterations=6), resume=True)
    monkeypatch.setattr(torch, "save", real_save)
    ck = safe_load(run / "checkpoint.pt")               # still loads ...
    assert ck["iteration"] == 3                         # ... and is the previous one
    for k, v in before.items():
        assert torch.equal(v, ck["model"]["state_dict"][k])
    unetlab.load_model(run / "model.pt")
    assert not [p for p in os.listdir(run) if p.startswith(".")]


def test_non_finite_loss_stops_with_clear_message(tmp_path, monkeypatch):
    import unetlab.loss as loss_mod

    real = loss_mod.weighted_cross_entropy
    calls = {"n": 0}

    def nan_at_5(logits, classes, weights=None, **kw):
        calls["n"] += 1
        out = real(logits, classes, weights, **kw)
        return out * float("nan") if calls["n"] == 5 else out

    monkeypatch.setattr(loss_mod, "weighted_cross_entropy", nan_at_5)
    cfg = tiny(tmp_path, iterations=8, checkpoint_every=3)
    with pytest.raises(NonFiniteLossError) as e:
        train(cfg)
    msg = str(e.value)
    assert "non-finite loss" in msg and "iteration 5" in msg and "\n" not in msg
    assert "last good state (iteration 3)" in msg
    ck = safe_load(tmp_path / "run" / "checkpoint.pt")
    assert ck["iteration"] == 3
    assert all(torch.isfinite(v).all() for v in ck["model"]["state_dict"].values())


def test_sigint_saves_checkpoint_and_exits_cleanly(tmp_path):
    def ctrl_c_at_3(it, loss):
        if it == 3:
            os.kill(os.getpid(), signal.SIGINT)      # handled: the loop stops after this step

    with pytest.raises(TrainingInterrupted) as e:
        train(tiny(tmp_path, iterations=8, checkpoint_every=100), callback=ctrl_c_at_3)
    assert e.value.saved and e.value.iteration == 3
    assert safe_load(tmp_path / "run" / "checkpoint.pt")["iteration"] == 3
    # the previous SIGINT handler is back
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_gradient_clipping_runs(tmp_path):
    run = train(tiny(tmp_path, iterations=2, grad_clip=0.01, optimizer="adam"))
    assert safe_load(run / "checkpoint.pt")["iteration"] == 2


# ------------------------------------------------------------------------------ configuration
def test_config_round_trip(tmp_path):
    cfg = TrainConfig(width=16, lr=0.003, augment=False, val="v", schedule="cosine")
    text = config_to_toml(cfg)
    values = tomllib.loads(text)
    assert set(values) == {f.name for f in dataclasses.fields(TrainConfig)}
    p = tmp_path / "c.toml"
    p.write_text(text)
    assert load_config(p) == cfg
    assert text.count("# ") >= len(values)           # every option documented


def test_config_errors(tmp_path):
    with pytest.raises(UnetlabError, match=r"unknown option 'lrr' \(did you mean 'lr'\?\)"):
        config_from_mapping({"lrr": 0.1})
    with pytest.raises(UnetlabError, match="'width' must be an integer"):
        config_from_mapping({"width": 1.5})
    with pytest.raises(UnetlabError, match="'augment' must be true or false"):
        config_from_mapping({"augment": 1})
    p = tmp_path / "bad.toml"
    p.write_text("lr = \n")
    with pytest.raises(UnetlabError, match="not a valid TOML"):
        load_config(p)
    p.write_text("[model]\nwidth = 3\n")
    with pytest.raises(UnetlabError, match="table"):
        load_config(p)
    for kw, opt in [(dict(lr=0.0), "lr"), (dict(momentum=1.0), "momentum"),
                    (dict(optimizer="rmsprop"), "optimizer"), (dict(iterations=0), "iterations"),
                    (dict(sigma=float("nan")), "sigma")]:
        with pytest.raises(UnetlabError, match=rf"^{opt} \(--{opt}\)"):
            TrainConfig(**kw).check()


def test_invalid_tile_fails_before_reading_data(tmp_path):
    cfg = tiny(tmp_path, tile=45, data=str(tmp_path / "missing"))
    with pytest.raises(UnetlabError, match=r"tile \(--tile\).*nearest valid sizes: 44 or 46"):
        train(cfg)


def test_resume_before_first_checkpoint_starts_again(tmp_path):
    # a run killed after writing config.toml but before its first checkpoint.pt
    cfg = tiny(tmp_path, iterations=2)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.toml").write_text(config_to_toml(cfg))
    run = train(cfg, resume=True)
    assert safe_load(run / "checkpoint.pt")["iteration"] == 2


def test_sigterm_saves_checkpoint_like_ctrl_c(tmp_path):
    def term_at_3(it, loss):
        if it == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingInterrupted) as e:
        train(tiny(tmp_path, iterations=8, checkpoint_every=100), callback=term_at_3)
    assert e.value.saved and e.value.iteration == 3
    assert e.value.signum == signal.SIGTERM and e.value.exit_code == 143
    assert safe_load(tmp_path / "run" / "checkpoint.pt")["iteration"] == 3
    assert signal.getsignal(signal.SIGTERM) is before


def test_stale_temporaries_are_removed_on_the_next_start(tmp_path):
    cfg = tiny(tmp_path, iterations=2)
    run = train(cfg)
    stale = [run / ".checkpoint.pt.k9x.tmp.pt", run / ".log.csv.a1b2.tmp.csv"]
    for p in stale:
        p.write_bytes(b"PK half")
    (run / ".hidden-user-file").write_text("not ours")
    train(dataclasses.replace(cfg, iterations=3), resume=True)
    assert not any(p.exists() for p in stale)
    assert (run / ".hidden-user-file").read_text() == "not ours"


def test_bf16_precision_trains_and_is_recorded(tmp_path):
    run = train(tiny(tmp_path, iterations=2, precision="bf16"))
    ck = safe_load(run / "checkpoint.pt")
    assert ck["precision"] == "bf16" and ck["model"]["meta"]["precision"] == "bf16"
    assert all(v.dtype == torch.float32 for v in ck["model"]["state_dict"].values()
               if v.is_floating_point())                         # fp32 master weights
    assert load_config(run / "config.toml").precision == "bf16"


def test_thread_count_is_measured_and_said(tmp_path, monkeypatch):
    from unetlab import hardware

    timed = []

    def fake_fastest(step, repeats=2):
        step()                                   # a real training step of a copy of the net
        timed.append(True)
        return 1, 0.01, "measured here"

    monkeypatch.setattr(hardware, "fastest_threads", fake_fastest)
    lines = []
    run = train(tiny(tmp_path, iterations=1, threads=0), say=lines.append)
    assert timed and "training on cpu" in lines[0] and "CPU threads: measured here" in lines[0]
    # timing on a copy does not change the run: same weights as with --threads 1
    ref = train(tiny(tmp_path, "ref", iterations=1, threads=1))
    a, b = _state(run / "checkpoint.pt"), _state(ref / "checkpoint.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    lines.clear()
    train(tiny(tmp_path, "two", iterations=1, threads=2), say=lines.append)
    assert "2 thread(s) as asked" in lines[0]


def test_resume_puts_back_the_gpu_rng_states_where_the_gpus_match(monkeypatch):
    """Issue 13: the per-GPU RNG states a checkpoint saves are restored on resume (the same
    number of GPUs), and left alone on a machine with another count or none."""
    import torch

    from unetlab.training.run_folder import restore_cuda_rng

    put = []
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: put.append(states))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    states = [torch.arange(4, dtype=torch.uint8), torch.arange(4, 8, dtype=torch.uint8)]
    assert restore_cuda_rng(states) is True and put == [states]
    assert restore_cuda_rng(states[:1]) is False                 # one GPU saved, two here
    assert restore_cuda_rng(None) is False and len(put) == 1     # a CPU checkpoint
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert restore_cuda_rng(states) is False and len(put) == 1


def test_fp16_trains_with_loss_scaling_and_resumes_bit_identically(tmp_path, monkeypatch):
    """fp16 (auto on a GPU without bf16): the loss is scaled (torch.amp.GradScaler), the
    scaler's state is in the checkpoint, and a run interrupted and resumed equals an
    uninterrupted one. Runs on the CPU, where fp16 autocast is emulated."""
    from unetlab import hardware

    monkeypatch.setattr(hardware, "native_bf16", lambda device="cpu": False)
    assert hardware.resolve_precision("auto", "cuda") == "fp16"
    assert hardware.resolve_precision("auto", "cpu") == "fp32"
    opts = dict(precision="fp16", optimizer="adam", lr=0.01, checkpoint_every=1)
    whole = train(tiny(tmp_path, "whole", **opts))
    ck = safe_load(whole / "checkpoint.pt")
    assert ck["precision"] == "fp16" and ck["scaler"]["scale"] > 0

    def interrupt(it, loss):
        if it == 3:
            raise KeyboardInterrupt

    cfg = tiny(tmp_path, "cut", **opts)
    with pytest.raises(TrainingInterrupted):
        train(cfg, callback=interrupt)
    train(cfg, resume=True)
    a, b = _state(whole / "checkpoint.pt"), _state(tmp_path / "cut" / "checkpoint.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert safe_load(tmp_path / "cut" / "checkpoint.pt")["scaler"] == ck["scaler"]
    assert all(torch.isfinite(v).all() for v in a.values() if v.is_floating_point())
