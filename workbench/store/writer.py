"""StoreWriter: stream activations to an HDF5 store from a background thread.

The caller (a forward pass, a training step) hands over tensors with
``append`` / ``append_step``; they are copied off the device, queued, and
written by one thread while the caller computes the next batch. The queue is
bounded in bytes, so memory stays bounded whatever the dataset size: when the
disk is slower than the model, ``append`` waits.

Crash safety: the file is written in HDF5's SWMR mode, whose ordered metadata
writes keep it consistent at every moment. After each flush the count of
complete rows (``n_rows``; ``n_steps`` for recordings) is written and flushed
again, so a reader, or a ``mode="a"`` resume after SIGKILL, uses only rows
whose data reached the file before their count did.
"""
from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import h5py
import numpy as np
import torch

from workbench.errors import FileConflictError, InputError, MissingFileError

from . import format as fmt
from .recovery import clear_status_flags, read_superblock

HookSpecs = Mapping[str, tuple[tuple[int, ...], Union[torch.dtype, str]]]
LIBVER = ("v110", "v110")   # SWMR needs >= 1.10; pinning it keeps Debian's 1.10 h5ls/h5dump able to read


class StoreWriter:
    """Write token rows and their activations to ``path``.

    Args:
        path: the ``.h5`` file.
        hooks: ``{hook name: (row_shape, dtype)}``; ``row_shape`` excludes the batch axis,
            e.g. ``(pos, d_model)``; dtype is float32, float16 or bfloat16 (stored as uint16 bits).
        seq_len: ``pos``, the width of every token row.
        attrs: user attributes (model_config, model_source, tokenizer, command, ...);
            dicts and lists are stored as JSON text.
        compression: None (default: activations barely compress), "gzip", "lzf", ...
        mode: "w" new file (replaces one), "w-" new file (error if it exists),
            "a" resume: continue after the file's complete rows (hooks must match).
        steps: a training recording: ``probe_tokens`` fixed rows, one slab per ``append_step``.
        probe_tokens: ``[rows, pos]`` token ids of the probe set (``steps=True`` only).
        meta: per-row metadata columns ``{name: numpy dtype}`` passed to ``append(meta=...)``.
        max_queue_bytes: memory the queued batches may hold before ``append`` waits.
        flush_seconds: at most this long between flushes (0: after every batch);
            the work a crash can lose.
        drop_steps_after: resuming a recording (``mode="a"``) from a training checkpoint at this
            step: steps recorded after it (after the checkpoint, before the crash) are dropped,
            so the resumed run records them again.
    """

    def __init__(self, path: Union[str, Path], hooks: HookSpecs, seq_len: int,
                 attrs: Optional[Mapping[str, Any]] = None, compression: Optional[str] = None,
                 mode: str = "w", steps: bool = False, probe_tokens: Optional[torch.Tensor] = None,
                 meta: Optional[Mapping[str, Any]] = None, max_queue_bytes: int = 256 << 20,
                 flush_seconds: float = 1.0, drop_steps_after: Optional[int] = None) -> None:
        if mode not in ("w", "w-", "x", "a"):
            raise ValueError(f"mode must be 'w', 'w-' or 'a' (resume), got {mode!r}")
        if not hooks:
            raise ValueError("StoreWriter needs at least one hook")
        self.path = Path(path)
        self.seq_len = int(seq_len)
        self.hooks = {n: (tuple(int(d) for d in s), fmt.dtype_name(d)) for n, (s, d) in hooks.items()}
        self.meta_dtypes = {k: np.dtype(v) for k, v in (meta or {}).items()}
        self.recording = bool(steps)
        self.max_queue_bytes = int(max_queue_bytes)
        self.flush_seconds = float(flush_seconds)
        if self.recording and probe_tokens is None and mode != "a":
            raise ValueError("steps=True needs probe_tokens=[rows, pos], the fixed rows recorded at every step")
        if mode in ("w-", "x") and self.path.exists():
            raise FileConflictError(f"{self.path} already exists")
        if mode == "a" and not self.path.exists():
            raise MissingFileError(f"cannot resume {self.path}: it does not exist")
        self.drop_steps_after = drop_steps_after
        self._lock_fd = self._lock()
        try:
            self.f = self._open_resume() if mode == "a" else self._create(attrs or {}, compression, probe_tokens)
            if mode == "a" and attrs:
                self._write_attrs(attrs)
            self.f.swmr_mode = True   # from here on no new objects; data and attribute values only
            self._rows_appended = int(self.f.attrs[fmt.A_ROWS])
            n_steps = int(self.f.attrs[fmt.A_STEPS])
            self._steps = [int(s) for s in self.f[fmt.STEPS][:n_steps]] if self.recording else []
        except BaseException:
            self._unlock()
            raise
        self._queue: deque = deque()
        self._queued_bytes = 0
        self._cond = threading.Condition()
        self._error: Optional[BaseException] = None
        self._closed = False
        self._last_flush = time.monotonic()
        self.bytes_written = 0
        self._thread = threading.Thread(target=self._run, name=f"StoreWriter({self.path.name})", daemon=True)
        self._thread.start()

    # -- opening ---------------------------------------------------------------------------
    def _lock(self) -> int:
        """A POSIX lock on the file so two writers (or a resume while one runs) never meet."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise FileConflictError(f"{self.path} is being written by another process; wait for it or stop it") from None
        return fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _cache_kwargs(self) -> dict:
        # Each dataset's chunk cache holds its partly filled chunk plus one more, so
        # appends of a few rows never read a chunk back from disk; full chunks go first.
        biggest = max(int(np.prod(fmt.chunk_shape(s, fmt.DTYPES[d][1].itemsize))) * fmt.DTYPES[d][1].itemsize
                      for s, d in self.hooks.values())
        return dict(rdcc_nbytes=max(2 * biggest + (1 << 20), 4 << 20), rdcc_w0=1.0, rdcc_nslots=10007)

    def _create(self, attrs: Mapping[str, Any], compression: Optional[str],
                probe_tokens: Optional[torch.Tensor]) -> h5py.File:
        f = h5py.File(self.path, "w", libver=LIBVER, **self._cache_kwargs())
        try:
            f.attrs[fmt.A_FORMAT] = fmt.FORMAT_NAME
            f.attrs[fmt.A_VERSION] = fmt.FORMAT_VERSION
            from workbench import __version__
            f.attrs[fmt.A_PACKAGE] = __version__
            f.attrs[fmt.A_MODE] = "steps" if self.recording else "cache"
            f.attrs[fmt.A_SEQ_LEN] = self.seq_len
            f.attrs[fmt.A_HOOKS] = fmt.hooks_to_json(self.hooks)
            f.attrs[fmt.A_ROWS] = 0
            f.attrs[fmt.A_STEPS] = 0
            f.attrs[fmt.A_JSON_KEYS] = "[]"
            self.f = f
            self._write_attrs(attrs)
            lead: tuple[int, ...] = ()
            if self.recording:
                probe = _as_tokens(probe_tokens, self.seq_len)
                f.create_dataset(fmt.TOKENS, data=probe)   # fixed size: contiguous
                f.create_dataset(fmt.STEPS, (0,), maxshape=(None,), dtype="<i8", chunks=(1024,))
                lead = (probe.shape[0],)
                f.attrs[fmt.A_ROWS] = probe.shape[0]
            else:
                f.create_dataset(fmt.TOKENS, (0, self.seq_len), maxshape=(None, self.seq_len), dtype="<i4",
                                 chunks=fmt.chunk_shape((self.seq_len,), 4))
                for name, dt in self.meta_dtypes.items():
                    f.create_dataset(f"{fmt.META_GROUP}/{name}", (0,), maxshape=(None,), dtype=dt,
                                     chunks=fmt.chunk_shape((), dt.itemsize))
            for name, (shape, dname) in self.hooks.items():
                np_dt = fmt.DTYPES[dname][1]
                chunk = fmt.chunk_shape(shape, np_dt.itemsize)
                if self.recording:
                    full = (0, *lead, *shape)
                    chunk = (1, *fmt.chunk_shape(shape, np_dt.itemsize))
                    chunk = (1, min(chunk[1], max(1, lead[0])), *chunk[2:])
                else:
                    full = (0, *shape)
                ds = f.create_dataset(f"{fmt.HOOKS_GROUP}/{name}", full, maxshape=(None, *full[1:]),
                                      dtype=np_dt, chunks=chunk, compression=compression)
                ds.attrs["dtype"] = dname
                ds.attrs["hook"] = name
            return f
        except BaseException:
            f.close()
            raise

    def _open_resume(self) -> h5py.File:
        sb = read_superblock(self.path)
        if sb["flags"]:
            clear_status_flags(self.path)   # its writer died (we hold the lock, so none runs now)
        f = h5py.File(self.path, "a", libver=LIBVER, **self._cache_kwargs())
        try:
            if f.attrs.get(fmt.A_FORMAT) != fmt.FORMAT_NAME:
                raise InputError(f"cannot resume {self.path}: it is not a workbench activation store")
            mode = f.attrs[fmt.A_MODE]
            if (mode == "steps") != self.recording:
                raise InputError(f"cannot resume {self.path}: it is a {mode} file, the writer was opened "
                                 f"with steps={self.recording}")
            if int(f.attrs[fmt.A_SEQ_LEN]) != self.seq_len:
                raise InputError(f"cannot resume {self.path}: its seq_len is {int(f.attrs[fmt.A_SEQ_LEN])}, "
                                 f"not {self.seq_len}")
            have = fmt.hooks_from_json(f.attrs[fmt.A_HOOKS])
            if have != self.hooks:
                raise InputError(f"cannot resume {self.path}: its hooks differ: {_diff_hooks(have, self.hooks)}")
            # Anything past the last complete count is from a write the crash cut short: drop it.
            if self.recording:
                n = int(f.attrs[fmt.A_STEPS])
                if self.drop_steps_after is not None:
                    n = int(np.searchsorted(f[fmt.STEPS][:n], self.drop_steps_after, side="right"))
                    f.attrs[fmt.A_STEPS] = n
                for ds in [f[fmt.STEPS], *f[fmt.HOOKS_GROUP].values()]:
                    ds.resize(n, axis=0)
            else:
                n = int(f.attrs[fmt.A_ROWS])
                for ds in [f[fmt.TOKENS], *f[fmt.HOOKS_GROUP].values(), *f.get(fmt.META_GROUP, {}).values()]:
                    ds.resize(n, axis=0)
                have_meta = set(f[fmt.META_GROUP]) if fmt.META_GROUP in f else set()
                if have_meta != set(self.meta_dtypes):
                    raise InputError(f"cannot resume {self.path}: its metadata columns are {sorted(have_meta)}, "
                                     f"not {sorted(self.meta_dtypes)}")
            f.flush()
            return f
        except BaseException:
            f.close()
            raise

    def _write_attrs(self, attrs: Mapping[str, Any]) -> None:
        json_keys = set(json.loads(self.f.attrs.get(fmt.A_JSON_KEYS, "[]")))
        for k, v in attrs.items():
            if k in fmt.RESERVED:
                raise ValueError(f"attribute {k!r} is reserved by the store format; pick another name")
            value, is_json = fmt.encode_attr(v)
            self.f.attrs[k] = value
            (json_keys.add if is_json else json_keys.discard)(k)
        self.f.attrs[fmt.A_JSON_KEYS] = json.dumps(sorted(json_keys))

    # -- state -------------------------------------------------------------------------------
    @property
    def n_rows(self) -> int:
        """Rows in the file once the queue drains (cache mode), or probe rows (recordings)."""
        return self._rows_appended

    @property
    def steps(self) -> list[int]:
        """Steps recorded so far, including queued ones (recordings only)."""
        return list(self._steps)

    # -- appending (caller's thread) -----------------------------------------------------------
    def append(self, tokens: torch.Tensor, acts: Mapping[str, torch.Tensor],
               meta: Optional[Mapping[str, Any]] = None) -> None:
        """Queue ``n`` rows: ``tokens [n, pos]``, ``acts[hook] [n, *row_shape]``, ``meta[name] [n]``.

        Returns as soon as the batch is copied and queued; waits only while the
        queue holds ``max_queue_bytes``.
        """
        if self.recording:
            raise ValueError("this writer records training steps: use append_step(step, acts)")
        toks = _as_tokens(tokens, self.seq_len)
        n = toks.shape[0]
        arrays = self._convert(acts, n)
        meta = dict(meta or {})
        if set(meta) != set(self.meta_dtypes):
            raise ValueError(f"meta must have exactly the columns {sorted(self.meta_dtypes)}, got {sorted(meta)}")
        metas = {k: np.asarray(v, dtype=self.meta_dtypes[k]).reshape(-1) for k, v in meta.items()}
        for k, v in metas.items():
            if v.shape[0] != n:
                raise ValueError(f"meta[{k!r}] has {v.shape[0]} values for {n} rows")
        self._rows_appended += n
        self._put(("rows", toks, arrays, metas), toks.nbytes + sum(_nbytes(a) for a in arrays.values()))

    def append_step(self, step: int, acts: Mapping[str, torch.Tensor]) -> None:
        """Queue one recorded step: ``acts[hook] [rows, *row_shape]`` for the probe rows."""
        if not self.recording:
            raise ValueError("append_step needs a writer opened with steps=True and probe_tokens")
        step = int(step)
        if self._steps and step <= self._steps[-1]:
            raise ValueError(f"steps must increase: got step {step} after step {self._steps[-1]}")
        arrays = self._convert(acts, self._rows_appended)
        self._steps.append(step)
        self._put(("step", step, arrays), sum(_nbytes(a) for a in arrays.values()))

    def _convert(self, acts: Mapping[str, torch.Tensor], n: int) -> dict[str, tuple]:
        """A private CPU copy of each tensor in its stored dtype (CUDA: cast, then a pinned non-blocking copy)."""
        if set(acts) != set(self.hooks):
            missing, extra = sorted(set(self.hooks) - set(acts)), sorted(set(acts) - set(self.hooks))
            raise ValueError(f"acts must hold exactly this writer's hooks; missing {missing}, unexpected {extra}")
        out = {}
        for name, t in acts.items():
            shape, dname = self.hooks[name]
            if tuple(t.shape) != (n, *shape):
                raise ValueError(f"{name}: expected shape {[n, *shape]}, got {list(t.shape)}")
            t = t.detach()
            if t.device.type == "cuda":
                # Cast on the GPU, then a non-blocking copy into pinned memory; the writer
                # thread waits on the event, so the caller's stream keeps running.
                t = t.to(fmt.DTYPES[dname][0])
                host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
                host.copy_(t, non_blocking=True)
                event = torch.cuda.Event()
                event.record()
                out[name] = (host, event)
            else:
                # A private copy (the caller may reuse its buffer once we return): the cast to
                # the stored dtype makes one (fp32 -> fp16 also halves the bytes to copy and
                # queue); without a cast, numpy's memcpy. Neither uses torch's thread pool.
                t, target = t.cpu(), fmt.DTYPES[dname][0]
                out[name] = (fmt.cast(t, target) if t.dtype != target else fmt.private_copy(t), None)
        return out

    def _put(self, item: tuple, nbytes: int) -> None:
        with self._cond:
            self._raise_if_failed()
            if self._closed:
                raise ValueError("this StoreWriter is closed")
            while self._queue and self._queued_bytes + nbytes > self.max_queue_bytes and self._error is None:
                self._cond.wait()
            self._raise_if_failed()
            self._queue.append((item, nbytes))
            self._queued_bytes += nbytes
            self._cond.notify_all()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            # OSError (disk full, I/O error) stays an OSError, so the CLI prints it as one line.
            kind = OSError if isinstance(self._error, OSError) else RuntimeError
            raise kind(f"writing {self.path} failed: {self._error}") from self._error

    # -- the writer thread -----------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
                item, nbytes = self._queue[0]
            try:
                if self._error is None:
                    self._write(item)
            except BaseException as e:  # noqa: BLE001 (reported to the caller by append/close)
                self._error = e
            with self._cond:
                self._queue.popleft()
                self._queued_bytes -= nbytes
                self._cond.notify_all()

    def _write(self, item: tuple) -> None:
        f = self.f
        hooks = f[fmt.HOOKS_GROUP]
        if item[0] == "rows":
            _, toks, arrays, metas = item
            n0 = f[fmt.TOKENS].shape[0]
            n1 = n0 + toks.shape[0]
            f[fmt.TOKENS].resize(n1, axis=0)
            f[fmt.TOKENS][n0:n1] = toks
            for name, (t, event) in arrays.items():
                a = _host_array(t, event, self.hooks[name][1])
                hooks[name].resize(n1, axis=0)
                hooks[name][n0:n1] = a
                self.bytes_written += a.nbytes
            for name, v in metas.items():
                f[fmt.META_GROUP][name].resize(n1, axis=0)
                f[fmt.META_GROUP][name][n0:n1] = v
            self.bytes_written += toks.nbytes
            count = (fmt.A_ROWS, n1)
        else:
            _, step, arrays = item
            k = f[fmt.STEPS].shape[0]
            for name, (t, event) in arrays.items():
                a = _host_array(t, event, self.hooks[name][1])
                hooks[name].resize(k + 1, axis=0)
                hooks[name][k] = a
                self.bytes_written += a.nbytes
            f[fmt.STEPS].resize(k + 1, axis=0)
            f[fmt.STEPS][k] = step
            count = (fmt.A_STEPS, k + 1)
        self._pending_count = count
        if time.monotonic() - self._last_flush >= self.flush_seconds:
            self._commit()

    def _commit(self) -> None:
        """Data first, then the count that makes it visible: a crash between the two loses rows, never corrupts."""
        count = getattr(self, "_pending_count", None)
        if count is None:
            return
        self.f.flush()
        self.f.attrs[count[0]] = count[1]
        self.f.flush()
        self._pending_count = None
        self._last_flush = time.monotonic()

    # -- closing -------------------------------------------------------------------------------
    def flush(self) -> None:
        """Wait until every queued batch is on disk and counted."""
        with self._cond:
            while self._queue and self._error is None:
                self._cond.wait()
        self._raise_if_failed()
        with self._cond:   # the thread is idle now; commit under the lock so it cannot start a write
            self._commit()

    def close(self) -> None:
        """Write everything queued, record the final count, close the file. Safe to call twice."""
        if self._closed:
            return
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()
        try:
            if self._error is None:
                self._commit()
        finally:
            try:
                self.f.close()
            finally:
                self._unlock()
        self._raise_if_failed()

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:   # an abandoned writer still leaves a complete file
        try:
            if not self._closed:
                self.close()
        except Exception:
            pass


def _as_tokens(tokens: Any, seq_len: int) -> np.ndarray:
    a = tokens.detach().cpu().numpy() if isinstance(tokens, torch.Tensor) else np.asarray(tokens)
    if a.ndim != 2 or a.shape[1] != seq_len:
        raise ValueError(f"tokens must be [rows, {seq_len}], got shape {list(a.shape)}")
    if a.size and (a.min() < 0 or a.max() > np.iinfo(np.int32).max):
        raise ValueError("token ids must be non-negative int32 values")
    return a.astype("<i4", copy=True)


def _nbytes(item: tuple) -> int:
    return item[0].numel() * item[0].element_size()


def _host_array(t: torch.Tensor, event: Optional[Any], dname: str) -> np.ndarray:
    if event is not None:
        event.synchronize()
    return fmt.to_stored(t, dname)


def _diff_hooks(have: dict, want: dict) -> str:
    parts = []
    if set(have) != set(want):
        parts.append(f"the file has {sorted(have)}, this run asks for {sorted(want)}")
    for n in sorted(set(have) & set(want)):
        if have[n] != want[n]:
            parts.append(f"{n} is {list(have[n][0])} {have[n][1]} in the file, {list(want[n][0])} {want[n][1]} now")
    return "; ".join(parts)
