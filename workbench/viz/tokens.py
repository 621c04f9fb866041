"""Tokens coloured by a per-token value: a probe's output, a logit-lens value, a loss.

``colored_tokens`` is plain HTML (inline styles, a tooltip per token, no
script): a few hundred bytes per token, it shows even in an untrusted notebook
and on GitHub. ``colored_tokens_multi`` is circuitsvis's interactive
``ColoredTokensMulti`` (several values per token, pick one to colour by).
"""
from __future__ import annotations

import html
from typing import Any, Optional, Sequence

import numpy as np
import torch

from .html import CircuitsVisWidget, Figure, escape_token, rounded, str_tokens, to_numpy, visible_token


def _hex_to_rgb(color: str) -> tuple[int, int, int]:
    c = color.lstrip("#")
    if len(c) == 3:
        c = "".join(ch * 2 for ch in c)
    if len(c) != 6 or any(ch not in "0123456789abcdefABCDEF" for ch in c):
        raise ValueError(f"colors must be hex like '#2166ac', got {color!r}")
    return int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16)


def _mix(color: tuple[int, int, int], t: float) -> tuple[int, int, int]:
    """``t`` of the way from white to ``color`` (t in [0, 1])."""
    return tuple(int(round(255 + (c - 255) * t)) for c in color)  # type: ignore[return-value]


class ColoredTokens(Figure):
    """Plain-HTML token colouring (see ``colored_tokens``)."""

    def __init__(self, tokens: list[str], values: np.ndarray, min_value: float, max_value: float,
                 negative_color: str, positive_color: str, title: Optional[str], fmt: str) -> None:
        self.tokens, self.values = tokens, values
        self.min_value, self.max_value = min_value, max_value
        self.neg, self.pos = _hex_to_rgb(negative_color), _hex_to_rgb(positive_color)
        self.title, self.fmt = title, fmt

    def color(self, v: float) -> tuple[int, int, int]:
        """Diverging around 0 when the range spans it; otherwise white at ``min_value`` to the positive colour."""
        lo, hi = self.min_value, self.max_value
        if lo < 0 < hi:
            return _mix(self.pos, min(v / hi, 1.0)) if v >= 0 else _mix(self.neg, min(v / lo, 1.0))
        span = hi - lo
        t = 0.0 if span <= 0 else (v - lo) / span
        return _mix(self.pos, float(np.clip(t, 0.0, 1.0)))

    def fragment(self) -> str:
        parts = []
        if self.title:
            parts.append(f"<div style=\"font-weight: bold; margin-bottom: 4px;\">{html.escape(self.title)}</div>")
        spans = []
        for i, (tok, v) in enumerate(zip(self.tokens, self.values.tolist())):
            r, g, b = self.color(v)
            ink = "#000" if 0.299 * r + 0.587 * g + 0.114 * b > 140 else "#fff"
            shown = escape_token(tok).replace("\n", "\u21b5<br>")  # keep line breaks visible and real
            tip = html.escape(f"{i}: {tok!r} = {format(v, self.fmt)}", quote=True)
            spans.append(f'<span title="{tip}" style="background: rgb({r},{g},{b}); color: {ink}; '
                         f'border-right: 1px solid #eee;">{shown}</span>')
        parts.append('<div class="workbench-tokens" style="font-family: monospace; white-space: pre-wrap; '
                     f'line-height: 1.6;">{"".join(spans)}</div>')
        parts.append(f'<div style="font-size: 11px; color: #666;">colour scale: '
                     f'{format(self.min_value, self.fmt)} .. {format(self.max_value, self.fmt)}</div>')
        return '<div style="margin: 10px 0;">' + "\n".join(parts) + "</div>\n"

    def __repr__(self) -> str:
        return f"ColoredTokens({len(self.tokens)} tokens, range {self.min_value:.3g}..{self.max_value:.3g})"


