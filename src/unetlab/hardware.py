"""What this machine can do, decided once and used by every verb: the device, the numeric
precision (``auto`` picks bf16 where the hardware computes it natively) and the CPU thread
count (by measurement: on a busy machine one thread can be many times faster than two).

Pure decisions plus small context managers; nothing here reads or writes user files.

- :func:`resolve_device` — ``"auto" | "cpu" | "cuda[:N]"`` → :class:`torch.device`.
- :func:`native_bf16` — does the device run bf16 matrix/convolution kernels natively
  (CPU: the ``amx_bf16`` or ``avx512_bf16`` flag and oneDNN; CUDA: compute capability ≥ 8)?
- :func:`resolve_precision` — ``"auto" | "fp32" | "bf16"`` → ``"fp32"`` or ``"bf16"``.
- :func:`autocast` — the autocast context for a resolved precision (fp32: no-op).
- :func:`fastest_threads` — time a step with one thread and with torch's default, keep the
  faster; :func:`thread_count` applies an explicit ``--threads`` or measures.

Setting the environment variable ``UNETLAB_NO_NATIVE_BF16=1`` makes :func:`native_bf16`
answer ``False`` (used by the tests to force the fp32 fallback on a bf16-capable CPU).
"""
from __future__ import annotations

import contextlib
import functools
import os
import time
from typing import Callable

from .errors import UnetlabError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
#: CPU flags (``/proc/cpuinfo``) of native bf16 arithmetic that oneDNN uses for convolutions
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of ``/proc/cpuinfo`` (empty where that file does not exist)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_bf16_flags() -> list[str]:
    """Which of :data:`BF16_CPU_FLAGS` this CPU has (for logs and benchmark lines)."""
    return [f for f in BF16_CPU_FLAGS if f in cpu_flags()]


def resolve_device(name: str | None = "auto"):
    """``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` →
    :class:`torch.device`; an unusable name is a :class:`UnetlabError` naming ``--device``."""
    import torch

    name = "auto" if name is None else str(name).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise UnetlabError(f"--device {name!r}: not a device (use auto, cpu, cuda or cuda:N)")
    if dev.type not in ("cpu", "cuda"):
        raise UnetlabError(f"--device {name!r}: only cpu and cuda are supported")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UnetlabError(f"--device {name!r}: CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UnetlabError(f"--device {name!r}: this machine has "
                               f"{torch.cuda.device_count()} CUDA device(s)")
    return dev


def native_bf16(device="cpu") -> bool:
    """True where ``device`` computes bf16 convolutions and matrix products natively: a CPU
    with AMX or AVX-512 BF16 (and PyTorch built with oneDNN), or a CUDA GPU that supports
    bf16 (compute capability ≥ 8). ``UNETLAB_NO_NATIVE_BF16=1`` forces ``False``."""
    import torch

    if os.environ.get("UNETLAB_NO_NATIVE_BF16", "") not in ("", "0"):
        return False
    dev = torch.device(device)
    if dev.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if dev.type == "cpu":
        return bool(cpu_bf16_flags()) and torch.backends.mkldnn.is_available()
    return False


