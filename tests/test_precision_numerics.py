"""bf16 inference of a trained network against fp32 (hardware.autocast, predict_tiled).

A width-16 U-Net (depth 3, valid) is trained here for 60 Adam steps on synthetic touching cells
(a few seconds), so that the probabilities compared are those of a network that has learnt
cells, not of random weights near 0.5. On an unseen 256² image:

* bf16 and fp32 probabilities differ by at most 2e-2 (bf16 keeps 8 bits of mantissa);
* bf16 tiling is seamless: small tiles agree with one bf16 pass over the whole mirror-padded
  image to 2e-2 (the same bf16 rounding, different summation order in the convolutions);
* the bf16 foreground (P(cell) > 0.5) has IoU ≥ 0.99 with the fp32 foreground;
* ``UNETLAB_NO_NATIVE_BF16=1``: ``precision="auto"`` resolves to fp32 and is bit-identical to
  fp32, and fp32 tiling is exact (≤ 1e-5 against the whole-image pass).

bf16 cases are skipped only where bf16 autocast cannot run at all on this CPU.
"""
from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from unetlab import hardware
from unetlab.data import TileSampler
from unetlab.loss import weighted_cross_entropy
from unetlab.model import UNet
from unetlab.predict import predict_tiled
from unetlab.synthetic import touching_cells
from unetlab.weights import training_targets

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TILE = 140          # input tile of the tiled predictions: 52² outputs, 25 tiles on 256²
BF16_TOL = 2e-2
FP32_TOL = 1e-5


def _bf16_runs() -> str | None:
    """None when a convolution runs under CPU bf16 autocast, else the reason it cannot."""
    try:
        with torch.no_grad(), hardware.autocast("bf16", "cpu"):
            y = torch.nn.Conv2d(1, 2, 3)(torch.ones(1, 1, 8, 8))
        if y.dtype != torch.bfloat16:
            return f"CPU autocast to bf16 computed {y.dtype}"
    except (RuntimeError, NotImplementedError) as e:
        return f"bf16 autocast cannot run on this CPU: {e}"
    return None


needs_bf16 = pytest.mark.skipif(_bf16_runs() is not None, reason=str(_bf16_runs()))


@pytest.fixture(scope="module")
def trained():
    """(net in eval mode, test image (256, 256) float32, its instances): 60 Adam steps of
    2 tiles (140² → 52²) with the paper's weighted loss (w0 = 10, σ = 5) on 3 images."""
    torch.manual_seed(0)
    net = UNet(width=16, depth=3)
    out = net.output_size(TILE)
    sampler = TileSampler(touching_cells(3, 192, seed=1), TILE, out,
                          functools.partial(training_targets, w0=10.0, sigma=5.0))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    rng = np.random.default_rng(0)
    for _ in range(60):
        x, c, w = (torch.from_numpy(np.stack(a)) for a in
                   zip(*(sampler.sample(rng) for _ in range(2))))
        opt.zero_grad(set_to_none=True)
        weighted_cross_entropy(net(x), c, w).backward()
        opt.step()
    test = touching_cells(1, 256, seed=9)[0]
    return net.eval(), test.image[0], test.instances


def whole_image(net, img: np.ndarray, precision: str) -> np.ndarray:
    """Reference: ONE forward pass (under ``precision``) over the image mirror-padded by the
    context on the top/left and up to the smallest valid input covering it on the
    bottom/right (``numpy.pad(mode="reflect")``), float32 soft-max, cropped to H×W."""
    H, W = img.shape
    c = net.context

    def cover(n):
        k = n + 2 * c
        while not (net.is_valid_input_size(k) and net.output_size(k) >= n):
            k += 1
        return k

    nh, nw = cover(H), cover(W)
    p = np.pad(img, ((c, nh - H - c), (c, nw - W - c)), mode="reflect")
    with torch.no_grad(), hardware.autocast(precision, "cpu"):
        logits = net(torch.from_numpy(np.ascontiguousarray(p))[None, None])
    return torch.softmax(logits.float(), dim=1)[0, :, :H, :W].numpy()


def _tiled(net, img, precision):
    return predict_tiled(net, img, tile_size=TILE, normalize=False, precision=precision)


@pytest.fixture(scope="module")
def tiled(trained):
    """Tiled probabilities of the test image by precision, computed once: ``tiled("bf16")``."""
    net, img, _ = trained
    return functools.lru_cache(maxsize=None)(lambda precision: _tiled(net, img, precision))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_the_network_has_learnt_cells(trained, tiled):
    """The comparisons below are about a network that segments: fp32 IoU with the truth."""
    fg = tiled("fp32")[1] > 0.5
    inst = trained[2]
    assert _iou(fg, inst > 0) >= 0.6
    assert 0.1 < fg.mean() < 0.9


@needs_bf16
def test_bf16_probabilities_are_within_2e_2_of_fp32(tiled):
    p32, p16 = tiled("fp32"), tiled("bf16")
    d = np.abs(p16 - p32)
    assert 0 < d.max() <= BF16_TOL, d.max()        # > 0: bf16 really ran
    assert np.allclose(p16.sum(0), 1, atol=1e-5)    # soft-max in fp32


@needs_bf16
def test_bf16_tiling_is_seamless(trained, tiled):
    net, img, _ = trained
    assert np.abs(tiled("bf16") - whole_image(net, img, "bf16")).max() <= BF16_TOL


@needs_bf16
def test_bf16_foreground_matches_fp32(tiled):
    assert _iou(tiled("bf16")[1] > 0.5, tiled("fp32")[1] > 0.5) >= 0.99


def test_without_native_bf16_auto_is_exact_fp32(trained, tiled, monkeypatch):
    net, img, _ = trained
    monkeypatch.setenv("UNETLAB_NO_NATIVE_BF16", "1")
    assert hardware.resolve_precision("auto", "cpu") == "fp32"
    auto = _tiled(net, img, "auto")
    assert np.array_equal(auto, tiled("fp32"))
    assert np.abs(auto - whole_image(net, img, "fp32")).max() <= FP32_TOL
