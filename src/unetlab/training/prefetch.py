"""Training tiles: the randomness of each step and a background thread that prepares them.

The randomness of iteration ``i`` on rank ``r`` (which image, where the tile is, the
augmentation of Sec. 3.1, the dropout masks) comes from ``SeedSequence([seed, r, i])`` only, so
it does not depend on what ran before, on the prefetch thread's timing or on an interruption:
this is what makes a resumed run bit-identical to an uninterrupted one.
"""
from __future__ import annotations

import queue
import threading
from typing import Any, Callable

import numpy as np

__all__ = ["Prefetcher", "data_rng", "torch_seed", "sample_batch"]


def torch_seed(seed: int, rank: int, it: int) -> int:
    """The torch seed of step ``it`` (0-based) on ``rank`` (dropout masks)."""
    s = np.random.SeedSequence([seed, rank, it, 1]).generate_state(1, np.uint64)[0]
    return int(s) & ((1 << 63) - 1)


def data_rng(seed: int, rank: int, it: int) -> np.random.Generator:
    """The numpy generator of step ``it`` (0-based) on ``rank`` (tiles and augmentation)."""
    return np.random.default_rng(np.random.SeedSequence([seed, rank, it, 0]))


def sample_batch(sampler, batch: int, seed: int, rank: int, it: int):
    """The ``batch`` tiles of step ``it`` (0-based) on ``rank`` from a
    :class:`unetlab.data.TileSampler`: CPU tensors x (B, C, T, T) float32, classes (B, O, O)
    uint8, weights (B, O, O) float32, drawn from :func:`data_rng` only."""
    import torch

    rng = data_rng(seed, rank, it)
    tiles = [sampler.sample(rng) for _ in range(batch)]
    x = torch.from_numpy(np.stack([t[0] for t in tiles]))
    c = torch.from_numpy(np.stack([t[1] for t in tiles]))
    w = torch.from_numpy(np.stack([t[2] for t in tiles]))
    return x, c, w


class Prefetcher:
    """Produces ``make(it)`` for it = start, start+1, … in a background thread, ``depth`` ahead
    (``depth`` 0: in the caller's thread). Each item depends only on ``it``, so the results do
    not depend on timing. numpy, scipy and torch release the GIL in their heavy parts."""

    def __init__(self, make: Callable[[int], Any], start: int, stop: int, depth: int):
        self.make, self.next_it, self.stop_it = make, start, stop
        self.depth = depth
        self._q: queue.Queue = queue.Queue(maxsize=max(depth, 1))
        self._stop = threading.Event()
        self._thread = None
        if depth > 0 and stop > start:
            self._thread = threading.Thread(target=self._work, args=(start,), daemon=True,
                                            name="unetlab-prefetch")
            self._thread.start()

    def _work(self, it: int) -> None:
        while it < self.stop_it and not self._stop.is_set():
            try:
                item = (it, self.make(it), None)
            except BaseException as e:  # noqa: BLE001 - re-raised in the training thread
                item = (it, None, e)
            while not self._stop.is_set():
                try:
                    self._q.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if item[2] is not None:
                return
            it += 1

    def get(self, it: int):
        """The item of iteration ``it`` (must be asked for in order)."""
        if self._thread is None:
            return self.make(it)
        while True:
            try:
                got, value, err = self._q.get(timeout=0.5)
                break
            except queue.Empty:
                if not self._thread.is_alive():
                    raise RuntimeError("the tile prefetch thread stopped unexpectedly") from None
        if err is not None:
            raise err
        assert got == it, (got, it)
        return value

    def close(self) -> None:
        """Stop the thread and drop what it prepared."""
        self._stop.set()
        if self._thread is not None:
            while self._thread.is_alive():
                try:
                    self._q.get_nowait()
                except queue.Empty:
                    pass
                self._thread.join(timeout=0.05)
