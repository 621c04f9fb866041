"""Stream activations to an HDF5 store from a background thread: ``StoreWriter`` (rows of a
dataset) and ``RecordingWriter`` (fixed probe rows, one slab per training step).

The caller (a forward pass, a training step) hands over tensors with ``append`` /
``append_step``; they are moved off the device, queued, and written by one thread while
the caller computes the next batch. The queue is bounded in bytes, so memory stays
bounded whatever the dataset size: when the disk is slower than the model, the caller waits.

What the file promises (docs/activation-store.md, "Writing safely"):

- one writer per file (``WriterLock``: a second one is refused, naming the holder's PID);
- a new file appears under its name only once it is a valid, empty store (it is built
  under a temporary name and renamed into place; an existing file is never replaced
  unless asked);
- the count of complete rows (``n_rows``; ``n_steps`` for recordings) names only data
  that reached the file: data and a CRC-32C of it are written and flushed (and fsync'ed)
  before the count that makes them visible; a failed write (disk full) stops the writer
  with the count still at the last verified commit.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import h5py
import numpy as np
import torch

from workbench.errors import InputError

from . import format as fmt
from .lock import WriterLock
from .writer_core import LIBVER, HookSpecs, _Batch, _Writer

__all__ = ["LIBVER", "HookSpecs", "RecordingWriter", "StoreWriter"]


class StoreWriter(_Writer):
    """Write token rows and their activations to ``path`` (a cache file).

    Args:
        path: the ``.h5`` file.
        hooks: ``{hook name: (row_shape, dtype)}``; ``row_shape`` excludes the batch axis,
            e.g. ``(pos, d_model)``; dtype is float32, float16 or bfloat16 (stored as uint16 bits).
        seq_len: ``pos``, the width of every token row.
        attrs: user attributes (model_config, model_source, tokenizer, command, ...);
            dicts and lists are stored as JSON text.
        compression: None (default: activations barely compress), "gzip", "lzf", ...
        mode: "w-" new file, refused if it exists; "w" new file, replacing one (atomically, once
            the new one is valid); "a" resume: continue after the file's complete rows (hooks must match).
        meta: per-row metadata columns ``{name: numpy dtype}`` passed to ``append(meta=...)``.
        max_queue_bytes: memory the queued batches may hold before ``append`` waits.
        flush_seconds: at most this long between commits (0: after every batch). A SIGKILL
            loses the rows not yet committed: those queued plus at most this long of writing.
        durable: fsync before each count is written, so the count survives a power cut too.
        lock: a ``WriterLock`` on ``path`` the caller already holds (the writer releases it on close).
        steps, probe_tokens, drop_steps_after: deprecated: use ``RecordingWriter``.
    """

    MODE = "cache"

    def __new__(cls, *args: Any, steps: bool = False, **kwargs: Any):
        if steps and cls is StoreWriter:
            warnings.warn("StoreWriter(steps=True) is now RecordingWriter(...); the old form goes in the next "
                          "release", FutureWarning, stacklevel=2)
            return RecordingWriter(*args, **kwargs)
        return super().__new__(cls)

    def __init__(self, path: Union[str, Path], hooks: HookSpecs, seq_len: int,
                 attrs: Optional[Mapping[str, Any]] = None, compression: Optional[str] = None,
                 mode: str = "w", meta: Optional[Mapping[str, Any]] = None, max_queue_bytes: int = 256 << 20,
                 flush_seconds: float = 1.0, durable: bool = True, lock: Optional[WriterLock] = None,
                 steps: bool = False) -> None:
        self.meta_dtypes = {k: np.dtype(v) for k, v in (meta or {}).items()}
        super().__init__(path, hooks, seq_len, attrs, compression, mode, max_queue_bytes, flush_seconds,
                         durable, lock)

    def _create_datasets(self, f: h5py.File, compression: Optional[str]) -> None:
        f.create_dataset(fmt.TOKENS, (0, self.seq_len), maxshape=(None, self.seq_len), dtype="<i4",
                         chunks=fmt.chunk_shape((self.seq_len,), 4))
        for name, dt in self.meta_dtypes.items():
            f.create_dataset(f"{fmt.META_GROUP}/{name}", (0,), maxshape=(None,), dtype=dt,
                             chunks=fmt.chunk_shape((), dt.itemsize))
        for name in self.hooks:
            self._hook_dataset(f, name, (), compression)

    def _check_resumable(self, f: h5py.File) -> None:
        super()._check_resumable(f)
        have_meta = set(f[fmt.META_GROUP]) if fmt.META_GROUP in f else set()
        if have_meta != set(self.meta_dtypes):
            raise InputError(f"cannot resume {self.path}: its metadata columns are {sorted(have_meta)}, "
                             f"not {sorted(self.meta_dtypes)}")

    @property
    def n_rows(self) -> int:
        """Rows handed to ``append`` so far, including the file's earlier rows (some may still be queued)."""
        return self._appended

    def append(self, tokens: torch.Tensor, acts: Mapping[str, torch.Tensor],
               meta: Optional[Mapping[str, Any]] = None, copy: bool = True) -> None:
        """Queue ``n`` rows: ``tokens [n, pos]``, ``acts[hook] [n, *row_shape]``, ``meta[name] [n]``.

        Returns as soon as the batch is queued; waits only while the queue holds
        ``max_queue_bytes``. ``copy=False`` hands the tensors over without a private copy:
        the caller must not modify them afterwards (fresh activations from a forward pass).
        """
        toks = _as_tokens(tokens, self.seq_len)
        n = toks.shape[0]
        parts = {f"{fmt.HOOKS_GROUP}/{h}": p for h, p in self._stored(acts, (n,), copy).items()}
        meta = dict(meta or {})
        if set(meta) != set(self.meta_dtypes):
            raise ValueError(f"meta must have exactly the columns {sorted(self.meta_dtypes)}, got {sorted(meta)}")
        for k, v in meta.items():
            v = np.asarray(v, dtype=self.meta_dtypes[k]).reshape(-1)
            if v.shape[0] != n:
                raise ValueError(f"meta[{k!r}] has {v.shape[0]} values for {n} rows")
            parts[f"{fmt.META_GROUP}/{k}"] = (v, None, None)
        parts[fmt.TOKENS] = (toks, None, None)
        self._put(_Batch(self._appended, self._appended + n, parts))


