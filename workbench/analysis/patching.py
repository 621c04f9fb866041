"""Activation patching sweeps with TransformerLens's names, signatures and output shapes, batched.

``get_act_patch_X(model, corrupted_tokens, clean_cache, patching_metric)`` runs the
corrupted input once per patch, with one activation (a layer, position, head ...)
replaced by its value from the clean run, and returns ``patching_metric`` of each
patched run in TL's layout (e.g. ``[n_layers, pos, n_heads]``).

Where the speed comes from (docs/analysis.md): a patch at layer ``L`` leaves layers
below ``L`` as in the corrupted run, so the corrupted run is made once, its
``resid_pre`` kept, and every patched run starts at layer ``L``
(``model(resid, start_at_layer=L)``). Patched variants are stacked along the batch
dimension, ``[variant * batch, ...]``, and one hook replaces a different slice in
each variant via a boolean mask, so a sweep is a few large forwards rather than
hundreds of small ones.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch

from workbench.hooks import get_act_name
from workbench.model.kv_cache import KVCache

from .metrics import Metric, metric_value

# The non-batch dims of each patchable activation, in hook order.
ACT_DIMS: dict[str, tuple[str, ...]] = {
    "resid_pre": ("pos", "d_model"), "resid_post": ("pos", "d_model"),
    "attn_out": ("pos", "d_model"), "mlp_out": ("pos", "d_model"),
    "q": ("pos", "head", "d_head"), "k": ("pos", "head", "d_head"), "v": ("pos", "head", "d_head"),
    "z": ("pos", "head", "d_head"), "result": ("pos", "head", "d_model"),
    "pattern": ("head", "dest_pos", "src_pos"), "attn_scores": ("head", "dest_pos", "src_pos"),
}
# TL's axis names -> our dim names
_AXIS = {"pos": "pos", "head": "head", "head_index": "head", "dest_pos": "dest_pos", "src_pos": "src_pos"}


def check_inputs(model, corrupted_tokens: torch.Tensor, clean_cache, activation_name: str,
                 layers: Optional[Sequence[int]] = None) -> dict[int, torch.Tensor]:
    """Validate a patching call; returns ``{layer: clean activation}`` on the model's device.

    Raises a clear error if the tokens are not ``[batch, pos]`` ids, if the clean cache
    lacks the activation, or if clean and corrupted inputs have different shapes.
    """
    if activation_name not in ACT_DIMS:
        raise ValueError(f"cannot patch {activation_name!r}; patchable activations: {sorted(ACT_DIMS)}")
    if not isinstance(corrupted_tokens, torch.Tensor) or corrupted_tokens.ndim != 2:
        raise ValueError("corrupted_tokens must be a LongTensor [batch, pos] of token ids, got "
                         f"{getattr(corrupted_tokens, 'shape', type(corrupted_tokens))}")
    b, p = corrupted_tokens.shape
    layers = range(model.cfg.n_layers) if layers is None else layers
    out = {}
    for layer in layers:
        name = get_act_name(activation_name, layer)
        if name not in clean_cache:
            raise KeyError(f"the clean cache has no {name!r}: cache it with "
                           f"model.run_with_cache(clean_tokens, names_filter=lambda n: n.endswith("
                           f"'hook_{activation_name}')) or with no names_filter")
        act = clean_cache[name]
        want = (b, model.cfg.n_heads, p, p) if ACT_DIMS[activation_name][0] == "head" else (b, p)
        if tuple(act.shape[:len(want)]) != want:
            raise ValueError(f"clean and corrupted inputs differ in shape: clean {name} is "
                             f"{tuple(act.shape)} but corrupted_tokens is {tuple(corrupted_tokens.shape)}; "
                             "patching needs the same batch size and sequence length (pad or trim the prompts)")
        out[layer] = act.to(model.device)
    return out


def variant_masks(act_shape: Sequence[int], dims: Sequence[str], axes: Sequence[str]) -> torch.Tensor:
    """One boolean mask per patched variant, ``[n_variants, *mask_shape]``.

    ``act_shape``/``dims`` describe the activation without its batch dim; ``axes`` are
    the swept axes in output order (TL's names). Variant ``v`` is the row-major index
    over ``axes``; its mask is True exactly on the slice that variant patches.
    """
    dim_of = [dims.index(_AXIS[a]) for a in axes]
    sizes = [act_shape[d] for d in dim_of]
    n = math.prod(sizes)
    mask = torch.ones((n,) + (1,) * len(dims), dtype=torch.bool)
    ids = torch.arange(n)
    for d, size, stride in zip(dim_of, sizes, _strides(sizes)):
        which = (ids // stride) % size                                 # [n_variants]
        onehot = which[:, None] == torch.arange(size)[None, :]         # [n_variants, size]
        shape = [n] + [1] * len(dims)
        shape[d + 1] = size
        mask = mask & onehot.view(shape)
    return mask


def _strides(sizes: Sequence[int]) -> list[int]:
    out, s = [], 1
    for size in reversed(sizes):
        out.append(s)
        s *= size
    return out[::-1]


@torch.no_grad()
def resid_pre_all_layers(model, tokens: torch.Tensor) -> list[torch.Tensor]:
    """``resid_pre`` entering every block, one ``[batch, pos, d_model]`` per layer (one forward, no logits)."""
    return corrupted_run(model, tokens, keys=False, logits=False)["resid_pre"]


@torch.no_grad()
def corrupted_run(model, tokens: torch.Tensor, keys: bool = True, logits: bool = True) -> dict:
    """One forward keeping what patched runs restart from: ``resid_pre`` of every layer, and (``keys``)
    every layer's rotated keys and values ``[batch, head, pos, d_head]`` (a KV cache of the whole
    run), and the ``logits``."""
    n = model.cfg.n_layers
    resid, k, v = {}, {}, {}
    hooks = [(f"blocks.{i}.hook_resid_pre", lambda t, hook, i=i: resid.__setitem__(i, t)) for i in range(n)]
    if keys:
        hooks += [(f"blocks.{i}.attn.hook_rot_k", lambda t, hook, i=i: k.__setitem__(i, t.transpose(1, 2)))
                  for i in range(n)]
        hooks += [(f"blocks.{i}.attn.hook_v", lambda t, hook, i=i: v.__setitem__(i, t.transpose(1, 2)))
                  for i in range(n)]
    with model.hooks(hooks):
        out = model(tokens.to(model.device), stop_at_layer=None if logits else n)
    return {"resid_pre": [resid[i] for i in range(n)], "k": k, "v": v, "logits": out if logits else None}


def auto_chunk(model, batch: int, pos: int, max_batch_tokens: Optional[int]) -> int:
    """How many variants of ``[batch, pos]`` go in one forward: bounded by tokens and by logits memory."""
    return max(1, batch_tokens(model, max_batch_tokens) // max(1, batch * pos))


def batch_tokens(model, max_batch_tokens: Optional[int]) -> int:
    """Tokens in one patched forward: ``max_batch_tokens``, or ~1 GiB of fp32 logits and at most 8192."""
    return max_batch_tokens or min(8192, 2 ** 28 // model.cfg.d_vocab)


def first_position(masks: torch.Tensor, dims: Sequence[str]) -> torch.Tensor:
    """``[n_variants]``: the first query position each variant's patch touches (0 if all positions).

    Positions before it are the same as in the corrupted run (causal attention), so its patched
    run need only compute the positions from there on.
    """
    name = "pos" if "pos" in dims else "dest_pos"
    d = dims.index(name) + 1
    if masks.shape[d] == 1:
        return torch.zeros(masks.shape[0], dtype=torch.long)
    touched = masks.movedim(d, 1).flatten(2).any(-1)                       # [n_variants, pos]
    return torch.where(touched.any(1), touched.float().argmax(1), torch.zeros_like(touched[:, 0], dtype=torch.long))


def plan_chunks(starts: torch.Tensor, batch: int, pos: int, max_tokens: int,
                min_tokens: Optional[int] = None) -> list[tuple[int, list[int]]]:
    """Group variants (sorted by first position) into forwards of at most ``max_tokens`` tokens.

    Each chunk computes positions ``start:`` for all its variants, so variants with a later first
    position waste work in a chunk that starts earlier: a new chunk begins at each new first
    position once the current one holds ``min_tokens`` (default ``max_tokens // 8``), enough
    tokens for efficient matmuls. Returns ``[(start position, [variant ids])]``.
    """
    min_tokens = max_tokens // 8 if min_tokens is None else min_tokens
    order = torch.argsort(starts, stable=True).tolist()
    chunks: list[tuple[int, list[int]]] = []
    for v in order:
        s = int(starts[v])
        if chunks:
            c_start, ids = chunks[-1]
            size = len(ids) * batch * (pos - c_start)
            fits = (len(ids) + 1) * batch * (pos - c_start) <= max_tokens
            if fits and (s == c_start or size < min_tokens):
                ids.append(v)
                continue
        chunks.append((s, [v]))
    return chunks


@torch.no_grad()
def run_chunk(model, corr: dict, layer: int, start: int, c: int, hooks: list, metric: Metric) -> list[torch.Tensor]:
    """Run ``c`` stacked patched copies of the corrupted batch from ``layer`` and position ``start``.

    Positions before ``start`` come from the corrupted run (its keys/values as a KV cache, its
    logits); returns the metric of each copy, computed on full ``[batch, pos, d_vocab]`` logits.
    """
    x = corr["resid_pre"][layer][:, start:]
    b = x.shape[0]
    kv = None
    if start > 0:
        run = range(layer, model.cfg.n_layers)    # the layers below are not run: no entries for them
        kv = KVCache.from_prefix(model.cfg.n_layers,
                                 {i: corr["k"][i][:, :, :start].repeat(c, 1, 1, 1) for i in run},
                                 {i: corr["v"][i][:, :, :start].repeat(c, 1, 1, 1) for i in run})
    with model.hooks(hooks):
        logits = model(x.repeat(c, 1, 1), start_at_layer=layer, kv_cache=kv)   # [c * batch, pos - start, vocab]
    out = []
    for i in range(c):
        part = logits[i * b:(i + 1) * b]
        if start > 0:
            part = torch.cat([corr["logits"][:, :start], part], dim=1)
        out.append(metric_value(metric, part).float().cpu())
    return out


def masked_patch_hook(clean: torch.Tensor, masks: torch.Tensor) -> Callable:
    """A hook that writes ``clean`` where each variant's mask is True.

    ``clean`` ``[batch, *shape]``; ``masks`` ``[c, *mask_shape]`` for the ``c`` stacked variants.
    """
    def hook(act: torch.Tensor, hook) -> torch.Tensor:
        c = masks.shape[0]
        v = act.view(c, -1, *act.shape[1:])                             # [c, batch, *shape]
        return torch.where(masks[:, None].to(act.device), clean[None].to(act.dtype), v).view(act.shape)
    return hook


def _from_position(t: torch.Tensor, dims: Sequence[str], start: int) -> torch.Tensor:
    """Slice the query-position dim of an activation (or mask) to ``start:``."""
    if start == 0:
        return t
    d = dims.index("pos" if "pos" in dims else "dest_pos") + 1      # +1: batch (or variant) dim
    return t.narrow(d, start, t.shape[d] - start) if t.shape[d] > 1 else t


def generic_activation_patch(model, corrupted_tokens: torch.Tensor, clean_cache, patching_metric: Metric,
                             activation_name: str, index_axis_names: Sequence[str],
                             max_batch_tokens: Optional[int] = None) -> torch.Tensor:
    """Patch each slice of ``activation_name`` named by ``index_axis_names`` (first one ``"layer"``).

    Returns ``[n_layers, *sizes of the other axes]`` metric values, as TL's function of the same name.
    ``max_batch_tokens`` bounds the tokens in one forward (default: ~1 GiB of logits).
    """
    if not index_axis_names or index_axis_names[0] != "layer":
        raise ValueError(f"index_axis_names must start with 'layer', got {index_axis_names}")
    dims = ACT_DIMS[activation_name] if activation_name in ACT_DIMS else ()
    clean = check_inputs(model, corrupted_tokens, clean_cache, activation_name)
    tokens = corrupted_tokens.to(model.device)
    b, p = tokens.shape
    shape = tuple(clean[0].shape[1:])
    masks = variant_masks(shape, dims, index_axis_names[1:]).to(model.device)
    sizes = [shape[dims.index(_AXIS[a])] for a in index_axis_names[1:]]
    starts = first_position(masks.cpu(), dims)
    corr = corrupted_run(model, tokens, keys=bool((starts > 0).any()))
    chunks = plan_chunks(starts, b, p, batch_tokens(model, max_batch_tokens))
    results = torch.empty(model.cfg.n_layers, masks.shape[0])
    for layer in range(model.cfg.n_layers):
        name = get_act_name(activation_name, layer)
        for start, ids in chunks:
            m = _from_position(masks[ids], dims, start)
            hook = masked_patch_hook(_from_position(clean[layer], dims, start), m)
            values = run_chunk(model, corr, layer, start, len(ids), [(name, hook)], patching_metric)
            results[layer, ids] = torch.stack(values)
    return results.view(model.cfg.n_layers, *sizes)


def _sweep(activation_name: str, axes: tuple[str, ...], what: str, shape: str) -> Callable:
    def fn(model, corrupted_tokens: torch.Tensor, clean_cache, patching_metric: Metric,
           max_batch_tokens: Optional[int] = None) -> torch.Tensor:
        return generic_activation_patch(model, corrupted_tokens, clean_cache, patching_metric,
                                        activation_name, axes, max_batch_tokens)
    fn.__doc__ = (f"Activation patching of {what}: returns ``{shape}`` values of ``patching_metric``.\n\n"
                  "Args: model, corrupted_tokens ``[batch, pos]``, clean_cache (from ``run_with_cache`` on the "
                  "clean tokens), patching_metric (logits -> scalar); ``max_batch_tokens`` bounds one forward.")
    return fn


get_act_patch_resid_pre = _sweep("resid_pre", ("layer", "pos"), "the residual stream entering each block, by position",
                                 "[n_layers, pos]")
get_act_patch_attn_out = _sweep("attn_out", ("layer", "pos"), "each attention layer's output, by position",
                                "[n_layers, pos]")
get_act_patch_mlp_out = _sweep("mlp_out", ("layer", "pos"), "each MLP's output, by position", "[n_layers, pos]")
get_act_patch_attn_head_out_all_pos = _sweep("z", ("layer", "head"), "each head's output (z), all positions",
                                             "[n_layers, n_heads]")
get_act_patch_attn_head_out_by_pos = _sweep("z", ("layer", "pos", "head"), "each head's output (z), by position",
                                            "[n_layers, pos, n_heads]")
get_act_patch_attn_head_q_all_pos = _sweep("q", ("layer", "head"), "each head's queries, all positions",
                                           "[n_layers, n_heads]")
get_act_patch_attn_head_k_all_pos = _sweep("k", ("layer", "head"), "each head's keys, all positions",
                                           "[n_layers, n_heads]")
get_act_patch_attn_head_v_all_pos = _sweep("v", ("layer", "head"), "each head's values, all positions",
                                           "[n_layers, n_heads]")
get_act_patch_attn_head_q_by_pos = _sweep("q", ("layer", "pos", "head"), "each head's queries, by position",
                                          "[n_layers, pos, n_heads]")
get_act_patch_attn_head_k_by_pos = _sweep("k", ("layer", "pos", "head"), "each head's keys, by position",
                                          "[n_layers, pos, n_heads]")
get_act_patch_attn_head_v_by_pos = _sweep("v", ("layer", "pos", "head"), "each head's values, by position",
                                          "[n_layers, pos, n_heads]")
get_act_patch_attn_head_pattern_all_pos = _sweep("pattern", ("layer", "head_index"),
                                                 "each head's attention pattern, all positions", "[n_layers, n_heads]")
get_act_patch_attn_head_pattern_by_pos = _sweep("pattern", ("layer", "head_index", "dest_pos"),
                                                "each head's attention pattern, by destination position",
                                                "[n_layers, n_heads, dest_pos]")
get_act_patch_attn_head_pattern_dest_src_pos = _sweep(
    "pattern", ("layer", "head_index", "dest_pos", "src_pos"),
    "each (destination, source) entry of each head's pattern", "[n_layers, n_heads, dest_pos, src_pos]")

for _name, _fn in list(globals().items()):
    if _name.startswith("get_act_patch_"):
        _fn.__name__ = _fn.__qualname__ = _name
