"""Shared fixtures: tiny random Phi checkpoints made by ``transformers`` itself.

Every parity test starts from an HF model whose LayerNorm and bias parameters
are randomised too (HF initialises them to 1/0, which would hide mistakes in
how they are loaded).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers import make_hf_phi, save_checkpoint

# Tiny models gain nothing from intra-op threads, and on a shared 2-core machine OpenMP's
# spinning threads made each tiny forward ~60x slower (4 ms -> 260 ms measured under load).
torch.set_num_threads(1)


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
