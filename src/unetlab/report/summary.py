"""The numbers at the top of a report and one sentence on what each means.

:func:`headline_numbers` gathers them from, in order: ``report_data/summary.json`` (what
``unetlab demo`` saves), the last validation row of ``log.csv`` (the ``val_*`` columns
``unetlab train`` writes), and the result of ``unetlab evaluate --out`` when its
``metrics.json`` lies in the run folder or one folder below. :func:`explain` says what a metric
means, with the paper's figure where it gives one (Sec. 4, Tables 1 and 2).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["headline_numbers", "explain", "MEANINGS"]

#: metric name (without a ``val_`` prefix) → one sentence for a reader of the report
MEANINGS = {
    "rand_error": "Rand error: 0 = every pair of pixels grouped as in the ground truth; the "
                  "paper's ISBI 2012 entry reached 0.0382.",
    "warping_error": "Warping error: share of pixels whose topology (a split or merged "
                     "object) is wrong after the allowed warping; the paper reached 0.000353.",
    "pixel_error": "Pixel error: 1 − the best pixel F-score of cell vs membrane; the paper "
                   "reached 0.0611.",
    "seg": "SEG: mean IoU of each true cell with the predicted cell covering most of it (the "
           "IOU of the paper's Table 2: 0.9203 on PhC-U373, 0.7756 on DIC-HeLa).",
    "iou": "IoU: overlap of predicted and true foreground, |A ∩ B| / |A ∪ B|; 1 = identical.",
    "mean_accuracy": "Mean accuracy (the DSB 2018 AP): TP / (TP + FP + FN) averaged over IoU "
                     "thresholds 0.50 … 0.95; 1 = every cell found with its exact outline.",
    "loss": "Loss: the weighted cross-entropy of Eq. 1; lower is better, compare runs only on "
            "the same data.",
}

_EVALUATE_KEYS = {"isbi2012": ("warping_error", "rand_error", "pixel_error"),
                  "cells": ("seg", "iou"), "instances": ("mean_accuracy",)}


def explain(name: str) -> str | None:
    """The sentence of :data:`MEANINGS` for a headline name such as ``"val_rand_error"``,
    ``"Rand error"`` or ``"evaluate: seg"``; None when unknown."""
    key = str(name).lower().split(":")[-1].strip().replace(" ", "_")
    key = key.removeprefix("val_").removeprefix("validation_").removesuffix("_(last)")
    return MEANINGS.get(key)


def _from_log(log: dict[str, np.ndarray] | None) -> dict[str, float]:
    """The last finite value of every ``val_*`` column of log.csv."""
    out: dict[str, float] = {}
    for k, v in (log or {}).items():
        if not k.startswith("val_"):
            continue
        finite = np.flatnonzero(np.isfinite(v))
        if finite.size:
            out[f"{k} (last)"] = float(v[finite[-1]])
    return out


def _from_evaluate(run_dir: Path) -> dict[str, float]:
    """Headline numbers of ``unetlab evaluate`` results found in the run folder."""
    out: dict[str, float] = {}
    for f in [run_dir / "metrics.json", *sorted(run_dir.glob("*/metrics.json"))]:
        try:
            r = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(r, dict) or r.get("metrics") not in _EVALUATE_KEYS:
            continue
        where = f.parent.name if f.parent != run_dir else "evaluate"
        for k in _EVALUATE_KEYS[r["metrics"]]:
            v = r.get(k)
            if isinstance(v, (int, float)) and math.isfinite(v):
                out[f"{where}: {k}"] = float(v)
    return out


def headline_numbers(run_dir: Path, saved: dict[str, Any],
                     log: dict[str, np.ndarray] | None) -> dict[str, Any]:
    """{name: value} for the summary cards: ``saved`` (summary.json) first, else the last
    validation values of log.csv; evaluate results are added in both cases."""
    out = dict(saved) if saved else _from_log(log)
    out.update(_from_evaluate(Path(run_dir)))
    return out
