"""Declarative map between HF ``PhiForCausalLM`` tensor names and ours.

Ours fuses q/k/v into one ``qkv`` projection (one matmul instead of three);
everything else is a rename. Kept as data so loading, saving and error
messages all read from one table.
"""
from __future__ import annotations

import re
from typing import Mapping

import torch

# (our name pattern, HF name pattern); {i} is the layer index.
RENAMES: list[tuple[str, str]] = [
    ("embed.weight", "model.embed_tokens.weight"),
    ("blocks.{i}.ln1.weight", "model.layers.{i}.input_layernorm.weight"),
    ("blocks.{i}.ln1.bias", "model.layers.{i}.input_layernorm.bias"),
    ("blocks.{i}.attn.dense.weight", "model.layers.{i}.self_attn.dense.weight"),
    ("blocks.{i}.attn.dense.bias", "model.layers.{i}.self_attn.dense.bias"),
    ("blocks.{i}.mlp.fc1.weight", "model.layers.{i}.mlp.fc1.weight"),
    ("blocks.{i}.mlp.fc1.bias", "model.layers.{i}.mlp.fc1.bias"),
    ("blocks.{i}.mlp.fc2.weight", "model.layers.{i}.mlp.fc2.weight"),
    ("blocks.{i}.mlp.fc2.bias", "model.layers.{i}.mlp.fc2.bias"),
    ("ln_final.weight", "model.final_layernorm.weight"),
    ("ln_final.bias", "model.final_layernorm.bias"),
    ("unembed.weight", "lm_head.weight"),
    ("unembed.bias", "lm_head.bias"),
]
# Our fused tensor <- HF's three, concatenated along dim 0 in this order.
FUSED: list[tuple[str, tuple[str, str, str]]] = [
    ("blocks.{i}.attn.qkv.weight", tuple(f"model.layers.{{i}}.self_attn.{x}_proj.weight" for x in "qkv")),
    ("blocks.{i}.attn.qkv.bias", tuple(f"model.layers.{{i}}.self_attn.{x}_proj.bias" for x in "qkv")),
]


def _expand(pattern: str, n_layers: int) -> list[tuple[int, str]]:
    return [(i, pattern.format(i=i)) for i in range(n_layers)] if "{i}" in pattern else [(-1, pattern)]


def hf_names(n_layers: int) -> list[str]:
    """Every HF tensor name a Phi checkpoint with ``n_layers`` layers holds."""
    names = [hf for _, pat in RENAMES for _, hf in _expand(pat, n_layers)]
    names += [hf for _, parts in FUSED for p in parts for _, hf in _expand(p, n_layers)]
    return names


def from_hf(get: "Mapping[str, torch.Tensor]", n_layers: int) -> dict[str, torch.Tensor]:
    """Our state dict from HF tensors (``get[name]`` may load lazily)."""
    out: dict[str, torch.Tensor] = {}
    for ours, hf in RENAMES:
        for i, name in _expand(ours, n_layers):
            out[name] = get[hf.format(i=i) if i >= 0 else hf]
    for ours, parts in FUSED:
        for i, name in _expand(ours, n_layers):
            out[name] = torch.cat([get[p.format(i=i)] for p in parts], dim=0)
    return out


def to_hf(state: Mapping[str, torch.Tensor], n_layers: int) -> dict[str, torch.Tensor]:
    """HF tensors from our state dict (q/k/v split back out, each contiguous)."""
    out: dict[str, torch.Tensor] = {}
    for ours, hf in RENAMES:
        for i, name in _expand(ours, n_layers):
            out[hf.format(i=i) if i >= 0 else hf] = state[name].contiguous()
    for ours, parts in FUSED:
        for i, name in _expand(ours, n_layers):
            for p, t in zip(parts, state[name].chunk(3, dim=0)):
                out[p.format(i=i)] = t.contiguous()
    return out


def count_layers(names) -> int:
    """Number of decoder layers named in an HF checkpoint's tensor names."""
    idx = {int(m.group(1)) for n in names if (m := re.match(r"model\.layers\.(\d+)\.", n))}
    return max(idx) + 1 if idx else 0