def colored_tokens(tokens: Sequence[Any], values: Any, min_value: Optional[float] = None,
                   max_value: Optional[float] = None, negative_color: str = "#b2182b",
                   positive_color: str = "#2166ac", title: Optional[str] = None,
                   fmt: str = ".3g") -> ColoredTokens:
    """Each token on a background coloured by its value; hover shows position, token and value.

    Args:
        tokens: ``pos`` str tokens (or ids).
        values: ``[pos]`` numbers (e.g. a probe's probability, a per-token loss in nats).
        min_value, max_value: the colour range (default: the values' range; symmetric around 0 when
            values have both signs, so 0 is white).
    """
    toks = str_tokens(tokens)
    vals = to_numpy(values, "values")
    if vals.ndim == 2 and vals.shape[0] == 1:
        vals = vals[0]
    if vals.ndim != 1 or vals.shape[0] != len(toks):
        raise ValueError(f"values must be [pos] with one value per token: {len(toks)} tokens, "
                         f"values of shape {tuple(vals.shape)}")
    lo = float(vals.min()) if min_value is None else float(min_value)
    hi = float(vals.max()) if max_value is None else float(max_value)
    if min_value is None and max_value is None and lo < 0 < hi:
        lo, hi = -max(-lo, hi), max(-lo, hi)
    if lo > hi:
        raise ValueError(f"min_value {lo} is above max_value {hi}")
    return ColoredTokens(toks, vals, lo, hi, negative_color, positive_color, title, fmt)


def colored_tokens_multi(tokens: Sequence[Any], values: Any,
                         labels: Optional[Sequence[str]] = None) -> CircuitsVisWidget:
    """Tokens with several values each (circuitsvis ``ColoredTokensMulti``): choose which one colours them.

    Args:
        tokens: ``pos`` str tokens (or ids); a newline shows as ``↵`` (circuitsvis would break the line).
        values: ``[pos, k]``, e.g. the logit-lens log-prob of the next token at each of ``k`` layers.
        labels: ``k`` names, e.g. ``["L0", "L1", ...]``.
    """
    toks = str_tokens(tokens)
    vals = to_numpy(values, "values")
    if vals.ndim == 1:
        vals = vals[:, None]
    if vals.ndim != 2 or vals.shape[0] != len(toks):
        raise ValueError(f"values must be [pos, k] with pos = {len(toks)} tokens, got shape {tuple(vals.shape)}")
    if labels is not None and len(labels) != vals.shape[1]:
        raise ValueError(f"{len(labels)} labels for {vals.shape[1]} value columns")
    return CircuitsVisWidget("ColoredTokensMulti", {
        "tokens": [escape_token(visible_token(t)) for t in toks], "values": rounded(vals),
        # labels are React text nodes (escaped by React), unlike the tokens
        "labels": [str(l) for l in labels] if labels is not None else [f"value {i}" for i in range(vals.shape[1])]})


def logit_lens_tokens(lens_logits: Any, tokens: Any, str_toks: Optional[Sequence[str]] = None,
                      labels: Optional[Sequence[str]] = None, batch_index: int = 0) -> CircuitsVisWidget:
    """How well each layer's logit lens predicts the actual next token, token by token.

    Args:
        lens_logits: ``[n_entries, pos, d_vocab]`` or ``[n_entries, batch, pos, d_vocab]`` (from
            ``workbench.analysis.lens.logit_lens(cache)``: the residual stream entering each layer,
            then the final one, through the final LayerNorm and the unembedding).
        tokens: the ids ``[pos]`` (or ``[batch, pos]``) that were run.
        str_toks: their strings (default: the ids); labels: one name per entry (default ``L0`` ...).
    Each token from the second on is coloured by the log-probability (nats) that each entry gave it
    at the position before: ``[pos - 1, n_entries]`` values.
    """
    logits = torch.as_tensor(lens_logits)
    ids = torch.as_tensor(tokens)
    if logits.ndim == 4:
        logits = logits[:, batch_index]
    if ids.ndim == 2:
        ids = ids[batch_index]
    if logits.ndim != 3 or ids.ndim != 1 or logits.shape[1] != ids.shape[0]:
        raise ValueError(f"lens_logits must be [n_entries, pos, d_vocab] and tokens [pos] with the same pos; "
                         f"got {tuple(logits.shape)} and {tuple(ids.shape)}")
    if ids.shape[0] < 2:
        raise ValueError("need at least 2 tokens: each token is scored at the position before it")
    logprobs = logits[:, :-1].float().log_softmax(-1)                    # [entries, pos-1, vocab]
    nxt = ids[1:].to(logprobs.device)
    values = logprobs.gather(-1, nxt[None, :, None].expand(logprobs.shape[0], -1, 1))[..., 0].T  # [pos-1, entries]
    toks = list(str_toks) if str_toks is not None else ids.tolist()
    if len(toks) != ids.shape[0]:
        raise ValueError(f"{len(toks)} str tokens for {ids.shape[0]} ids")
    if labels is None:
        labels = [f"L{i}" for i in range(values.shape[1] - 1)] + ["final"]
    return colored_tokens_multi(toks[1:], values, labels)
