"""Hook-name lookup: exact names, globs, filters, TransformerLens shorthands, suggestions.

A user's typo should never silently hook nothing: every name or pattern that
matches no hook point raises ``UnknownHookError`` listing the closest names.
"""
from __future__ import annotations

import difflib
import fnmatch
import re
from typing import Callable, Iterable, Optional, Sequence, Union

NamesFilter = Optional[Union[str, Sequence[str], Callable[[str], bool]]]


class UnknownHookError(KeyError):
    """A hook name or pattern that matches no hook point of the model."""

    def __init__(self, name: str, valid: Iterable[str], in_cache: bool = False) -> None:
        self.name = name
        self.suggestions = closest_names(name, valid)
        hint = ", ".join(self.suggestions) if self.suggestions else "(none close)"
        if in_cache:
            msg = (f"the cache has no {name!r}; closest cached names: {hint}. Cache it by running "
                   "run_with_cache with no names_filter or with a filter that matches it.")
        else:
            msg = (f"no hook point named {name!r}; closest valid names: {hint}. "
                   "List them all with model.hook_dict.keys().")
        super().__init__(msg)

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return self.args[0]


def closest_names(name: str, valid: Iterable[str], n: int = 5) -> list[str]:
    """The ``n`` valid names most similar to ``name`` (difflib ratio), best first."""
    valid = list(valid)
    close = difflib.get_close_matches(name, valid, n=n, cutoff=0.5)
    if close:
        return close
    # A pattern like "blocks.*.hook_reid_post" compares poorly whole; try its last part.
    tail = name.rsplit(".", 1)[-1]
    return difflib.get_close_matches(tail, valid, n=n, cutoff=0.0)[:n] if tail else []


def is_glob(name: str) -> bool:
    return any(c in name for c in "*?[")


def match_names(names_filter: NamesFilter, valid: Sequence[str]) -> list[str]:
    """Resolve a names filter to the list of matching hook names, in model order.

    ``None`` means every hook; a string is an exact name, a TransformerLens
    shorthand (``"resid_pre3"``) or a glob (``"blocks.*.hook_resid_post"``);
    a sequence is a union of strings; a callable is a predicate on names.
    Strings that match nothing raise ``UnknownHookError``.
    """
    if names_filter is None:
        return list(valid)
    if callable(names_filter):
        return [n for n in valid if names_filter(n)]
    patterns = [names_filter] if isinstance(names_filter, str) else list(names_filter)
    valid_set = set(valid)
    chosen: set[str] = set()
    for pat in patterns:
        if not isinstance(pat, str):
            raise TypeError(f"hook names must be strings, got {type(pat).__name__}: {pat!r}")
        if pat in valid_set:
            chosen.add(pat)
            continue
        if is_glob(pat):
            hits = fnmatch.filter(valid, pat)
        else:
            full = get_act_name(pat)
            hits = [full] if full in valid_set else []
        if not hits:
            raise UnknownHookError(pat, valid)
        chosen.update(hits)
    return [n for n in valid if n in chosen]


_LAYER_TYPE = {"a": "attn", "attn": "attn", "attention": "attn", "m": "mlp", "mlp": "mlp",
               "b": "", "block": "", "blocks": "", "ln1": "ln1", "ln_final": "ln_final"}
_ACT_ALIAS = {"attn": "pattern", "attn_logits": "attn_scores", "key": "k", "query": "q",
              "value": "v", "mlp_pre": "pre", "mlp_mid": "mid", "mlp_post": "post"}
_IN_ATTN = {"q", "k", "v", "z", "rot_q", "rot_k", "result", "pattern", "attn_scores"}
_IN_MLP = {"pre", "post", "mid"}


def get_act_name(name: str, layer: Optional[int] = None, layer_type: Optional[str] = None) -> str:
    """TransformerLens's shorthand: ``get_act_name("pattern", 3) == "blocks.3.attn.hook_pattern"``.

    Also accepts ``"k6"``, ``"scale4ln1"``, ``"resid_pre0"`` and full names (returned as is).
    """
    if ("." in name or name.startswith("hook_")) and layer is None and layer_type is None:
        return name
    m = re.fullmatch(r"([a-z_]+?)(\d+)([a-z_0-9]*)", name)
    if m is not None and layer is None:
        name, layer_s, lt = m.groups()
        layer, layer_type = int(layer_s), (lt or layer_type)
    name = _ACT_ALIAS.get(name, name)
    if layer_type is not None:
        layer_type = _LAYER_TYPE.get(layer_type, layer_type)
    if layer is None:
        if name in ("scale", "normalized"):
            return f"ln_final.hook_{name}"
        return f"hook_{name}"
    if name in ("scale", "normalized"):
        return f"blocks.{layer}.{layer_type or 'ln1'}.hook_{name}"
    if name in _IN_ATTN:
        return f"blocks.{layer}.attn.hook_{name}"
    if name in _IN_MLP:
        return f"blocks.{layer}.mlp.hook_{name}"
    return f"blocks.{layer}.hook_{name}"
