"""The machinery both store writers share (``writer.py`` has the two public ones).

A ``_Writer`` holds the file's lock, creates the file under a temporary name or resumes it
after checking it, runs the background thread that writes queued batches, and commits:
data and its CRC-32C, flushed and synced, then the count that makes them visible. See
``writer.py`` for what the file promises.
"""
from __future__ import annotations

import errno
import json
import os
import re
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import h5py
import numpy as np
import torch

from workbench import __version__
from workbench.errors import DiskFullError, FileConflictError, InputError, MissingFileError
from workbench.signals import deferred_signals

from . import format as fmt
from .chunks import DirectChunks
from .integrity import prepare_resume
from .lock import WriterLock

HookSpecs = Mapping[str, tuple[tuple[int, ...], Union[torch.dtype, str]]]
LIBVER = ("v110", "v110")   # SWMR needs >= 1.10; pinning it keeps Debian's 1.10 h5ls/h5dump able to read
_DISK_FULL = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS}


class _Batch:
    """One queued write: ``parts[dataset path] = (data, cuda event or None, dtype name or None)``,
    each written to entries ``[start, end)`` of its dataset's first axis."""

    __slots__ = ("start", "end", "parts", "nbytes")

    def __init__(self, start: int, end: int, parts: dict[str, tuple]) -> None:
        self.start, self.end, self.parts = start, end, parts
        self.nbytes = sum(_nbytes(p[0]) for p in parts.values())


