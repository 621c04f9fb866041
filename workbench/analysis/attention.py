"""Attention-head scores: previous-token, duplicate-token, induction, sink, entropy.

Every score takes attention patterns ``[..., batch, head, q_pos, k_pos]`` (a
``hook_pattern`` activation, possibly with leading dims such as layer or step)
and returns the mean over batch and the scored query positions, ``[..., head]``.
A 3-D input ``[head, q_pos, k_pos]`` is treated as one sequence.
Scores are attention probabilities, so each lies in [0, 1] (entropy: nats).
"""
from __future__ import annotations

import torch


def _check(pattern: torch.Tensor) -> torch.Tensor:
    if not isinstance(pattern, torch.Tensor) or pattern.ndim < 3:
        raise ValueError("expected attention patterns [..., batch, head, q_pos, k_pos] "
                         f"(a hook_pattern activation), got {getattr(pattern, 'shape', type(pattern))}")
    if pattern.ndim == 3:
        pattern = pattern[None]
    if pattern.shape[-1] != pattern.shape[-2]:
        raise ValueError(f"expected square patterns (q_pos == k_pos), got {tuple(pattern.shape)}; "
                         "patterns from a KV-cached run are not supported")
    return pattern


def _diag_score(pattern: torch.Tensor, lag: int, q_start: int, q_stop: int | None = None) -> torch.Tensor:
    """Mean of ``pattern[..., q, q - lag]`` over batch and ``q`` in ``[q_start, q_stop)``."""
    pattern = _check(pattern)
    n = pattern.shape[-1]
    q_stop = n if q_stop is None else q_stop
    q_start = max(q_start, lag)  # k = q - lag must exist
    if q_start >= q_stop:
        raise ValueError(f"no query positions to score: sequences of length {n} are too short "
                         f"for a lag of {lag} starting at position {q_start}")
    # diagonal(offset=-lag) holds pattern[q, q - lag] for q = lag..n-1, in order
    diag = pattern.diagonal(offset=-lag, dim1=-2, dim2=-1)  # [..., batch, head, n - lag]
    sel = diag[..., q_start - lag: q_stop - lag]
    return sel.float().mean(dim=-1).mean(dim=-2)            # [..., head]


def previous_token_score(pattern: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """Mean attention from each position to the one before it, ``[..., head]``.

    Query positions ``offset + 1 ..`` are scored (``offset=1`` skips a BOS column).
    """
    return _diag_score(pattern, lag=1, q_start=offset + 1)


def induction_score(pattern: torch.Tensor, period: int, offset: int = 0) -> torch.Tensor:
    """Induction score on repeated random sequences, ``[..., head]``.

    The mean attention from each position in the second and later repeats to the
    token right after that token's previous occurrence, ``k = q - period + 1``.
    ``offset`` is the number of tokens before the first repeat (1 with a BOS).
    """
    if period < 1:
        raise ValueError(f"period must be >= 1, got {period}")
    return _diag_score(pattern, lag=period - 1, q_start=offset + period)


def duplicate_token_score(pattern: torch.Tensor, period: int, offset: int = 0) -> torch.Tensor:
    """Mean attention from each position in the later repeats to the same token one period back, ``[..., head]``."""
    if period < 1:
        raise ValueError(f"period must be >= 1, got {period}")
    return _diag_score(pattern, lag=period, q_start=offset + period)


def first_token_score(pattern: torch.Tensor, start: int = 1) -> torch.Tensor:
    """Mean attention to position 0 (the "attention sink"), over queries ``start ..``, ``[..., head]``.

    ``start=1`` skips query 0, which can only attend to itself.
    """
    pattern = _check(pattern)
    if start >= pattern.shape[-1]:
        raise ValueError(f"start={start} leaves no query positions in sequences of length {pattern.shape[-1]}")
    return pattern[..., start:, 0].float().mean(dim=-1).mean(dim=-2)


def attention_entropy(pattern: torch.Tensor, start: int = 1) -> torch.Tensor:
    """Mean entropy (nats) of each query's attention distribution, queries ``start ..``, ``[..., head]``.

    Low entropy: the head attends to few positions. ``log(q + 1)`` is the most a query can have.
    """
    pattern = _check(pattern).float()
    ent = -(pattern * pattern.clamp_min(1e-30).log()).sum(-1)   # [..., batch, head, q]
    return ent[..., start:].mean(dim=-1).mean(dim=-2)
