"""Runs with chosen edges replaced, exactly: exact edge patching and circuit faithfulness.

Every reader's input is the residual stream, a plain sum of writer outputs (plus constant
biases). To make edge ``u -> v`` carry a replacement value ``r[u]`` (the corrupted run's
output of ``u``, or its mean over a reference set), reader ``v``'s own copy of the residual is
rebuilt as ``resid - (a_run[u] - r[u])``, where ``a_run[u]`` is ``u``'s output in this very run.
The copies come from the split-input hooks (``hook_q_input`` / ``hook_k_input`` /
``hook_v_input`` per head, ``hook_mlp_in``), so each reader goes through the shared LayerNorm
on its own rebuilt input: nothing is linearised or frozen here.

Many variants (one edge each, or one circuit each) are stacked along the batch as
``[variant * batch, ...]``, and a variant whose first replaced edge enters layer L starts at L
from the clean ``resid_pre`` (layers below are the clean run). Only writers and readers that
some variant changes are tracked.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import torch

from ..metrics import Metric
from ..patch_runs import batch_tokens
from .graph import Layout
from .runs import Capture, head_outputs, metric_scalar, wide

# Bytes of per-reader residual copies one chunk of variants may hold (the split inputs are
# [variants * batch, pos, head, d_model] three times per layer).
READER_BYTES = 2 ** 29


@dataclass
class Baseline:
    """What replacement runs start from: the clean capture, and each writer's replacement
    ``[n_writers, batch or 1, pos, d_model]`` (the corrupted outputs, or a reference mean)."""

    clean_tokens: torch.Tensor
    clean: Capture
    replacement: torch.Tensor
    metric: Metric


@contextlib.contextmanager
def split_inputs(model) -> Iterator[None]:
    """Switch on the per-reader input hooks, restoring the caller's switches afterwards."""
    c = model.cfg
    saved = (c.use_split_qkv_input, c.use_attn_in, c.use_hook_mlp_in)
    try:
        model.set_use_attn_in(False)
        model.set_use_split_qkv_input(True)
        model.set_use_hook_mlp_in(True)
        yield
    finally:
        model.set_use_split_qkv_input(saved[0])
        model.set_use_attn_in(saved[1])
        model.set_use_hook_mlp_in(saved[2])


def replaced_metrics(model, base: Baseline, replace: torch.Tensor,
                     progress: Optional[Callable[[int], None]] = None) -> torch.Tensor:
    """The metric of each variant: ``replace`` ``[variants, n_writers, n_readers]`` bool says which
    edges carry their replacement value in that variant. Returns ``[variants]`` floats."""
    lay = Layout(model.cfg.n_layers, model.cfg.n_heads)
    replace = replace & lay.valid
    out = torch.full((replace.shape[0],), base.clean.metric, dtype=torch.float64)
    b, p = base.clean_tokens.shape
    reader_layer = torch.tensor([lay.node_layers[n] for n in lay.reader_nodes])
    first = torch.where(replace.any(1), reader_layer[None, :], torch.tensor(lay.n_layers + 1)).amin(1)
    per_variant = b * p * lay.per_layer_readers * model.cfg.d_model * 4
    chunk = max(1, min(batch_tokens(model, None) // (b * p), READER_BYTES // per_variant))
    for start in sorted(set(first.tolist()) - {lay.n_layers + 1}):
        ids = (first == start).nonzero().flatten()
        for i in range(0, len(ids), chunk):
            part = ids[i:i + chunk]
            out[part] = _run_chunk(model, base, replace[part], int(start), lay)
            if progress is not None:
                progress(len(part))
    return out


@torch.no_grad()
def _run_chunk(model, base: Baseline, replace: torch.Tensor, start: int, lay: Layout) -> torch.Tensor:
    """Metrics ``[c]`` of ``c`` variants whose replaced edges all enter layer ``start`` or later."""
    c = replace.shape[0]
    clean, repl = base.clean, base.replacement.to(base.clean.writers.device)
    writers = replace.any(0).any(1).nonzero().flatten().tolist()          # writers some variant replaces
    diffs: dict[int, torch.Tensor] = {w: (clean.writers[w] - repl[w]).expand(c, *clean.writers.shape[1:])
                                      for w in writers if w < lay.writers_below(start)}
    mask = replace.to(clean.writers.device, clean.writers.dtype)                      # [c, n_writers, n_readers]

    def correction(readers: slice) -> Optional[torch.Tensor]:
        """``[c, batch, pos, n, d_model]``: what to subtract from each of these readers' inputs."""
        ws = [w for w in writers if w in diffs and bool(replace[:, w, readers].any())]
        if not ws:
            return None
        d = torch.stack([diffs[w] for w in ws])                            # [w, c, batch, pos, d_model]
        return torch.einsum("wcbpd,cwr->cbprd", d, mask[:, ws, readers])

    def writer_hook(first_writer: int, heads: bool):
        def hook(t: torch.Tensor, hook) -> None:
            layer = lay.node_layers[first_writer]
            outs = head_outputs(model, layer, t) if heads else t[None]     # [n, c * batch, pos, d_model]
            for j, w in enumerate(range(first_writer, first_writer + len(outs))):
                if w in writers:
                    diffs[w] = (wide(outs[j]).view(c, -1, *outs.shape[2:]) - repl[w])
        return hook

    def reader_hook(readers: slice, per_head: bool):
        def hook(t: torch.Tensor, hook) -> Optional[torch.Tensor]:
            corr = correction(readers)
            if corr is None:
                return None
            view = t.view(c, -1, *t.shape[1:])
            corr = corr if per_head else corr[..., 0, :]
            return (view - corr.to(t.dtype)).view(t.shape)
        return hook

    hooks = []
    for layer in range(start, lay.n_layers):
        base_r = layer * lay.per_layer_readers
        h = lay.n_heads
        for j, name in enumerate(("hook_q_input", "hook_k_input", "hook_v_input")):
            hooks.append((f"blocks.{layer}.{name}", reader_hook(slice(base_r + j * h, base_r + (j + 1) * h), True)))
        hooks.append((f"blocks.{layer}.hook_mlp_in", reader_hook(slice(base_r + 3 * h, base_r + 3 * h + 1), False)))
        hooks.append((f"blocks.{layer}.attn.hook_z", writer_hook(lay.head_writer(layer, 0), True)))
        hooks.append((f"blocks.{layer}.hook_mlp_out", writer_hook(lay.mlp_writer(layer), False)))
    final = reader_hook(slice(lay.logits_reader, lay.logits_reader + 1), False)
    if start < lay.n_layers:
        hooks.append((f"blocks.{lay.n_layers - 1}.hook_resid_post", final))
        x = clean.resid_pre[start].repeat(c, 1, 1)
        with split_inputs(model), model.hooks(hooks):
            logits = model(x, start_at_layer=start)
    else:                                                                  # only edges into the logits
        resid = clean.resid_final.repeat(c, 1, 1)
        logits = model.unembed(model.ln_final(final(resid, None)))
    b = clean.resid_final.shape[0]
    return torch.stack([metric_scalar(base.metric, logits[i * b:(i + 1) * b]).double().cpu() for i in range(c)])
