"""Atomic file writes: write to a temporary file in the same folder, fsync, then rename.

A crash (or kill -9) at any moment leaves either the previous complete file or the new complete
file, never a truncated one.
"""
from __future__ import annotations

import contextlib
import errno
import io
import os
import tempfile
from pathlib import Path
from typing import Iterator

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "atomic_torch_save",
           "remove_stale_temps"]

#: every temporary name is ``.NAME.RANDOM.tmpSUFFIX`` (hidden, with this mark)
_TMP_MARK = ".tmp"

#: errno values that mean "the output cannot be written" (full disk, file-size limit, ...)
_WRITE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.ENAMETOOLONG}


def _write_error(path: Path, e: OSError):
    from .errors import UnetlabError

    why = e.strerror or str(e) or type(e).__name__
    return UnetlabError(f"{path}: cannot write ({why})")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed onto ``path``.

    On any exception the temporary file is removed and ``path`` is left untouched. Failures to
    write (a full disk, ``ulimit -f``, a read-only or missing folder, a name too long) are
    raised as :class:`unetlab.errors.UnetlabError` naming ``path``, not the temporary file.
    ``suffix`` defaults to the final suffix of ``path`` (some writers pick the format from it).
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if suffix is None:
        suffix = path.suffix
    try:  # the temporary name is kept short: NAME_MAX is 255 bytes
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:64]}.",
                                   suffix=f"{_TMP_MARK}{suffix}", dir=parent)
    except OSError as e:
        raise _write_error(path, e) from e
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())   # mkstemp makes 0600; outputs follow the umask
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
        with contextlib.suppress(OSError):
            dfd = os.open(parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        if isinstance(e, OSError) and not isinstance(e, ValueError) and (
                e.errno in _WRITE_ERRNOS or e.filename in (tmp, str(tmp_path))):
            raise _write_error(path, e) from e
        raise


def remove_stale_temps(folder: str | os.PathLike, names=None) -> list[Path]:
    """Remove the temporary files that :func:`atomic_path` left in ``folder`` when its process
    was killed (kill -9, power loss) during a write: hidden files ``.NAME.*.tmp*`` whose NAME
    is in ``names`` (default: any). Call it only while owning the folder (see
    :class:`unetlab.runlock.RunLock`): another writer's temporary file looks the same.
    Returns the removed paths."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        n = p.name
        if not (n.startswith(".") and _TMP_MARK in n and p.is_file()):
            continue
        if names is not None and not any(n.startswith(f".{m[:64]}.") for m in names):
            continue
        with contextlib.suppress(OSError):
            p.unlink()
            removed.append(p)
    return removed


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()   # read once at import: os.umask is process-wide, not thread-safe


def _umask() -> int:
    return _UMASK


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    """``torch.save`` atomically. torch's file writer reports a full disk or a file-size limit
    as an opaque RuntimeError; then the object is serialised in memory and written by Python,
    which raises the real OSError (ENOSPC / EFBIG), reported as one line naming ``path``."""
    import torch

    with atomic_path(path) as tmp:
        try:
            torch.save(obj, tmp)
        except RuntimeError:
            buf = io.BytesIO()
            torch.save(obj, buf)          # a genuine serialisation error is raised again here
            with open(tmp, "wb") as f:
                f.write(buf.getbuffer())
