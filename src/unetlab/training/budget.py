"""A wall-clock budget for training (``unetlab train --time 60m``): the number of iterations is
fixed once, at the start of a new run, from the step time measured on this machine, so that the
learning-rate schedule (warm-up, poly or cosine decay) ends when the time does. The fixed number
is written to ``config.toml``; ``--resume`` reuses it, so a resumed run stays bit-identical.
"""
from __future__ import annotations

import re
import statistics
import time
from typing import Callable

from ..errors import UnetlabError

_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([hms]?)", re.I)
_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "": 60.0}


def parse_duration(text: str) -> float:
    """Seconds of a duration such as ``60m``, ``90s``, ``1h30m``, ``1.5h`` or ``45`` (a bare
    number is minutes). Raises :class:`UnetlabError` naming ``--time`` otherwise."""
    s = str(text).strip().replace(" ", "")
    parts = list(_PART.finditer(s))
    if not s or not parts or "".join(m.group(0) for m in parts) != s or (
            len(parts) > 1 and any(m.group(2) == "" for m in parts)):
        raise UnetlabError(f"--time {text!r}: give a duration like 60m, 90s, 1h30m or 45 "
                           f"(minutes)")
    total = sum(float(m.group(1)) * _SECONDS[m.group(2).lower()] for m in parts)
    if not total > 0:
        raise UnetlabError(f"--time {text!r}: must be longer than zero")
    return total


def median_seconds(fn: Callable[[], object], repeats: int = 3) -> float:
    """Median wall-clock seconds of ``repeats`` calls of ``fn`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


#: the trainer's work around the measured step (tile sampling and augmentation in the prefetch
#: thread, the log row, the progress bar), as a fraction of the step time. Measured on ISBI
#: with the cpu preset (one core, bf16): 0–4 % (two 60-minute runs: 0.199 and 0.213 s per
#: iteration against 0.200 and 0.205 s measured steps); 0.15 left 7–8 minutes of an hour
#: unused. 0.05 keeps a margin so that the budget is not overrun.
OVERHEAD = 0.05


def budget_iterations(seconds: float, spent: float, step_s: float, val_s: float,
                      val_every: int, save_s: float = 0.0, save_every: int = 1) -> int:
    """Iterations that fit in ``seconds`` of wall-clock time of which ``spent`` are gone: each
    step costs ``step_s·(1 + OVERHEAD)``, plus ``val_s`` every ``val_every`` steps (one more
    validation runs at the end) and ``save_s`` every ``save_every`` steps. At least 1."""
    per_step = (step_s * (1.0 + OVERHEAD) + val_s / max(int(val_every), 1)
                + save_s / max(int(save_every), 1))
    left = seconds - spent - val_s
    return max(1, int(left // max(per_step, 1e-9)))


def save_seconds(net) -> float:
    """Seconds to write a checkpoint of ``net`` the way the trainer does (model, optimiser
    moments — two more copies of the weights for Adam — atomically, with fsync)."""
    import tempfile

    from ..atomic import atomic_torch_save

    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    payload = {"model": state, "m1": state, "m2": state}
    with tempfile.TemporaryDirectory() as d:
        return median_seconds(lambda: atomic_torch_save(payload, f"{d}/probe.pt"), 1)


def curves_seconds(rows: int = 100) -> float:
    """Seconds to draw ``curves.png`` of a log of ``rows`` rows (done at every validation)."""
    import numpy as np

    from ..report import png_curves

    it = np.arange(1, rows + 1, dtype=float)
    log = {"iteration": it, "loss": 1 / it, "lr": np.full(rows, 1e-3),
           "val_loss": 1 / it, "val_rand_error": 1 / it}
    return median_seconds(lambda: png_curves(log), 1)
