"""ActivationCache: the activations a ``run_with_cache`` call recorded, by hook name.

The class has TransformerLens's interface (``cache_dict``, ``cache["pattern", 3]``,
``has_batch_dim``, in-place ``to`` and ``remove_batch_dim``, ...). Once
TransformerLens has been imported, ``run_with_cache`` returns an instance of a
subclass of both this class and ``transformer_lens.ActivationCache``, so
TransformerLens's functions (type-checked at run time) accept it and every one of
its methods (``accumulated_resid``, ``decompose_resid``, ``logit_attrs``, ...) is
there. Before that, nothing here imports TransformerLens (it costs seconds; see
docs/bench-model.md); calling one of those methods on a plain cache imports it
then and upgrades the cache in place.
"""
from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Mapping
from typing import Any, Iterator, Optional, Union

import torch

from .names import UnknownHookError, get_act_name

# Public methods of transformer_lens 4.3's ActivationCache that this class does not define.
# Asking a plain cache for one of them imports TransformerLens and upgrades the cache
# (tests/test_hooks.py checks this list against TransformerLens itself).
TL_ONLY_METHODS = frozenset({
    "accumulated_resid", "apply_ln_to_stack", "apply_slice_to_batch_dim", "compute_head_results",
    "compute_ssm_effective_attention", "compute_ssm_state", "decompose_resid",
    "get_full_resid_decomposition", "get_neuron_results", "logit_attrs", "logit_lens", "ssm_layers",
    "stack_activation", "stack_head_results", "stack_neuron_results", "toggle_autodiff",
})


class ActivationCache(Mapping):
    """A mapping ``hook name -> tensor`` with TransformerLens's key shorthands.

    Keys are full hook names; ``cache["pattern", 3]``, ``cache["resid_pre3"]`` and
    ``cache["k", -1]`` work as in TransformerLens. A missing key raises
    ``UnknownHookError`` (a ``KeyError``) naming the closest cached names. ``model``
    is kept for the analysis methods (config and weights).
    """

    def __init__(self, cache_dict: dict[str, torch.Tensor], model: Any = None,
                 has_batch_dim: bool = True) -> None:
        self.cache_dict = cache_dict
        self.model = model
        self.has_batch_dim = has_batch_dim
        self.has_embed = "hook_embed" in cache_dict
        self.has_pos_embed = "hook_pos_embed" in cache_dict

    def _key(self, key: Union[str, tuple]) -> str:
        if isinstance(key, str):
            if key in self.cache_dict:
                return key
            full = get_act_name(key)
        elif isinstance(key, tuple):
            if len(key) > 1 and key[1] is not None and key[1] < 0 and self.model is not None:
                key = (key[0], self.model.cfg.n_layers + key[1], *key[2:])   # negative layers count back
            full = get_act_name(*key)
        else:
            raise TypeError(f"cache keys are hook names or (name, layer[, layer_type]) tuples, got {key!r}")
        if full in self.cache_dict:
            return full
        raise UnknownHookError(full, self.cache_dict.keys(), in_cache=True)

    def __getitem__(self, key: Union[str, tuple]) -> torch.Tensor:
        return self.cache_dict[self._key(key)]

    def __contains__(self, key: object) -> bool:
        try:
            self._key(key)  # type: ignore[arg-type]
            return True
        except (KeyError, TypeError):
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self.cache_dict)

    def __len__(self) -> int:
        return len(self.cache_dict)

    def keys(self):
        return self.cache_dict.keys()

    def values(self):
        return self.cache_dict.values()

    def items(self):
        return self.cache_dict.items()

    def __repr__(self) -> str:
        return f"ActivationCache with keys {list(self.cache_dict.keys())}"

    def __getattr__(self, name: str) -> Any:
        # Only reached for attributes the cache lacks: TransformerLens's analysis methods.
        if name in TL_ONLY_METHODS:
            self.__class__ = tl_cache_class(load=True)
            return getattr(self, name)
        raise AttributeError(f"'{type(self).__name__}' object has no attribute {name!r}")

    def to(self, device: Optional[Union[str, torch.device]] = None,
           dtype: Optional[torch.dtype] = None) -> "ActivationCache":
        """Move (and optionally cast) every tensor, in place as in TransformerLens; returns the cache."""
        self.cache_dict = {k: v.to(device=device, dtype=dtype) for k, v in self.cache_dict.items()}
        return self

    def _batch_size(self) -> int:
        """The most common leading dim of the cached tensors (the batch size)."""
        sizes = [v.shape[0] for v in self.cache_dict.values() if v.ndim > 0]
        return max(set(sizes), key=sizes.count) if sizes else 1

    def remove_batch_dim(self, batch_size: Optional[int] = None) -> "ActivationCache":
        """Drop a batch dimension of size 1 from every tensor, in place; returns the cache.

        A batch larger than 1 is an ``AssertionError``, as in TransformerLens.
        """
        if not self.has_batch_dim:
            logging.warning("Tried removing batch dimension after already having removed it.")
            return self
        batch_size = self._batch_size() if batch_size is None else batch_size
        assert batch_size == 1, f"Cannot remove batch dimension from cache with batch size {batch_size}"
        for k, v in self.cache_dict.items():
            if v.ndim > 0 and v.shape[0] == 1:
                self.cache_dict[k] = v[0]
        self.has_batch_dim = False
        return self

    def numel(self) -> int:
        return sum(v.numel() for v in self.cache_dict.values())

    def nbytes(self) -> int:
        """Bytes of memory the cached tensors keep alive (each underlying storage counted once)."""
        return cache_nbytes(self.cache_dict)


def cache_nbytes(cache: dict[str, torch.Tensor]) -> int:
    """Bytes of memory the tensors keep alive (each underlying storage counted once)."""
    seen: dict[tuple, int] = {}
    for v in cache.values():
        storage = v.untyped_storage()
        ptr = storage.data_ptr()
        seen[(v.device, ptr) if ptr else ("no data", id(v))] = storage.nbytes()  # meta: no pointer
    return sum(seen.values())


_TL_CLASS: Optional[type] = None


def tl_cache_class(load: bool = False) -> Optional[type]:
    """The subclass of this cache and ``transformer_lens.ActivationCache``, or None.

    Built once TransformerLens is imported (by anyone); with ``load=True`` this imports it.
    """
    global _TL_CLASS
    if _TL_CLASS is None and (load or "transformer_lens" in sys.modules):
        tl = importlib.import_module("transformer_lens.ActivationCache").ActivationCache
        _TL_CLASS = type("ActivationCache", (ActivationCache, tl),
                         {"__module__": __name__, "__doc__": ActivationCache.__doc__,
                          "__qualname__": "ActivationCache"})
    return _TL_CLASS


def make_cache(cache_dict: dict[str, torch.Tensor], model: Any = None,
               has_batch_dim: bool = True) -> ActivationCache:
    """The cache ``run_with_cache`` returns: TransformerLens's type too, once TransformerLens is loaded."""
    cls = tl_cache_class() or ActivationCache
    return cls(cache_dict, model, has_batch_dim)


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
