"""Partial rotary position embeddings, with HF Phi's numerics.

Only the first ``rotary_dim`` dims of each head are rotated; the rest pass
through. Angles are computed in fp32 and cast to the activation dtype, as
``transformers``' ``PhiRotaryEmbedding`` does, so logits match it exactly.
Nothing is cached in buffers: cos/sin are a few KB, computed once per forward,
and a model built on the meta device needs no buffer re-initialisation.
"""
from __future__ import annotations

import torch


def rotary_cos_sin(positions: torch.Tensor, rotary_dim: int, theta: float,
                   dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables, each ``[pos, rotary_dim]``, for integer ``positions`` ``[pos]``."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, rotary_dim, 2, dtype=torch.float,
                                             device=positions.device) / rotary_dim))
    freqs = positions.float()[:, None] * inv_freq[None, :]   # [pos, rotary_dim/2]
    emb = torch.cat((freqs, freqs), dim=-1)                  # [pos, rotary_dim]
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first ``rotary_dim`` dims of ``x`` ``[batch, pos, head, d_head]``.

    ``cos``/``sin`` are ``[pos, rotary_dim]``. Uses HF's "rotate half" pairing
    (dim i with dim i + rotary_dim/2), which is what Phi checkpoints were trained with.
    """
    rd = cos.shape[-1]
    x_rot, x_pass = x[..., :rd], x[..., rd:]
    c, s = cos[:, None, :], sin[:, None, :]                  # [pos, 1, rotary_dim]
    half = rd // 2
    rotated = torch.cat((-x_rot[..., half:], x_rot[..., :half]), dim=-1)
    return torch.cat((x_rot * c + rotated * s, x_pass), dim=-1)
