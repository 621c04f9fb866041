"""One writer per store file: an ``flock`` on a lock file beside it, held for the writer's life.

Why not a lock on the ``.h5`` file itself: a POSIX ``fcntl`` lock is dropped as soon
as the process closes *any* descriptor of that file, and h5py opens and closes it
freely, so such a lock silently stops holding; an ``flock`` on the ``.h5`` file would
collide with HDF5's own file locking. The lock file (``.NAME.lock`` in the same
folder) is touched by nothing else. It holds the writer's PID and host, so a second
writer is refused with a line naming the process to wait for. The lock dies with
its process (SIGKILL included): a killed writer never leaves a stale lock.
"""
from __future__ import annotations

import errno
import fcntl
import os
import socket
import time
from pathlib import Path
from typing import Optional, Union

from workbench.errors import FileConflictError, InputError

# Paths this process holds a lock on: probing one of those by opening and closing
# its lock file could drop the lock where flock is emulated with fcntl (NFS).
_HELD: dict[Path, "WriterLock"] = {}
_RETRIES = 20


def lock_path(path: Union[str, Path]) -> Path:
    """The lock file of store ``path``: ``.NAME.lock`` beside it."""
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


def _key(path: Union[str, Path]) -> Path:
    return Path(os.path.abspath(path))


class WriterLock:
    """An exclusive, non-blocking writer lock on store ``path``; ``release()`` (or ``with``) frees it.

    Raises ``FileConflictError`` naming the holder's PID when another writer holds it.
    """

    def __init__(self, path: Union[str, Path]) -> None:
        self.path = Path(path)
        self.file = lock_path(self.path)
        self.fd: Optional[int] = None
        self.file_open = False   # set by the writer while it has the store open
        if _key(self.path) in _HELD:
            raise FileConflictError(f"{self.path} is already being written by this process; "
                                    "close its StoreWriter first")
        try:
            self.file.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InputError(f"cannot create the folder {self.file.parent} for {self.path}: {e.strerror}") from None
        busy = 0
        while self.fd is None:
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno not in (errno.EWOULDBLOCK, errno.EACCES, errno.EAGAIN):
                    raise
                # A reader probing with ``writer_alive`` holds a shared lock for microseconds;
                # a writer holds it for its life. A few short retries tell the two apart.
                busy += 1
                if busy > _RETRIES:
                    raise FileConflictError(f"{self.path} is being written by {holder(self.path)}; "
                                            "wait for it to finish or stop it, then run again") from None
                time.sleep(0.01)
                continue
            # The previous holder may have removed the lock file between our open and our lock:
            # then we hold a lock on a file nobody else can find. Try again on the current one.
            if _same_file(fd, self.file):
                self.fd = fd
            else:
                os.close(fd)
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        _HELD[_key(self.path)] = self

    def _open(self) -> int:
        try:
            return os.open(self.file, os.O_RDWR | os.O_CREAT, 0o644)
        except PermissionError:
            raise InputError(f"cannot write {self.path}: {self.file.parent} is not writable") from None
        except OSError as e:
            where = "is on a read-only filesystem" if e.errno == errno.EROFS else f"does not take new files " \
                f"({e.strerror})"
            raise InputError(f"cannot write {self.path}: {self.file.parent} {where}; choose another folder") from None

    @property
    def held(self) -> bool:
        return self.fd is not None

    def release(self) -> None:
        """Remove the lock file, then unlock (in that order, so a waiter never locks a removed file)."""
        if self.fd is None:
            return
        _HELD.pop(_key(self.path), None)
        try:
            self.file.unlink()
        except FileNotFoundError:
            pass
        os.close(self.fd)   # closing the last descriptor releases the flock
        self.fd = None

    def __enter__(self) -> "WriterLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def holder(path: Union[str, Path]) -> str:
    """Who holds the lock of ``path``, for messages: "process 1234 on host" or "another process"."""
    try:
        text = lock_path(path).read_text().split()
    except OSError:
        text = []
    if text and text[0].isdigit():
        host = f" on {text[1]}" if len(text) > 1 and text[1] != socket.gethostname() else ""
        return f"process {text[0]}{host}"
    return "another process"


def writer_alive(path: Union[str, Path]) -> bool:
    """True while some process holds the writer lock of ``path`` (a reader never blocks on it)."""
    mine = _HELD.get(_key(path))
    if mine is not None:
        return mine.file_open   # this process: writing it, or only holding the lock to check it first
    try:
        fd = os.open(lock_path(path), os.O_RDONLY)
    except OSError:
        return False   # no lock file: no writer (writers remove it when they finish)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)   # also releases our shared lock if we got it
    return False
