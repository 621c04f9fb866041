"""What several benchmarks share: a random model of a preset, random prompt pairs, a timer.

Benchmarks run as scripts (``python bench/bench_x.py``), so Python puts bench/ first on the
path and ``from common import ...`` finds this file; the workbench itself comes from the
installed package.
"""
from __future__ import annotations

import statistics
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


def interleaved(variants: dict[str, Callable[[], Any]], repeats: int) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Time each variant once per round, in order, for ``repeats`` rounds (A/B interleaving, so the load of a
    busy machine falls on every variant alike); prints each round. Returns ``(seconds per variant, the last
    result of each)``."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    last: dict[str, Any] = {}
    for r in range(repeats):
        for name, fn in variants.items():
            t, last[name] = timed(fn)
            times[name].append(t)
        print(f"  repeat {r}: " + "  ".join(f"{name} {ts[-1]:.3f} s" for name, ts in times.items()), flush=True)
    return times, last


def median_ratio(num: list[float], den: list[float]) -> float:
    """Median of the per-round ratios ``num[i] / den[i]``."""
    return statistics.median(n / d for n, d in zip(num, den))
