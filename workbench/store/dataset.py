"""ProbeDataset: a torch ``Dataset`` of (activation, label) pairs read at random from a store.

Random row reads are what probe training does, so the file handle is opened
with an HDF5 chunk cache sized for that access: for uncompressed data, no cache
at all, because HDF5 then reads exactly the requested row's bytes instead of
pulling the whole (up to 4 MiB) chunk in for one row (bench/bench_store.py);
for compressed data, room for several whole chunks, since a chunk must be
decompressed whole anyway. Each process (DataLoader worker) opens its own
handle, as HDF5 handles do not survive ``fork``.
"""
from __future__ import annotations

import os
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from . import format as fmt
from .reader import CacheStore, StepView, open_h5


class ProbeDataset(Dataset):
    """``ds[i] -> (activation [*row_shape or pos-selected], label)``.

    Built by ``store.probe_dataset(hook, labels, pos=..., rows=...)`` or
    ``store.at_step(s).probe_dataset(...)``. ``ds[i]`` is row ``rows[i]``.
    ``load()`` reads everything into two tensors ``(X, y)`` for scikit-learn.
    """

    def __init__(self, src: Union[CacheStore, StepView], hook: str, labels: Any,
                 pos: Optional[Union[int, slice]] = None, rows: Optional[Sequence[int]] = None,
                 dtype: torch.dtype = torch.float32, cache_bytes: Optional[int] = None) -> None:
        if not isinstance(src, (CacheStore, StepView)):
            raise TypeError(f"ProbeDataset reads a cache file or one step of a recording, not {type(src).__name__}")
        view = src[hook]   # the closest-names error for an unknown hook
        self.path, self.hook, self.pos, self.dtype = src.path, hook, pos, dtype
        self.lead: tuple = view.fixed          # (step index,) for a recorded step
        self.n_store_rows = len(src)
        self.rows = np.arange(self.n_store_rows) if rows is None else np.asarray(rows, dtype=np.int64)
        if self.rows.size and (self.rows.min() < 0 or self.rows.max() >= self.n_store_rows):
            raise IndexError(f"rows must lie in [0, {self.n_store_rows}); got {self.rows.min()}..{self.rows.max()}")
        if isinstance(labels, str):
            labels = src.meta(labels)
        labels = labels if isinstance(labels, torch.Tensor) else torch.as_tensor(np.asarray(labels))
        if len(labels) == self.n_store_rows:
            self.labels = labels[torch.from_numpy(self.rows)]
        elif len(labels) == len(self.rows):
            self.labels = labels
        else:
            raise ValueError(f"labels has {len(labels)} entries; expected one per store row "
                             f"({self.n_store_rows}) or one per selected row ({len(self.rows)})")
        self.dtype_name = view.dtype_name
        ds = view.ds
        chunk_bytes = int(np.prod(ds.chunks)) * ds.dtype.itemsize
        if cache_bytes is None:
            cache_bytes = 0 if ds.compression is None else 16 * chunk_bytes
        self.cache_bytes = int(cache_bytes)
        self._f = None
        self._pid = -1

    def __len__(self) -> int:
        return len(self.rows)

    def _ds(self):
        if self._f is None or self._pid != os.getpid():
            self._f = open_h5(self.path, rdcc_nbytes=self.cache_bytes)
            self._pid = os.getpid()
            self._dset = self._f[fmt.HOOKS_GROUP][self.hook]
        return self._dset

    def _select(self, rows: Union[int, np.ndarray]) -> tuple:
        pos = () if self.pos is None else (self.pos,)
        return (*self.lead, rows, *pos)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        a = self._ds()[self._select(int(self.rows[i]))]
        return fmt.cast(fmt.from_stored(a, self.dtype_name), self.dtype), self.labels[i]

    def __getitems__(self, idx: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A whole DataLoader batch in one HDF5 read (rows sorted, then put back in order)."""
        want = self.rows[np.asarray(idx, dtype=np.int64)]
        uniq, inverse = np.unique(want, return_inverse=True)
        a = fmt.cast(fmt.from_stored(self._ds()[self._select(uniq)], self.dtype_name), self.dtype)[inverse]
        return [(a[j], self.labels[i]) for j, i in enumerate(idx)]

    def load(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every selected row: ``X [n, *act_shape]`` and ``y [n]``."""
        if len(self) == 0:
            return torch.empty(0), self.labels[:0]
        items = self.__getitems__(list(range(len(self))))
        return torch.stack([x for x, _ in items]), self.labels.clone()

    def __getstate__(self) -> dict:   # picklable for DataLoader workers: drop the open handle
        state = dict(self.__dict__)
        state["_f"], state["_pid"] = None, -1
        state.pop("_dset", None)
        return state
