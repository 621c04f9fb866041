"""Logit lens, residual-stream decomposition and direct logit attribution on an ActivationCache.

The functions mirror TransformerLens's ``ActivationCache`` methods of the same names
(``accumulated_resid``, ``decompose_resid``, ``stack_head_results``,
``apply_ln_to_stack``, ``logit_attrs``) and give the same numbers on the same cache,
with the cache (from ``model.run_with_cache`` or ``ActivationStore.to_cache``) as the
first argument. Phi's block is parallel (one LayerNorm feeds attention and MLP),
so there is no ``resid_mid``: ``resid_post = resid_pre + attn_out + mlp_out``.

HF semantics: the final LayerNorm's weight is NOT folded into ``W_U``. TL's
``apply_ln_to_stack``/``logit_attrs`` only centre and divide by the cached scale;
``direct_logit_attribution`` also multiplies by the LayerNorm weight, so its terms
plus the LayerNorm bias and ``b_U`` add up to the model's logit exactly.
"""
from __future__ import annotations

from typing import Optional, Union

import torch

Labelled = Union[torch.Tensor, tuple[torch.Tensor, list[str]]]


def _model(cache, model=None):
    model = model if model is not None else getattr(cache, "model", None)
    if model is None:
        raise ValueError("this analysis needs the model (for its config and weights): pass model=..., "
                         "or use a cache from model.run_with_cache")
    return model


def _pos(t: torch.Tensor, pos_slice, dim: int = -2) -> torch.Tensor:
    """Index the position dim as TransformerLens's ``Slice`` does: None keeps all, an int selects
    one (dropping the dim), a tuple ``(start, stop[, step])`` or a ``slice`` is a range, a list or
    tensor picks positions."""
    if pos_slice is None:
        return t
    if hasattr(pos_slice, "apply") and hasattr(pos_slice, "mode"):   # a TransformerLens Slice
        return pos_slice.apply(t, dim=dim)
    idx: list = [slice(None)] * t.ndim
    if isinstance(pos_slice, tuple):
        idx[dim] = slice(*pos_slice)
    elif isinstance(pos_slice, list):
        idx[dim] = torch.as_tensor(pos_slice)
    else:
        idx[dim] = pos_slice
    return t[tuple(idx)]


def _layer(model, layer: Optional[int]) -> int:
    n = model.cfg.n_layers
    return n if layer is None or layer == -1 else layer


def accumulated_resid(cache, layer: Optional[int] = None, apply_ln: bool = False, pos_slice=None,
                      return_labels: bool = False, model=None) -> Labelled:
    """The residual stream entering each layer up to ``layer`` (all, plus the final one, by default).

    Returns ``[layers_covered, batch, pos, d_model]`` with labels ``"0_pre", ..., "final_post"``.
    ``apply_ln`` with the final layer applies the full final LayerNorm to each entry (logit lens);
    otherwise it centres and divides by the cached scale of that layer's LayerNorm (as TL).
    """
    model = _model(cache, model)
    layer = _layer(model, layer)
    parts, labels = [], []
    for i in range(layer + 1):
        if i == model.cfg.n_layers:
            parts.append(cache[f"blocks.{i - 1}.hook_resid_post"])
            labels.append("final_post")
        else:
            parts.append(cache[f"blocks.{i}.hook_resid_pre"])
            labels.append(f"{i}_pre")
    stack = torch.stack([_pos(p, pos_slice) for p in parts])
    if apply_ln:
        stack = apply_ln_to_stack(cache, stack, layer, pos_slice=pos_slice, model=model,
                                  recompute_ln=layer == model.cfg.n_layers)
    return (stack, labels) if return_labels else stack


def decompose_resid(cache, layer: Optional[int] = None, mode: str = "all", apply_ln: bool = False,
                    pos_slice=None, incl_embeds: bool = True, return_labels: bool = False, model=None) -> Labelled:
    """The residual stream entering ``layer`` split into its sources:
    ``embed, 0_attn_out, 0_mlp_out, 1_attn_out, ...`` -> ``[n_components, batch, pos, d_model]``.

    They sum to ``resid_pre`` of ``layer`` (``resid_post`` of the last layer by default).
    ``mode`` is ``"all"``, ``"attn"`` or ``"mlp"``.
    """
    if mode not in ("all", "attn", "mlp"):
        raise ValueError(f"mode must be 'all', 'attn' or 'mlp', got {mode!r}")
    model = _model(cache, model)
    layer = _layer(model, layer)
    parts, labels = [], []
    if incl_embeds:
        parts.append(cache["hook_embed"])
        labels.append("embed")
    for i in range(layer):
        if mode != "mlp":
            parts.append(cache[f"blocks.{i}.hook_attn_out"])
            labels.append(f"{i}_attn_out")
        if mode != "attn":
            parts.append(cache[f"blocks.{i}.hook_mlp_out"])
            labels.append(f"{i}_mlp_out")
    stack = torch.stack([_pos(p, pos_slice) for p in parts])
    if apply_ln:
        stack = apply_ln_to_stack(cache, stack, layer, pos_slice=pos_slice, model=model)
    return (stack, labels) if return_labels else stack


