"""Shared fixtures: tiny random Phi checkpoints made by ``transformers`` itself.

Every parity test starts from an HF model whose LayerNorm and bias parameters
are randomised too (HF initialises them to 1/0, which would hide mistakes in
how they are loaded).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

# Tiny models gain nothing from intra-op threads, and on a shared 2-core machine OpenMP's
# spinning threads made each tiny forward ~60x slower (4 ms -> 260 ms measured under load).
torch.set_num_threads(1)

TEXT = ("def add(a, b):\n    return a + b\n\nclass Point:\n    def __init__(self, x, y):\n"
        "        self.x = x\n        self.y = y\n") * 20


def make_hf_phi(d_model: int = 160, n_heads: int = 2, n_layers: int = 2, partial_rotary_factor: float = 0.4,
                vocab: int = 512, d_mlp: int | None = None, n_ctx: int = 256, seed: int = 0):
    """A random ``transformers.PhiForCausalLM`` in eval mode with randomised LayerNorms and biases."""
    from transformers import PhiConfig, PhiForCausalLM
    torch.manual_seed(seed)
    cfg = PhiConfig(vocab_size=vocab, hidden_size=d_model, intermediate_size=d_mlp or 4 * d_model,
                    num_hidden_layers=n_layers, num_attention_heads=n_heads,
                    partial_rotary_factor=partial_rotary_factor, max_position_embeddings=n_ctx,
                    bos_token_id=0, eos_token_id=0)
    hf = PhiForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.1)
            elif "layernorm" in name:
                p.normal_(1.0, 0.1)
    return hf


def make_tokenizer(vocab: int = 512):
    """A byte-level BPE trained on a little Python, so tests never download one."""
    from workbench.model import Tokenizer
    return Tokenizer.train_bpe([TEXT], vocab_size=vocab)


def save_checkpoint(hf, folder: Path, with_tokenizer: bool = True, **save_kwargs) -> Path:
    hf.save_pretrained(folder, **save_kwargs)
    if with_tokenizer:
        make_tokenizer(hf.config.vocab_size).save(folder / "tokenizer.json")
    return folder


@pytest.fixture(scope="session")
def tiny_hf():
    """phi-2's head geometry (d_head 80, rotary 32) at 2 layers."""
    return make_hf_phi()


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_hf, tmp_path_factory) -> Path:
    """A folder with config.json, model.safetensors and tokenizer.json."""
    return save_checkpoint(tiny_hf, tmp_path_factory.mktemp("tiny-phi"))


@pytest.fixture()
def tiny_model(tiny_checkpoint):
    """A fresh PhiModel (fp32, eval) loaded from ``tiny_checkpoint``."""
    from workbench import PhiModel
    return PhiModel.from_pretrained(tiny_checkpoint)
