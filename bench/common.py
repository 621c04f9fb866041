"""What several benchmarks share: a random model of a preset, random prompt pairs, a timer.

Benchmarks run as scripts (``python bench/bench_x.py``), so Python puts bench/ first on the
path and ``from common import ...`` finds this file; the workbench itself comes from the
installed package.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import torch

from workbench.model import PhiConfig, PhiModel


def random_model(preset: str, seed: int = 0) -> PhiModel:
    """A randomly initialised ``PhiModel`` of ``preset`` (``PhiConfig.from_name``), in eval mode."""
    torch.manual_seed(seed)
    return PhiModel(PhiConfig.from_name(preset)).eval()


def random_prompts(model: PhiModel, batch: int, pos: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean and corrupted ids ``[batch, pos]``, uniform over the model's vocabulary."""
    g = torch.Generator().manual_seed(seed)
    v = model.cfg.d_vocab
    return torch.randint(0, v, (batch, pos), generator=g), torch.randint(0, v, (batch, pos), generator=g)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """``(wall seconds, fn())``."""
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out