def head_results(cache, layer: int, model=None) -> torch.Tensor:
    """Each head's write to the residual stream, ``[batch, pos, head, d_model]`` (no output bias).

    Read from ``hook_result`` if cached, else computed from ``hook_z`` and ``W_O``.
    """
    name = f"blocks.{layer}.attn.hook_result"
    if name in cache:
        return cache[name]
    model = _model(cache, model)
    z = cache[f"blocks.{layer}.attn.hook_z"]                           # [batch, pos, head, d_head]
    w_o = model.blocks[layer].attn.W_O.to(z.device, z.dtype)           # [head, d_head, d_model]
    return torch.einsum("...hd,hdm->...hm", z, w_o)


def stack_head_results(cache, layer: int = -1, return_labels: bool = False, incl_remainder: bool = False,
                       pos_slice=None, apply_ln: bool = False, model=None) -> Labelled:
    """Every head's output in layers before ``layer``: ``[layer * n_heads (+1), batch, pos, d_model]``,
    labels ``"L0H0", ...`` (and ``"remainder"``: ``resid_post`` minus the heads)."""
    model = _model(cache, model)
    layer = _layer(model, layer)
    parts, labels = [], []
    for i in range(layer):
        r = _pos(head_results(cache, i, model), pos_slice, dim=-3)   # [batch, pos, head, d_model]
        parts.extend(r.unbind(-2))
        labels.extend(f"L{i}H{h}" for h in range(model.cfg.n_heads))
    if incl_remainder:
        total = _pos(cache[f"blocks.{layer - 1}.hook_resid_post"], pos_slice)
        parts.append(total - (torch.stack(parts).sum(0) if parts else 0))
        labels.append("remainder")
    if parts:
        stack = torch.stack(parts)
    else:
        ref = _pos(cache["hook_embed"], pos_slice)
        stack = ref.new_zeros((0, *ref.shape))
    if apply_ln:
        stack = apply_ln_to_stack(cache, stack, layer, pos_slice=pos_slice, model=model)
    return (stack, labels) if return_labels else stack


def apply_ln_to_stack(cache, residual_stack: torch.Tensor, layer: Optional[int] = None, pos_slice=None,
                      recompute_ln: bool = False, ln_weight: bool = False, model=None) -> torch.Tensor:
    """Treat each entry of ``[n, batch, pos, d_model]`` as an input to ``layer``'s LayerNorm.

    Default (TL): centre each entry and divide by that LayerNorm's cached scale (the scale is
    a property of the whole residual stream, so entries stay additive). ``layer`` ``n_layers``
    or None means the final LayerNorm. ``recompute_ln`` (final layer only) applies the full
    final LayerNorm to each entry on its own, as the logit lens does. ``ln_weight`` also
    multiplies by the LayerNorm weight (what an unfolded model does before ``W_U``).
    """
    model = _model(cache, model)
    layer = _layer(model, layer)
    ln = model.ln_final if layer == model.cfg.n_layers else model.blocks[layer].ln1
    if recompute_ln and layer == model.cfg.n_layers:
        return ln(residual_stack)
    key = "ln_final.hook_scale" if layer == model.cfg.n_layers else f"blocks.{layer}.ln1.hook_scale"
    if key not in cache:
        raise KeyError(f"the cache has no {key!r}: cache LayerNorm scales, e.g. run_with_cache with no "
                       "names_filter or one that includes 'hook_scale'")
    scale = _pos(cache[key], pos_slice)                              # [batch, pos, 1]
    out = (residual_stack - residual_stack.mean(-1, keepdim=True)) / scale
    return out * ln.weight if ln_weight else out


def tokens_to_residual_directions(model, tokens: torch.Tensor | int) -> torch.Tensor:
    """Unembedding columns of ``tokens``: ``[*tokens.shape, d_model]``."""
    return model.tokens_to_residual_directions(tokens)


