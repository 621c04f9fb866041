"""Attribution patching: a first-order estimate of every activation patch from one backward pass.

For an activation ``a`` the effect of patching its clean value into the corrupted
run is estimated as ``(a_clean - a_corrupted) . d metric / d a`` at the corrupted
run (Nanda 2023; Syed et al. 2023), summed over the slice a patch would replace.
The clean activations come from ``clean_cache``; the corrupted run is one forward
with gradients and one backward, whatever the number of layers, heads or positions.

Values are *changes* of the metric: compare with ``get_act_patch_X(...) - metric(corrupted logits)``.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from workbench.hooks import get_act_name

from .metrics import Metric, metric_value
from .patch_runs import ACT_DIMS, _AXIS, check_inputs


def attribution_scores(model, corrupted_tokens: torch.Tensor, clean_cache, patching_metric: Metric,
                       activation_names: Sequence[str] = ("z",)) -> dict[str, torch.Tensor]:
    """Per-element attributions ``(clean - corrupted) * grad``, summed over the batch.

    Returns ``{activation_name: [n_layers, *activation shape without batch]}`` (e.g.
    ``"z"`` -> ``[n_layers, pos, head, d_head]``), from one corrupted forward and one backward.
    """
    clean = {a: check_inputs(model, corrupted_tokens, clean_cache, a) for a in activation_names}
    acts: dict[str, torch.Tensor] = {}

    def keep(t: torch.Tensor, hook) -> None:
        acts[hook.name] = t

    def need_grad(t: torch.Tensor, hook) -> torch.Tensor:
        # Gradients must reach the activations even if the weights are frozen.
        return t if t.requires_grad else t.detach().requires_grad_(True)

    names = [get_act_name(a, layer) for a in activation_names for layer in range(model.cfg.n_layers)]
    with torch.enable_grad(), model.hooks([("hook_embed", need_grad)] + [(n, keep) for n in names]):
        logits = model(corrupted_tokens.to(model.device))
        value = metric_value(patching_metric, logits)
        if not value.requires_grad:
            raise ValueError("patching_metric's output does not depend on the logits (no gradient); "
                             "attribution patching needs a differentiable metric")
        grads = torch.autograd.grad(value, [acts[n] for n in names], allow_unused=True)
    out = {}
    for a in activation_names:
        per_layer = []
        for layer in range(model.cfg.n_layers):
            n = get_act_name(a, layer)
            g = grads[names.index(n)]
            diff = clean[a][layer].to(acts[n].dtype) - acts[n].detach()
            per_layer.append(torch.zeros_like(diff[0]) if g is None else (diff * g).sum(0))
        out[a] = torch.stack(per_layer).float()
    return out


def reduce_to_axes(scores: torch.Tensor, activation_name: str, axes: Sequence[str]) -> torch.Tensor:
    """Sum ``[n_layers, *shape]`` attributions over every dim not in ``axes`` (TL axis names, after layer)."""
    dims = ACT_DIMS[activation_name]
    keep = [dims.index(_AXIS[a]) for a in axes]
    drop = [d + 1 for d in range(len(dims)) if d not in keep]
    out = scores.sum(dim=drop) if drop else scores
    kept_order = sorted(keep)  # dims now in activation order; put them in the axes' order
    return out.permute(0, *[1 + kept_order.index(d) for d in keep])


def _attr(activation_name: str, axes: tuple[str, ...], shape: str) -> Callable:
    def fn(model, corrupted_tokens: torch.Tensor, clean_cache, patching_metric: Metric) -> torch.Tensor:
        s = attribution_scores(model, corrupted_tokens, clean_cache, patching_metric, (activation_name,))
        return reduce_to_axes(s[activation_name], activation_name, axes)
    fn.__doc__ = (f"Attribution-patching estimate of ``get_act_patch`` for ``{activation_name}``: ``{shape}`` "
                  "changes of ``patching_metric`` (one forward + one backward).")
    return fn


attr_patch_resid_pre = _attr("resid_pre", ("pos",), "[n_layers, pos]")
attr_patch_attn_out = _attr("attn_out", ("pos",), "[n_layers, pos]")
attr_patch_mlp_out = _attr("mlp_out", ("pos",), "[n_layers, pos]")
attr_patch_attn_head_out_all_pos = _attr("z", ("head",), "[n_layers, n_heads]")
attr_patch_attn_head_out_by_pos = _attr("z", ("pos", "head"), "[n_layers, pos, n_heads]")
attr_patch_attn_head_q_all_pos = _attr("q", ("head",), "[n_layers, n_heads]")
attr_patch_attn_head_k_all_pos = _attr("k", ("head",), "[n_layers, n_heads]")
attr_patch_attn_head_v_all_pos = _attr("v", ("head",), "[n_layers, n_heads]")
attr_patch_attn_head_q_by_pos = _attr("q", ("pos", "head"), "[n_layers, pos, n_heads]")
attr_patch_attn_head_k_by_pos = _attr("k", ("pos", "head"), "[n_layers, pos, n_heads]")
attr_patch_attn_head_v_by_pos = _attr("v", ("pos", "head"), "[n_layers, pos, n_heads]")
attr_patch_attn_head_pattern_all_pos = _attr("pattern", ("head_index",), "[n_layers, n_heads]")
attr_patch_attn_head_pattern_by_pos = _attr("pattern", ("head_index", "dest_pos"), "[n_layers, n_heads, dest_pos]")

for _name, _fn in list(globals().items()):
    if _name.startswith("attr_patch_"):
        _fn.__name__ = _fn.__qualname__ = _name


def attribution_patch_all(model, corrupted_tokens: torch.Tensor, clean_cache, patching_metric: Metric,
                          by_pos: bool = True) -> dict[str, torch.Tensor]:
    """Every standard target from ONE forward and backward: resid_pre/attn_out/mlp_out by position and
    head outputs (z), by position (``[n_layers, pos, n_heads]``) or over all positions."""
    s = attribution_scores(model, corrupted_tokens, clean_cache, patching_metric,
                           ("resid_pre", "attn_out", "mlp_out", "z"))
    out = {a: reduce_to_axes(s[a], a, ("pos",)) for a in ("resid_pre", "attn_out", "mlp_out")}
    out["z"] = reduce_to_axes(s["z"], "z", ("pos", "head") if by_pos else ("head",))
    return out
