"""Start-up: how long the first answers take, each command a fresh process (wall clock).

* ``unetlab --help`` and ``unetlab predict --help`` (never import torch, see
  tests/test_startup.py);
* a first prediction end to end: ``python -m unetlab predict model.pt img.png --out d`` with a
  saved width-16 depth-4 model and a 256² 8-bit PNG (a new ``d`` each time), as a user runs it
  (default options: auto precision, threads, overlay);
* for reference, ``python -c pass`` and ``python -c "import torch"``.

Target: each < 3 s. Commands run interleaved, ``UNETLAB_BENCH_STARTUP_REPEAT`` rounds (default
5) after one warm-up round (file cache). Then where the prediction's time goes: one run under
``python -X importtime``, import time summed by top-level package, and the rest.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.harness import Table, measure_interleaved

REPEAT = int(os.environ.get("UNETLAB_BENCH_STARTUP_REPEAT", "5"))
TARGET_S = 3.0


def _files(d: Path) -> tuple[Path, Path]:
    """A saved width-16 model and a 256² PNG of synthetic cells in ``d``."""
    import numpy as np
    import torch

    from unetlab.checkpoint import save_model
    from unetlab.model import UNet
    from unetlab.synthetic import touching_cells_arrays
    from unetlab.writers import write_png

    torch.manual_seed(0)
    save_model(UNet(width=16, depth=4), d / "model.pt")
    img = touching_cells_arrays(1, 256, seed=0)[0][0]
    write_png(d / "img.png", (np.clip(img, 0, 1) * 255).astype(np.uint8))
    return d / "model.pt", d / "img.png"


def _run(argv: list[str], out: Path | None = None):
    def call():
        if out is not None:
            shutil.rmtree(out, ignore_errors=True)
        r = subprocess.run(argv, capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed:\n{r.stderr[-2000:]}")
        return r
    return call


def _commands(d: Path) -> dict[str, tuple[list[str], Path | None]]:
    model, img = _files(d)
    py = sys.executable
    script = Path(py).with_name("unetlab")
    cli = [str(script)] if script.exists() else [py, "-m", "unetlab"]
    name = "unetlab" if script.exists() else "python -m unetlab"
    return {
        "python -c pass": ([py, "-c", "pass"], None),
        "python -c 'import torch'": ([py, "-c", "import torch"], None),
        f"{name} --help": (cli + ["--help"], None),
        f"{name} predict --help": (cli + ["predict", "--help"], None),
        "python -m unetlab predict (first, 256²)": (
            [py, "-m", "unetlab", "predict", str(model), str(img), "--out", str(d / "out")],
            d / "out"),
    }


def _imports_by_package(stderr: str) -> dict[str, float]:
    """Seconds of ``-X importtime`` self time, summed by top-level package."""
    total: dict[str, float] = {}
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        _, self_us, _, name = (p.strip() for p in line.replace("import time:", "|").split("|"))
        top = name.split(".")[0]
        total[top] = total.get(top, 0.0) + int(self_us) / 1e6
    return total


def _where(argv: list[str], out: Path, wall: float) -> None:
    shutil.rmtree(out, ignore_errors=True)
    r = subprocess.run([argv[0], "-X", "importtime"] + argv[1:], capture_output=True, text=True)
    spent = _imports_by_package(r.stderr)
    imports = sum(spent.values())
    print(f"\nwhere the first prediction's {wall:.2f} s go (one -X importtime run; its import "
          f"times are inflated by the tracing):")
    for k, v in sorted(spent.items(), key=lambda kv: -kv[1])[:8]:
        print(f"  import {k:<24} {v:6.2f} s")
    print(f"  all imports                   {imports:6.2f} s")
    print(f"  rest (python start, model load, threads, predict, write)  "
          f"≈ {max(wall - imports, 0.0):.2f} s (median wall − imports)")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="unetlab-startup-") as tmp:
        d = Path(tmp)
        cmds = _commands(d)
        times = measure_interleaved({k: _run(a, o) for k, (a, o) in cmds.items()},
                                    repeat=REPEAT, warmup=1)
        t = Table(f"start-up, each a fresh process, wall clock, {REPEAT} interleaved rounds "
                  f"(target < {TARGET_S:.0f} s)")
        for k in cmds:
            t.add_times(k, times[k])
        t.print()
        over = [k for k in cmds if k.startswith(("unetlab", "python -m unetlab"))
                and t.get(k).median >= TARGET_S]
        print("all unetlab commands under the target" if not over else
              f"over the {TARGET_S:.0f} s target: {', '.join(over)}")
        key = "python -m unetlab predict (first, 256²)"
        _where(cmds[key][0], cmds[key][1], t.get(key).median)


if __name__ == "__main__":
    main()
