"""Key/value cache for incremental decoding and for patched runs that restart mid-sequence."""
from __future__ import annotations

from typing import Mapping, Optional

import torch


class KVCache:
    """Rotated keys and values ``[batch, head, pos, d_head]`` of the first ``length`` positions, per layer.

    As in gpt-fast, the cache has an explicit ``length`` (positions already seen) and its
    storage is private: attention calls ``update(layer, k, v)`` with the new positions and
    gets back the keys and values of every position so far; the model calls
    ``advance(n_new)`` once every layer has been updated. ``from_prefix`` builds a cache
    for the layers that will run from keys and values computed elsewhere (a patched run
    that starts at a later layer needs no entries for the layers below it).

    Storage grows by concatenation: generation here is for inspecting models (short
    continuations), not serving, so simplicity wins over a preallocated buffer.
    """

    def __init__(self, n_layers: int) -> None:
        self.length = 0
        self._keys: list[Optional[torch.Tensor]] = [None] * n_layers
        self._values: list[Optional[torch.Tensor]] = [None] * n_layers

    @classmethod
    def from_prefix(cls, n_layers: int, keys: Mapping[int, torch.Tensor],
                    values: Mapping[int, torch.Tensor]) -> "KVCache":
        """A cache holding ``keys[layer]``/``values[layer]`` ``[batch, head, prefix, d_head]`` for the given layers.

        Only those layers may run on it; all prefixes must have the same length.
        """
        if set(keys) != set(values):
            raise ValueError(f"keys and values cover different layers: {sorted(keys)} vs {sorted(values)}")
        lengths = {k.shape[2] for k in keys.values()} | {v.shape[2] for v in values.values()}
        if len(lengths) > 1:
            raise ValueError(f"every prefix must have the same length, got lengths {sorted(lengths)}")
        cache = cls(n_layers)
        for layer in keys:
            cache._keys[layer], cache._values[layer] = keys[layer], values[layer]
        cache.length = lengths.pop() if lengths else 0
        return cache

    def __len__(self) -> int:
        """Number of cached positions."""
        return self.length

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append this step's ``k``/``v`` to ``layer`` and return all of that layer's keys and values."""
        cached = self._keys[layer]
        have = 0 if cached is None else cached.shape[2]
        if have != self.length:
            raise RuntimeError(f"layer {layer} of the KV cache holds {have} positions but the cache has "
                               f"{self.length}: build it with KVCache.from_prefix for the layers that run")
        if cached is not None:
            k = torch.cat((cached, k), dim=2)
            v = torch.cat((self._values[layer], v), dim=2)
        self._keys[layer], self._values[layer] = k, v
        return k, v

    def advance(self, n_new: int) -> None:
        """Count ``n_new`` more positions as cached (called by the model after its blocks ran)."""
        self.length += n_new
