"""Forward passes that record what the circuit analyses need: every writer's output, every layer's
``resid_pre``, and (with gradients) the metric's gradient at every reader's input.

Writers' outputs are stacked as ``[n_writers, batch, pos, d_model]`` in graph order (``input``,
then per layer the heads and the MLP): the embedding, each head's own term of the attention
output (``z_h @ W_O[h]``, without the output bias, which belongs to no head), and ``mlp_out``.

Readers' gradients are not taken from per-head copies of the residual (the split-input hooks):
with ``n_heads`` heads that would run ``3 * n_heads`` LayerNorms over copies of ``resid_pre`` in
every layer and keep them for the backward pass. One plain forward + backward gives the
gradient at each head's q, k and v (``[batch, pos, head, d_head]``) and at the MLP's ``hook_pre``;
``reader_gradients`` carries them back through that reader's projection and its LayerNorm
(exact, including the LayerNorm scale's dependence on its input), which is what the gradient at
that reader's own copy of ``resid_pre`` is. tests/test_circuits_eap.py checks it against
autograd through the split hooks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from workbench.errors import InputError

from ..metrics import Metric, as_scalar
from .graph import Layout


def check_tokens(clean_tokens: torch.Tensor, corrupted_tokens: torch.Tensor) -> None:
    """Clean and corrupted inputs must be token ids of one shape ``[batch, pos]``."""
    for name, t in (("clean", clean_tokens), ("corrupted", corrupted_tokens)):
        if not isinstance(t, torch.Tensor) or t.ndim != 2 or t.dtype not in (torch.long, torch.int32, torch.int64):
            raise InputError(f"{name} tokens must be a LongTensor [batch, pos] of token ids, got "
                             f"{getattr(t, 'shape', type(t).__name__)}")
    if clean_tokens.shape != corrupted_tokens.shape:
        raise InputError(f"clean and corrupted tokens differ in shape: {list(clean_tokens.shape)} vs "
                         f"{list(corrupted_tokens.shape)}; edges compare the two runs position by position, so "
                         "every clean prompt needs a corrupted one of the same token length")


def metric_scalar(metric: Metric, logits: torch.Tensor) -> torch.Tensor:
    """``metric(logits)`` as a 0-d tensor; a metric that is not a scalar is the user's to fix."""
    if not callable(metric):
        raise InputError(f"the metric must be a function of the logits [batch, pos, d_vocab] returning a "
                         f"scalar, got {type(metric).__name__}")
    try:
        return as_scalar(metric(logits), "the metric")
    except ValueError as e:
        raise InputError(str(e)) from e


@dataclass
class Capture:
    """One forward pass: ``writers`` ``[n_writers, batch, pos, d_model]``, ``resid_pre`` (one
    ``[batch, pos, d_model]`` per layer), ``resid_final`` (entering ``ln_final``), the ``metric``
    value, and with gradients ``grads``: ``{"q"|"k"|"v": [per layer [batch, pos, head, d_head]],
    "pre": [per layer [batch, pos, d_mlp]], "final": [batch, pos, d_model]}``."""

    writers: torch.Tensor
    resid_pre: list[torch.Tensor]
    resid_final: torch.Tensor
    metric: float
    grads: Optional[dict] = None


def head_outputs(model, layer: int, z: torch.Tensor) -> torch.Tensor:
    """Each head's term of the attention output: ``z`` ``[batch, pos, head, d_head]`` ->
    ``[head, batch, pos, d_model]`` (no output bias)."""
    return torch.einsum("bphe,hem->hbpm", z, model.blocks[layer].attn.W_O)


