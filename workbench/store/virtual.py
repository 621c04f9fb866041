"""Join per-rank store files into one store with HDF5 virtual datasets.

With several processes (torchrun ranks) each writing its own file, no process
waits on another; afterwards ``join_stores`` writes a small file whose
datasets are virtual: they map onto the complete rows of each rank's file, in
order, without copying a byte. The joined file reads like any other store
(``ActivationStore.open``, ``h5ls``, ``h5dump``); the rank files must stay
next to it (they are referenced by paths relative to it).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence, Union

import h5py

from . import format as fmt
from .reader import ActivationStore, Recording
from .writer import LIBVER


def join_stores(paths: Sequence[Union[str, Path]], out: Union[str, Path]) -> Path:
    """Write ``out``: the complete rows of ``paths``, concatenated in the given order.

    Every file must be a cache-mode store with the same hooks, shapes, dtypes,
    seq_len and metadata columns; a mismatch names the file and what differs.
    """
    if not paths:
        raise ValueError("join_stores needs at least one store file")
    out = Path(out)
    stores = [ActivationStore.open(p) for p in paths]
    try:
        first = stores[0]
        for s in stores:
            if isinstance(s, Recording):
                raise ValueError(f"{s.path} is a training recording; only cache files can be joined")
            for what in ("hook_specs", "seq_len", "meta_columns"):
                if getattr(s, what) != getattr(first, what):
                    raise ValueError(f"cannot join {s.path} with {first.path}: their {what} differ "
                                     f"({getattr(s, what)} vs {getattr(first, what)})")
        counts = [len(s) for s in stores]
        total = sum(counts)
        names = [fmt.TOKENS] + [f"{fmt.HOOKS_GROUP}/{h}" for h in first.hooks] + \
                [f"{fmt.META_GROUP}/{m}" for m in first.meta_columns]
        with h5py.File(out, "w", libver=LIBVER) as f:
            for k, v in first.f.attrs.items():
                f.attrs[k] = v
            f.attrs[fmt.A_ROWS] = total
            f.attrs["joined_from"] = str([os.path.relpath(s.path, out.parent) for s in stores])
            for name in names:
                src0 = first.f[name]
                layout = h5py.VirtualLayout(shape=(total, *src0.shape[1:]), dtype=src0.dtype)
                at = 0
                for s, n in zip(stores, counts):
                    if n == 0:
                        continue
                    # Relative paths keep the joined file valid when the folder moves as a whole.
                    rel = os.path.relpath(s.path, out.parent)
                    src = h5py.VirtualSource(rel, name, shape=s.f[name].shape)
                    layout[at:at + n] = src[:n]
                    at += n
                ds = f.create_virtual_dataset(name, layout)
                for k, v in src0.attrs.items():
                    ds.attrs[k] = v
    finally:
        for s in stores:
            s.close()
    return out