class _Writer:
    """What both writers share: the lock, creating or resuming the file, the queue, the thread, commits."""

    MODE = ""          # the file's ``mode`` attribute
    UNIT = "rows"      # what the count counts, for messages

    def __init__(self, path: Union[str, Path], hooks: HookSpecs, seq_len: int,
                 attrs: Optional[Mapping[str, Any]], compression: Optional[str], mode: str,
                 max_queue_bytes: int, flush_seconds: float, durable: bool, lock: Optional[WriterLock]) -> None:
        if mode not in ("w", "w-", "x", "a"):
            raise ValueError(f"mode must be 'w', 'w-' or 'a' (resume), got {mode!r}")
        if not hooks:
            raise ValueError("a store writer needs at least one hook")
        if max_queue_bytes < 1:
            raise InputError(f"the write queue must hold at least 1 byte (got {max_queue_bytes}); "
                             "with --queue-mb give at least 1")
        if not flush_seconds >= 0:
            raise InputError(f"flush_seconds must be >= 0 (0 flushes after every batch), got {flush_seconds}")
        self.path = Path(path)
        self.seq_len = int(seq_len)
        self.hooks = {n: (tuple(int(d) for d in s), fmt.dtype_name(d)) for n, (s, d) in hooks.items()}
        self.max_queue_bytes, self.flush_seconds, self.durable = int(max_queue_bytes), float(flush_seconds), durable
        self.bytes_written = 0
        self.thread_cpu_seconds = 0.0      # CPU time the writer thread spent casting, checksumming, writing
        if lock is not None and not (lock.held and os.path.abspath(lock.path) == os.path.abspath(self.path)):
            raise ValueError(f"lock= must be a held WriterLock on {self.path}")
        self.lock = lock if lock is not None else WriterLock(self.path)
        try:
            self.f = self._resume() if mode == "a" else self._create(attrs or {}, compression, mode == "w")
            if mode == "a" and attrs:
                self._write_attrs(self.f, attrs)
            self._datasets = {n: self.f[n] for n in fmt.counted_datasets(self.f)}
            self._direct = {n: DirectChunks(ds) for n, ds in self._datasets.items() if DirectChunks.fits(ds)}
            self._checksums = self.f[fmt.CHECKSUMS]
            self._committed = self._appended = int(self.f.attrs[fmt.count_attr(self.MODE)])
            self._fd = self.f.id.get_vfd_handle()
            self.lock.file_open = True
        except BaseException:
            if getattr(self, "f", None) is not None:
                self.f.close()
            self.lock.release()
            raise
        self._queue: deque[_Batch] = deque()
        self._queued_bytes = 0
        self._cond = threading.Condition()
        self._error: Optional[BaseException] = None
        self._closed = False
        # CRC-32C per dataset of the entries written since the last commit; a recording's probe
        # tokens (written once) count with its first commit.
        self._crc: dict[str, int] = self._fixed_checksums() if self._committed == 0 else {}
        self._written = self._committed     # entries written (maybe not yet committed)
        self._last_commit = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"StoreWriter({self.path.name})", daemon=True)
        self._thread.start()

    # -- creating ------------------------------------------------------------------------------
    def _cache_kwargs(self) -> dict:
        # Each dataset's chunk cache holds its partly filled chunk plus one more, so appends
        # of a few rows never read a chunk back from disk; full chunks go straight out.
        biggest = max(int(np.prod(fmt.chunk_shape(s, fmt.itemsize(d)))) * fmt.itemsize(d)
                      for s, d in self.hooks.values())
        return dict(rdcc_nbytes=max(2 * biggest + (1 << 20), 4 << 20), rdcc_w0=1.0, rdcc_nslots=10007)

    def _create(self, attrs: Mapping[str, Any], compression: Optional[str], replace: bool) -> h5py.File:
        """Build the empty store under a temporary name, then move it into place in one step."""
        if self.path.is_dir():
            raise InputError(f"{self.path} is a folder; give a file name such as {self.path / 'acts.h5'}")
        if not replace and self.path.exists():
            raise FileConflictError(f"{self.path} already exists; choose another name or replace it "
                                    "(workbench cache --overwrite, StoreWriter(mode='w'))")
        tmp = self.path.with_name(f".{self.path.name}.creating")
        tmp.unlink(missing_ok=True)        # left by a run killed while creating (we hold the lock)
        f = h5py.File(tmp, "w", libver=LIBVER, **self._cache_kwargs())
        try:
            for key, value in {fmt.A_FORMAT: fmt.FORMAT_NAME, fmt.A_VERSION: fmt.FORMAT_VERSION,
                               fmt.A_PACKAGE: __version__, fmt.A_MODE: self.MODE, fmt.A_SEQ_LEN: self.seq_len,
                               fmt.A_HOOKS: fmt.hooks_to_json(self.hooks), fmt.A_ROWS: 0, fmt.A_STEPS: 0,
                               fmt.A_JSON_KEYS: "[]"}.items():
                f.attrs[key] = value
            self._write_attrs(f, attrs)
            self._create_datasets(f, compression)
            f.create_dataset(fmt.CHECKSUMS, (0, 2), maxshape=(None, 2), dtype="<i8", chunks=(512, 2))
            f.swmr_mode = True      # from here on no new objects; data and attribute values only
            f.flush()
            _move_into_place(tmp, self.path, replace)
            return f
        except BaseException:
            f.close()
            tmp.unlink(missing_ok=True)
            raise

    def _create_datasets(self, f: h5py.File, compression: Optional[str]) -> None:
        raise NotImplementedError

    def _fixed_checksums(self) -> dict[str, int]:
        """CRC-32C of datasets written once at creation (checked with the first commit)."""
        return {}

    def _hook_dataset(self, f: h5py.File, name: str, lead: tuple[int, ...], compression: Optional[str]) -> None:
        """``hooks/<name>``: ``[0, *lead, *row_shape]``, growing along the first axis."""
        shape, dname = self.hooks[name]
        chunk = fmt.chunk_shape(shape, fmt.itemsize(dname))
        if lead:   # recordings: one step per chunk, up to the row chunk's rows of the probe set
            chunk = (1, min(chunk[0], max(1, lead[0])), *chunk[1:])
        ds = f.create_dataset(f"{fmt.HOOKS_GROUP}/{name}", (0, *lead, *shape), maxshape=(None, *lead, *shape),
                              dtype=fmt.DTYPES[dname][1], chunks=chunk, compression=compression)
        ds.attrs["dtype"] = dname
        ds.attrs["hook"] = name

    @staticmethod
    def _write_attrs(f: h5py.File, attrs: Mapping[str, Any]) -> None:
        json_keys = set(json.loads(f.attrs.get(fmt.A_JSON_KEYS, "[]")))
        for k, v in attrs.items():
            if k in fmt.RESERVED:
                raise ValueError(f"attribute {k!r} is reserved by the store format; pick another name")
            value, is_json = fmt.encode_attr(v)
            f.attrs[k] = value
            (json_keys.add if is_json else json_keys.discard)(k)
        f.attrs[fmt.A_JSON_KEYS] = json.dumps(sorted(json_keys))

    # -- resuming ------------------------------------------------------------------------------
    def _resume(self) -> h5py.File:
        """Open an existing store to append after its complete entries (checked first if its writer died)."""
        if not self.path.exists():
            raise MissingFileError(f"cannot resume {self.path}: it does not exist")
        prepare_resume(self.path)
        f = h5py.File(self.path, "a", libver=LIBVER, **self._cache_kwargs())
        try:
            self._check_resumable(f)
            count = self._cut_to_count(f)
            _trim_checksums(f, count)
            f.flush()
            f.swmr_mode = True
            return f
        except BaseException:
            f.close()
            raise

    def _check_resumable(self, f: h5py.File) -> None:
        if f.attrs.get(fmt.A_FORMAT) != fmt.FORMAT_NAME:
            raise InputError(f"cannot resume {self.path}: it is not a workbench activation store")
        mode = f.attrs[fmt.A_MODE]
        if mode != self.MODE:
            raise InputError(f"cannot resume {self.path}: it is a {mode} file, not a {self.MODE} file")
        if int(f.attrs[fmt.A_SEQ_LEN]) != self.seq_len:
            raise InputError(f"cannot resume {self.path}: its seq_len is {int(f.attrs[fmt.A_SEQ_LEN])}, "
                             f"not {self.seq_len}")
        have = fmt.hooks_from_json(f.attrs[fmt.A_HOOKS])
        if have != self.hooks:
            raise InputError(f"cannot resume {self.path}: its hooks differ: {_diff_hooks(have, self.hooks)}")

    def _cut_to_count(self, f: h5py.File) -> int:
        """Drop what lies past the complete count (a write the crash cut short); returns the count."""
        n = int(f.attrs[fmt.count_attr(self.MODE)])
        for name in fmt.counted_datasets(f):
            f[name].resize(n, axis=0)
        return n

    # -- appending (caller's thread) -------------------------------------------------------------
    def _stored(self, acts: Mapping[str, torch.Tensor], lead: tuple[int, ...], copy: bool) -> dict[str, tuple]:
        """Each tensor in its stored dtype, on the CPU (CUDA: cast, then a pinned non-blocking copy).

        ``copy=False``: a CPU tensor is kept as it is (the caller hands it over and must not change
        it), and cast to its stored dtype in the writer thread; otherwise a private copy is made now.
        """
        if set(acts) != set(self.hooks):
            missing, extra = sorted(set(self.hooks) - set(acts)), sorted(set(acts) - set(self.hooks))
            raise ValueError(f"acts must hold exactly this writer's hooks; missing {missing}, unexpected {extra}")
        out = {}
        for name, t in acts.items():
            shape, dname = self.hooks[name]
            if tuple(t.shape) != (*lead, *shape):
                raise ValueError(f"{name}: expected shape {[*lead, *shape]}, got {list(t.shape)}")
            t, target = t.detach(), fmt.DTYPES[dname][0]
            if t.device.type == "cuda":
                # Cast on the GPU, then a non-blocking copy into pinned memory; the writer
                # thread waits on the event, so the caller's stream keeps running.
                t = t.to(target)
                host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
                host.copy_(t, non_blocking=True)
                event = torch.cuda.Event()
                event.record()
                out[name] = (host, event, dname)
            elif not copy:
                # Handed over: the writer thread casts it (if needed) beside the caller's next batch.
                out[name] = (t.cpu(), None, dname)
            elif t.dtype != target:
                # The cast makes the private copy (and halves the bytes queued for fp32 -> fp16), in
                # pieces that never queue on torch's thread pool (see format.cast).
                out[name] = (fmt.cast(t.cpu(), target), None, dname)
            else:
                out[name] = (fmt.private_copy(t.cpu()), None, dname)
        return out

    def _put(self, batch: _Batch) -> None:
        with self._cond:
            self._raise_if_failed()
            if self._closed:
                raise ValueError("this writer is closed")
            while self._queue and self._queued_bytes + batch.nbytes > self.max_queue_bytes and self._error is None:
                self._cond.wait()
            self._raise_if_failed()
            self._queue.append(batch)
            self._queued_bytes += batch.nbytes
            self._appended = batch.end
            self._cond.notify_all()

    # -- the writer thread -------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
                batch = self._queue[0]
            if self._error is None:
                cpu = time.thread_time()
                try:
                    self._write(batch)
                    if time.monotonic() - self._last_commit >= self.flush_seconds:
                        self._commit()
                except BaseException as e:  # noqa: BLE001 (reported to the caller by append/flush/close)
                    self._fail(e)
                self.thread_cpu_seconds += time.thread_time() - cpu
            with self._cond:
                self._queue.popleft()
                self._queued_bytes -= batch.nbytes
                self._cond.notify_all()

    def _write(self, batch: _Batch) -> None:
        for name, (data, event, dname) in batch.parts.items():
            if event is not None:
                event.synchronize()
            a = fmt.to_stored(data, dname) if dname is not None else np.ascontiguousarray(data)
            ds = self._datasets[name]
            if ds.shape[0] < batch.end:
                ds.resize(batch.end, axis=0)
            if name in self._direct:
                self._direct[name].write(batch.start, a)
            else:
                ds[batch.start:batch.end] = a
            self._crc[name] = fmt.checksum(a, self._crc.get(name, 0))
            self.bytes_written += a.nbytes
        self._written = batch.end

    def _commit(self) -> None:
        """Data and its checksum first, flushed (and synced); then the count that makes them visible."""
        end = self._written
        if end == self._committed:
            return
        for chunks in self._direct.values():
            chunks.write_partial()
        k = self._checksums.shape[0]
        self._checksums.resize(k + 1, axis=0)
        self._checksums[k] = (end, fmt.combine_checksums(self._crc))
        self.f.flush()
        if self.durable:
            os.fsync(self._fd)
        self.f.attrs[fmt.count_attr(self.MODE)] = end
        self.f.flush()
        self._committed, self._crc = end, {}
        self._last_commit = time.monotonic()

    def _fail(self, e: BaseException) -> None:
        """Remember the error and drop the uncommitted data, so closing never retries a failed write."""
        self._error = e
        try:
            for ds in self._datasets.values():
                ds.resize(self._committed, axis=0)    # evicts the dirty chunks past the count
            committed = int(np.searchsorted(self._checksums[:, 0], self._committed, side="right"))
            self._checksums.resize(committed, axis=0)
        except Exception:  # noqa: BLE001 (the first error is the one to report)
            pass

    def _raise_if_failed(self) -> None:
        e = self._error
        if e is None:
            return
        if _errno(e) in _DISK_FULL:
            what = "is read-only" if _errno(e) == errno.EROFS else "is full"
            raise DiskFullError(f"the disk holding {self.path} {what}: {self._committed:,} {self.UNIT} are saved "
                                "in it; free space and run the same command with --resume") from e
        raise RuntimeError(f"writing {self.path} failed: {e}") from e

    # -- state -----------------------------------------------------------------------------------
    @property
    def committed(self) -> int:
        """Entries (rows; steps for recordings) verifiably on disk and visible to readers now."""
        return self._committed

    # -- flushing and closing --------------------------------------------------------------------
    def flush(self) -> None:
        """Wait until every queued batch is on disk and counted."""
        with self._cond:
            while self._queue and self._error is None:
                self._cond.wait()
            self._raise_if_failed()
            try:   # the thread is idle now; commit under the lock so it cannot start a write
                self._commit()
            except BaseException as e:  # noqa: BLE001
                self._fail(e)
            self._raise_if_failed()

    def close(self) -> None:
        """Write everything queued, record the final count, close the file, release the lock.

        A second Ctrl-C or a SIGTERM while this runs is held back until the file is closed.
        Safe to call twice.
        """
        if self._closed:
            return
        with deferred_signals():
            with self._cond:
                self._closed = True
                self._cond.notify_all()
            self._thread.join()
            try:
                if self._error is None:
                    self._commit()
            except BaseException as e:  # noqa: BLE001
                self._fail(e)
            finally:
                self._close_file()
        self._raise_if_failed()

    def _close_file(self) -> None:
        try:
            self._datasets, self._direct, self._checksums = {}, {}, None   # no dataset handle outlives the file
            self.f.close()
        except Exception:  # noqa: BLE001 (after a failed write: the count already names only good data)
            if self._error is None:
                raise
        finally:
            self.lock.file_open = False
            self.lock.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:   # an abandoned writer still leaves a complete file
        try:
            if not self._closed:
                self.close()
        except Exception:  # noqa: BLE001
            pass


