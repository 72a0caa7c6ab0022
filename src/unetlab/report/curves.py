"""Training curves from ``log.csv`` as PNG bytes: loss and validation metrics against iteration.
"""
from __future__ import annotations

import numpy as np

from .pictures import _figure, _png

__all__ = ["png_curves"]


_LOG_META = {"iteration", "iter", "step", "epoch", "lr", "time", "elapsed", "seconds",
             "wall", "wall_s", "it_per_s", "samples"}


def _validation_columns(log: dict[str, np.ndarray]) -> list[str]:
    cols = []
    for k, v in log.items():
        if k in _LOG_META or k.endswith("loss") or k.endswith("_time") or k.endswith("_s"):
            continue
        if k.startswith("train_"):
            continue
        if np.isfinite(v).any():
            cols.append(k)
    return cols


def png_curves(log: dict[str, np.ndarray]) -> bytes:
    """Loss per iteration (raw and a running mean, log scale when positive) and, when the log
    has them, the validation columns against iteration."""
    it = log.get("iteration", log.get("iter", log.get("step")))
    loss = log.get("loss")
    if loss is None or not np.isfinite(loss).any():
        raise ValueError("the log has no loss values")
    if it is None:
        it = np.arange(1, len(loss) + 1, dtype=np.float64)
    val_cols = _validation_columns(log)
    ncol = 2 if val_cols else 1
    fig = _figure(6.2 * ncol, 3.8)
    axes = fig.subplots(1, ncol, squeeze=False)[0]
    ax = axes[0]
    ok = np.isfinite(loss)
    ax.plot(it[ok], loss[ok], color="0.7", lw=0.8, label="loss")
    k = max(1, min(50, int(ok.sum()) // 20))
    if ok.sum() > k:
        smooth = np.convolve(loss[ok], np.ones(k) / k, mode="valid")
        ax.plot(it[ok][k - 1:], smooth, color="C0", lw=1.8, label=f"running mean ({k})")
    for c in (c for c in log if c.endswith("loss") and c != "loss"):   # e.g. val_loss
        m = np.isfinite(log[c])
        if m.any():
            ax.plot(it[m], log[c][m], marker="o", ms=4, lw=1.4, color="C3", label=c)
    if np.all(loss[ok] > 0):
        ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("weighted cross-entropy")
    ax.set_title("training loss", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if val_cols:
        ax = axes[1]
        for i, c in enumerate(val_cols):
            v = log[c]
            m = np.isfinite(v)
            ax.plot(it[m], v[m], marker="o", ms=3, lw=1.4, color=f"C{i + 1}", label=c)
        ax.set_xlabel("iteration")
        ax.set_ylim(bottom=0)
        ax.set_title("validation", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _png(fig)
