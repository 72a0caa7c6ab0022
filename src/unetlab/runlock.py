"""One writer per run folder: an exclusive lock on ``FOLDER/.lock`` (``fcntl.flock``).

The lock file holds the owner's process id, for the error message. The kernel releases a
``flock`` when its process dies (even by kill -9), so a lock left by a dead process is taken
over by the next start without any clean-up. On systems without ``fcntl`` the lock is a
no-op.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

from .errors import UnetlabError

__all__ = ["RunLock", "LOCK_NAME"]

LOCK_NAME = ".lock"

#: folders this process holds (resolved path → nesting count): a nested lock is a no-op
_HELD: dict[str, int] = {}


class RunLock:
    """``with RunLock(folder):`` — create ``folder`` if needed and own it exclusively; a second
    process gets a one-line :class:`UnetlabError` naming the folder and the owner's pid. On exit
    the lock file is removed, and so is the folder if this lock created it and it is empty.
    Within one process the lock nests (the demo holds its folder while the trainer runs in it)."""

    def __init__(self, folder: str | os.PathLike, option: str = "--out"):
        self.folder = Path(folder)
        self.option = option
        self._fd: int | None = None
        self._created = False
        self._nested = False

    def _busy(self) -> UnetlabError:
        try:
            pid = (self.folder / LOCK_NAME).read_text().strip() or "?"
        except OSError:
            pid = "?"
        return UnetlabError(f"{self.option} {self.folder}: in use by another unetlab process "
                            f"(pid {pid}); wait for it to finish or choose another folder")

    def _key(self) -> str:
        return str(self.folder.resolve())

    def acquire(self) -> "RunLock":
        try:
            import fcntl
        except ImportError:                       # pragma: no cover - not POSIX
            return self
        if _HELD.get(self._key()):
            _HELD[self._key()] += 1
            self._nested = True
            return self
        if self.folder.exists() and not self.folder.is_dir():
            raise UnetlabError(f"{self.option} {self.folder}: exists and is not a folder")
        self._created = not self.folder.exists()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UnetlabError(f"{self.option} {self.folder}: cannot create "
                               f"({e.strerror or e})") from None
        path = self.folder / LOCK_NAME
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise self._busy() from None
            # the previous owner may have removed the file between our open and our flock
            with contextlib.suppress(FileNotFoundError):
                if os.fstat(fd).st_ino == os.stat(path).st_ino:
                    break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        _HELD[self._key()] = 1
        return self

    def release(self) -> None:
        if self._nested:
            _HELD[self._key()] -= 1
            self._nested = False
            return
        if self._fd is None:
            return
        _HELD.pop(self._key(), None)
        with contextlib.suppress(OSError):
            (self.folder / LOCK_NAME).unlink()
        os.close(self._fd)
        self._fd = None
        if self._created:
            with contextlib.suppress(OSError):
                self.folder.rmdir()              # only when still empty

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
