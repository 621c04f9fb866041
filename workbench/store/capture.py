"""The one capture path: run a model over token rows with hooks that hand their activations on.

``workbench cache`` streams every batch to a ``StoreWriter``; the training recorder runs
its probe rows at chosen steps into a ``RecordingWriter``. Both use ``Capture``: the same
hook-name resolution, the same forward that stops after the last block a hook lives in
(no unembedding when only residuals are wanted), the same shape probe, the same grab.
The hooks keep no cache of their own: each forward's detached tensors go straight to
the writer, which takes them over (``copy=False``) since nothing touches them again.

Split input hooks (``blocks.{i}.hook_q_input`` ..., ``hook_attn_in``, ``hook_mlp_in``)
fire only when their TransformerLens switch is on. Named exactly, a capture switches on
what it needs for its own forwards (and says so in ``switched_on``); matched by a glob
such as ``blocks.0.*`` they are left out while their switch is off, unless the glob
matches nothing else.
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence, Union

import numpy as np
import torch

from workbench.errors import InputError
from workbench.hooks.names import is_glob
from workbench.model import PhiModel

# hook-name suffix -> (config flag, the model method TransformerLens users call)
SPLIT_INPUTS = {
    "hook_q_input": ("use_split_qkv_input", "set_use_split_qkv_input"),
    "hook_k_input": ("use_split_qkv_input", "set_use_split_qkv_input"),
    "hook_v_input": ("use_split_qkv_input", "set_use_split_qkv_input"),
    "hook_attn_in": ("use_attn_in", "set_use_attn_in"),
    "hook_mlp_in": ("use_hook_mlp_in", "set_use_hook_mlp_in"),
}


def _switch_of(name: str) -> Optional[tuple[str, str]]:
    return SPLIT_INPUTS.get(name.rsplit(".", 1)[-1]) if name.startswith("blocks.") else None


def resolve_hooks(model: Any, patterns: Union[str, Sequence[str]]) -> tuple[list[str], list[str]]:
    """``(hook names in model order, switches to turn on)`` for names, shorthands and globs.

    An unknown name raises ``UnknownHookError`` with the closest names.
    """
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    chosen: set[str] = set()
    for pat in patterns:
        hits = model.resolve_hooks(pat)
        if is_glob(pat):
            live = [h for h in hits if _switch_of(h) is None or getattr(model.cfg, _switch_of(h)[0])]
            hits = live or hits
        chosen.update(hits)
    names = [n for n in model.hook_dict if n in chosen]
    flags = {_switch_of(n) for n in names} - {None}
    switches = sorted(setter for flag, setter in flags if not getattr(model.cfg, flag))
    return names, switches


def stop_layer(names: Sequence[str], n_layers: int) -> Optional[int]:
    """The ``stop_at_layer`` that still runs every hooked module (None: the whole model)."""
    last = -1
    for n in names:
        m = re.match(r"blocks\.(\d+)\.", n)
        if m:
            last = max(last, int(m.group(1)))
        elif n != "hook_embed":
            return None          # ln_final.*: after the last block
    return last + 1 if last + 1 < n_layers else None


class Capture:
    """Hooks on ``names`` and the cheapest forward that fires them all.

    Args:
        model: a ``PhiModel`` (or a model with its hook API).
        hooks: hook names, TransformerLens shorthands or globs.
    """

    def __init__(self, model: Any, hooks: Union[str, Sequence[str]]) -> None:
        self.model = model
        self.names, self.switched_on = resolve_hooks(model, hooks)
        self.stop = stop_layer(self.names, model.cfg.n_layers)
        # The final LayerNorm runs only on the way to the logits; those are computed and dropped.
        self.return_type = "logits" if any(n.startswith("ln_final.") for n in self.names) else None

    @contextmanager
    def _switches(self) -> Iterator[None]:
        """The split-input switches this capture needs, on for the duration of one forward."""
        before = {setter: getattr(self.model.cfg, SPLIT_FLAGS[setter]) for setter in self.switched_on}
        for setter in before:
            getattr(self.model, setter)(True)
        try:
            yield
        finally:
            for setter, was in before.items():
                getattr(self.model, setter)(was)

    @torch.no_grad()
    def __call__(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """One forward of ``tokens [batch, pos]``: ``{hook: activation [batch, ...]}``, fresh tensors."""
        acts: dict[str, torch.Tensor] = {}

        def grab(t: torch.Tensor, hook: Any) -> None:
            acts[hook.name] = t.detach()

        with self._switches(), self.model.hooks([(n, grab) for n in self.names]):
            self.model(tokens, return_type=self.return_type, stop_at_layer=self.stop)
        return acts

    def shapes(self, seq_len: int) -> dict[str, tuple[int, ...]]:
        """Each hook's row shape (without the batch axis), from a one-row forward."""
        acts = self(torch.zeros(1, seq_len, dtype=torch.long, device=self.model.device))
        missing = [n for n in self.names if n not in acts]
        if missing:
            raise InputError(f"hooks {missing} did not fire in a forward pass, so they cannot be cached")
        return {n: tuple(acts[n].shape[1:]) for n in self.names}

    def run(self, batches: Iterable[tuple[np.ndarray, dict[str, np.ndarray]]], writer: Any = None,
            on_batch: Optional[Callable[[int], None]] = None) -> int:
        """Forward every ``(tokens [b, pos], meta)`` batch, appending to ``writer`` (None: forward only).

        Returns the rows processed.
        """
        rows = 0
        for toks, meta in batches:
            x = torch.from_numpy(toks).to(self.model.device)
            acts = self(x)
            if writer is not None:
                writer.append(x, acts, meta=meta, copy=False)   # fresh tensors: handed over, not copied
            rows += len(toks)
            if on_batch is not None:
                on_batch(len(toks))
        return rows


SPLIT_FLAGS = {setter: flag for flag, setter in SPLIT_INPUTS.values()}


def hook_shapes_of_config(cfg: Any, seq_len: int) -> dict[str, tuple[int, ...]]:
    """Every hook point's row shape for ``seq_len`` tokens, split inputs included, in model order.

    Runs on the meta device: no weights are loaded or allocated (phi-2 takes about a second).
    """
    with torch.device("meta"):
        model = PhiModel(cfg)
    for _, setter in set(SPLIT_INPUTS.values()):
        getattr(model, setter)(True)
    shapes: dict[str, tuple[int, ...]] = {}

    def grab(t: torch.Tensor, hook: Any) -> None:
        shapes[hook.name] = tuple(t.shape[1:])

    with torch.no_grad(), model.hooks([(n, grab) for n in model.hook_dict]):
        model(torch.zeros(1, seq_len, dtype=torch.long, device="meta"), return_type="logits")
    return {n: shapes[n] for n in model.hook_dict if n in shapes}


def is_split_input(name: str) -> bool:
    """A hook that fires only when its TransformerLens switch is on (``hook_q_input``, ``hook_mlp_in``, ...)."""
    return _switch_of(name) is not None
