"""HookPoint: an identity module that runs the functions hooked onto it.

A model calls ``self.hook_x(x)`` at every activation worth seeing. With no hook
attached the call returns ``x`` untouched, so unused hook points cost one module
call each. The root module names every hook point after its path in the module
tree (``blocks.3.attn.hook_pattern``), which is the name users hook by.

The public surface is TransformerLens's (``add_hook(dir=, is_permanent=, level=,
prepend=)`` returning a ``LensHandle``, ``fwd_hooks``/``bwd_hooks`` lists of
handles, ``has_hooks``, ``remove_hooks``, ``ctx``). The functions themselves
live in private ordered dicts keyed by handle id, as torch keeps module hooks,
rather than in torch's module-hook machinery: the model asks ``active`` to
decide whether to build expensive activations (the attention pattern, per-head
results), and a backward hook is one tensor hook on the activation instead of
torch's full module backward hook, which wraps the output in a view that
in-place edits by later hooks would break.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Literal, Optional

import torch
from torch import nn

HookFn = Callable[..., Any]
Direction = Literal["fwd", "bwd"]


class HookHandle:
    """What ``LensHandle.hook`` holds: ``id`` and ``remove()``, like torch's ``RemovableHandle``.

    ``remove()`` stops the function from running; the ``LensHandle`` stays in
    ``fwd_hooks``/``bwd_hooks`` until ``HookPoint.remove_hooks`` drops it (TransformerLens's
    bookkeeping works the same way).
    """

    def __init__(self, registry: "OrderedDict[int, HookFn]", id: int) -> None:
        self._registry = registry
        self.id = id

    def remove(self) -> None:
        self._registry.pop(self.id, None)

    def __repr__(self) -> str:
        return f"HookHandle(id={self.id})"


@dataclass
class LensHandle:
    """One attached hook: its handle, whether it survives ``reset_hooks()``, its context level."""

    hook: HookHandle
    is_permanent: bool = False
    context_level: Optional[int] = None
    user_hook: Optional[HookFn] = None


def _in_scope(handle: LensHandle, including_permanent: bool, level: Optional[int]) -> bool:
    """Whether a handle is touched by a ``has_hooks``/``remove_hooks`` call with these filters."""
    if handle.is_permanent and not including_permanent:
        return False
    return level is None or handle.context_level == level


def _check_dir(dir: str, allowed: tuple[str, ...]) -> None:
    if dir not in allowed:
        raise ValueError(f"dir must be one of {allowed}, got {dir!r}")


class HookPoint(nn.Module):
    """Identity on the forward pass; calls ``fn(tensor, hook=self)`` for each hook.

    A forward hook may return a tensor to replace the activation (same shape),
    or ``None`` to leave it as it is. A backward hook gets the gradient of the
    loss with respect to this activation and may return a replacement (a tensor,
    or TransformerLens's one-element tuple ``(grad,)``).
    """

    def __init__(self) -> None:
        super().__init__()
        self.name: Optional[str] = None
        self.fwd_hooks: list[LensHandle] = []
        self.bwd_hooks: list[LensHandle] = []
        self._fwd_fns: OrderedDict[int, HookFn] = OrderedDict()
        self._bwd_fns: OrderedDict[int, HookFn] = OrderedDict()
        self._next_id = 0
        self.ctx: dict = {}  # scratch space for stateful hooks, as in TransformerLens

    @property
    def active(self) -> bool:
        """True when any forward or backward hook function will run."""
        return bool(self._fwd_fns or self._bwd_fns)

    def add_hook(self, hook: HookFn, dir: Direction = "fwd", is_permanent: bool = False,
                 level: Optional[int] = None, prepend: bool = False) -> LensHandle:
        """Attach ``hook`` (``fn(tensor, hook) -> tensor | None``); returns its ``LensHandle``."""
        _check_dir(dir, ("fwd", "bwd"))
        fns, handles = (self._fwd_fns, self.fwd_hooks) if dir == "fwd" else (self._bwd_fns, self.bwd_hooks)
        self._next_id += 1
        fns[self._next_id] = hook
        handle = LensHandle(HookHandle(fns, self._next_id), is_permanent, level, user_hook=hook)
        if prepend:
            fns.move_to_end(self._next_id, last=False)
            handles.insert(0, handle)
        else:
            handles.append(handle)
        return handle

    def add_perma_hook(self, hook: HookFn, dir: Direction = "fwd") -> LensHandle:
        return self.add_hook(hook, dir=dir, is_permanent=True)

    def has_hooks(self, dir: str = "both", including_permanent: bool = True,
                  level: Optional[int] = None) -> bool:
        """Whether any hook in direction ``dir`` matches the permanence and level filters."""
        _check_dir(dir, ("fwd", "bwd", "both"))
        handles = (self.fwd_hooks if dir != "bwd" else []) + (self.bwd_hooks if dir != "fwd" else [])
        return any(_in_scope(h, including_permanent, level) for h in handles)

    def remove_hooks(self, dir: str = "fwd", including_permanent: bool = False,
                     level: Optional[int] = None) -> None:
        """Remove the hooks of ``dir`` (permanent ones only if asked; only ``level`` if given)."""
        _check_dir(dir, ("fwd", "bwd", "both"))
        if dir in ("fwd", "both"):
            self.fwd_hooks = _drop(self.fwd_hooks, including_permanent, level)
        if dir in ("bwd", "both"):
            self.bwd_hooks = _drop(self.bwd_hooks, including_permanent, level)

    def remove_handle(self, handle: LensHandle) -> None:
        """Remove exactly this hook (what the ``hooks()`` context manager does on exit)."""
        handle.hook.remove()
        for handles in (self.fwd_hooks, self.bwd_hooks):
            for i, h in enumerate(handles):
                if h is handle:
                    del handles[i]
                    return

    def clear_context(self) -> None:
        self.ctx = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._fwd_fns:
            for fn in tuple(self._fwd_fns.values()):   # a hook may add or remove hooks
                out = fn(x, hook=self)
                if out is not None:
                    x = out
        if self._bwd_fns and isinstance(x, torch.Tensor) and x.requires_grad:
            x.register_hook(self._run_backward_hooks)
        return x

    def _run_backward_hooks(self, grad: torch.Tensor) -> Optional[torch.Tensor]:
        """Each backward hook sees the gradient as replaced by the hooks before it."""
        replaced = False
        for fn in tuple(self._bwd_fns.values()):
            out = fn(grad, hook=self)
            if isinstance(out, tuple):  # TransformerLens's hooks may return (grad,)
                if len(out) != 1:
                    raise ValueError(f"a backward hook on {self.name} returned a tuple of {len(out)} "
                                     "items; return the gradient tensor (or a 1-tuple (grad,), or None)")
                out = out[0]
            if out is not None:
                grad, replaced = out, True
        return grad if replaced else None

    def layer(self) -> int:
        """The block index of a ``blocks.{i}....`` hook point."""
        if self.name is None:
            raise ValueError("this hook point has no name yet: the root module names it in setup()")
        return int(self.name.split(".")[1])

    def __repr__(self) -> str:
        bits = [f"name={self.name!r}"] if self.name is not None else []
        if self.fwd_hooks:
            bits.append(f"{len(self.fwd_hooks)} fwd")
        if self.bwd_hooks:
            bits.append(f"{len(self.bwd_hooks)} bwd")
        return f"HookPoint({', '.join(bits)})"


def _drop(handles: list[LensHandle], including_permanent: bool, level: Optional[int]) -> list[LensHandle]:
    kept = []
    for h in handles:
        if _in_scope(h, including_permanent, level):
            h.hook.remove()
        else:
            kept.append(h)
    return kept
