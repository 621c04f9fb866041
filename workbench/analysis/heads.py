"""Head detection: attention patterns from a model run or a store, a labelled table of head scores,
and the same scores at every recorded step of a training run (the induction transition).

Scores (``attention.py``): previous-token, duplicate-token and induction on repeated random
sequences, attention to the first token ("sink"), mean attention entropy (nats).
"""
from __future__ import annotations

import re
from typing import Any, Optional, Sequence

import torch

from workbench.store.source import ActivationSource, StepSource

from .attention import (attention_entropy, duplicate_token_score, first_token_score, induction_score,
                        previous_token_score)

SCORES = ("previous_token", "duplicate_token", "induction", "first_token", "entropy")
# A head gets a label when its score passes the threshold; the highest score (relative to its threshold) wins.
DEFAULT_THRESHOLDS = {"induction": 0.3, "previous_token": 0.5, "duplicate_token": 0.3, "first_token": 0.6}


def pattern_name(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_pattern"


@torch.no_grad()
def get_patterns(model, tokens: torch.Tensor, layers: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Attention patterns of a model run, ``[layer, batch, head, q_pos, k_pos]``.

    Only the requested layers build explicit patterns; the others run fused attention.
    """
    layers = list(range(model.cfg.n_layers)) if layers is None else list(layers)
    names = [pattern_name(i) for i in layers]
    _, cache = model.run_with_cache(tokens.to(model.device), names_filter=names)
    return torch.stack([cache[n] for n in names])


def patterns_from_store(store, rows: slice | Sequence[int] = slice(None),
                        layers: Optional[Sequence[int]] = None) -> tuple[torch.Tensor, list[int]]:
    """Patterns read from a store (or ``store.at_step(s)``): ``([layer, rows, head, q, k], layers)``.

    ``layers`` defaults to every layer whose ``hook_pattern`` the store holds; a missing one is
    an error naming the hooks the store does have.
    """
    if layers is None:
        layers = sorted(int(m.group(1)) for n in store.hooks
                        if (m := re.fullmatch(r"blocks\.(\d+)\.attn\.hook_pattern", n)))
        if not layers:
            raise KeyError(f"the store holds no attention patterns (blocks.L.attn.hook_pattern); it has "
                           f"{sorted(store.hooks)[:8]}: cache them with names_filter='pattern'")
    return torch.stack([store[pattern_name(i)][rows].float() for i in layers]), list(layers)


def head_scores(patterns: torch.Tensor, period: Optional[int] = None, offset: int = 0) -> dict[str, torch.Tensor]:
    """Every score for patterns ``[..., batch, head, q, k]`` -> ``{score: [..., head]}``.

    ``period``/``offset`` describe repeated random sequences (``tasks.repeated_random_tokens``);
    without a period only the previous-token, first-token and entropy scores are computed.
    """
    out = {"previous_token": previous_token_score(patterns, offset),
           "first_token": first_token_score(patterns, start=max(1, offset)),
           "entropy": attention_entropy(patterns, start=max(1, offset))}
    if period is not None:
        out["induction"] = induction_score(patterns, period, offset)
        out["duplicate_token"] = duplicate_token_score(patterns, period, offset)
    return out


def _label(row: dict, thresholds: dict[str, float]) -> str:
    best, best_ratio = "", 1.0
    for score, t in thresholds.items():
        v = row.get(score)
        if v is not None and v >= t and v / t >= best_ratio:
            best, best_ratio = score, v / t
    return best.replace("_", "-")


def scores_table(scores: dict[str, torch.Tensor], thresholds: Optional[dict[str, float]] = None,
                 layers: Optional[Sequence[int]] = None, extra: Optional[dict[str, Any]] = None):
    """A pandas DataFrame, one row per (layer, head): every score and a ``label``."""
    import pandas as pd
    thresholds = DEFAULT_THRESHOLDS if thresholds is None else thresholds
    first = next(iter(scores.values()))                             # [layer, head]
    layers = list(range(first.shape[0])) if layers is None else list(layers)
    rows = []
    for li, layer in enumerate(layers):
        for h in range(first.shape[1]):
            row: dict[str, Any] = dict(extra or {})
            row.update(layer=layer, head=h)
            row.update({k: float(v[li, h]) for k, v in scores.items()})
            row["label"] = _label(row, thresholds)
            rows.append(row)
    return pd.DataFrame(rows)


def detect_heads(source, tokens: Optional[torch.Tensor] = None, period: Optional[int] = None, offset: int = 0,
                 n_seqs: int = 32, seed: int = 0, thresholds: Optional[dict[str, float]] = None,
                 rows: slice | Sequence[int] = slice(None)):
    """Score and label every head: a DataFrame with ``layer, head, previous_token, first_token, entropy,
    induction, duplicate_token, label``.

    ``source`` is a ``PhiModel`` or a store holding ``hook_pattern`` s. With a model and no
    ``tokens``, ``n_seqs`` repeated random sequences (period 20, a BOS) are generated, so
    every score is defined. With a store, pass the ``period``/``offset`` its rows were made with
    (a training recording's attributes ``probe_period``/``probe_offset`` are used when present).
    """
    if hasattr(source, "run_with_cache"):
        if tokens is None:
            from ..tasks import repeated_random_tokens
            period = period or 20
            bos = source.cfg.bos_token_id
            offset = 1 if bos is not None else 0
            tokens = repeated_random_tokens(n_seqs, period, 2, vocab_size=source.cfg.d_vocab, seed=seed,
                                            bos_token_id=bos)
        patterns, layers = get_patterns(source, tokens), list(range(source.cfg.n_layers))
    else:
        if isinstance(source, StepSource):          # a whole recording: its last recorded step
            source = source.at_step(source.steps[-1])
        attrs = source.attrs if isinstance(source, ActivationSource) else {}
        if period is None and attrs.get("probe_period"):
            period, offset = int(attrs["probe_period"]), int(attrs.get("probe_offset", 1))
            n_rep = int(attrs.get("probe_repeated_rows", 0) or 0)
            rows = slice(0, n_rep) if n_rep and rows == slice(None) else rows
        patterns, layers = patterns_from_store(source, rows)
    return scores_table(head_scores(patterns, period, offset), thresholds, layers)


def scores_across_steps(store, period: Optional[int] = None, offset: Optional[int] = None,
                        rows: Optional[slice] = None, layers: Optional[Sequence[int]] = None,
                        thresholds: Optional[dict[str, float]] = None):
    """Head scores at every recorded step of a training recording: a DataFrame with a ``step`` column
    (``step, layer, head, <scores>, label``), e.g. to plot the induction score against training steps.

    Defaults come from the recording's attributes (``probe_period``, ``probe_offset``,
    ``probe_repeated_rows``), as written by the trainer.
    """
    import pandas as pd
    steps = list(store.steps) if isinstance(store, StepSource) else []
    if not steps:
        raise ValueError("this store has no recorded steps: scores_across_steps needs a training recording")
    attrs = store.attrs
    period = period if period is not None else attrs.get("probe_period")
    period = int(period) if period else None
    offset = offset if offset is not None else int(attrs.get("probe_offset", 1 if period else 0))
    if rows is None:
        n_rep = int(attrs.get("probe_repeated_rows", 0) or 0)
        rows = slice(0, n_rep) if n_rep else slice(None)
    tables = []
    for s in steps:
        patterns, found = patterns_from_store(store.at_step(s), rows, layers)
        tables.append(scores_table(head_scores(patterns, period, offset), thresholds, found, extra={"step": s}))
    return pd.concat(tables, ignore_index=True)
