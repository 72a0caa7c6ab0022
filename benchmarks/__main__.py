"""Run the benchmarks: ``python -m benchmarks [NAME ...]`` (``make bench BENCH="model"``).

Each ``benchmarks/bench_<name>.py`` defines ``main()``; it prints its tables. A module with
``DEFAULT = False`` (e.g. ``compile``: minutes of compiling) runs only when named.
"""
from __future__ import annotations

import importlib
import pkgutil
import sys
import time
from pathlib import Path


def _default(name: str) -> bool:
    """Whether a bare ``python -m benchmarks`` runs ``bench_<name>`` (its ``DEFAULT``, True
    when absent)."""
    return getattr(importlib.import_module(f"benchmarks.bench_{name}"), "DEFAULT", True)


def main(argv: list[str]) -> int:
    here = Path(__file__).parent
    names = sorted(m.name[len("bench_"):] for m in pkgutil.iter_modules([str(here)])
                   if m.name.startswith("bench_"))
    wanted = argv or [n for n in names if _default(n)]
    unknown = [n for n in wanted if n not in names]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; available: {', '.join(names)}")
        return 2
    for name in wanted:
        t0 = time.perf_counter()
        print(f"\n# benchmark: {name}", flush=True)
        importlib.import_module(f"benchmarks.bench_{name}").main()
        print(f"# {name} took {time.perf_counter() - t0:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
