"""ActivationStore: lazy, read-only access to a store written by ``StoreWriter``.

Only complete rows are visible: every read is clipped to the ``n_rows``
(``n_steps``) attribute, never the datasets' raw extent, so a file being
written, or one whose writer was killed, reads as its last flushed state.
``refresh()`` picks up rows a live writer has added since.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import h5py
import numpy as np
import torch

from workbench.errors import DamagedFileError, InputError, MissingFileError

from . import format as fmt
from .recovery import read_superblock, writer_left_open

Index = Union[int, slice, Sequence[int], np.ndarray, torch.Tensor]


def open_h5(path: Union[str, Path], rdcc_nbytes: Optional[int] = None) -> h5py.File:
    """Open a store read-only, whatever state its writer left it in; one clear error otherwise."""
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"no such file: {path}")
    if path.is_dir():
        raise InputError(f"{path} is a folder; pass the .h5 file")
    try:
        sb = read_superblock(path)
    except ValueError:
        raise DamagedFileError(f"{path} is not an HDF5 file (no HDF5 signature at its start); "
                         "pass a file written by `workbench cache`") from None
    kw: dict[str, Any] = {"locking": False}   # never block, or be blocked by, a live writer
    if rdcc_nbytes is not None:
        kw.update(rdcc_nbytes=rdcc_nbytes, rdcc_nslots=10007)
    try:
        # A set flag means a writer has it open (or died): only SWMR reads are allowed then.
        return h5py.File(path, "r", swmr=sb["version"] >= 3 and writer_left_open(path), **kw)
    except OSError as e:
        raise DamagedFileError(f"{path} cannot be read as HDF5 (truncated or damaged?): {e}") from None


class HookView:
    """``store[hook]``: lazily sliceable rows of one hook; indexing returns a ``torch.Tensor``.

    Shape ``[rows, *row_shape]`` (``[steps, rows, *row_shape]`` for a recording's
    ``store[hook]``). bf16 comes back as bf16, bit for bit.
    """

    def __init__(self, ds: h5py.Dataset, n: int, dtype_name: str, fixed: tuple = ()) -> None:
        self.ds, self.n, self.dtype_name, self.fixed = ds, n, dtype_name, fixed

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.n, *self.ds.shape[1 + len(self.fixed):])

    @property
    def dtype(self) -> torch.dtype:
        return fmt.DTYPES[self.dtype_name][0]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, idx: Any) -> torch.Tensor:
        first, rest = (idx[0], tuple(idx[1:])) if isinstance(idx, tuple) else (idx, ())
        a = _read_rows(self.ds, self.fixed, first, self.n, rest)
        return fmt.from_stored(a, self.dtype_name)

    def __repr__(self) -> str:
        return f"HookView({self.ds.name}, shape={list(self.shape)}, dtype={self.dtype_name})"


class TokenView(HookView):
    """``store.tokens``: lazily sliceable ``[rows, pos]``; indexing returns a LongTensor."""

    def __init__(self, ds: h5py.Dataset, n: int) -> None:
        super().__init__(ds, n, "int32")

    @property
    def dtype(self) -> torch.dtype:
        return torch.long

    def __getitem__(self, idx: Any) -> torch.Tensor:
        first, rest = (idx[0], tuple(idx[1:])) if isinstance(idx, tuple) else (idx, ())
        return torch.from_numpy(_read_rows(self.ds, (), first, self.n, rest).astype(np.int64))


def _read_rows(ds: h5py.Dataset, fixed: tuple, idx: Index, n: int, rest: tuple) -> np.ndarray:
    """Rows ``idx`` of ``ds[*fixed]`` among the first ``n`` (complete) ones, in the order asked."""
    if isinstance(idx, torch.Tensor):
        idx = idx.cpu().numpy()
    if isinstance(idx, (int, np.integer)):
        i = int(idx) + n if idx < 0 else int(idx)
        if not 0 <= i < n:
            raise IndexError(f"row {int(idx)} is out of range for {n} complete rows")
        return ds[(*fixed, i, *rest)]
    if isinstance(idx, slice):
        start, stop, step = idx.indices(n)
        if step == 1 or start >= stop:
            return ds[(*fixed, slice(start, max(start, stop)), *rest)]
        idx = np.arange(start, stop, step)
    idx = np.asarray(idx)
    if idx.dtype == bool:
        if idx.shape[0] != n:
            raise IndexError(f"boolean mask has {idx.shape[0]} entries for {n} rows")
        idx = np.flatnonzero(idx)
    idx = np.where(idx < 0, idx + n, idx).astype(np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise IndexError(f"row index out of range for {n} complete rows")
    if idx.size == 0:
        return ds[(*fixed, slice(0, 0), *rest)]
    # h5py wants increasing unique indices: read those, then put them in the asked order.
    uniq, inverse = np.unique(idx, return_inverse=True)
    return ds[(*fixed, uniq, *rest)][inverse]


class _Rows:
    """What a cache file and one step of a recording share: rows of tokens and hooks."""

    hooks: dict[str, tuple[tuple[int, ...], torch.dtype]]
    tokens: TokenView

    def _view(self, hook: str) -> HookView:
        raise NotImplementedError

    def __len__(self) -> int:
        return self.tokens.n

    def __getitem__(self, hook: str) -> HookView:
        if hook not in self.hooks:
            from workbench.hooks.names import UnknownHookError
            raise UnknownHookError(hook, self.hooks)
        return self._view(hook)

    def __contains__(self, hook: object) -> bool:
        return hook in self.hooks

    def iter_batches(self, hooks: Optional[Union[str, Sequence[str]]] = None, batch_size: int = 64,
                     rows: Optional[slice] = None) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
        """Contiguous batches ``(tokens [b, pos], {hook: [b, *row_shape]})``, in row order.

        ``hooks`` defaults to every hook; ``rows`` to all complete rows.
        """
        names = list(self.hooks) if hooks is None else ([hooks] if isinstance(hooks, str) else list(hooks))
        views = {h: self[h] for h in names}
        start, stop, _ = (rows or slice(None)).indices(len(self))
        for i in range(start, stop, batch_size):
            j = min(i + batch_size, stop)
            yield self.tokens[i:j], {h: v[i:j] for h, v in views.items()}

    def to_cache(self, rows: Union[slice, Sequence[int]] = slice(None), hooks: Optional[Sequence[str]] = None,
                 model: Any = None):
        """Rows as an in-memory ``hooks.ActivationCache`` (``cache[hook] [b, *row_shape]``).

        The analysis code that takes a ``run_with_cache`` cache takes this one.
        """
        from workbench.hooks.cache import ActivationCache
        names = list(self.hooks) if hooks is None else list(hooks)
        return ActivationCache({h: self[h][rows] for h in names}, model=model)

    def probe_dataset(self, hook: str, labels: Any, pos: Optional[Union[int, slice]] = None,
                      rows: Optional[Sequence[int]] = None, dtype: torch.dtype = torch.float32,
                      cache_bytes: Optional[int] = None):
        """A ``torch.utils.data.Dataset`` of ``(activation, label)`` with random access by row.

        ``labels``: one per row (sequence/array/tensor), or the name of a ``meta`` column.
        ``pos``: keep one position (e.g. ``-1``) or a slice of them; ``None`` keeps all.
        ``rows``: a subset of rows (e.g. a train split). See ``ProbeDataset``.
        """
        from .probe import ProbeDataset
        return ProbeDataset(self, hook, labels, pos=pos, rows=rows, dtype=dtype, cache_bytes=cache_bytes)


class ActivationStore(_Rows):
    """A store file opened for reading: ``ActivationStore.open(path)``.

    ``len(store)`` complete rows; ``store.hooks`` ``{name: (row_shape, dtype)}``;
    ``store.tokens[i:j]`` LongTensor ``[rows, pos]``; ``store[hook][i:j]`` tensor
    ``[rows, *row_shape]``; ``store.attrs`` the file's attributes (JSON decoded).
    Recordings (``store.steps``) read one step at a time through ``store.at_step(step)``.
    """

    def __init__(self, path: Union[str, Path], rdcc_nbytes: Optional[int] = None) -> None:
        self.path = Path(path)
        self._rdcc = rdcc_nbytes
        self.f = open_h5(self.path, rdcc_nbytes)
        try:
            self._load()
        except BaseException:
            self.f.close()
            raise

    @classmethod
    def open(cls, path: Union[str, Path], rdcc_nbytes: Optional[int] = None) -> "ActivationStore":
        """Open ``path`` read-only. ``rdcc_nbytes``: the HDF5 chunk cache per dataset."""
        return cls(path, rdcc_nbytes)

    def _load(self) -> None:
        a = self.f.attrs
        if a.get(fmt.A_FORMAT) != fmt.FORMAT_NAME:
            raise DamagedFileError(f"{self.path} is an HDF5 file but not a workbench activation store "
                             f"(no format={fmt.FORMAT_NAME!r} attribute)")
        version = int(a[fmt.A_VERSION])
        if version > fmt.FORMAT_VERSION:
            raise InputError(f"{self.path} uses store format version {version}; this workbench reads up to "
                             f"{fmt.FORMAT_VERSION}: upgrade the workbench")
        self.format_version = version
        self.mode = str(a[fmt.A_MODE])
        self.seq_len = int(a[fmt.A_SEQ_LEN])
        self.hook_specs = fmt.hooks_from_json(a[fmt.A_HOOKS])
        self.hooks = {n: (s, fmt.DTYPES[d][0]) for n, (s, d) in self.hook_specs.items()}
        self.n_rows = int(a[fmt.A_ROWS])
        self.n_steps = int(a[fmt.A_STEPS])
        self.tokens = TokenView(self.f[fmt.TOKENS], self.n_rows)
        json_keys = set(json.loads(a.get(fmt.A_JSON_KEYS, "[]")))
        self.attrs = {k: (json.loads(v) if k in json_keys else _plain(v)) for k, v in a.items()
                      if k != fmt.A_JSON_KEYS}
        self.attrs[fmt.A_HOOKS] = json.loads(a[fmt.A_HOOKS])
        meta = self.f.get(fmt.META_GROUP)
        self.meta_columns = list(meta) if meta is not None else []

    @property
    def is_recording(self) -> bool:
        return self.mode == "steps"

    @property
    def steps(self) -> list[int]:
        """Training steps of a recording, oldest first (empty for a cache file)."""
        if not self.is_recording:
            return []
        return [int(s) for s in self.f[fmt.STEPS][: self.n_steps]]

    def at_step(self, step: int) -> "StepView":
        """The probe rows' activations recorded at ``step`` (same interface as the store)."""
        steps = self.steps
        if not self.is_recording:
            raise InputError(f"{self.path} is not a training recording; it has no steps")
        if step not in steps:
            near = sorted(steps, key=lambda s: abs(s - step))[:3]
            raise KeyError(f"step {step} was not recorded in {self.path}; nearest recorded steps: {near}")
        return StepView(self, steps.index(step))

    def _view(self, hook: str) -> HookView:
        ds = self.f[fmt.HOOKS_GROUP][hook]
        if self.is_recording:   # [steps, rows, ...]: the first axis is the step index
            return HookView(ds, self.n_steps, self.hook_specs[hook][1])
        return HookView(ds, self.n_rows, self.hook_specs[hook][1])

    def meta(self, name: str) -> np.ndarray:
        """Per-row metadata column ``name`` (complete rows only)."""
        if name not in self.meta_columns:
            raise KeyError(f"no metadata column {name!r}; this store has {self.meta_columns}")
        return self.f[fmt.META_GROUP][name][: self.n_rows]

    def iter_batches(self, *args: Any, **kwargs: Any):
        self._need_rows("iter_batches")
        return super().iter_batches(*args, **kwargs)

    def to_cache(self, *args: Any, **kwargs: Any):
        self._need_rows("to_cache")
        return super().to_cache(*args, **kwargs)

    def probe_dataset(self, *args: Any, **kwargs: Any):
        self._need_rows("probe_dataset")
        return super().probe_dataset(*args, **kwargs)

    def _need_rows(self, what: str) -> None:
        if self.is_recording:
            raise InputError(f"{self.path} is a training recording: pick a step first, "
                             f"store.at_step(step).{what}(...) (steps: {self.steps[:5]}...)")

    def refresh(self) -> "ActivationStore":
        """Reopen to see the rows a live writer has flushed since."""
        self.f.close()
        self.f = open_h5(self.path, self._rdcc)
        self._load()
        return self

    def nbytes_on_disk(self) -> int:
        return os.path.getsize(self.path)

    def close(self) -> None:
        self.f.close()

    def __enter__(self) -> "ActivationStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        what = f"{self.n_steps} steps x {self.n_rows} rows" if self.is_recording else f"{self.n_rows} rows"
        return f"ActivationStore({str(self.path)!r}, {what}, hooks={list(self.hooks)})"


class StepView(_Rows):
    """One recorded step of a training recording: ``view[hook][i:j]`` -> ``[rows, *row_shape]``."""

    def __init__(self, store: ActivationStore, k: int) -> None:
        self.store, self.k = store, k
        self.step = store.steps[k]
        self.hooks = store.hooks
        self.tokens = store.tokens
        self.path = store.path

    def _view(self, hook: str) -> HookView:
        return HookView(self.store.f[fmt.HOOKS_GROUP][hook], self.store.n_rows,
                        self.store.hook_specs[hook][1], fixed=(self.k,))

    def meta(self, name: str) -> np.ndarray:
        return self.store.meta(name)

    def __repr__(self) -> str:
        return f"StepView(step={self.step}, {len(self)} rows, hooks={list(self.hooks)})"


def _plain(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, bytes):
        return v.decode()
    return v
