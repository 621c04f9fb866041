"""Random LayerNorm gains and biases for models that check equality with another implementation.

A freshly built model has LayerNorm gains of 1 and biases of 0, so a mix-up of two gains or a
bias left out changes nothing and an equality test passes anyway. Randomising them makes such
mistakes show. Works on our ``PhiModel`` (``ln1``, ``ln_final``) and on ``transformers``'
``PhiForCausalLM`` (``input_layernorm``, ``final_layernorm``) alike.
"""
from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def randomize_norms_and_biases(model: nn.Module, bias_std: float = 0.1, gain_std: float = 0.1) -> nn.Module:
    """Every bias ~ N(0, ``bias_std``), every LayerNorm gain ~ N(1, ``gain_std``), in place; returns ``model``.

    Draws from torch's global generator (seed it first for the same weights every time).
    """
    for name, p in model.named_parameters():   # in parameter order, so a seed gives the same weights
        owner = model.get_submodule(name.rpartition(".")[0])
        if name.endswith("bias"):
            p.normal_(0.0, bias_std)
        elif "LayerNorm" in type(owner).__name__:
            p.normal_(1.0, gain_std)
    return model