def logit_attrs(cache, residual_stack: torch.Tensor, tokens, incorrect_tokens=None, pos_slice=None,
                model=None) -> torch.Tensor:
    """Each entry's contribution to ``tokens``' logits (minus ``incorrect_tokens``'), TL's semantics:
    ``apply_ln_to_stack`` (final LayerNorm scale only) then a dot product with ``W_U[:, token]``.

    ``tokens``: an int, ``[batch]`` (one per prompt, broadcast over positions) or ``[batch, pos]``.
    Returns ``[n_components, batch, pos]``.
    """
    model = _model(cache, model)
    direction = tokens_to_residual_directions(model, tokens)
    if incorrect_tokens is not None:
        if torch.as_tensor(tokens).shape != torch.as_tensor(incorrect_tokens).shape:
            raise ValueError("tokens and incorrect_tokens must have the same shape")
        direction = direction - tokens_to_residual_directions(model, incorrect_tokens)
    scaled = apply_ln_to_stack(cache, residual_stack, None, pos_slice=pos_slice, model=model)
    if direction.ndim == 2 and scaled.ndim == 4 and direction.shape[0] == scaled.shape[1]:
        direction = direction[:, None]                               # [batch, 1, d_model]
    return (scaled * direction.to(scaled.dtype)).sum(-1)


def logit_lens(cache, pos_slice=None, model=None, return_labels: bool = False) -> Labelled:
    """Logits read off the residual stream entering each layer and after the last:
    ``[n_layers + 1, batch, pos, d_vocab]`` (full final LayerNorm, ``W_U`` and ``b_U``).

    The last entry equals the model's logits. Use ``pos_slice=-1`` to keep only the last position.
    """
    model = _model(cache, model)
    stack, labels = accumulated_resid(cache, None, apply_ln=True, pos_slice=pos_slice, return_labels=True,
                                      model=model)
    logits = model.unembed(stack.to(model.dtype))
    return (logits, labels) if return_labels else logits


def direct_logit_attribution(cache, tokens, incorrect_tokens=None, pos: int = -1,
                             model=None) -> tuple[torch.Tensor, list[str]]:
    """How much each head, MLP and the embedding writes directly onto a logit direction at ``pos``.

    Components: ``embed``, then per layer ``L{i}H{h}`` for each head, ``L{i}_attn_bias`` (the
    output bias) and ``L{i}_mlp``, then ``ln_bias+b_U`` (constant). Each is centred, divided by
    the final LayerNorm's cached scale, multiplied by its weight and dotted with
    ``W_U[:, tokens] (- W_U[:, incorrect_tokens])``; the terms sum to the model's logit
    (difference) at ``pos`` exactly.

    Returns:
        ``([n_components, batch], labels)``; mean over the batch for a per-component number.
    """
    model = _model(cache, model)
    n = model.cfg.n_layers
    parts, labels = [cache["hook_embed"][:, pos]], ["embed"]
    for i in range(n):
        r = head_results(cache, i, model)[:, pos]                    # [batch, head, d_model]
        parts.extend(r.unbind(-2))
        labels.extend(f"L{i}H{h}" for h in range(model.cfg.n_heads))
        parts.append(model.blocks[i].attn.b_O.expand_as(parts[0]).to(parts[0].dtype))
        labels.append(f"L{i}_attn_bias")
        parts.append(cache[f"blocks.{i}.hook_mlp_out"][:, pos])
        labels.append(f"L{i}_mlp")
    stack = torch.stack(parts)                                       # [n_components, batch, d_model]
    scale = cache["ln_final.hook_scale"][:, pos]                     # [batch, 1]
    normed = (stack - stack.mean(-1, keepdim=True)) / scale * model.ln_final.weight
    t = torch.as_tensor(tokens, device=stack.device)
    direction = tokens_to_residual_directions(model, t)
    const = model.ln_final.bias @ direction.movedim(-1, 0) + model.b_U[t]
    if incorrect_tokens is not None:
        u = torch.as_tensor(incorrect_tokens, device=stack.device)
        direction = direction - tokens_to_residual_directions(model, u)
        const = const - model.ln_final.bias @ tokens_to_residual_directions(model, u).movedim(-1, 0) - model.b_U[u]
    attrs = (normed * direction.to(normed.dtype)).sum(-1)            # [n_components, batch]
    const = torch.as_tensor(const).expand(attrs.shape[1:])
    return torch.cat([attrs, const[None].to(attrs.dtype)]), labels + ["ln_bias+b_U"]
