"""Soak tests (slow): memory must not grow over a long training run or over many predictions.

* 2000 training iterations on synthetic cells (augmentation, checkpoints every 100 iterations,
  validation every 500) with the resident set size (RSS) sampled every 20 iterations;
* 100 predictions in one process (model loaded once, 8-fold test-time augmentation).

"No growth" is judged on the trend after warm-up: the median RSS of the last quarter of the
samples against the median of the second quarter (allocator caches, lazy imports and the
first checkpoint / validation are warm-up). The figures are printed (``pytest -s``).
"""
from __future__ import annotations

import gc

import numpy as np
import pytest

psutil = pytest.importorskip("psutil")

MB = 1024 * 1024


def _rss() -> int:
    return psutil.Process().memory_info().rss


def _trend(samples: list[int]) -> tuple[float, float]:
    n = len(samples)
    early = float(np.median(samples[n // 4: n // 2]))
    late = float(np.median(samples[3 * n // 4:]))
    return early, late


@pytest.mark.slow
def test_training_2000_iterations_memory_flat(tmp_path):
    from unetlab.training import TrainConfig, train

    samples: list[int] = []

    def callback(it: int, loss: float) -> None:
        if it % 20 == 0:
            samples.append(_rss())

    gc.collect()
    start = _rss()
    cfg = TrainConfig(data="synthetic", val="synthetic", out=str(tmp_path / "run"), width=8,
                      depth=2, tile=92, iterations=2000, synthetic_images=4, synthetic_size=128,
                      checkpoint_every=100, val_every=500, log_every=10, warmup=100,
                      progress=False)
    train(cfg, callback=callback)
    end = _rss()
    early, late = _trend(samples)
    print(f"\ntraining soak: RSS at start {start / MB:.1f} MB, after iteration 20 "
          f"{samples[0] / MB:.1f} MB, median iterations 500-1000 {early / MB:.1f} MB, "
          f"median iterations 1500-2000 {late / MB:.1f} MB, at the end {end / MB:.1f} MB, "
          f"peak {max(samples) / MB:.1f} MB ({len(samples)} samples)")
    assert late - early < 20 * MB, f"RSS grew by {(late - early) / MB:.1f} MB"
    assert samples[-1] - samples[len(samples) // 4] < 30 * MB


@pytest.mark.slow
def test_100_predictions_memory_flat(tmp_path):
    import torch

    from unetlab import UNet, load_model, save_model
    from unetlab.data import normalize_image
    from unetlab.predict import predict_tiled
    from unetlab.synthetic import touching_cells

    torch.manual_seed(0)
    save_model(UNet(depth=2, width=8), tmp_path / "model.pt")
    net = load_model(tmp_path / "model.pt")
    images = [s.image for s in touching_cells(4, 128, seed=5)]
    samples: list[int] = []
    gc.collect()
    start = _rss()
    for i in range(100):
        img = normalize_image(images[i % len(images)])[0]          # (H, W)
        prob = predict_tiled(net, img, tile_size=92, tta=(i % 4 == 0), batch_size=2)
        assert prob.shape == (2, 128, 128) and np.isfinite(prob).all()
        del prob
        samples.append(_rss())
    end = _rss()
    early, late = _trend(samples)
    print(f"\nprediction soak: RSS at start {start / MB:.1f} MB, after 1 {samples[0] / MB:.1f} "
          f"MB, median predictions 25-50 {early / MB:.1f} MB, median 75-100 {late / MB:.1f} MB, "
          f"at the end {end / MB:.1f} MB, peak {max(samples) / MB:.1f} MB")
    assert late - early < 10 * MB, f"RSS grew by {(late - early) / MB:.1f} MB"


@pytest.mark.slow
def test_training_rss_flat_over_3000_iterations_after_warm_up(tmp_path):
    """A tiny net (fast steps, so any per-step or per-checkpoint leak dominates): 1000
    warm-up iterations, then RSS sampled every 100 over 3000 more must stay within ± 10 MB
    (checkpoints every 100, validation and curves.png every 500)."""
    from unetlab.training import TrainConfig, train

    samples: list[float] = []

    def callback(it: int, loss: float) -> None:
        if it >= 1000 and it % 100 == 0:
            samples.append(_rss() / MB)

    cfg = TrainConfig(data="synthetic", val="synthetic", out=str(tmp_path / "run"), width=4,
                      depth=1, tile=44, iterations=4000, synthetic_images=2, synthetic_size=64,
                      checkpoint_every=100, val_every=500, log_every=10, warmup=10,
                      progress=False, threads=1, precision="fp32")
    train(cfg, callback=callback, say=lambda msg: None)
    low, high = min(samples), max(samples)
    print(f"\ntiny-net soak: RSS {low:.1f} … {high:.1f} MB over iterations 1000-4000 "
          f"({len(samples)} samples)")
    assert high - low <= 10, f"RSS moved by {high - low:.1f} MB after warm-up"