def _move_into_place(tmp: Path, path: Path, replace: bool) -> None:
    """Rename ``tmp`` to ``path``; without ``replace``, never over an existing file (link, then unlink)."""
    if replace:
        os.replace(tmp, path)
    else:
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise FileConflictError(f"{path} already exists (created while this run started); choose another "
                                    "name or replace it (workbench cache --overwrite)") from None
        except OSError:   # a filesystem without hard links: check, then rename (a narrow race)
            if path.exists():
                raise FileConflictError(f"{path} already exists; choose another name or replace it") from None
            os.rename(tmp, path)
        else:
            tmp.unlink()
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)       # the new name itself survives a power cut
    finally:
        os.close(fd)


def _trim_checksums(f: h5py.File, count: int) -> None:
    """Keep the checksum entries within ``count``; add one for rows past the last entry (older files,
    or a recording cut back between two commits)."""
    if fmt.CHECKSUMS not in f:
        f.create_dataset(fmt.CHECKSUMS, (0, 2), maxshape=(None, 2), dtype="<i8", chunks=(512, 2))
    ck = f[fmt.CHECKSUMS]
    table = ck[:]
    keep = int(np.searchsorted(table[:, 0], count, side="right")) if len(table) else 0
    ck.resize(keep, axis=0)
    last = int(table[keep - 1, 0]) if keep else 0
    if last < count:
        ck.resize(keep + 1, axis=0)
        ck[keep] = (count, fmt.UNCHECKED)


def _nbytes(x: Any) -> int:
    return x.numel() * x.element_size() if isinstance(x, torch.Tensor) else x.nbytes


def _errno(e: BaseException) -> Optional[int]:
    """The errno of an OS error, also when h5py reports it only in its message ("errno = 28")."""
    while e is not None:
        if isinstance(e, OSError) and e.errno:
            return e.errno
        m = re.search(r"errno = (\d+)", str(e))
        if m:
            return int(m.group(1))
        e = e.__cause__ or e.__context__
    return None


def _diff_hooks(have: dict, want: dict) -> str:
    parts = []
    if set(have) != set(want):
        parts.append(f"the file has {sorted(have)}, this run asks for {sorted(want)}")
    for n in sorted(set(have) & set(want)):
        if have[n] != want[n]:
            parts.append(f"{n} is {list(have[n][0])} {have[n][1]} in the file, {list(want[n][0])} {want[n][1]} now")
    return "; ".join(parts)
