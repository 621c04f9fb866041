"""ActivationCache: the activations a ``run_with_cache`` call recorded, by hook name."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Iterator, Optional, Union

import torch

from .names import UnknownHookError, get_act_name


class ActivationCache(Mapping):
    """A read-only mapping ``hook name -> tensor``.

    Keys are full hook names; ``cache["pattern", 3]`` and ``cache["resid_pre3"]``
    work as in TransformerLens. A missing key raises an error naming the
    closest cached names. ``model`` is kept so analysis code can read the config.
    """

    def __init__(self, data: dict[str, torch.Tensor], model=None, has_batch_dim: bool = True) -> None:
        self._data = data
        self.model = model
        self.has_batch_dim = has_batch_dim

    def _key(self, key: Union[str, tuple]) -> str:
        if isinstance(key, tuple):
            key = get_act_name(*key)
        if key in self._data:
            return key
        full = get_act_name(key)
        if full in self._data:
            return full
        raise UnknownHookError(key, self._data.keys())

    def __getitem__(self, key: Union[str, tuple]) -> torch.Tensor:
        return self._data[self._key(key)]

    def __contains__(self, key: object) -> bool:
        try:
            self._key(key)  # type: ignore[arg-type]
            return True
        except (UnknownHookError, TypeError):
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"ActivationCache({len(self)} tensors: {list(self._data)[:4]}{' ...' if len(self) > 4 else ''})"

    def to(self, device: Optional[Union[str, torch.device]] = None,
           dtype: Optional[torch.dtype] = None) -> "ActivationCache":
        """A new cache with every tensor moved/cast."""
        return ActivationCache({k: v.to(device=device, dtype=dtype) for k, v in self._data.items()},
                               self.model, self.has_batch_dim)

    def remove_batch_dim(self) -> "ActivationCache":
        """Drop a batch dimension of size 1 from every tensor."""
        if not self.has_batch_dim:
            return self
        for k, v in self._data.items():
            if v.shape[0] != 1:
                raise ValueError(f"{k} has batch size {v.shape[0]}; remove_batch_dim needs batch size 1")
        return ActivationCache({k: v[0] for k, v in self._data.items()}, self.model, False)

    def numel(self) -> int:
        return sum(v.numel() for v in self._data.values())

    def nbytes(self) -> int:
        """Bytes of memory the cached tensors keep alive (each underlying storage counted once)."""
        seen: dict[tuple, int] = {}
        for v in self._data.values():
            storage = v.untyped_storage()
            ptr = storage.data_ptr()
            seen[(v.device, ptr) if ptr else ("no data", id(v))] = storage.nbytes()  # meta: no pointer
        return sum(seen.values())


def compact(cache: dict[str, torch.Tensor]) -> None:
    """Copy out cached views that would keep a bigger tensor alive, in place.

    ``hook_q`` is a view into the fused qkv output and a ``pos_slice`` is a view
    into the full activation: kept as they are, they would hold the whole
    parent. Views are grouped by the storage they share; a group is copied only
    when it covers less than its storage, so caching q, k *and* v together
    (exactly the qkv tensor) copies nothing.
    """
    groups: dict[tuple, list[str]] = {}
    for k, t in cache.items():
        ptr = t.untyped_storage().data_ptr()
        groups.setdefault((t.device, ptr) if ptr else ("no data", k), []).append(k)
    for keys in groups.values():
        distinct = {(cache[k].data_ptr(), cache[k].shape, cache[k].stride()): cache[k] for k in keys}
        used = sum(t.numel() * t.element_size() for t in distinct.values())
        if used < cache[keys[0]].untyped_storage().nbytes():
            for k in keys:
                cache[k] = cache[k].clone(memory_format=torch.contiguous_format)
