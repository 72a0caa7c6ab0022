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