def capture(model, tokens: torch.Tensor, metric: Optional[Metric] = None, grad: bool = False,
            embed: Optional[torch.Tensor] = None, writers: bool = True) -> Capture:
    """Run ``tokens`` once, recording writers and residuals; with ``grad``, also the metric's
    gradient at each head's q/k/v, each MLP's ``hook_pre`` and the final residual.

    ``embed`` ``[batch, pos, d_model]`` replaces the token embedding (EAP-IG's interpolated inputs);
    ``writers=False`` skips stacking the writers' outputs (``Capture.writers`` is then empty).
    """
    n = model.cfg.n_layers
    acts: dict[str, torch.Tensor] = {}

    def keep(t: torch.Tensor, hook) -> None:
        acts[hook.name] = t

    def start(t: torch.Tensor, hook) -> torch.Tensor:
        t = t if embed is None else embed.to(t.dtype)
        t = t.detach().requires_grad_(True) if grad else t
        acts[hook.name] = t
        return t

    names = [f"blocks.{i}.{h}" for i in range(n) for h in ("attn.hook_z", "hook_mlp_out", "hook_resid_pre")]
    names.append(f"blocks.{n - 1}.hook_resid_post")
    grad_names = []
    if grad:
        grad_names = [f"blocks.{i}.{h}" for i in range(n) for h in ("attn.hook_q", "attn.hook_k", "attn.hook_v",
                                                                    "mlp.hook_pre")]
    hooks = [("hook_embed", start)] + [(x, keep) for x in names + grad_names]
    with torch.set_grad_enabled(grad), model.hooks(hooks):
        logits = model(tokens.to(model.device))
        value = metric_scalar(metric, logits) if metric is not None else torch.tensor(float("nan"))
        grads = None
        if grad:
            if not value.requires_grad:
                raise InputError("the metric does not depend on the logits (it has no gradient); EAP needs a "
                                 "differentiable metric such as a logit difference or a log-probability")
            targets = [acts[x] for x in grad_names] + [acts[names[-1]]]
            found = torch.autograd.grad(value, targets, allow_unused=True)
            found = [torch.zeros_like(t) if g is None else g for g, t in zip(found, targets)]
            grads = {k: [found[4 * i + j] for i in range(n)] for j, k in enumerate(("q", "k", "v", "pre"))}
            grads["final"] = found[-1]
    stacked = torch.empty(0)
    if writers:
        with torch.no_grad():
            outs = [acts["hook_embed"].detach()[None]]
            for i in range(n):
                outs += [head_outputs(model, i, acts[f"blocks.{i}.attn.hook_z"].detach()),
                         acts[f"blocks.{i}.hook_mlp_out"].detach()[None]]
            stacked = wide(torch.cat(outs))
    return Capture(stacked, [acts[f"blocks.{i}.hook_resid_pre"].detach() for i in range(n)],
                   acts[names[-1]].detach(), float(value.detach()), grads)


def wide(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32, or float64 if it is already (half-precision models are scored in float32)."""
    return t if t.dtype == torch.float64 else t.float()


def layer_norm_backward(ln, x: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
    """Gradient at the input ``x`` ``[batch, pos, d_model]`` of LayerNorm ``ln`` for output gradients
    ``grad_out`` ``[readers, batch, pos, d_model]`` (one per reader sharing that input).

    With ``n = (x - mean) / s``, ``s = sqrt(var + eps)`` and ``u = grad_out * weight``:
    ``dx = (u - mean(u) - n * mean(u * n)) / s`` (written out because it runs once for all the
    readers of a layer, where autograd would need a copy of ``x`` per reader).
    """
    x = wide(x)
    centred = x - x.mean(-1, keepdim=True)
    s = (centred.pow(2).mean(-1, keepdim=True) + ln.eps).sqrt()
    normed = centred / s
    u = wide(grad_out) * wide(ln.weight)
    return (u - u.mean(-1, keepdim=True) - normed * (u * normed).mean(-1, keepdim=True)) / s


@torch.no_grad()
def reader_gradients(model, cap: Capture, layer: int) -> torch.Tensor:
    """The metric's gradient at each reader input of ``layer``: ``[3 * n_heads + 1, batch, pos, d_model]``
    (q of every head, then k, then v, then the MLP; graph order)."""
    attn, mlp = model.blocks[layer].attn, model.blocks[layer].mlp
    g = cap.grads
    into_norm = [torch.einsum("bphe,hme->hbpm", wide(g[k][layer]), wide(w))
                 for k, w in (("q", attn.W_Q), ("k", attn.W_K), ("v", attn.W_V))]
    into_norm.append((wide(g["pre"][layer]) @ wide(mlp.fc1.weight))[None])
    return layer_norm_backward(model.blocks[layer].ln1, cap.resid_pre[layer], torch.cat(into_norm))


@torch.no_grad()
def add_edge_scores(model, scores: torch.Tensor, deltas: torch.Tensor, cap: Capture, weight: float = 1.0,
                    on_layer: Optional[Callable[[], None]] = None) -> None:
    """``scores[w, r] += weight * sum_{batch, pos} deltas[w] . grad_r`` for every edge, layer by layer.

    ``deltas`` ``[n_writers, batch, pos, d_model]``; one matrix product per layer (the writers below
    it times that layer's readers) and one for the logits.
    """
    lay = Layout(model.cfg.n_layers, model.cfg.n_heads)
    flat = deltas.flatten(1)                                            # [n_writers, batch * pos * d_model]
    for layer in range(lay.n_layers):
        w = lay.writers_below(layer)
        cols = slice(layer * lay.per_layer_readers, (layer + 1) * lay.per_layer_readers)
        grads = reader_gradients(model, cap, layer).flatten(1)          # [readers, batch * pos * d_model]
        scores[:w, cols] += weight * (flat[:w] @ grads.T)
        if on_layer is not None:
            on_layer()
    scores[:, lay.logits_reader] += weight * (flat @ wide(cap.grads["final"]).flatten())
