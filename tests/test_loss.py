"""unetlab.loss: the weighted pixel-wise cross-entropy of Sec. 3, checked against hand
computation (math.exp / math.log on a tiny case), plain cross-entropy, and its analytic gradient."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from unetlab.loss import IGNORE_INDEX, center_crop, weighted_cross_entropy


def _hand_loss(logits, classes, weights, ignore=255):
    """−Σ w log softmax / #labelled, written out with Python floats (no torch ops)."""
    n, k, h, w = logits.shape
    H, W = classes.shape[-2:]
    dy, dx = (H - h) // 2, (W - w) // 2
    total, count = 0.0, 0
    for b in range(n):
        for y in range(h):
            for x in range(w):
                c = int(classes[b, y + dy, x + dx])
                if c == ignore:
                    continue
                a = [float(logits[b, j, y, x]) for j in range(k)]
                logp = a[c] - math.log(sum(math.exp(v) for v in a))
                total += -float(weights[b, y + dy, x + dx]) * logp
                count += 1
    return total / max(count, 1)


def test_hand_computed_tiny_case():
    # 2 classes, 2×2 output, labels/weights 4×4 (centre crop = rows/cols 1..2)
    logits = torch.tensor([[[[2.0, -1.0], [0.5, 0.0]],
                            [[0.0, 1.0], [0.5, 3.0]]]])
    classes = torch.full((1, 4, 4), 7, dtype=torch.uint8)      # border values must be cropped
    classes[0, 1:3, 1:3] = torch.tensor([[0, 1], [IGNORE_INDEX, 0]], dtype=torch.uint8)
    weights = torch.full((1, 4, 4), 100.0)
    weights[0, 1:3, 1:3] = torch.tensor([[1.0, 2.0], [5.0, 10.0]])
    got = float(weighted_cross_entropy(logits, classes, weights))
    # pixel (0,0): class 0, a = (2, 0):   −log(e²/(e²+1)) · 1
    # pixel (0,1): class 1, a = (−1, 1):  −log(e/(e⁻¹+e)) · 2
    # pixel (1,0): ignored (weight 5 does not count, nor does the pixel)
    # pixel (1,1): class 0, a = (0, 3):   −log(1/(1+e³)) · 10
    e = math.e
    expected = (-math.log(e ** 2 / (e ** 2 + 1)) * 1
                - math.log(e / (1 / e + e)) * 2
                - math.log(1 / (1 + e ** 3)) * 10) / 3
    assert got == pytest.approx(expected, rel=1e-6)
    assert got == pytest.approx(_hand_loss(logits, classes, weights), rel=1e-6)


def test_random_case_matches_naive_and_grad_is_analytic():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 5, 6, generator=g, requires_grad=True)
    classes = torch.randint(0, 3, (2, 9, 8), generator=g)
    classes[0, 4, 3] = IGNORE_INDEX
    classes[1, 2:5, 2:4] = IGNORE_INDEX
    weights = torch.rand(2, 9, 8, generator=g) * 5
    loss = weighted_cross_entropy(logits, classes, weights)
    assert float(loss.detach()) == pytest.approx(_hand_loss(logits.detach(), classes, weights),
                                                 rel=1e-5)
    loss.backward()
    # dE/da_k = w (p_k − [k = ℓ]) / n on labelled pixels, 0 on ignored ones
    c = center_crop(classes, 5, 6)
    wc = center_crop(weights, 5, 6)
    lab = c != IGNORE_INDEX
    p = torch.softmax(logits.detach(), 1)
    onehot = F.one_hot(torch.where(lab, c, 0), 3).permute(0, 3, 1, 2).float()
    expected = (p - onehot) * (wc * lab)[:, None] / lab.sum()
    torch.testing.assert_close(logits.grad, expected, rtol=1e-5, atol=1e-7)


