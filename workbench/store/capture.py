"""Run a model over rows of tokens and stream the hooked activations to a ``StoreWriter``.

The hooks keep no cache: each one puts its detached tensor in a per-batch
dict that ``StoreWriter.append`` copies and queues, so memory holds one
batch of activations plus the writer's bounded queue. The forward stops after
the last block any hook needs (no unembedding when only residuals are
cached).
"""
from __future__ import annotations

import hashlib
import re
import time
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np
import torch

from .writer import StoreWriter


def stop_layer(names: Sequence[str], n_layers: int) -> Optional[int]:
    """The ``stop_at_layer`` that still runs every hooked module (None: the whole model)."""
    last = -1
    for n in names:
        if n.startswith("ln_final") or n.startswith("unembed"):
            return None
        m = re.match(r"blocks\.(\d+)\.", n)
        if m:
            last = max(last, int(m.group(1)))
    return last + 1 if last + 1 < n_layers else None


def hook_shapes(model: Any, names: Sequence[str], seq_len: int) -> dict[str, tuple[int, ...]]:
    """Each hook's row shape (without the batch axis), from a one-row forward pass."""
    shapes: dict[str, tuple[int, ...]] = {}

    def grab(t: torch.Tensor, hook: Any) -> None:
        shapes[hook.name] = tuple(t.shape[1:])

    tokens = torch.zeros(1, seq_len, dtype=torch.long, device=model.device)
    with torch.no_grad(), model.hooks([(n, grab) for n in names]):
        model(tokens, return_type=None, stop_at_layer=stop_layer(names, model.cfg.n_layers))
    missing = [n for n in names if n not in shapes]
    if missing:
        raise ValueError(f"hooks {missing} did not fire in a forward pass, so they cannot be cached")
    return shapes


def weights_digest(model: torch.nn.Module) -> str:
    """A cheap fingerprint of the weights: sha256 over each parameter's name, shape and first 4096 values."""
    h = hashlib.sha256()
    for name, p in model.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(p.shape)).encode())
        h.update(p.detach().reshape(-1)[:4096].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def run_model(model: Any, batches: Iterable[tuple[np.ndarray, dict[str, np.ndarray]]], names: Sequence[str],
              writer: Optional[StoreWriter], on_batch: Optional[Callable[[int], None]] = None) -> int:
    """Forward every batch with caching hooks, appending to ``writer`` (None: forward only, for benchmarks).

    Returns the number of rows processed.
    """
    acts: dict[str, torch.Tensor] = {}

    def grab(t: torch.Tensor, hook: Any) -> None:
        acts[hook.name] = t.detach()

    stop = stop_layer(names, model.cfg.n_layers)
    rows = 0
    with torch.no_grad(), model.hooks([(n, grab) for n in names]):
        for toks, meta in batches:
            x = torch.from_numpy(toks).to(model.device)
            model(x, return_type=None, stop_at_layer=stop)
            if writer is not None:
                writer.append(x, acts, meta=meta)
            acts.clear()
            rows += len(toks)
            if on_batch is not None:
                on_batch(len(toks))
    return rows


class Progress:
    """A tqdm bar with rows, tokens/s and the writer's MB/s."""

    def __init__(self, total: int, initial: int, seq_len: int, writer: Optional[StoreWriter]) -> None:
        from tqdm import tqdm
        self.bar = tqdm(total=total, initial=initial, unit="row", dynamic_ncols=True, smoothing=0.1)
        self.seq_len, self.writer, self.t0, self.rows = seq_len, writer, time.monotonic(), 0

    def __call__(self, n: int) -> None:
        self.rows += n
        dt = max(time.monotonic() - self.t0, 1e-9)
        mb = (self.writer.bytes_written / 1e6 / dt) if self.writer is not None else 0.0
        self.bar.set_postfix_str(f"{self.rows * self.seq_len / dt:,.0f} tok/s, {mb:,.1f} MB/s", refresh=False)
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()
