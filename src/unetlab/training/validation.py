"""Validation during training: whole validation images predicted by the overlap-tile engine
(:func:`unetlab.predict.predict_tiled`, Fig. 2), scored by the ISBI 2012 pixel error and
foreground-restricted Rand error and by the weighted cross-entropy of Eq. 1–2."""
from __future__ import annotations


import numpy as np

__all__ = ["validation_targets", "validation_scores", "isbi_errors", "predict_normalized"]


def validation_targets(samples, w0: float, sigma: float, balance: bool):
    """(classes (H, W) uint8, weights (H, W) float32) of each validation sample: the training
    targets of Eq. 2, with :data:`IGNORE_INDEX` and weight 0 where the sample is unlabelled."""
    from ..weights import IGNORE_INDEX, training_targets

    out = []
    for s in samples:
        c, w = training_targets(s.instances, w0=w0, sigma=sigma, balance=balance)
        out.append((np.where(s.instances < 0, IGNORE_INDEX, c).astype(np.uint8),
                    np.where(s.instances < 0, 0, w).astype(np.float32)))
    return out


def predict_normalized(net, image: np.ndarray, device=None, tta: bool = False,
                       precision: str = "fp32", progress=False) -> np.ndarray:
    """(K, H, W) float32 probabilities of one already normalised image ((H, W) or (C, H, W),
    :func:`unetlab.data.normalize_image`) by the overlap-tile engine
    (:func:`unetlab.predict.predict_tiled`, Fig. 2), without normalising it again."""
    from ..predict import predict_tiled

    img = image[0] if image.ndim == 3 and image.shape[0] == 1 else image   # one slice
    prob = np.asarray(predict_tiled(net, img, tta=tta, device=device, progress=progress,
                                    normalize=False, precision=precision), dtype=np.float32)
    return prob[0] if prob.ndim == 4 else prob


def isbi_errors(prob_cell: list[np.ndarray], gt_cell: list[np.ndarray]) -> dict[str, float]:
    """ISBI pixel error and foreground-restricted Rand error: 1 − max F over the challenge's 11
    thresholds (:mod:`unetlab.metrics`), without the slow warping error. Counts are pooled over
    the images when they have one size (as the challenge does); otherwise F is averaged."""
    from ..metrics import isbi_thresholds, pixel_fscore, rand_fscore

    same = len({g.shape for g in gt_cell}) == 1
    pairs = [(np.stack(gt_cell), np.stack(prob_cell))] if same else list(zip(gt_cell, prob_cell))
    best_px = best_rand = 0.0
    for th in isbi_thresholds():
        px = float(np.mean([pixel_fscore(g, p, th) for g, p in pairs]))
        rd = float(np.mean([rand_fscore(g, p, th) for g, p in pairs]))
        best_px, best_rand = max(best_px, px), max(best_rand, rd)
    return {"pixel_error": 1.0 - best_px, "rand_error": 1.0 - best_rand}


def validation_scores(net, samples, targets, device, tta: bool = False,
                      precision: str = "fp32") -> dict[str, float]:
    """Whole-image validation: P(cell) by overlap-tile prediction, then ``pixel_error``,
    ``rand_error`` (on the cell class of the training targets: touching cells separated as in
    Fig. 3c) and ``loss``, the weighted cross-entropy of the probabilities (Eq. 1 with the
    weights of Eq. 2, same normalisation as training: mean over labelled pixels). All unitless.
    ``targets``: from :func:`validation_targets`."""
    from ..weights import IGNORE_INDEX

    was_training = net.training
    net.eval()
    probs, gts, num, den = [], [], 0.0, 0
    try:
        for s, (classes, weights) in zip(samples, targets):
            prob = predict_normalized(net, s.image, device, tta, precision)
            probs.append(np.clip(prob[1], 0.0, 1.0).astype(np.float32))
            gts.append(classes == 1)
            lab = classes != IGNORE_INDEX
            p_true = np.take_along_axis(prob, np.where(lab, classes, 0)[None].astype(np.int64),
                                        0)[0]
            nll = -np.log(np.clip(p_true, 1e-12, 1.0))
            num += float(np.sum(np.where(lab, nll * weights, 0.0)))
            den += int(lab.sum())
    finally:
        net.train(was_training)
    out = isbi_errors(probs, gts)
    out["loss"] = num / max(den, 1)
    return out