def test_no_weights_equals_plain_cross_entropy():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(1, 2, 4, 4, generator=g)
    classes = torch.randint(0, 2, (1, 4, 4), generator=g)
    classes[0, 0, 0] = IGNORE_INDEX
    want = F.cross_entropy(logits, classes, ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(weighted_cross_entropy(logits, classes), want)
    ones = torch.ones(1, 4, 4)
    torch.testing.assert_close(weighted_cross_entropy(logits, classes.to(torch.uint8), ones), want)


def test_normalisation_does_not_depend_on_tile_size():
    # a tile made of 4 copies of a small tile has the same loss (mean over labelled pixels)
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(1, 2, 3, 3, generator=g)
    classes = torch.randint(0, 2, (1, 3, 3), generator=g)
    weights = torch.rand(1, 3, 3, generator=g) + 0.5
    big = weighted_cross_entropy(logits.repeat(1, 1, 2, 2), classes.repeat(1, 2, 2),
                                 weights.repeat(1, 2, 2))
    torch.testing.assert_close(big, weighted_cross_entropy(logits, classes, weights))
    # and a batch counts as one big tile
    batch = weighted_cross_entropy(logits.repeat(3, 1, 1, 1), classes.repeat(3, 1, 1),
                                   weights.repeat(3, 1, 1))
    torch.testing.assert_close(batch, weighted_cross_entropy(logits, classes, weights))


def test_all_ignored_gives_zero_not_nan():
    logits = torch.randn(1, 2, 2, 2, requires_grad=True)
    classes = torch.full((1, 2, 2), IGNORE_INDEX, dtype=torch.uint8)
    weights = torch.full((1, 2, 2), float("nan"))      # even NaN weights of ignored pixels
    loss = weighted_cross_entropy(logits, classes, weights)
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert torch.all(logits.grad == 0)


def test_errors():
    logits = torch.zeros(1, 2, 4, 4)
    with pytest.raises(ValueError, match="smaller than the network output"):
        weighted_cross_entropy(logits, torch.zeros(1, 3, 6, dtype=torch.long))
    with pytest.raises(ValueError, match="classes must be"):
        weighted_cross_entropy(logits, torch.zeros(4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        weighted_cross_entropy(logits, torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="weights must be"):
        weighted_cross_entropy(logits, torch.zeros(1, 4, 4, dtype=torch.long), torch.ones(4, 4))
    with pytest.raises(ValueError, match="logits"):
        weighted_cross_entropy(torch.zeros(2, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long))


# ---------------------------------------------------------------------------- clDice
def _naive_skeleton(x, iterations):
    """Alg. 1 of Shit et al. 2021 with scipy's grey morphology (cross erosion, square dilation;
    'nearest' borders = out-of-image never wins), one array at a time."""
    import numpy as np
    from scipy import ndimage as ndi

    d = x.ndim
    cross = ndi.generate_binary_structure(d, 1)
    square = np.ones((3,) * d, bool)

    def erode(a):
        return ndi.grey_erosion(a, footprint=cross, mode="nearest")

    def opened(a):
        return ndi.grey_dilation(erode(a), footprint=square, mode="nearest")

    skel = np.maximum(x - opened(x), 0)
    for _ in range(iterations):
        x = erode(x)
        delta = np.maximum(x - opened(x), 0)
        skel = skel + np.maximum(delta - skel * delta, 0)
    return skel


@pytest.mark.parametrize("shape", [(40, 52), (12, 20, 18)])
def test_soft_skeleton_matches_naive_grey_morphology(shape):
    import numpy as np

    from unetlab.loss import soft_skeleton

    rng = np.random.default_rng(0)
    from scipy import ndimage as ndi
    soft = ndi.gaussian_filter(rng.random(shape), 1.5)
    soft = (soft - soft.min()) / (soft.max() - soft.min())
    for x in (soft, (soft > 0.5).astype(float)):
        got = soft_skeleton(torch.tensor(x)[None, None], 6)[0, 0].numpy()
        assert np.abs(got - _naive_skeleton(x, 6)).max() < 1e-9


def test_soft_skeleton_keeps_a_thin_line_and_thins_a_thick_one():
    from unetlab.loss import soft_skeleton

    line = torch.zeros(1, 1, 21, 21)
    line[0, 0, 10, 3:18] = 1
    assert torch.equal(soft_skeleton(line, 5), line)             # one pixel wide: itself
    band = torch.zeros(1, 1, 21, 21)
    band[0, 0, 8:13, 2:19] = 1                                   # 5 px thick
    skel = soft_skeleton(band, 5)
    assert skel.sum() < band.sum() / 3 and bool((skel <= band).all())
    assert skel[0, 0, 10, 5:16].min() == 1                       # its middle row survives


def _grid(n=48, thick=3):
    """classes: 0 on a membrane grid (3 px lines every 16 px), 1 in the cells."""
    c = torch.ones(1, n, n, dtype=torch.long)
    for k in range(8, n, 16):
        c[0, k - thick // 2:k + thick // 2 + 1, :] = 0
        c[0, :, k - thick // 2:k + thick // 2 + 1] = 0
    return c


def _logits(classes, scale=8.0):
    one = F.one_hot(classes.clamp(max=1), 2).permute(0, 3, 1, 2).float()
    return (2 * one - 1) * scale


def test_cldice_rewards_closing_a_gap_in_a_membrane():
    from unetlab.loss import cldice_loss

    c = _grid()
    perfect = cldice_loss(_logits(c), c)
    assert 0 <= float(perfect) < 0.01
    gap = c.clone()
    gap[0, 7:10, 28:31] = 1                                      # 3×3 gap in a horizontal line
    logits = _logits(gap).requires_grad_(True)
    loss = cldice_loss(logits, c)
    assert float(loss.detach()) > float(perfect) + 0.005
    loss.backward()
    g = logits.grad[0, 0] - logits.grad[0, 1]                    # d loss / d (a_0 − a_1)
    assert float(g[7:10, 28:31].sum()) < 0                       # raise P(membrane) in the gap
    # the weighted cross-entropy barely tells a 9-pixel gap from 9 wrong pixels in a cell
    moved = c.clone()
    moved[0, 30:33, 30:33] = 0
    assert float(cldice_loss(_logits(moved), c)) < float(loss.detach())


def test_cldice_ignores_unlabelled_pixels_and_crops():
    import numpy as np

    from unetlab.loss import cldice_loss

    c = _grid()
    partial = c.clone()
    partial[0, :, 30:] = IGNORE_INDEX
    rng = np.random.default_rng(1)
    a = _logits(c)
    b = a.clone()
    b[:, :, :, 30:] = torch.tensor(rng.normal(0, 5, (1, 2, 48, 18)), dtype=torch.float32)
    assert torch.allclose(cldice_loss(a, partial), cldice_loss(b, partial))
    big = F.pad(c, (4, 4, 4, 4), value=1)                        # labels larger than the output
    assert torch.allclose(cldice_loss(a, big), cldice_loss(a, c))
    vol = torch.ones(1, 8, 20, 20, dtype=torch.long)
    vol[:, :, 9:11, :] = 0
    v = cldice_loss(_logits(vol.view(1, 8 * 20, 20)).view(1, 2, 8, 20, 20), vol)
    assert 0 <= float(v) < 0.01                                  # 3D: a perfect sheet


def test_cldice_option_is_checked_and_trains(tmp_path):
    from unetlab.training import TrainConfig, train
    from unetlab.errors import UnetlabError

    with pytest.raises(UnetlabError, match="cldice"):
        TrainConfig(cldice=-1.0).check()
    tiny = dict(data="synthetic", synthetic_images=2, synthetic_size=64, width=2, depth=1,
                tile=36, iterations=2, warmup=0, val_every=2, progress=False, threads=1,
                precision="fp32", log_every=1)
    logs = []
    for lam in (0.0, 1.0):
        run = train(TrainConfig(out=str(tmp_path / f"r{lam}"), cldice=lam, **tiny),
                    say=lambda m: None)
        logs.append((run / "log.csv").read_text().splitlines()[1].split(",")[1])
    assert float(logs[1]) > float(logs[0])                       # the term adds to the loss