class RecordingWriter(_Writer):
    """Record fixed probe rows at training steps: ``hooks/<name>`` is ``[steps, rows, *row_shape]``.

    Args as ``StoreWriter``, and:
        probe_tokens: ``[rows, pos]`` token ids of the probe set (stored once; not needed to resume).
        drop_steps_after: resuming (``mode="a"``) from a training checkpoint at this step: steps
            recorded after it (after the checkpoint, before the crash) are dropped, so the resumed
            run records them again.
    """

    MODE = "steps"
    UNIT = "steps"

    def __init__(self, path: Union[str, Path], hooks: HookSpecs, seq_len: int,
                 attrs: Optional[Mapping[str, Any]] = None, compression: Optional[str] = None,
                 mode: str = "w", probe_tokens: Optional[torch.Tensor] = None, max_queue_bytes: int = 256 << 20,
                 flush_seconds: float = 1.0, durable: bool = True, lock: Optional[WriterLock] = None,
                 drop_steps_after: Optional[int] = None) -> None:
        if probe_tokens is None and mode != "a":
            raise ValueError("a recording needs probe_tokens=[rows, pos], the fixed rows recorded at every step")
        self.probe = None if probe_tokens is None else _as_tokens(probe_tokens, seq_len)
        self.drop_steps_after = drop_steps_after
        super().__init__(path, hooks, seq_len, attrs, compression, mode, max_queue_bytes, flush_seconds,
                         durable, lock)
        self.n_rows = int(self.f[fmt.TOKENS].shape[0])
        self._steps = [int(s) for s in self.f[fmt.STEPS][: self._committed]]

    def _create_datasets(self, f: h5py.File, compression: Optional[str]) -> None:
        f.create_dataset(fmt.TOKENS, data=self.probe)   # fixed size: contiguous
        f.attrs[fmt.A_ROWS] = self.probe.shape[0]
        f.create_dataset(fmt.STEPS, (0,), maxshape=(None,), dtype="<i8", chunks=(1024,))
        for name in self.hooks:
            self._hook_dataset(f, name, (self.probe.shape[0],), compression)

    def _fixed_checksums(self) -> dict[str, int]:
        return {fmt.TOKENS: fmt.checksum(np.ascontiguousarray(self.f[fmt.TOKENS][:]))}

    def _cut_to_count(self, f: h5py.File) -> int:
        n = int(f.attrs[fmt.A_STEPS])
        if self.drop_steps_after is not None:
            n = int(np.searchsorted(f[fmt.STEPS][:n], self.drop_steps_after, side="right"))
            f.attrs[fmt.A_STEPS] = n
        for name in fmt.counted_datasets(f):
            f[name].resize(n, axis=0)
        return n

    @property
    def steps(self) -> list[int]:
        """Steps recorded so far, including queued ones."""
        return list(self._steps)

    def append_step(self, step: int, acts: Mapping[str, torch.Tensor], copy: bool = True) -> None:
        """Queue one recorded step: ``acts[hook] [rows, *row_shape]`` for the probe rows.

        ``copy=False`` hands the tensors over, as in ``StoreWriter.append``.
        """
        step = int(step)
        if self._steps and step <= self._steps[-1]:
            raise ValueError(f"steps must increase: got step {step} after step {self._steps[-1]}")
        parts = {f"{fmt.HOOKS_GROUP}/{h}": (t[None], e, d)
                 for h, (t, e, d) in self._stored(acts, (self.n_rows,), copy).items()}
        parts[fmt.STEPS] = (np.array([step], dtype="<i8"), None, None)
        k = self._appended
        self._put(_Batch(k, k + 1, parts))
        self._steps.append(step)


def _as_tokens(tokens: Any, seq_len: int) -> np.ndarray:
    a = tokens.detach().cpu().numpy() if isinstance(tokens, torch.Tensor) else np.asarray(tokens)
    if a.ndim != 2 or a.shape[1] != seq_len:
        raise ValueError(f"tokens must be [rows, {seq_len}], got shape {list(a.shape)}")
    if a.size and (a.min() < 0 or a.max() > np.iinfo(np.int32).max):
        raise ValueError("token ids must be non-negative int32 values")
    return a.astype("<i4", copy=True)
