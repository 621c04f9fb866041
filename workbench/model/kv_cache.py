"""Key/value cache for incremental decoding."""
from __future__ import annotations

from typing import Optional

import torch


class KVCache:
    """Per-layer keys and values ``[batch, head, pos, d_head]`` of the tokens seen so far.

    Grows by concatenation: generation in the workbench is for inspecting
    models (short continuations), not serving, so simplicity wins over a
    preallocated ring buffer.
    """

    def __init__(self, n_layers: int) -> None:
        self.keys: list[Optional[torch.Tensor]] = [None] * n_layers
        self.values: list[Optional[torch.Tensor]] = [None] * n_layers

    def __len__(self) -> int:
        """Number of cached positions."""
        k = self.keys[0]
        return 0 if k is None else k.shape[2]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append this step's ``k``/``v`` and return the full cached ones."""
        if self.keys[layer] is not None:
            k = torch.cat((self.keys[layer], k), dim=2)
            v = torch.cat((self.values[layer], v), dim=2)
        self.keys[layer], self.values[layer] = k, v
        return k, v