def resolve_precision(precision: str | None = "auto", device="cpu") -> str:
    """``"auto"`` → ``"bf16"`` where :func:`native_bf16` holds; on a CUDA GPU without bf16
    (before compute capability 8, e.g. a T4) ``"fp16"`` (its tensor cores; training scales
    the loss); else ``"fp32"``. ``"fp32"``, ``"bf16"`` and ``"fp16"`` are returned as given
    (they also run, slowly, without native support). Anything else is a
    :class:`UnetlabError` naming ``--precision``."""
    import torch

    p = "auto" if precision is None else str(precision).strip().lower()
    if p not in PRECISIONS:
        raise UnetlabError(f"--precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if p == "auto":
        if native_bf16(device):
            return "bf16"
        return "fp16" if torch.device(device).type == "cuda" else "fp32"
    return p


def describe_precision(precision: str, device="cpu") -> str:
    """One line for logs: the precision and why, e.g. ``bf16 (CPU has avx512_bf16)``,
    ``fp32 (CPU has no native bf16)``, ``fp32 (asked for; the CPU also has avx512_bf16)``."""
    import torch

    dev = torch.device(device)
    native = native_bf16(dev)
    if dev.type == "cpu":
        flags = cpu_bf16_flags()
        has = f"CPU has {', '.join(flags)}" if flags else "CPU has no native bf16"
    else:
        has = torch.cuda.get_device_name(dev) + (" with bf16" if native else " without bf16")
    if precision == "fp32" and native:
        also = (f"the CPU also has {', '.join(flags)}" if dev.type == "cpu" else
                f"{torch.cuda.get_device_name(dev)} has bf16 too")
        return f"fp32 (asked for; {also})"
    if precision == "bf16" and not native:
        return f"bf16 (emulated, slow: {has})"
    if precision == "fp16":
        return (f"fp16 with loss scaling ({has})" if dev.type == "cuda" else
                f"fp16 (slow on a CPU: {has})")
    return f"{precision} ({has})"


def autocast(precision: str, device="cpu"):
    """The autocast context for an already resolved precision: bf16 → ``torch.autocast`` with
    ``torch.bfloat16`` on the device's type (weights stay fp32: the master copy); fp32 → a
    no-op context; fp16 → ``torch.float16`` (train with a gradient scaler, as the trainer
    does). Losses and soft-max should be computed in fp32 outside or after it."""
    import torch

    if precision in ("bf16", "fp16"):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(torch.device(device).type, dtype=dtype)
    if precision == "fp32":
        return contextlib.nullcontext()
    raise UnetlabError(f"precision {precision!r}: resolve it first (fp32, bf16 or fp16)")


def fastest_threads(step: Callable[[], object], repeats: int = 2) -> tuple[int, float, str]:
    """Time ``step`` (a callable doing one representative unit of work) with one CPU thread and
    with torch's default count; returns ``(threads, seconds per step, reason)`` for the faster.

    On a busy machine (more runnable threads than cores) every parallel region waits for its
    slowest, descheduled thread, so one thread can be several times faster. Each setting gets a
    warm-up call and the median of ``repeats`` timed calls; the many-thread setting is
    abandoned after one call when it is clearly (1.5×) slower. Leaves torch's thread count as
    it found it.
    """
    import statistics

    import torch

    def timed() -> float:
        t0 = time.perf_counter()
        step()
        return time.perf_counter() - t0

    default = torch.get_num_threads()
    if default == 1:
        step()
        return 1, statistics.median(timed() for _ in range(repeats)), "one core"
    try:
        torch.set_num_threads(1)
        step()
        one = statistics.median(timed() for _ in range(repeats))
        torch.set_num_threads(default)
        step()
        first = timed()
        many = first if first > 1.5 * one else statistics.median(
            [first] + [timed() for _ in range(repeats - 1)])
    finally:
        torch.set_num_threads(default)
    if one <= many:
        return 1, one, (f"1 thread: {one:.3g} s/step vs {many:.3g} s with {default} "
                        f"(the machine is busy)")
    return default, many, f"{default} threads: {many:.3g} s/step vs {one:.3g} s with 1"


#: Below this many steps a run does not measure its thread count (:func:`thread_count`).
MIN_STEPS_TO_MEASURE = 3


def thread_count(requested: int | None, step: Callable[[], object] | None = None,
                 device="cpu", steps: int | None = None) -> tuple[int, str]:
    """The CPU thread count to use and a one-line reason. ``requested`` ≥ 1 (``--threads``)
    wins; otherwise, on a CPU and given a ``step``, :func:`fastest_threads` measures; else
    torch's default. Does not change torch's setting: call ``torch.set_num_threads`` with it.

    ``steps``: how many such steps the caller will run, if known. Measuring runs at least four
    steps (three with one thread, one with the default), so with fewer than
    :data:`MIN_STEPS_TO_MEASURE` steps, or when torch's default is one thread, it would cost
    more than it can save: torch's default is kept without measuring."""
    import torch

    if requested is not None and int(requested) < 0:
        raise UnetlabError(f"--threads {requested}: must be ≥ 1 (0 = choose by measurement)")
    if requested:
        return int(requested), f"{int(requested)} thread(s) as asked (--threads)"
    n = torch.get_num_threads()
    if torch.device(device).type != "cpu" or step is None:
        return n, f"{n} thread(s) (torch default)"
    if n == 1:
        return 1, "1 thread (torch default: one core)"
    if steps is not None and steps < MIN_STEPS_TO_MEASURE:
        return n, (f"{n} thread(s) (torch default; not measured for {steps} tile "
                   f"pass{'es' if steps != 1 else ''}: measuring would cost more)")
    n, _, why = fastest_threads(step)
    return n, why
