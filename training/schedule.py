"""Learning-rate and recording schedules: warmup + cosine, and which steps to record."""
from __future__ import annotations

import math
from typing import Sequence

import torch


def lr_factor(step: int, warmup: int, max_steps: int, min_ratio: float) -> float:
    """Multiplier on the peak lr at ``step``: linear warmup to 1, cosine down to ``min_ratio``.

    ``step`` counts optimizer updates already made (the factor used for update ``step + 1``).
    """
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(1, max_steps - warmup)
    progress = min(1.0, (step - warmup) / span)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_scheduler(opt: torch.optim.Optimizer, warmup: int, max_steps: int,
                   min_ratio: float) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` over ``lr_factor``; its state (``last_epoch``) goes into checkpoints."""
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, warmup, max_steps, min_ratio))


def record_steps(max_steps: int, every: int, log_spaced: bool) -> list[int]:
    """Steps at which activations are recorded, sorted, always including 0 and ``max_steps``.

    ``every`` > 0 adds multiples of it; ``log_spaced`` adds 0, 1, 2, 4, 8, ...
    (Pythia's checkpoint schedule): dense early, when circuits form fast.
    """
    steps = {0, max_steps}
    if every > 0:
        steps.update(range(0, max_steps + 1, every))
    if log_spaced:
        s = 1
        while s <= max_steps:
            steps.add(s)
            s *= 2
    return sorted(steps)


def log_spaced_steps(max_steps: int, n: int) -> list[int]:
    """At most ``n`` steps from 0 to ``max_steps``, evenly spaced in log(step): dense early, sparse late.

    Step 0 (the initialisation) and ``max_steps`` are always among them (for ``n`` >= 2); the
    others are ``max_steps ** (i / (n - 2))`` rounded, so small runs get fewer than ``n``
    distinct steps. Used for the model-only checkpoints that show a circuit forming.
    """
    if n <= 0:
        return []
    if n == 1:
        return [max_steps]
    points = {0, max_steps}
    for i in range(n - 2):   # 1 = max_steps ** 0, up to max_steps ** ((n - 3) / (n - 2))
        points.add(int(round(max_steps ** (i / (n - 2)))))
    return sorted(points)


def snapshot_steps(max_steps: int, n: int, recorded: Sequence[int] = ()) -> list[int]:
    """The steps of the model-only snapshots: ``log_spaced_steps``, each moved to the nearest of the
    ``recorded`` steps when there are any, so every snapshot has the recording beside it (circuits
    and head scores at the same steps). Steps that coincide are kept once."""
    steps = log_spaced_steps(max_steps, n)
    if recorded:
        rec = sorted(recorded)
        steps = [min(rec, key=lambda r: (abs(r - s), r)) for s in steps]
    return sorted(set(steps))
