"""Declarative map between HF ``PhiForCausalLM`` tensor names and ours.

Ours fuses q/k/v into one ``qkv`` projection (one matmul instead of three);
everything else is a rename. Kept as data so loading, saving, shape checks and
error messages all read from one table.
"""
from __future__ import annotations

from typing import Mapping

import torch

from .config import PhiConfig

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


def _shape_table(cfg: PhiConfig) -> dict[str, tuple[int, ...]]:
    """Shape of each tensor of ours (name pattern -> shape), from the config alone."""
    d, m, v = cfg.d_model, cfg.d_mlp, cfg.d_vocab
    return {
        "embed.weight": (v, d), "blocks.{i}.ln1.weight": (d,), "blocks.{i}.ln1.bias": (d,),
        "blocks.{i}.attn.qkv.weight": (3 * d, d), "blocks.{i}.attn.qkv.bias": (3 * d,),
        "blocks.{i}.attn.dense.weight": (d, d), "blocks.{i}.attn.dense.bias": (d,),
        "blocks.{i}.mlp.fc1.weight": (m, d), "blocks.{i}.mlp.fc1.bias": (m,),
        "blocks.{i}.mlp.fc2.weight": (d, m), "blocks.{i}.mlp.fc2.bias": (d,),
        "ln_final.weight": (d,), "ln_final.bias": (d,), "unembed.weight": (v, d), "unembed.bias": (v,),
    }


def _expand(pattern: str, n_layers: int) -> list[tuple[int, str]]:
    return [(i, pattern.format(i=i)) for i in range(n_layers)] if "{i}" in pattern else [(-1, pattern)]


def load_plan(cfg: PhiConfig) -> list[tuple[str, tuple[int, ...], tuple[str, ...]]]:
    """How to build each tensor of ours: ``(our name, our shape, HF names)``, in model order.

    The HF tensors, each flattened, fill ours in order along dim 0: one name for a
    rename, q/k/v for the fused projection.
    """
    shapes = _shape_table(cfg)
    sources = {ours: (hf,) if isinstance(hf, str) else hf for ours, hf in RENAMES + FUSED}
    per_layer = [p for p in sources if "{i}" in p]
    ordered = ([("embed.weight", 0)] + [(p, i) for i in range(cfg.n_layers) for p in per_layer]
               + [(p, 0) for p in sources if "{i}" not in p and p != "embed.weight"])
    return [(p.format(i=i), shapes[p], tuple(s.format(i=i) for s in sources[p])) for p, i in ordered]


def hf_shapes(cfg: PhiConfig) -> dict[str, tuple[int, ...]]:
    """Every HF tensor name a Phi checkpoint of this config holds, with its shape."""
    out = {}
    for _, shape, parts in load_plan(cfg):
        for name in parts:   # the fused parts split dim 0 evenly
            out[name] = (shape[0] // len(parts),) + shape[1:]
    return out


def hf_names(n_layers: int) -> list[str]:
    """Every HF tensor name a Phi checkpoint with ``n_layers`` layers holds."""
    names = [hf for _, pat in RENAMES for _, hf in _expand(pat, n_layers)]
    names += [hf for _, parts in FUSED for p in parts for _, hf in _expand(p, n_layers)]
    return names


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


def from_hf(state: Mapping[str, torch.Tensor], cfg: PhiConfig) -> dict[str, torch.Tensor]:
    """Our state dict from HF tensors held in memory (e.g. ``PhiForCausalLM(...).state_dict()``).

    q, k and v are concatenated into the fused projection; the other tensors are the
    same objects under our names. Files are read by ``hf_format.read_state_dict``
    (one copy of the weights); this is for a ``transformers`` model already loaded.
    """
    out = {}
    for ours, shape, parts in load_plan(cfg):
        out[ours] = state[parts[0]] if len(parts) == 1 else torch.cat([state[p] for p in parts], dim=0)
        if tuple(out[ours].shape) != shape:
            raise ValueError(f"{parts[0]} has shape {tuple(state[parts[0]].shape)}; this config needs {shape} "
                             f"for {ours}")
    return out
