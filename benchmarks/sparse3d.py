"""Dense against sparse annotation of volumes: Çiçek et al. 2016's experiment in miniature.

The 3D U-Net paper trains from a few annotated slices per volume and scores on densely
annotated held-out volumes. Here, on generated touching-cell volumes
(:func:`unetlab.synthetic.touching_cells_3d`, anisotropic voxels), one network is trained on
dense labels and one on the same volumes with only ``--keep`` of every ``--every`` z-slices
annotated (the others marked unannotated: ``unetlab train --unlabelled``, class ignored and
weight 0 in the loss), with the same seed, iterations and everything else. Both are then scored
on held-out, densely labelled volumes by :func:`unetlab.training.validation.validation_scores`
(whole volumes through ``predict_tiled``): the foreground voxel IoU of P(cell) > 0.5 and SEG of
its face-connected components (no watershed), and the weighted cross-entropy. A network
trained with the weighted loss is not calibrated to 0.5, so each arm also gets the threshold
that maximises its IoU on its own training annotations (the sparse arm: the annotated slices
only; :func:`unetlab.metrics.best_iou_threshold`), and its held-out IoU at that threshold.

Full size (hours on a CPU, minutes on a GPU)::

    python -m benchmarks.sparse3d --out runs/sparse3d

Small size (about a minute of CPU time; a few minutes on a busy core)::

    python -m benchmarks.sparse3d --small

Every option is printed with the table; the run folders (``dense/``, ``sparse/``) and the
data (``data/``) stay in ``--out``.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

#: the full size: 4 training volumes of 64×128×128 voxels, 2× longer along z
FULL = dict(volumes=4, test_volumes=2, shape="64,128,128", spacing="2,1,1", every=32, keep=3,
            iterations=2000, width=16, depth=3, pooling="1,2,2;2,2,2;2,2,2", tile=116,
            tile_z=64, norm="batch", lr=0.003)
#: the small size: minutes on one CPU core
SMALL = dict(volumes=4, test_volumes=2, shape="32,64,64", spacing="2,1,1", every=32, keep=3,
             iterations=100, width=4, depth=2, pooling="", tile=60, tile_z=60, norm="batch",
             lr=0.003)

UNLABELLED = 65535


def _triple(text: str, kind=float) -> tuple:
    values = tuple(kind(v) for v in text.split(","))
    if len(values) != 3:
        raise SystemExit(f"expected three numbers z,y,x, got {text!r}")
    return values


def write_volumes(folder: Path, n: int, shape, spacing, seed: int, every: int, keep: int):
    """``folder/image`` (ImageJ TIFF with the voxel size), ``folder/dense`` (instances) and
    ``folder/sparse`` (the same, with all but ``keep`` of every ``every`` z-slices — the middle
    ones of each block — set to UNLABELLED). Returns the fraction of annotated voxels."""
    import tifffile

    from unetlab.synthetic import touching_cells_3d
    from unetlab.weights import sparsify

    for sub in ("image", "dense", "sparse"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    annotated = total = 0
    for i, (img, lab) in enumerate(touching_cells_3d(n, shape, seed, spacing=spacing)):
        name = f"v{i:02d}.tif"
        tifffile.imwrite(folder / "image" / name, img.astype(np.float32), imagej=True,
                         resolution=(1 / spacing[2], 1 / spacing[1]),
                         metadata={"spacing": spacing[0], "unit": "um", "axes": "ZYX"})
        tifffile.imwrite(folder / "dense" / name, lab.astype(np.uint16))
        sparse = sparsify(lab, every, keep, offset=(every - keep) // 2)
        tifffile.imwrite(folder / "sparse" / name,
                         np.where(sparse < 0, UNLABELLED, lab).astype(np.uint16))
        annotated += int((sparse >= 0).sum())
        total += sparse.size
    return annotated / total


def train_one(args, data: Path, labels: str, out: Path):
    """Train on ``data/image`` with the labels of ``data/labels``; (run folder, seconds)."""
    from unetlab.training import TrainConfig, train

    cfg = TrainConfig(
        data=str(data / "image"), labels=str(data / labels), out=str(out), dims=3,
        unlabelled=UNLABELLED if labels == "sparse" else -1, width=args.width,
        depth=args.depth, pooling=args.pooling, tile=args.tile, tile_z=args.tile_z,
        norm=args.norm, iterations=args.iterations, warmup=min(100, args.iterations // 10),
        optimizer="adam", momentum=0.9, lr=args.lr, dropout=0.0, select="seg", seed=args.seed,
        checkpoint_every=max(args.iterations // 4, 1), log_every=10, progress=False,
        threads=args.threads, device=args.device, precision=args.precision)
    t0 = time.perf_counter()
    run = train(cfg, say=lambda msg: None)
    return run, time.perf_counter() - t0


def score(run: Path, data: Path, labels: str, device: str) -> dict[str, float]:
    """loss, iou and seg of ``run/model.pt`` on the dense test volumes (``data/test``);
    ``threshold``: the one with the best IoU on the training volumes' own annotations
    (``data/train/labels``), and ``iou_t`` the test IoU there."""
    from unetlab.checkpoint import load_model
    from unetlab.data import read_dataset_3d
    from unetlab.hardware import resolve_device
    from unetlab.metrics import best_iou_threshold, iou_by_threshold
    from unetlab.training.validation import (predict_volume, validation_scores,
                                             validation_targets)
    from unetlab.weights import IGNORE_INDEX

    dev = resolve_device(device)
    net = load_model(run / "model.pt").to(dev)

    def cells(split: str, lab: str, unlabelled=None):
        samples = read_dataset_3d(data / split / "image", labels=data / split / lab,
                                  unlabelled=unlabelled)
        targets = validation_targets(samples, 10.0, 5.0, True)
        prob = np.concatenate([predict_volume(net, s.image, dev, spacing=s.spacing)[1].ravel()
                               for s in samples])
        cls = np.concatenate([c.ravel() for c, _ in targets])
        return samples, targets, prob, cls

    _, _, prob, cls = cells("train", labels, UNLABELLED if labels == "sparse" else None)
    threshold, _ = best_iou_threshold(prob, cls == 1, cls != IGNORE_INDEX)
    samples, targets, prob, cls = cells("test", "dense")
    out = validation_scores(net, samples, targets, dev)
    out["threshold"] = threshold
    out["iou_t"] = float(iou_by_threshold(prob, cls == 1, [threshold], cls != IGNORE_INDEX)[0])
    return out


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true", help="the small size (minutes on a CPU)")
    for k, v in FULL.items():
        p.add_argument("--" + k.replace("_", "-"), type=type(v), default=None,
                       help=f"default {v!r} (small: {SMALL[k]!r})")
    p.add_argument("--precision", default="fp32", help="fp32 (default), bf16 or auto")
    p.add_argument("--seed", type=int, default=0, help="data and training seed (default 0)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads; 0 = measure")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--out", default="", help="folder for data and runs (default: temporary)")
    args = p.parse_args(argv)
    for k, v in (SMALL if args.small else FULL).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    return args


def main(argv=None) -> None:
    args = parse(argv)
    shape, spacing = _triple(args.shape, int), _triple(args.spacing)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.out or tmp)
        frac = write_volumes(root / "data" / "train", args.volumes, shape, spacing, args.seed,
                             args.every, args.keep)
        write_volumes(root / "data" / "test", args.test_volumes, shape, spacing,
                      args.seed + 1, args.every, args.keep)
        rows = []
        for labels in ("dense", "sparse"):
            run, secs = train_one(args, root / "data" / "train", labels, root / labels)
            rows.append((labels, secs, score(run, root / "data", labels, args.device)))
    print(f"sparse vs dense 3D annotation: {args.volumes} training volumes of {args.shape} "
          f"voxels (spacing {args.spacing}), {args.test_volumes} held-out dense volumes; "
          f"sparse = {args.keep} of every {args.every} z-slices ({100 * frac:.1f} % of the "
          f"voxels); width {args.width}, depth {args.depth}, norm {args.norm}, pooling "
          f"'{args.pooling or 2}', tile {args.tile_z}×{args.tile}×{args.tile}, "
          f"{args.iterations} iterations of Adam (lr {args.lr}), {args.precision}, seed "
          f"{args.seed}")
    print(f"{'labels':<8}{'train s':>9}{'IoU@0.5':>9}{'SEG':>9}{'test loss':>11}"
          f"{'t (train)':>11}{'IoU@t':>9}")
    for labels, secs, m in rows:
        print(f"{labels:<8}{secs:>9.1f}{m['iou']:>9.4f}{m['seg']:>9.4f}{m['loss']:>11.4f}"
              f"{m['threshold']:>11.2f}{m['iou_t']:>9.4f}")


if __name__ == "__main__":
    main()
