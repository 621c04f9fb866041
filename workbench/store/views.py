"""Lazily sliceable views of one dataset of a store: ``store[hook]`` and ``store.tokens``.

Only complete entries are visible: every read is clipped to the count the view was
made with (``n_rows`` / ``n_steps``), never the dataset's raw extent.
"""
from __future__ import annotations

from typing import Any, Sequence, Union

import h5py
import numpy as np
import torch

from . import format as fmt

Index = Union[int, slice, Sequence[int], np.ndarray, torch.Tensor]


class HookView:
    """Entries ``[n, *shape]`` of one hook; indexing returns a ``torch.Tensor`` (bf16 as bf16, bit for bit).

    ``fixed`` selects a leading position first (one step of a recording).
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
        return fmt.from_stored(read_rows(self.ds, self.fixed, first, self.n, rest), self.dtype_name)

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
        return torch.from_numpy(read_rows(self.ds, (), first, self.n, rest).astype(np.int64))


def read_rows(ds: h5py.Dataset, fixed: tuple, idx: Index, n: int, rest: tuple) -> np.ndarray:
    """Entries ``idx`` of ``ds[*fixed]`` among the first ``n`` (complete) ones, in the order asked."""
    if isinstance(idx, torch.Tensor):
        idx = idx.cpu().numpy()
    if isinstance(idx, (int, np.integer)):
        i = int(idx) + n if idx < 0 else int(idx)
        if not 0 <= i < n:
            raise IndexError(f"index {int(idx)} is out of range for {n} complete entries")
        return ds[(*fixed, i, *rest)]
    if isinstance(idx, slice):
        start, stop, step = idx.indices(n)
        if step == 1 or start >= stop:
            return ds[(*fixed, slice(start, max(start, stop)), *rest)]
        idx = np.arange(start, stop, step)
    idx = np.asarray(idx)
    if idx.dtype == bool:
        if idx.shape[0] != n:
            raise IndexError(f"boolean mask has {idx.shape[0]} entries for {n} complete entries")
        idx = np.flatnonzero(idx)
    idx = np.where(idx < 0, idx + n, idx).astype(np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise IndexError(f"index out of range for {n} complete entries")
    if idx.size == 0:
        return ds[(*fixed, slice(0, 0), *rest)]
    # h5py wants increasing unique indices: read those, then put them in the asked order.
    uniq, inverse = np.unique(idx, return_inverse=True)
    return ds[(*fixed, uniq, *rest)][inverse]
