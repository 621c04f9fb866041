"""A one-screen text summary of a cached run (used by ``workbench demo``)."""
from __future__ import annotations

import torch


def summarise_cache(model, logits: torch.Tensor, cache) -> str:
    """Model size, hooks cached, memory, and per-layer residual norms and attention entropy."""
    cfg = model.cfg
    n_params = sum(p.numel() for p in model.parameters())
    lines = [f"model: {cfg.name}  {n_params:,} parameters  {cfg.n_layers} layers x {cfg.n_heads} heads "
             f"(d_head {cfg.d_head}, rotary {cfg.rotary_dim})",
             f"logits: {tuple(logits.shape)}   cached {len(cache)} hook points, "
             f"{cache.nbytes() / 2**20:.2f} MiB"]
    lines.append("layer  |resid_post|  attn entropy (nats, per head)")
    for i in range(cfg.n_layers):
        norm = cache[f"blocks.{i}.hook_resid_post"].norm(dim=-1).mean().item()
        pat = cache[f"blocks.{i}.attn.hook_pattern"]                       # [batch, head, q, k]
        ent = -(pat * pat.clamp_min(1e-12).log()).sum(-1).mean(dim=(0, 2))  # [head]
        lines.append(f"{i:>5}  {norm:12.3f}  " + " ".join(f"{e:.2f}" for e in ent.tolist()))
    return "\n".join(lines)
