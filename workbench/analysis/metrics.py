"""Patching metrics: logit difference and normalised logit difference.

A patching metric maps logits ``[batch, pos, d_vocab]`` to a scalar tensor.
``as_scalar`` is the single place a metric's output is checked, so every
analysis reports the same clear error for a metric that returns a vector.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

Metric = Callable[[torch.Tensor], torch.Tensor]


def _answers(answer_tokens: torch.Tensor) -> torch.Tensor:
    if not isinstance(answer_tokens, torch.Tensor):
        answer_tokens = torch.tensor(answer_tokens)
    if answer_tokens.ndim != 2 or answer_tokens.shape[1] != 2:
        raise ValueError("answer_tokens must be [batch, 2]: (correct, incorrect) token ids per prompt, "
                         f"got shape {tuple(answer_tokens.shape)}")
    return answer_tokens.long()


def logit_diff(logits: torch.Tensor, answer_tokens: torch.Tensor, pos: int | torch.Tensor = -1,
               per_prompt: bool = False) -> torch.Tensor:
    """Mean over prompts of ``logit[correct] - logit[incorrect]`` at ``pos``.

    Args:
        logits: ``[batch, pos, d_vocab]``.
        answer_tokens: ``[batch, 2]`` ids (correct, incorrect).
        pos: the position read (an int, or ``[batch]`` positions, e.g. the last non-pad token).
        per_prompt: return ``[batch]`` instead of the mean.
    Returns:
        scalar (or ``[batch]``), in logits (nats of log-odds).
    """
    answers = _answers(answer_tokens).to(logits.device)
    if logits.shape[0] != answers.shape[0]:
        raise ValueError(f"logits have batch {logits.shape[0]} but answer_tokens has {answers.shape[0]} rows")
    b = torch.arange(logits.shape[0], device=logits.device)
    last = logits[b, pos] if isinstance(pos, torch.Tensor) else logits[:, pos]   # [batch, d_vocab]
    diff = last.gather(-1, answers).float()                                        # [batch, 2]
    diff = diff[:, 0] - diff[:, 1]
    return diff if per_prompt else diff.mean()


def make_logit_diff_metric(answer_tokens: torch.Tensor, pos: int | torch.Tensor = -1) -> Metric:
    """``metric(logits) -> scalar`` logit difference for these answers."""
    answers = _answers(answer_tokens)
    return lambda logits: logit_diff(logits, answers, pos)


def make_normalised_logit_diff_metric(answer_tokens: torch.Tensor, clean_logits: torch.Tensor,
                                      corrupted_logits: torch.Tensor, pos: int | torch.Tensor = -1) -> Metric:
    """``metric(logits) -> scalar``: 0 at the corrupted run's logit difference, 1 at the clean run's.

    Raises if the clean and corrupted logit differences are equal (nothing to normalise by).
    """
    answers = _answers(answer_tokens)
    clean = logit_diff(clean_logits, answers, pos).detach()
    corrupt = logit_diff(corrupted_logits, answers, pos).detach()
    span = clean - corrupt
    if span.abs() < 1e-8:
        raise ValueError(f"clean and corrupted logit differences are equal ({float(clean):.4g}): "
                         "these inputs give no effect to normalise; pick a corruption that changes the answer")
    return lambda logits: (logit_diff(logits, answers, pos) - corrupt.to(logits.device)) / span.to(logits.device)


def as_scalar(value, what: str = "patching_metric") -> torch.Tensor:
    """``value`` as a 0-d tensor, or a clear error naming what returned it."""
    out = torch.as_tensor(value)
    if out.numel() != 1:
        raise ValueError(f"{what} must return a scalar (e.g. the mean logit difference over the batch), "
                         f"got a tensor of shape {tuple(out.shape)}; reduce it, e.g. with .mean()")
    return out.reshape(())


def metric_value(metric: Optional[Metric], logits: torch.Tensor, what: str = "patching_metric") -> torch.Tensor:
    """Apply ``metric`` to ``logits`` and check it returns a scalar."""
    if metric is None or not callable(metric):
        raise TypeError(f"{what} must be a function of the logits [batch, pos, d_vocab] returning a scalar")
    return as_scalar(metric(logits), what)
