"""Attention patterns of one layer as circuitsvis widgets, from a pattern, a model run, a cache or a store row."""
from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from tokenizers import Tokenizer as HFTokenizer

from workbench.model import Tokenizer
from workbench.store.source import ActivationSource, StepSource

from .html import CircuitsVisWidget, escape_token, rounded, str_tokens, to_numpy, visible_token

Tokens = Union[Sequence[str], Sequence[int], Any]


def _pattern_3d(pattern: Any, tokens: Tokens, batch_index: int, spaces: bool) -> tuple[np.ndarray, list[str]]:
    """Validate ``pattern`` ``[head, q_pos, k_pos]`` (or ``[batch, head, q_pos, k_pos]``) against ``tokens``.

    Returns the pattern and the tokens made visible (``visible_token``) and inert (``escape_token``).
    """
    arr = to_numpy(pattern, "pattern")
    if arr.ndim == 4:
        if not -arr.shape[0] <= batch_index < arr.shape[0]:
            raise IndexError(f"batch_index {batch_index} is out of range for a batch of {arr.shape[0]}")
        arr = arr[batch_index]
    elif arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"pattern must be [head, q_pos, k_pos] or [batch, head, q_pos, k_pos], "
                         f"got shape {tuple(arr.shape)}")
    n_heads, q, k = arr.shape
    if q != k:
        raise ValueError(f"pattern must be square (q_pos == k_pos), got q_pos={q}, k_pos={k}: "
                         "a pattern made with a KV cache covers only the new queries; rerun the full sequence")
    toks = str_tokens(tokens)
    if len(toks) != q:
        raise ValueError(f"{len(toks)} tokens for a pattern over {q} positions: pass the str tokens of the "
                         "same row the pattern came from")
    return arr, [escape_token(visible_token(t, spaces)) for t in toks]


def sharpest_head(pattern: np.ndarray) -> int:
    """The head (of ``[head, q_pos, k_pos]``) that attends most sharply away from itself and position 0.

    Per head: the mean over queries ``q >= 2`` of the largest attention to a key other than ``q``
    and ``0``. A previous-token or an induction head scores high; a head that rests on the first
    token (a sink), on itself, or spreads its attention evenly scores low.
    """
    n = pattern.shape[-1]
    if n < 3:
        return 0
    away = pattern.copy()
    away[:, :, 0] = 0.0
    idx = np.arange(n)
    away[:, idx, idx] = 0.0
    return int(away[:, 2:].max(-1).mean(-1).argmax())


def attention_heads(pattern: Any, tokens: Tokens, head_names: Optional[Sequence[str]] = None,
                    layer: Optional[int] = None, batch_index: int = 0,
                    max_value: Optional[float] = None, min_value: Optional[float] = None,
                    mask_upper_tri: bool = True, focus: Optional[int] = None,
                    title: Optional[str] = None) -> CircuitsVisWidget:
    """Every head of one layer: a thumbnail heatmap per head and one enlarged (circuitsvis ``AttentionHeads``).

    Args:
        pattern: attention probabilities ``[head, q_pos, k_pos]`` or ``[batch, head, q_pos, k_pos]``
            (``cache["pattern", layer]``); values in [0, 1].
        tokens: the ``q_pos`` token strings of that row (``model.to_str_tokens(row)``) or their ids.
        head_names: one label per head; default ``L{layer}.H{h}`` (or ``H{h}``).
        batch_index: the row shown when ``pattern`` has a batch dimension.
        focus: the head shown enlarged when the figure opens (hover or click another to change it);
            default ``sharpest_head``: the head attending most sharply away from itself and position 0.
        title: a heading above the figure (e.g. which layer, row and training step it shows).
    Tokens are HTML-escaped (circuitsvis inserts them with innerHTML) and their whitespace shown
    (``↵`` for a newline, ``·`` for a space: the heatmap labels drop whitespace); the JSON payload is
    about 6 bytes per number (values rounded to 4 decimals).
    """
    arr, toks = _pattern_3d(pattern, tokens, batch_index, spaces=True)
    n_heads = arr.shape[0]
    if head_names is None:
        head_names = [f"L{layer}.H{h}" if layer is not None else f"H{h}" for h in range(n_heads)]
    head_names = [str(n) for n in head_names]  # React text nodes: React escapes them, tokens it does not
    if len(head_names) != n_heads:
        raise ValueError(f"{len(head_names)} head names for {n_heads} heads")
    focus = sharpest_head(arr) if focus is None else int(focus)
    if not 0 <= focus < n_heads:
        raise IndexError(f"focus={focus} is not a head of this layer (0..{n_heads - 1})")
    return CircuitsVisWidget("AttentionHeads", {
        "attention": rounded(arr), "tokens": toks, "attentionHeadNames": head_names,
        "maxValue": max_value, "minValue": min_value, "maskUpperTri": mask_upper_tri},
        title=title, focus_head=focus)


