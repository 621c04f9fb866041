"""Feeding probes: an in-memory source with the store's reading interface, label checks,
and turning one batch of rows into (features, labels, token ids)."""
from __future__ import annotations

from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np
import torch

from workbench.hooks.names import UnknownHookError


class TensorSource:
    """In-memory activations read like a store: an ``ActivationSource`` (``workbench.store.source``).

    ``TensorSource(tokens [rows, pos], {hook: [rows, ...]}, attrs={...})``; ``from_cache(cache, tokens)``
    wraps a ``run_with_cache`` result. ``attrs`` is provenance, as a store file's (empty by default).
    """

    def __init__(self, tokens: torch.Tensor, acts: dict[str, torch.Tensor],
                 attrs: Optional[dict[str, Any]] = None) -> None:
        for h, a in acts.items():
            if a.shape[0] != tokens.shape[0]:
                raise ValueError(f"{h} has {a.shape[0]} rows but tokens has {tokens.shape[0]}")
        self.tokens, self.acts = tokens, acts
        self.hooks = {h: (tuple(a.shape[1:]), a.dtype) for h, a in acts.items()}
        self.attrs: dict[str, Any] = dict(attrs or {})

    @classmethod
    def from_cache(cls, cache, tokens: torch.Tensor, hooks: Optional[Sequence[str]] = None) -> "TensorSource":
        names = list(cache) if hooks is None else list(hooks)
        return cls(tokens, {h: cache[h] for h in names})

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __getitem__(self, hook: str) -> torch.Tensor:
        if hook not in self.acts:
            raise UnknownHookError(hook, self.acts)
        return self.acts[hook]

    def __contains__(self, hook: object) -> bool:
        return hook in self.acts

    def iter_batches(self, hooks: Union[str, Sequence[str], None] = None, batch_size: int = 64,
                     rows: Optional[slice] = None) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
        names = list(self.acts) if hooks is None else ([hooks] if isinstance(hooks, str) else list(hooks))
        start, stop, _ = (rows or slice(None)).indices(len(self))
        for i in range(start, stop, batch_size):
            j = min(i + batch_size, stop)
            yield self.tokens[i:j], {h: self[h][i:j] for h in names}


def check_hooks(source, hooks: Sequence[str]) -> None:
    """A clear error (with the closest names) for a hook the source does not hold."""
    if not hooks:
        raise ValueError("no hooks given: name at least one hook to probe")
    for h in hooks:
        if h not in source:
            raise UnknownHookError(h, list(source.hooks))


def to_label_tensor(labels, n_rows: int, kind: str) -> torch.Tensor:
    """Labels as a tensor with one entry (or one row of entries) per source row."""
    y = labels if isinstance(labels, torch.Tensor) else torch.as_tensor(np.asarray(labels))
    if y.shape[0] != n_rows:
        raise ValueError(f"labels has {y.shape[0]} rows but the source has {n_rows}: "
                         "give one label per row ([rows]) or per token ([rows, pos])")
    if kind == "logistic":
        if y.is_floating_point():
            raise ValueError("logistic probes need integer class labels (use kind='linear' for real values)")
        return y.long()
    return y.float()


def batch_features(acts: torch.Tensor, labels: torch.Tensor, tokens: torch.Tensor, keep_rows: torch.Tensor,
                   pos: Optional[int], kind: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One batch as ``(x [n, d], y [n], token ids [n])`` for the labelled tokens of the kept rows.

    ``acts`` ``[b, pos, d]`` or ``[b, d]``; ``labels`` ``[b]`` or ``[b, pos]``.
    """
    # Select rows and labelled tokens with one boolean index, then convert: one copy of the batch, not three.
    if acts.ndim == 3:
        if labels.ndim == 2 and pos is None:             # per-token labels
            if labels.shape[1] != acts.shape[1]:
                raise ValueError(f"per-token labels have {labels.shape[1]} positions but the activations "
                                 f"have {acts.shape[1]}")
            keep = keep_rows[:, None] & _labelled(labels, kind)
            return acts[keep].float(), labels[keep], tokens[keep].long()
        if pos is None:
            raise ValueError("labels are one per row but the activations have a position dim: "
                             "pass pos=... (e.g. pos=-1 for the last token)")
        acts, tokens = acts[:, pos], tokens[:, pos]
        labels = labels[:, pos] if labels.ndim == 2 else labels
    elif acts.ndim == 2:
        tokens = tokens[:, -1] if pos is None else tokens[:, pos]
    else:
        raise ValueError(f"cannot probe activations of shape {tuple(acts.shape)}: expected [rows, pos, d] or [rows, d]")
    keep = keep_rows & _labelled(labels, kind)
    return acts[keep].float(), labels[keep], tokens[keep].long()


def _labelled(labels: torch.Tensor, kind: str) -> torch.Tensor:
    return labels >= 0 if kind == "logistic" else ~torch.isnan(labels)
