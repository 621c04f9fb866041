"""The caching hooks behind ``run_with_cache``: detach, slice positions, drop the batch dim, store.

``pos_slice`` follows TransformerLens's ``run_with_cache``: an int keeps the position
axis (size 1), a tuple ``(start, stop[, step])`` is a slice, a list or tensor picks
positions, a ``slice`` is used as is, and a TransformerLens ``Slice`` is applied as
it stands. The position axis is dim 1 (``[batch, pos, ...]``), except for attention
scores and patterns ``[batch, head, q_pos, k_pos]``, where it is the query axis (-2).
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Union

import torch

from .hook_point import HookPoint

PosSlice = Any   # None, int, (start, stop[, step]), list/tensor of positions, slice, or a TL Slice

_QUERY_AXIS_HOOKS = ("hook_pattern", "hook_attn_scores")


def position_axis(name: str) -> int:
    """The position axis of the batched activation ``name``."""
    return -2 if name.endswith(_QUERY_AXIS_HOOKS) else 1


def as_position_index(pos_slice: PosSlice) -> Optional[Union[slice, torch.Tensor, Any]]:
    """Normalise ``pos_slice`` to an index for one axis (``None``: keep everything)."""
    if pos_slice is None:
        return None
    if hasattr(pos_slice, "apply") and hasattr(pos_slice, "mode"):   # TransformerLens's Slice
        return pos_slice
    if isinstance(pos_slice, bool):
        raise TypeError(f"pos_slice must be an int, a (start, stop[, step]) tuple, a list of positions "
                        f"or a slice, got {pos_slice!r}")
    if isinstance(pos_slice, torch.Tensor) and pos_slice.ndim == 0:
        pos_slice = int(pos_slice)
    if isinstance(pos_slice, int):
        return slice(pos_slice, pos_slice + 1 if pos_slice != -1 else None)   # keeps the axis
    if isinstance(pos_slice, tuple):
        return slice(*pos_slice)
    if isinstance(pos_slice, slice):
        return pos_slice
    if isinstance(pos_slice, (list, torch.Tensor)):
        return torch.as_tensor(pos_slice, dtype=torch.long)
    raise TypeError(f"pos_slice must be an int, a (start, stop[, step]) tuple, a list of positions or a slice, "
                    f"got {type(pos_slice).__name__}")


def slice_positions(t: torch.Tensor, name: str, index: Any) -> torch.Tensor:
    """Apply a normalised position index to the position axis of activation ``name``."""
    if index is None or t.ndim < 2:
        return t
    dim = position_axis(name)
    if hasattr(index, "apply"):
        return index.apply(t, dim=dim)
    if isinstance(index, torch.Tensor):
        return t.index_select(dim, index.to(t.device))
    idx: list = [slice(None)] * t.ndim
    idx[dim] = index
    return t[tuple(idx)]


def save_hook(cache: dict, key: str, device: Optional[Union[str, torch.device]], remove_batch_dim: bool,
              index: Any) -> Callable[[torch.Tensor, HookPoint], None]:
    """A hook that stores the detached activation (sliced, batch dim dropped, moved) as ``cache[key]``."""
    name = key[: -len("_grad")] if key.endswith("_grad") else key

    def hook(t: torch.Tensor, hook: HookPoint) -> None:
        t = slice_positions(t.detach(), name, index)
        if remove_batch_dim and t.ndim > 0 and t.shape[0] == 1:
            t = t[0]
        cache[key] = t if device is None else t.to(device)
    return hook