def attention_patterns(pattern: Any, tokens: Tokens, batch_index: int = 0,
                       title: Optional[str] = None) -> CircuitsVisWidget:
    """All heads of one layer over the text, hover a token to see where it attends (circuitsvis ``AttentionPatterns``).

    ``pattern`` ``[head, q_pos, k_pos]`` or ``[batch, head, q_pos, k_pos]``; ``tokens`` as in ``attention_heads``
    (newlines shown as ``↵``); ``title`` a heading above the figure.
    """
    arr, toks = _pattern_3d(pattern, tokens, batch_index, spaces=False)
    return CircuitsVisWidget("AttentionPatterns", {"attention": rounded(arr), "tokens": toks}, title=title)


def _is_str_list(tokens: Any) -> bool:
    return isinstance(tokens, (list, tuple)) and len(tokens) > 0 and isinstance(tokens[0], str)


def _strings(ids: Any, tokenizer: Any) -> list:
    """Str tokens of one row of ids via ``tokenizer`` (a Tokenizer or a model with one), else the ids."""
    if _is_str_list(ids):
        return list(ids)
    ids = torch.as_tensor(ids)
    if ids.ndim != 1:
        raise ValueError(f"expected the ids of one row [pos], got shape {tuple(ids.shape)}")
    if tokenizer is None or getattr(tokenizer, "tokenizer", True) is None:  # a model without a tokenizer
        return ids.tolist()
    return list(tokenizer.to_str_tokens(ids))


def _store_tokenizer(store: Any) -> Any:
    """The ``Tokenizer`` kept in a store's attributes (``tokenizer``: tokenizer.json text), if any."""
    attrs = store.attrs if isinstance(store, (ActivationSource, StepSource)) else {}
    text = attrs.get("tokenizer")
    if not isinstance(text, str) or not text:
        return None
    return Tokenizer(HFTokenizer.from_str(text))


def layer_pattern(source: Any, layer: int, tokens: Any = None, row: int = 0,
                  tokenizer: Any = None, step: Optional[int] = None) -> tuple[Any, list]:
    """The attention pattern ``[head, pos, pos]`` of ``layer`` and the row's str tokens, from any source.

    ``source`` is one of:
      - a hooked model (``PhiModel``): ``tokens`` (ids ``[pos]``/``[batch, pos]`` or text) is run with a cache
        of only ``blocks.{layer}.attn.hook_pattern``; the model's tokenizer names the tokens;
      - an ``ActivationCache`` or dict holding that hook; ``tokens`` are the row's str tokens or ids
        (``[pos]`` or ``[batch, pos]``), named by ``tokenizer`` or the cache's model;
      - an ``ActivationStore`` (or a step view ``store.at_step(s)``) holding that hook: row ``row`` is read
        lazily, its ids from the store (or ``tokens``) named by ``tokenizer`` (a ``Tokenizer`` or a model)
        or by the tokenizer saved in the store's attributes; a training recording needs ``step=``.
    Without a tokenizer the ids themselves label the tokens.
    """
    hook = f"blocks.{layer}.attn.hook_pattern"
    if hasattr(source, "run_with_cache") and hasattr(source, "hook_dict"):  # a model
        if tokens is None:
            raise ValueError("a model needs tokens=... (ids or text) to run")
        if isinstance(tokens, str) or _is_str_list(tokens):
            tokens = source.to_tokens(tokens)
        ids = torch.as_tensor(tokens)
        ids = ids[None] if ids.ndim == 1 else ids
        with torch.no_grad():
            _, cache = source.run_with_cache(ids.to(source.device), names_filter=hook)
        return cache[hook][row], _strings(ids[row], tokenizer or source)
    if isinstance(source, (ActivationSource, StepSource)):  # a store, a recording or one step of it
        return _pattern_from_store(source, hook, row, tokens, tokenizer, step)
    if hasattr(source, "__getitem__") and hasattr(source, "__contains__"):  # a cache or a dict
        if hook not in source:
            raise KeyError(f"the cache has no {hook}: run_with_cache(..., names_filter='{hook}')")
        pattern = source[hook]
        if tokens is None:
            raise ValueError("pass tokens=... (the str tokens or ids of the cached row)")
        pattern = pattern[row] if pattern.ndim == 4 else pattern
        if not _is_str_list(tokens):
            ids = torch.as_tensor(tokens)
            tokens = ids[row] if ids.ndim == 2 else ids
        return pattern, _strings(tokens, tokenizer or getattr(source, "model", None))
    raise TypeError(f"source must be a hooked model, an ActivationCache/dict or an ActivationStore, "
                    f"got {type(source).__name__}")


