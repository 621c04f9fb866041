"""Durable file writes for a run folder, and telling a full disk from other write failures.

A file a resume depends on (``config.toml``, ``tokenizer.json``, the token cache) is
written to a temporary name in the same folder, fsynced, renamed over its final name,
and the folder fsynced: a kill at any moment leaves the old file or the new one,
never a part of one.

Writers report a full disk in different shapes: Python's ``OSError(ENOSPC)``,
safetensors' ``SafetensorError("... os error 28")``, ``torch.save``'s
``RuntimeError("unexpected pos ...")`` with the ``OSError`` as its context, h5py's
``OSError`` with HDF5's text. ``is_disk_full`` recognises all of them, and, as a
backstop for wordings it does not know, a failed write on a filesystem with
(almost) no space left.
"""
from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Callable, Iterator, Optional, Union

FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
FULL_TEXTS = ("no space left on device", "os error 28", "disk quota exceeded", "file too large")
NEARLY_FULL_BYTES = 1 << 20   # a write that failed with less than this free is a full disk


def fsync_dir(path: Union[str, Path]) -> None:
    """Make a rename (or a new file) in ``path`` durable: a crash after it cannot undo it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass   # some filesystems cannot fsync a folder; the rename is still atomic
    finally:
        os.close(fd)


def write_atomically(final: Union[str, Path], write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``final``, fsync it, rename it to ``final``.

    On any failure the temporary file is removed and ``final`` is left as it was.
    """
    final = Path(final)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(final.parent)


def write_text_atomically(final: Union[str, Path], text: str) -> None:
    write_atomically(final, lambda p: p.write_text(text, encoding="utf-8"))


def free_bytes(path: Union[str, Path]) -> Optional[int]:
    """Free bytes on the filesystem holding ``path`` (or its nearest existing parent); None if unknown."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from or during."""
    seen: set[int] = set()
    e: Optional[BaseException] = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def is_disk_full(exc: BaseException, path: Union[str, Path]) -> bool:
    """True when ``exc`` (or an exception it was raised from) says the disk under ``path`` is full."""
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in FULL_ERRNOS:
            return True
        if any(t in str(e).lower() for t in FULL_TEXTS):
            return True
    if isinstance(exc, (OSError, RuntimeError)) or type(exc).__name__ == "SafetensorError":
        free = free_bytes(path)
        return free is not None and free < NEARLY_FULL_BYTES
    return False


def is_read_only(exc: BaseException) -> bool:
    """True when ``exc`` (or an exception it was raised from) is a write to a read-only filesystem."""
    return any(isinstance(e, OSError) and e.errno == errno.EROFS for e in _chain(exc))
