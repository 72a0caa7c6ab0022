"""Stopping a training run cleanly: Ctrl-C (SIGINT) and SIGTERM ask the loop to finish the
current iteration and save a checkpoint; a second signal aborts at once.

:class:`StopRequest` is the context manager that installs the handlers and puts the previous
ones back; :class:`TrainingInterrupted` is what the trainer raises after the save.
"""
from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Callable

from ..errors import UnetlabError

__all__ = ["StopRequest", "TrainingInterrupted", "NonFiniteLossError"]

#: a second SIGINT within this many seconds of the first is the same Ctrl-C under torchrun
#: (which forwards the terminal's signal to every rank)
SIGINT_GRACE_S = 3.0

_NAMES = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}


class NonFiniteLossError(UnetlabError):
    """The loss (or the weights) became NaN or infinite; the last good checkpoint is kept."""


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by Ctrl-C or SIGTERM; ``run_dir`` and ``iteration`` say what was saved,
    ``signum`` which signal stopped it (``signal.SIGINT`` also for a plain KeyboardInterrupt)."""

    def __init__(self, run_dir: Path, iteration: int, saved: bool,
                 signum: int = signal.SIGINT):
        super().__init__(f"interrupted at iteration {iteration}")
        self.run_dir = run_dir
        self.iteration = iteration
        self.saved = saved
        self.signum = int(signum)

    @property
    def exit_code(self) -> int:
        """The shell's convention: 128 + the signal number (130 for Ctrl-C, 143 for SIGTERM)."""
        return 128 + self.signum


class StopRequest:
    """While active (``with StopRequest(...) as stop``), SIGINT and SIGTERM set
    ``stop.requested`` (and ``stop.signum``) instead of killing the process; a second one raises
    :class:`KeyboardInterrupt` at once. ``say`` prints the first notice. Handlers are only
    installed from the main thread; the previous handlers are restored on exit.
    ``distributed``: ignore a repeated SIGINT within :data:`SIGINT_GRACE_S` (torchrun)."""

    def __init__(self, say: Callable[[str], None] | None = None, distributed: bool = False):
        self.say = say
        self.distributed = distributed
        self.requested = False
        self.signum = signal.SIGINT
        self._at = 0.0
        self._old: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.requested:
            if (self.distributed and signum == signal.SIGINT
                    and time.monotonic() - self._at < SIGINT_GRACE_S):
                return
            raise KeyboardInterrupt
        self.requested, self.signum, self._at = True, signum, time.monotonic()
        if self.say is not None:
            name = _NAMES.get(signum, f"signal {signum}")
            self.say(f"\n{name}: finishing this iteration and saving a checkpoint "
                     f"({name} again to stop at once)")

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for s in _NAMES:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)
        self._old.clear()
