"""HookPoint: an identity module that runs the functions hooked onto it.

A model calls ``self.hook_x(x)`` at every activation worth seeing. With no hook
attached the call returns ``x`` untouched, so unused hook points cost one module
call each. The root module names every hook point after its path in the module
tree (``blocks.3.attn.hook_pattern``), which is the name users hook by.

Hooks are kept in plain lists rather than torch's module-hook dicts: the model
asks ``hook_point.active`` to decide whether to build expensive activations
(the attention pattern, per-head results), and a list is cheap to test and
easy for ``torch.compile`` to guard on.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

HookFn = Callable[..., Optional[torch.Tensor]]


class HookPoint(nn.Module):
    """Identity on the forward pass; calls ``fn(tensor, hook=self)`` for each hook.

    A forward hook may return a tensor to replace the activation (same shape),
    or ``None`` to leave it as it is. A backward hook gets the gradient of the
    loss with respect to this activation and may likewise return a replacement.
    """

    def __init__(self) -> None:
        super().__init__()
        self.name: str = ""
        self.fwd_hooks: list[HookFn] = []
        self.bwd_hooks: list[HookFn] = []
        # Which of the hooks above are permanent (survive reset_hooks()).
        self.permanent: set[int] = set()
        self.ctx: dict = {}  # scratch space for stateful hooks, as in TransformerLens

    @property
    def active(self) -> bool:
        """True when any forward or backward hook is attached."""
        return bool(self.fwd_hooks or self.bwd_hooks)

    def add_hook(self, fn: HookFn, dir: str = "fwd", is_permanent: bool = False,
                 prepend: bool = False) -> Callable[[], None]:
        """Attach ``fn``; returns a function that removes exactly this hook."""
        if dir not in ("fwd", "bwd"):
            raise ValueError(f"dir must be 'fwd' or 'bwd', got {dir!r}")
        hooks = self.fwd_hooks if dir == "fwd" else self.bwd_hooks
        if prepend:
            hooks.insert(0, fn)
        else:
            hooks.append(fn)
        if is_permanent:
            self.permanent.add(id(fn))

        def remove() -> None:
            for i, h in enumerate(hooks):
                if h is fn:
                    del hooks[i]
                    break
            self.permanent.discard(id(fn))

        return remove

    def remove_hooks(self, dir: str = "both", including_permanent: bool = False) -> None:
        """Remove forward, backward or both kinds of hook (permanent ones only if asked)."""
        keep = (lambda h: id(h) in self.permanent) if not including_permanent else (lambda h: False)
        if dir in ("fwd", "both"):
            self.fwd_hooks[:] = [h for h in self.fwd_hooks if keep(h)]
        if dir in ("bwd", "both"):
            self.bwd_hooks[:] = [h for h in self.bwd_hooks if keep(h)]
        if including_permanent:
            self.permanent.clear()

    def clear_context(self) -> None:
        self.ctx.clear()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for fn in self.fwd_hooks:
            out = fn(x, hook=self)
            if out is not None:
                x = out
        if self.bwd_hooks and x.requires_grad:
            for fn in self.bwd_hooks:
                x.register_hook(_grad_hook(fn, self))
        return x

    def extra_repr(self) -> str:
        return f"name={self.name!r}, fwd={len(self.fwd_hooks)}, bwd={len(self.bwd_hooks)}"


def _grad_hook(fn: HookFn, hook: HookPoint) -> Callable[[torch.Tensor], Optional[torch.Tensor]]:
    def on_grad(grad: torch.Tensor) -> Optional[torch.Tensor]:
        return fn(grad, hook=hook)

    return on_grad
