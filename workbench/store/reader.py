"""Reading a store: ``ActivationStore.open(path)`` returns a ``CacheStore`` (rows of a dataset)
or a ``Recording`` (probe rows at training steps; ``recording.at_step(s)`` is a ``StepView``).

Only complete entries are visible: every read is clipped to the ``n_rows`` (``n_steps``)
attribute, so a file being written, or one whose writer was killed, reads as its last
committed state; ``refresh()`` picks up what a live writer has committed since. A file
whose writer died is checked before it is opened (``integrity``): a truncated or damaged
one is refused with one line instead of reading zeros or hanging.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import h5py
import numpy as np
import torch

from workbench.errors import DamagedFileError, InputError
from workbench.hooks.cache import ActivationCache
from workbench.hooks.names import UnknownHookError

from . import format as fmt
from .integrity import FileState, check_left_open, examine, verify_checksums
from .views import HookView, TokenView

_ROW_METHODS = ("iter_batches", "to_cache", "probe_dataset")


def open_h5(path: Union[str, Path], rdcc_nbytes: Optional[int] = None) -> h5py.File:
    """Open a store read-only, whatever state its writer left it in; one clear error otherwise."""
    state = examine(path)
    if not state.clean and not state.live:
        check_left_open(state, checksums=False)   # bounded; SWMR's retry loop never sees a damaged file
    kw: dict[str, Any] = {"locking": False}         # never block, or be blocked by, a live writer
    if rdcc_nbytes is not None:
        kw.update(rdcc_nbytes=rdcc_nbytes, rdcc_nslots=10007)
    try:
        # Left open (a live writer, or one that died): HDF5 allows only SWMR reads then.
        return h5py.File(state.path, "r", swmr=not state.clean, **kw)
    except OSError as e:
        raise DamagedFileError(f"{state.path} cannot be read as HDF5 (truncated or damaged?): {e}") from None


def _state_note(state: FileState) -> Optional[str]:
    if state.clean:
        return None
    return "being written" if state.live else "left open by a writer that stopped (killed, or its disk filled)"


class ActivationStore:
    """A store file opened for reading. ``ActivationStore.open(path)`` (or ``ActivationStore(path)``)
    returns the file's own type: ``CacheStore`` or ``Recording``.

    Shared by both: ``path``, ``attrs`` (JSON decoded), ``hooks`` ``{name: (row_shape, dtype)}``,
    ``seq_len``, ``tokens`` (the file's rows: a cache's rows, a recording's probe rows),
    ``n_rows``, ``meta(name)``, ``refresh()``, ``verify()``, ``close()``.
    """

    MODE = ""

    def __new__(cls, path: Union[str, Path], rdcc_nbytes: Optional[int] = None):
        f = open_h5(path, rdcc_nbytes)
        if cls is ActivationStore:       # the file's own type
            cls = Recording if str(f.attrs.get(fmt.A_MODE, "")) == Recording.MODE else CacheStore
        obj = super().__new__(cls)
        obj.f = f                        # opened once; __init__ takes it
        return obj

    def __init__(self, path: Union[str, Path], rdcc_nbytes: Optional[int] = None) -> None:
        self.path = Path(path)
        self._rdcc = rdcc_nbytes
        try:
            self._load()
        except BaseException:
            self.f.close()
            raise

    @classmethod
    def open(cls, path: Union[str, Path], rdcc_nbytes: Optional[int] = None) -> "ActivationStore":
        """Open ``path`` read-only as a ``CacheStore`` or ``Recording``. ``rdcc_nbytes``: HDF5 chunk cache."""
        return ActivationStore(path, rdcc_nbytes)

    def _load(self) -> None:
        a = self.f.attrs
        if a.get(fmt.A_FORMAT) != fmt.FORMAT_NAME:
            raise InputError(f"{self.path} is an HDF5 file but not a workbench activation store "
                             f"(no format={fmt.FORMAT_NAME!r} attribute)")
        version = int(a[fmt.A_VERSION])
        if version > fmt.FORMAT_VERSION:
            raise InputError(f"{self.path} uses store format version {version}; this workbench reads up to "
                             f"{fmt.FORMAT_VERSION}: upgrade the workbench")
        if self.MODE and str(a[fmt.A_MODE]) != self.MODE:
            raise InputError(f"{self.path} is a {a[fmt.A_MODE]} file; open it with ActivationStore.open")
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
        return isinstance(self, Recording)

    def _hook_view(self, hook: str, n: int, fixed: tuple = ()) -> HookView:
        if hook not in self.hooks:
            raise UnknownHookError(hook, self.hooks)
        return HookView(self.f[fmt.HOOKS_GROUP][hook], n, self.hook_specs[hook][1], fixed)

    def __contains__(self, hook: object) -> bool:
        return hook in self.hooks

    def meta(self, name: str) -> np.ndarray:
        """Per-row metadata column ``name`` (complete rows only)."""
        if name not in self.meta_columns:
            raise KeyError(f"no metadata column {name!r}; this store has {self.meta_columns}")
        return self.f[fmt.META_GROUP][name][: self.n_rows]

    def refresh(self) -> "ActivationStore":
        """Reopen to see what a live writer has committed since."""
        self.f.close()
        self.f = open_h5(self.path, self._rdcc)
        self._load()
        return self

    def state(self) -> Optional[str]:
        """None for a closed, whole file; otherwise what left it open ("being written", ...)."""
        return _state_note(examine(self.path))

    def verify(self) -> int:
        """Read every complete entry and check it against the CRC-32C its writer stored with it.

        Returns the number of entries checked; raises ``DamagedFileError`` at the first mismatch.
        Files written before checksums existed have nothing to check (returns 0).
        """
        count = self.n_steps if self.is_recording else self.n_rows
        fixed = [fmt.TOKENS] if self.is_recording else []
        verify_checksums(self.f, self.path, count, fmt.counted_datasets(self.f), fixed)
        if fmt.CHECKSUMS not in self.f:
            return 0
        ends = self.f[fmt.CHECKSUMS][:, 0]
        return int(max([e for e in ends if e <= count], default=0))

    def nbytes_on_disk(self) -> int:
        return os.path.getsize(self.path)

    def close(self) -> None:
        self.f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _Rows:
    """What a cache file, one recorded step and in-memory sources share: rows of tokens and hooks."""

    hooks: dict
    tokens: TokenView

    def _view(self, hook: str) -> HookView:
        raise NotImplementedError

    def __len__(self) -> int:
        """Complete rows."""
        return self.tokens.n

    def __getitem__(self, hook: str) -> HookView:
        """``[rows, *row_shape]`` of ``hook``, read lazily."""
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
                 model: Any = None) -> ActivationCache:
        """Rows as an in-memory ``ActivationCache`` (``cache[hook] [b, *row_shape]``), as ``run_with_cache``
        returns: the analysis code that takes one takes this one."""
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
        from .dataset import ProbeDataset   # dataset.py builds on this module
        return ProbeDataset(self, hook, labels, pos=pos, rows=rows, dtype=dtype, cache_bytes=cache_bytes)


class CacheStore(_Rows, ActivationStore):
    """A cache file: ``len(store)`` complete rows; ``store[hook][i:j]`` ``[rows, *row_shape]``;
    ``store.tokens[i:j]`` LongTensor ``[rows, pos]``; ``store.meta(name)`` per-row columns."""

    MODE = "cache"

    def _view(self, hook: str) -> HookView:
        return self._hook_view(hook, self.n_rows)

    def __getattr__(self, name: str) -> Any:
        # Not a property returning []: isinstance(x, StepSource) probes these names with hasattr.
        if name in ("steps", "at_step"):
            raise AttributeError(f"{self.path} is a cache file, not a training recording: it has no steps "
                                 "(test isinstance(store, Recording))")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __repr__(self) -> str:
        return f"CacheStore({str(self.path)!r}, {self.n_rows} rows, hooks={list(self.hooks)})"


class Recording(ActivationStore):
    """A training recording: the same ``n_rows`` probe rows (``tokens``) recorded at each of ``steps``.

    ``len(rec)`` recorded steps; ``rec[hook]`` ``[steps, rows, *row_shape]``; ``rec.at_step(s)``
    the rows at one step (a ``StepView``, read like a cache file).
    """

    MODE = "steps"

    @property
    def steps(self) -> list[int]:
        """Recorded training steps, oldest first."""
        return [int(s) for s in self.f[fmt.STEPS][: self.n_steps]]

    def __len__(self) -> int:
        """Recorded steps."""
        return self.n_steps

    def __getitem__(self, hook: str) -> HookView:
        """``[steps, rows, *row_shape]`` of ``hook``, read lazily."""
        return self._hook_view(hook, self.n_steps)

    def at_step(self, step: int) -> "StepView":
        """The probe rows' activations recorded at training step ``step``."""
        steps = self.steps
        if step not in steps:
            near = sorted(steps, key=lambda s: abs(s - step))[:3]
            raise KeyError(f"step {step} was not recorded in {self.path}; nearest recorded steps: {near}")
        return StepView(self, steps.index(step))

    def iter_steps(self) -> Iterator["StepView"]:
        """Each recorded step, oldest first."""
        for k in range(self.n_steps):
            yield StepView(self, k)

    def __getattr__(self, name: str) -> Any:
        if name in _ROW_METHODS:
            raise AttributeError(f"{self.path} is a training recording with rows at every step: "
                                 f"pick one first, recording.at_step(step).{name}(...)")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __repr__(self) -> str:
        return f"Recording({str(self.path)!r}, {self.n_steps} steps x {self.n_rows} rows, hooks={list(self.hooks)})"


class StepView(_Rows):
    """One recorded step of a ``Recording``: ``view[hook][i:j]`` -> ``[rows, *row_shape]``."""

    def __init__(self, recording: Recording, k: int) -> None:
        self.recording = recording
        self.k = k
        self.step = int(recording.f[fmt.STEPS][k])
        self.hooks, self.tokens, self.attrs, self.path = recording.hooks, recording.tokens, recording.attrs, recording.path

    @property
    def store(self) -> Recording:   # the name before recordings had their own type
        return self.recording

    def _view(self, hook: str) -> HookView:
        return self.recording._hook_view(hook, self.recording.n_rows, fixed=(self.k,))

    def meta(self, name: str) -> np.ndarray:
        return self.recording.meta(name)

    def __repr__(self) -> str:
        return f"StepView(step={self.step}, {len(self)} rows, hooks={list(self.hooks)})"


def _plain(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, bytes):
        return v.decode()
    return v