def _pattern_from_store(source: Any, hook: str, row: int, tokens: Any, tokenizer: Any,
                        step: Optional[int]) -> tuple[Any, list]:
    """``layer_pattern`` of a cache file, a recording (``step`` required) or one step of a recording."""
    if isinstance(source, StepSource):
        if step is None:
            raise ValueError(f"this store is a training recording: pass step=... "
                             f"(recorded steps: {source.steps[:6]}{' ...' if len(source.steps) > 6 else ''})")
        source = source.at_step(step)
    elif step is not None:
        raise ValueError("step=... is for training recordings; this store holds no steps")
    if hook not in source.hooks:
        raise KeyError(f"the store has no {hook}; it holds {sorted(source.hooks)[:8]}. "
                       "Cache it with --hooks 'blocks.*.attn.hook_pattern'")
    n = len(source)
    if not -n <= row < n:
        raise IndexError(f"row {row} is out of range: the store has {n} complete rows")
    row = row % n
    pattern = source[hook][row:row + 1][0]
    if tokens is None:
        if getattr(source, "tokens", None) is None:
            raise ValueError("this store view has no tokens: pass tokens=store.tokens[row]")
        tokens = source.tokens[row:row + 1][0]
    return pattern, _strings(tokens, tokenizer if tokenizer is not None else _store_tokenizer(source))


def layer_attention(source: Any, layer: int, tokens: Any = None, row: int = 0, tokenizer: Any = None,
                    view: str = "heads", step: Optional[int] = None, title: Optional[str] = None,
                    **kwargs: Any) -> CircuitsVisWidget:
    """``attention_heads`` (``view="heads"``) or ``attention_patterns`` (``"patterns"``) for one layer of ``source``.

    ``source`` is a model, a cache or a store, as in ``layer_pattern``. The figure's heading says the
    layer, the row (when not the first) and, from a recording, the training step (``title`` replaces
    it). ``kwargs`` go to ``attention_heads`` (e.g. ``focus=3``) or ``attention_patterns``.
    """
    if view not in ("heads", "patterns"):
        raise ValueError(f"view must be 'heads' or 'patterns', got {view!r}")
    pattern, toks = layer_pattern(source, layer, tokens=tokens, row=row, tokenizer=tokenizer, step=step)
    if title is None:
        title = _figure_title(source, layer, row, step)
    if view == "heads":
        return attention_heads(pattern, toks, layer=layer, title=title, **kwargs)
    return attention_patterns(pattern, toks, title=title, **kwargs)


def _figure_title(source: Any, layer: int, row: int, step: Optional[int]) -> str:
    """``"layer 1 attention, row 2, at training step 350"`` (the row when not the first; the step of a
    recording, or of a step view ``store.at_step(s)``)."""
    step = step if step is not None else getattr(source, "step", None)
    return (f"layer {layer} attention" + (f", row {row}" if row else "")
            + (f", at training step {step}" if step is not None else ""))
