"""The U-Net energy function (Ronneberger et al. 2015, Sec. 3): pixel-wise soft-max over the
final feature map combined with a cross-entropy weighted by the weight map (Eq. 1, Eq. 2)::

    p_k(x) = exp(a_k(x)) / Σ_k' exp(a_k'(x))
    E      = −Σ_x w(x) · log p_ℓ(x)(x)

**Centre crop.** With unpadded ("valid") convolutions the network's output is smaller than its
input tile by a constant border, so the class labels ℓ and the weights w, given at the size of
the input tile (or any size at least the output's), are centre-cropped to the output size. They
are never padded: labels smaller than the logits are an error.

**Ignore label.** Pixels whose class is :data:`IGNORE_INDEX` (255; "unlabelled", e.g. the
partially annotated cell-tracking data of Sec. 4, or label pixels outside the image) contribute
nothing: their weight is 0 whatever the weight map says.

**Normalisation.** The paper's E is a *sum* over pixels, so its gradient (and the right learning
rate) grows with the tile area. Here E is divided by the number of labelled (non-ignored) pixels
in the batch: the loss is a weighted per-pixel mean, so the same learning rate works for a 188²
or a 572² tile, and for batch 1 or 8 (a batch counts as one big tile). We deliberately do *not*
divide by Σ w: that would renormalise every tile separately, so a tile full of cell borders
would have each of its pixels count less than the same pixels in a quiet tile, undoing part of
what the border term w0·exp(−(d1+d2)²/2σ²) is for. With the per-pixel mean, relative weights
between pixels and between tiles are exactly the paper's; the only change is a constant factor
per tile size, which the learning rate absorbs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .weights import IGNORE_INDEX

__all__ = ["weighted_cross_entropy", "center_crop", "soft_skeleton", "cldice_loss",
           "IGNORE_INDEX"]



def center_crop(x: torch.Tensor, h: int, w: int, name: str = "labels") -> torch.Tensor:
    """The centre (h, w) window of the last two axes of ``x`` (offset ``(H − h) // 2``).

    Raises ``ValueError`` when ``x`` is smaller than (h, w): labels are never padded.
    """
    return _crop(x, (int(h), int(w)), name)


def _crop(x: torch.Tensor, size: tuple[int, ...], name: str) -> torch.Tensor:
    """The centre window ``size`` of the last ``len(size)`` axes of ``x`` (images or volumes;
    offset ``(have − size) // 2`` per axis); ``ValueError`` when ``x`` is smaller."""
    have = tuple(int(s) for s in x.shape[-len(size):])
    if any(a < b for a, b in zip(have, size)):
        raise ValueError(f"{name} ({'×'.join(map(str, have))}) are smaller than the network "
                         f"output ({'×'.join(map(str, size))}); labels must cover at least the "
                         f"output (they are cropped, never padded)")
    return x[(...,) + tuple(slice((a - b) // 2, (a - b) // 2 + b) for a, b in zip(have, size))]


def weighted_cross_entropy(logits: torch.Tensor, classes: torch.Tensor,
                           weights: torch.Tensor | None = None, *,
                           ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Pixel-wise soft-max + weighted cross-entropy (Sec. 3), mean over labelled pixels.

    Parameters
    ----------
    logits : float tensor (N, K, h, w), or (N, K, d, h, w) for volumes
        The network's output a_k(x) (not soft-maxed). Computed in float32 even under autocast.
    classes : integer tensor (N, H, W), H ≥ h, W ≥ w (uint8 or int64); volumes (N, D, H, W)
        True class ℓ(x) in 0..K−1, or ``ignore_index`` (255) for unlabelled pixels (e.g. the
        voxels of a sparse annotation, Çiçek et al. 2016). Centre-cropped to the output.
    weights : float tensor of the shape of ``classes``, optional
        The weight map w(x) (Eq. 2), ≥ 0; centre-cropped to the output. ``None`` means w ≡ 1
        (plain cross-entropy).

    Returns
    -------
    Scalar tensor  E / n = −Σ_x w(x) log p_ℓ(x)(x) / n, n = number of pixels of the cropped
    labels whose class is not ``ignore_index`` (over the whole batch). When every pixel is
    ignored the loss is 0 (with a zero gradient), not NaN.
    """
    if logits.dim() not in (4, 5):
        raise ValueError(f"logits must be (N, K, h, w) or (N, K, d, h, w), got shape "
                         f"{tuple(logits.shape)}")
    n, spatial = int(logits.shape[0]), tuple(int(s) for s in logits.shape[2:])
    axes = "(N, H, W)" if len(spatial) == 2 else "(N, D, H, W)"
    if classes.dim() != 1 + len(spatial) or int(classes.shape[0]) != n:
        raise ValueError(f"classes must be {axes} with N = {n}, got shape {tuple(classes.shape)}")
    if classes.is_floating_point():
        raise ValueError(f"classes must be an integer tensor, got {classes.dtype}")
    classes = _crop(classes, spatial, "classes").long()
    logp = F.log_softmax(logits.float(), dim=1)
    # F.nll_loss gives −log p_ℓ(x)(x) per pixel and 0 where ℓ(x) == ignore_index
    nll = F.nll_loss(logp, classes, reduction="none", ignore_index=ignore_index)
    labelled = classes != ignore_index
    if weights is not None:
        if weights.dim() != 1 + len(spatial) or int(weights.shape[0]) != n:
            raise ValueError(f"weights must be {axes} with N = {n}, "
                             f"got shape {tuple(weights.shape)}")
        weights = _crop(weights, spatial, "weights").to(nll.dtype)
        # ignored pixels have nll == 0 already; the where also stops a NaN/inf weight there
        nll = torch.where(labelled, nll * weights, torch.zeros((), dtype=nll.dtype, device=nll.device))
    count = labelled.sum()
    return nll.sum() / count.clamp(min=1).to(nll.dtype)


# ---------------------------------------------------------------------------- clDice
def _pool(x: torch.Tensor, kernel: tuple[int, ...]) -> torch.Tensor:
    """Max over a ``kernel`` window (stride 1, same size; out-of-image never wins)."""
    pad = tuple(k // 2 for k in kernel)
    pool = F.max_pool2d if x.dim() == 4 else F.max_pool3d
    return pool(x, kernel, stride=1, padding=pad)


def _soft_erode(x: torch.Tensor) -> torch.Tensor:
    """Grey erosion by the cross (the 4- or 6-neighbourhood): the minimum over each axis's
    3-window, taken axis by axis and then the smallest (Shit et al. 2021, Alg. 1)."""
    d = x.dim() - 2
    lines = [tuple(3 if a == b else 1 for b in range(d)) for a in range(d)]
    return torch.stack([-_pool(-x, k) for k in lines]).amin(0)


def _soft_dilate(x: torch.Tensor) -> torch.Tensor:
    """Grey dilation by the full 3×3 (3×3×3) square."""
    return _pool(x, (3,) * (x.dim() - 2))


def soft_skeleton(x: torch.Tensor, iterations: int = 10) -> torch.Tensor:
    """Soft skeleton of a map ``x`` in [0, 1], (N, C, H, W) or (N, C, D, H, W) (Shit et al.,
    "clDice", CVPR 2021, Alg. 1): the union over k = 0 … ``iterations`` of what the opening
    removes from the k-times eroded map — Lantuéjoul's morphological skeleton with grey-level
    min/max, so it is differentiable. On a binary map it is that skeleton exactly; structures
    thicker than about 2·``iterations`` px keep their innermost part."""
    skel = F.relu(x - _soft_dilate(_soft_erode(x)))
    for _ in range(int(iterations)):
        x = _soft_erode(x)
        delta = F.relu(x - _soft_dilate(_soft_erode(x)))
        skel = skel + F.relu(delta - skel * delta)
    return skel


def cldice_loss(logits: torch.Tensor, classes: torch.Tensor, structure: int = 0,
                iterations: int = 10, *, ignore_index: int = IGNORE_INDEX,
                smooth: float = 1.0) -> torch.Tensor:
    """The clDice loss of Shit et al. (CVPR 2021) on one class, a topology term for thin
    structures: 1 − 2·Tprec·Tsens/(Tprec + Tsens) with Tprec = |S(P) ∩ L| / |S(P)| (how much
    of the predicted skeleton lies in the true structure) and Tsens = |S(L) ∩ P| / |S(L)|
    (how much of the true skeleton is covered), S the :func:`soft_skeleton`, P the soft-max
    probability of class ``structure`` (0: the membranes of the ISBI maps) and L its true
    mask. A one-pixel gap in a predicted membrane cuts S(L) ∩ P little but the skeletons of
    both sides — the merges the warping and Rand errors count — so the term rewards closing it.

    ``logits`` (N, K, h, w) or (N, K, d, h, w); ``classes`` at least the output's size,
    centre-cropped as in :func:`weighted_cross_entropy`; pixels of ``ignore_index`` count in
    neither mask. Sums over the whole batch; computed in float32. A scalar in [0, 1]."""
    spatial = tuple(int(s) for s in logits.shape[2:])
    classes = _crop(classes, spatial, "classes").long()
    known = (classes != ignore_index).unsqueeze(1).float()
    prob = F.softmax(logits.float(), dim=1)[:, structure:structure + 1] * known
    true = (classes == structure).unsqueeze(1).float()
    skel_p = soft_skeleton(prob, iterations)
    with torch.no_grad():                              # the labels' skeleton is a constant
        skel_t = soft_skeleton(true, iterations)
    tprec = ((skel_p * true).sum() + smooth) / (skel_p.sum() + smooth)
    tsens = ((skel_t * prob).sum() + smooth) / (skel_t.sum() + smooth)
    return 1.0 - 2.0 * tprec * tsens / (tprec + tsens)
