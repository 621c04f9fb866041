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

from hooks import get_act_name

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
    cache: dict[int, torch.Tensor] = {}
    hooks = [(f"blocks.{i}.hook_resid_pre", lambda t, hook, i=i: cache.__setitem__(i, t))
             for i in range(model.cfg.n_layers)]
    with model.hooks(hooks):
        model(tokens.to(model.device), stop_at_layer=model.cfg.n_layers)
    return [cache[i] for i in range(model.cfg.n_layers)]


def auto_chunk(model, batch: int, pos: int, max_batch_tokens: Optional[int]) -> int:
    """How many variants of ``[batch, pos]`` go in one forward: bounded by tokens and by logits memory."""
    if max_batch_tokens is None:  # ~1 GiB of fp32 logits, and no more than 8192 tokens
        max_batch_tokens = min(8192, 2 ** 28 // model.cfg.d_vocab)
    return max(1, max_batch_tokens // max(1, batch * pos))


@torch.no_grad()
def run_variants(model, tokens: torch.Tensor, layer: int, resid: torch.Tensor, n_variants: int,
                 make_hooks: Callable[[int, int], list], metric: Metric, chunk: int) -> torch.Tensor:
    """Run ``n_variants`` patched copies of the batch from ``layer`` on; returns ``[n_variants]`` metrics.

    Args:
        resid: ``[batch, pos, d_model]`` entering ``layer`` (shared by all variants).
        make_hooks: ``(start, stop) -> [(hook name, fn)]`` patching variants ``start:stop``
            (the activation seen by ``fn`` is ``[(stop - start) * batch, ...]``, variant-major).
    """
    b = resid.shape[0]
    out = torch.empty(n_variants)
    for start in range(0, n_variants, chunk):
        stop = min(start + chunk, n_variants)
        c = stop - start
        x = resid.repeat(c, 1, 1)                                       # [c * batch, pos, d_model]
        with model.hooks(make_hooks(start, stop)):
            logits = model(x, start_at_layer=layer, tokens=tokens.repeat(c, 1))
        for i in range(c):
            out[start + i] = metric_value(metric, logits[i * b:(i + 1) * b]).float().cpu()
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
    resid = resid_pre_all_layers(model, tokens)
    shape = tuple(clean[0].shape[1:])
    masks = variant_masks(shape, dims, index_axis_names[1:]).to(model.device)
    sizes = [shape[dims.index(_AXIS[a])] for a in index_axis_names[1:]]
    chunk = auto_chunk(model, b, p, max_batch_tokens)
    results = []
    for layer in range(model.cfg.n_layers):
        name = get_act_name(activation_name, layer)

        def make_hooks(start: int, stop: int, layer: int = layer, name: str = name) -> list:
            return [(name, masked_patch_hook(clean[layer], masks[start:stop]))]

        results.append(run_variants(model, tokens, layer, resid[layer], masks.shape[0], make_hooks,
                                    patching_metric, chunk).view(sizes))
    return torch.stack(results)


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
