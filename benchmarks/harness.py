"""A tiny benchmark harness: medians, min–max and ratios against a baseline of the same run.

Usage::

    from benchmarks.harness import Table
    t = Table("elastic deformation, 572² image + label", baseline="elasticdeform")
    t.add("elasticdeform", lambda: ..., repeat=7)
    t.add("unetlab", lambda: ..., repeat=7)
    t.print()                      # median, min-max, ratio = baseline median / this median
    t.ratio("unetlab")             # speed-up of unetlab over the baseline

The machine is shared and medians move 10–40 % between runs, which is why every target is a
ratio measured side by side, never an absolute time.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable


@dataclass
class Result:
    name: str
    times: list[float]
    work: float | None = None      # units of work per call (e.g. GFLOP) for a rate column
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.times)


def measure(fn: Callable[[], object], repeat: int = 5, warmup: int = 1) -> list[float]:
    """Wall-clock seconds of ``repeat`` calls after ``warmup`` unmeasured calls."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def measure_interleaved(cases: dict[str, Callable[[], object]], repeat: int = 5,
                        warmup: int = 1) -> dict[str, list[float]]:
    """Wall-clock seconds of ``repeat`` rounds, each calling every case once in turn (after
    ``warmup`` unmeasured rounds), so that load drifts on a shared machine hit all cases alike."""
    for _ in range(warmup):
        for fn in cases.values():
            fn()
    out: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(repeat):
        for k, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            out[k].append(time.perf_counter() - t0)
    return out


@dataclass
class Table:
    title: str
    baseline: str | None = None
    work_unit: str = ""            # e.g. "GFLOP/s" when work is given in GFLOP
    higher_is_better_ratio: bool = True
    results: list[Result] = field(default_factory=list)

    def add(self, name: str, fn: Callable[[], object], repeat: int = 5, warmup: int = 1,
            work: float | None = None, note: str = "") -> Result:
        r = Result(name, measure(fn, repeat, warmup), work, note)
        self.results.append(r)
        return r

    def add_times(self, name: str, times: list[float], work: float | None = None,
                  note: str = "") -> Result:
        r = Result(name, list(times), work, note)
        self.results.append(r)
        return r

    def get(self, name: str) -> Result:
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(name)

    def ratio(self, name: str) -> float:
        """Baseline median time / ``name`` median time (> 1: faster than the baseline)."""
        if self.baseline is None:
            raise ValueError("this table has no baseline")
        return self.get(self.baseline).median / self.get(name).median

    def print(self) -> None:
        print(f"\n## {self.title}")
        head = f"{'case':<40} {'median s':>10} {'min–max s':>19}"
        if any(r.work for r in self.results):
            head += f" {self.work_unit or 'work/s':>10}"
        if self.baseline:
            head += f" {'× vs ' + self.baseline:>24}"
        print(head)
        for r in self.results:
            line = f"{r.name:<40} {r.median:>10.4f} {min(r.times):>9.4f}–{max(r.times):<9.4f}"
            if any(x.work for x in self.results):
                line += f" {r.work / r.median:>10.1f}" if r.work else f" {'':>10}"
            if self.baseline:
                line += f" {self.ratio(r.name):>24.2f}"
            if r.note:
                line += f"  {r.note}"
            print(line)
