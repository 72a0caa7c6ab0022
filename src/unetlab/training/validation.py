"""Validation during training: whole validation images predicted by the overlap-tile engine
(:func:`unetlab.predict.predict_tiled`, Fig. 2), scored by the ISBI 2012 pixel error and
foreground-restricted Rand error and by the weighted cross-entropy of Eq. 1–2.

Volumes (a ``spatial_dims=3`` network, Çiçek et al. 2016) are predicted as whole volumes and
scored by the loss, the foreground voxel IoU and the Cell Tracking Challenge SEG of 3D objects
(the Rand error here is the ISBI 2012 2D measure, so volumes do not get it); unannotated voxels
(instance -1) count in none of them."""
from __future__ import annotations


import numpy as np

__all__ = ["validation_targets", "validation_scores", "isbi_errors", "predict_normalized",
           "predict_volume", "volume_scores"]


def validation_targets(samples, w0: float, sigma: float, balance: bool):
    """(classes (H, W) uint8, weights (H, W) float32) of each validation sample: the training
    targets of Eq. 2, with :data:`IGNORE_INDEX` and weight 0 where the sample is unlabelled;
    volumes (Z, Y, X) with their voxel aspect."""
    from ..weights import IGNORE_INDEX, training_targets
    from .build import volume_targets

    out = []
    for s in samples:
        if s.ndim == 3:
            c, w = volume_targets(s.instances, s.spacing, w0=w0, sigma=sigma, balance=balance)
        else:
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


def predict_volume(net, volume: np.ndarray, device=None, tta: bool = False,
                   precision: str = "fp32", spacing=None) -> np.ndarray:
    """(K, Z, Y, X) float32 probabilities of one normalised volume (C, Z, Y, X) by the
    overlap-tile engine, as one volume (:func:`unetlab.predict.predict_tiled` with a 3D
    network); ``spacing`` tells test-time augmentation which rotations the voxels admit."""
    from ..predict import predict_tiled

    extra = {"spacing": spacing} if tta and spacing is not None else {}
    return np.asarray(predict_tiled(net, volume, tta=tta, device=device, progress=False,
                                    normalize=False, precision=precision, **extra),
                      dtype=np.float32)


def volume_scores(prob_cell: list[np.ndarray], classes: list[np.ndarray],
                  instances: list[np.ndarray]) -> dict[str, float]:
    """``iou`` and ``seg`` of volumes (Z, Y, X), pooled over them and counted on annotated
    voxels only (``classes`` != :data:`IGNORE_INDEX`). ``iou``: the voxels with P(cell) > 0.5
    against the cell class of the training targets (1.0 when both are empty). ``seg``: the
    face-connected components of P(cell) > 0.5 against the annotated instances as 3D objects:
    the mean Jaccard index over every annotated cell of every volume, a match covering more
    than half of the cell (Cell Tracking Challenge SEG; NaN when no cell is annotated)."""
    from scipy import ndimage

    from ..metrics import seg
    from ..weights import IGNORE_INDEX

    inter = union = 0
    gts, preds = [], []
    for p, c, ins in zip(prob_cell, classes, instances):
        lab = c != IGNORE_INDEX
        fg, truth = (p > 0.5) & lab, c == 1
        inter += int(np.count_nonzero(fg & truth))
        union += int(np.count_nonzero(fg | truth))
        gts.append(np.where(lab, np.maximum(ins, 0), 0).astype(np.int64).ravel())
        preds.append(np.where(lab, ndimage.label(p > 0.5)[0], 0).astype(np.int64).ravel())
    out = {"iou": inter / union if union else 1.0, "seg": float("nan")}
    if any(g.any() for g in gts):
        # SEG counts overlaps and sizes only, so all volumes side by side in one row, ids made
        # distinct per volume, score every 3D object at once (unetlab.metrics.seg reads a 3D
        # array as a stack of 2D frames, which would split the objects)
        out["seg"] = seg(_side_by_side(gts), _side_by_side(preds))
    return out


def _side_by_side(labels: list[np.ndarray]) -> np.ndarray:
    """Flat label arrays joined into one (1, N) image, each one's ids shifted past the ids of
    the ones before (0 stays background)."""
    shifted, offset = [], 0
    for a in labels:
        shifted.append(np.where(a > 0, a + offset, 0))
        offset += int(a.max(initial=0))
    return np.concatenate(shifted)[None]


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
    Volumes (a 3D network): ``loss``, ``iou`` and ``seg`` (:func:`volume_scores`).
    ``targets``: from :func:`validation_targets`."""
    from ..weights import IGNORE_INDEX

    volumes = getattr(net, "spatial_dims", 2) == 3
    was_training = net.training
    net.eval()
    probs, gts, num, den = [], [], 0.0, 0
    try:
        for s, (classes, weights) in zip(samples, targets):
            if volumes:
                prob = predict_volume(net, s.image, device, tta, precision, s.spacing)
            else:
                prob = predict_normalized(net, s.image, device, tta, precision)
            probs.append(np.clip(prob[1], 0.0, 1.0).astype(np.float32))
            gts.append(classes if volumes else classes == 1)
            lab = classes != IGNORE_INDEX
            p_true = np.take_along_axis(prob, np.where(lab, classes, 0)[None].astype(np.int64),
                                        0)[0]
            nll = -np.log(np.clip(p_true, 1e-12, 1.0))
            num += float(np.sum(np.where(lab, nll * weights, 0.0)))
            den += int(lab.sum())
    finally:
        net.train(was_training)
    out = volume_scores(probs, gts, [s.instances for s in samples]) if volumes \
        else isbi_errors(probs, gts)
    out["loss"] = num / max(den, 1)
    return out
