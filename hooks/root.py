"""HookedRootModule: the hook API of a model whose submodules hold HookPoints.

The same public surface as TransformerLens's ``HookedRootModule`` (``hook_dict``,
``run_with_hooks``, ``run_with_cache``, ``hooks()``, ``reset_hooks()``, ``add_hook``,
``add_caching_hooks``, ``list_hooks``, context levels), written here so that
``import workbench`` does not pay for importing TransformerLens (docs/bench-model.md).
Hook names may also be globs, TransformerLens shorthands or predicates, and a name
that matches nothing raises an error listing the closest names.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import torch
from torch import nn

from .cache import ActivationCache, cache_nbytes, compact, make_cache
from .caching import as_position_index, save_hook
from .hook_point import HookFn, HookPoint, LensHandle, _in_scope
from .memory import keep_freed_memory
from .names import NamesFilter, match_names

HookSpec = tuple[Union[str, Callable[[str], bool]], HookFn]


class HookIntrospectionMixin:
    """``list_hooks()`` for any class with a ``hook_dict`` (attribute or property)."""

    def list_hooks(self, name_filter: NamesFilter = None, dir: str = "both",
                   including_permanent: bool = True) -> dict[str, list[LensHandle]]:
        """Attached hooks by hook-point name (points without hooks left out).

        ``name_filter`` is an exact name, a list of names or a predicate (``None``: all).
        """
        if name_filter is None:
            matches: Callable[[str], bool] = lambda n: True
        elif callable(name_filter):
            matches = name_filter
        elif isinstance(name_filter, str):
            matches = lambda n: n == name_filter   # noqa: E731
        else:
            allowed = set(name_filter)
            matches = lambda n: n in allowed   # noqa: E731
        out: dict[str, list[LensHandle]] = {}
        for name, hp in getattr(self, "hook_dict").items():
            if not matches(name):
                continue
            handles = (hp.fwd_hooks if dir != "bwd" else []) + (hp.bwd_hooks if dir != "fwd" else [])
            handles = [h for h in handles if _in_scope(h, including_permanent, None)]
            if handles:
                out[name] = handles
        return out


class HookedRootModule(HookIntrospectionMixin, nn.Module):
    """Base class for a model with named hook points. Call ``self.setup()`` at the end of ``__init__``."""

    hook_dict: dict[str, HookPoint]
    mod_dict: dict[str, nn.Module]

    def __init__(self, *args: Any) -> None:
        super().__init__()
        self.is_caching = False
        self.context_level = 0

    def setup(self) -> None:
        """Name every HookPoint after its module path and index them in ``hook_dict``."""
        self.mod_dict = {}
        self.hook_dict = {}
        for name, module in self.named_modules():
            if name == "":
                continue
            module.name = name  # type: ignore[assignment]
            self.mod_dict[name] = module
            if isinstance(module, HookPoint):
                self.hook_dict[name] = module

    def hook_points(self) -> list[HookPoint]:
        return list(self.hook_dict.values())

    def _fires_by_default(self, name: str) -> bool:
        """Whether an unfiltered ``run_with_cache`` caches ``name`` (models override for switched hooks)."""
        return True

    # -- adding and removing -------------------------------------------------
    def resolve_hooks(self, names_filter: NamesFilter) -> list[str]:
        """Hook names matched by a name, glob, shorthand, list of those, or predicate."""
        if isinstance(names_filter, str) and names_filter in self.hook_dict:
            return [names_filter]        # the common case (caching hooks name each point): no scan
        return match_names(names_filter, list(self.hook_dict))

    def check_hooks_to_add(self, hook_point: HookPoint, hook_point_name: str, hook: HookFn, dir: str = "fwd",
                           is_permanent: bool = False, prepend: bool = False) -> None:
        """Override to veto hooks before they are added (TransformerLens's extension point)."""

    def check_and_add_hook(self, hook_point: HookPoint, hook_point_name: str, hook: HookFn, dir: str = "fwd",
                           is_permanent: bool = False, level: Optional[int] = None,
                           prepend: bool = False) -> LensHandle:
        self.check_hooks_to_add(hook_point, hook_point_name, hook, dir=dir, is_permanent=is_permanent,
                                prepend=prepend)
        return hook_point.add_hook(hook, dir=dir, is_permanent=is_permanent, level=level, prepend=prepend)

    def add_hook(self, name: Union[str, Callable[[str], bool]], hook: HookFn, dir: str = "fwd",
                 is_permanent: bool = False, level: Optional[int] = None,
                 prepend: bool = False) -> list[LensHandle]:
        """Attach ``hook`` to every matching hook point; returns their handles."""
        return [self.check_and_add_hook(self.hook_dict[n], n, hook, dir, is_permanent, level, prepend)
                for n in self.resolve_hooks(name)]

    def add_perma_hook(self, name: Union[str, Callable[[str], bool]], hook: HookFn,
                       dir: str = "fwd") -> list[LensHandle]:
        return self.add_hook(name, hook, dir=dir, is_permanent=True)

    def remove_all_hook_fns(self, direction: str = "both", including_permanent: bool = False,
                            level: Optional[int] = None) -> None:
        for hp in self.hook_dict.values():
            hp.remove_hooks(direction, including_permanent=including_permanent, level=level)

    def reset_hooks(self, clear_contexts: bool = True, direction: str = "both",
                    including_permanent: bool = False, level: Optional[int] = None) -> None:
        """Remove hooks (permanent ones only if ``including_permanent``; only ``level`` if given)."""
        if clear_contexts:
            self.clear_contexts()
        self.remove_all_hook_fns(direction, including_permanent, level=level)
        self.is_caching = False

    def clear_contexts(self) -> None:
        for hp in self.hook_dict.values():
            hp.clear_context()

    @contextlib.contextmanager
    def hooks(self, fwd_hooks: Sequence[HookSpec] = (), bwd_hooks: Sequence[HookSpec] = (),
              reset_hooks_end: bool = True, clear_contexts: bool = False) -> Iterator["HookedRootModule"]:
        """Attach hooks for the duration of a ``with`` block; they go even if the block raises.

        Every name is checked before any hook is attached, so a typo attaches nothing.
        Hooks are tagged with this block's context level; on exit the block removes its
        own hooks and leaves every hook attached before it (or permanently) in place.
        """
        plan = [(self.resolve_hooks(n), fn, "fwd") for n, fn in fwd_hooks]
        plan += [(self.resolve_hooks(n), fn, "bwd") for n, fn in bwd_hooks]
        self.context_level += 1
        level = self.context_level
        added: list[tuple[HookPoint, LensHandle]] = []
        try:
            for names, fn, direction in plan:
                for n in names:
                    hp = self.hook_dict[n]
                    added.append((hp, self.check_and_add_hook(hp, n, fn, direction, level=level)))
            yield self
        finally:
            try:
                if reset_hooks_end:
                    for hp, handle in reversed(added):
                        hp.remove_handle(handle)
                if clear_contexts:
                    self.clear_contexts()
            finally:
                self.context_level -= 1

    # -- running -------------------------------------------------------------
    def run_with_hooks(self, *args: Any, fwd_hooks: Sequence[HookSpec] = (),
                       bwd_hooks: Sequence[HookSpec] = (), reset_hooks_end: bool = True,
                       clear_contexts: bool = False, **kwargs: Any) -> Any:
        """Run the forward pass with temporary hooks (TransformerLens's signature).

        Backward hooks fire during a later ``.backward()``; pass
        ``reset_hooks_end=False`` to keep them attached until then.
        """
        if bwd_hooks and reset_hooks_end:
            raise ValueError("backward hooks would be removed before .backward() runs: "
                             "pass reset_hooks_end=False, or use the model.hooks(...) context manager "
                             "around both the forward and the backward")
        with self.hooks(fwd_hooks, bwd_hooks, reset_hooks_end, clear_contexts):
            return self(*args, **kwargs)

    def get_caching_hooks(self, names_filter: NamesFilter = None, incl_bwd: bool = False,
                          device: Optional[Union[str, torch.device]] = None,
                          remove_batch_dim: bool = False, cache: Optional[dict] = None,
                          pos_slice: Any = None) -> tuple[dict, list[HookSpec], list[HookSpec]]:
        """Hooks that store detached activations (and gradients, as ``name + "_grad"``) in ``cache``.

        Returns ``(cache, fwd_hooks, bwd_hooks)``; attach them with ``hooks()``. ``pos_slice``
        as in ``run_with_cache``; ``remove_batch_dim`` drops a leading dim of size 1.
        """
        cache = {} if cache is None else cache
        index = as_position_index(pos_slice)
        names = self.resolve_hooks(names_filter) if names_filter is not None else \
            [n for n in self.hook_dict if self._fires_by_default(n)]
        self.is_caching = True
        fwd = [(n, save_hook(cache, n, device, remove_batch_dim, index)) for n in names]
        bwd = [(n, save_hook(cache, n + "_grad", device, remove_batch_dim, index)) for n in names] \
            if incl_bwd else []
        return cache, fwd, bwd

    def add_caching_hooks(self, names_filter: NamesFilter = None, incl_bwd: bool = False,
                          device: Optional[Union[str, torch.device]] = None, remove_batch_dim: bool = False,
                          cache: Optional[dict] = None) -> dict:
        """Attach caching hooks that stay until ``reset_hooks()``; returns the dict they fill."""
        cache, fwd, bwd = self.get_caching_hooks(names_filter, incl_bwd, device, remove_batch_dim, cache)
        for (name, fn), direction in [(h, "fwd") for h in fwd] + [(h, "bwd") for h in bwd]:
            self.hook_dict[name].add_hook(fn, dir=direction)
        return cache

    def cache_all(self, cache: Optional[dict], incl_bwd: bool = False,
                  device: Optional[Union[str, torch.device]] = None, remove_batch_dim: bool = False) -> dict:
        """Deprecated (as in TransformerLens): use ``add_caching_hooks`` or ``run_with_cache``."""
        warnings.warn("cache_all is deprecated: use add_caching_hooks or run_with_cache",
                      DeprecationWarning, stacklevel=2)
        return self.add_caching_hooks(None, incl_bwd, device, remove_batch_dim, cache)

    def cache_some(self, cache: Optional[dict], names: NamesFilter, incl_bwd: bool = False,
                   device: Optional[Union[str, torch.device]] = None, remove_batch_dim: bool = False) -> dict:
        """Deprecated (as in TransformerLens): use ``add_caching_hooks`` or ``run_with_cache``."""
        warnings.warn("cache_some is deprecated: use add_caching_hooks or run_with_cache",
                      DeprecationWarning, stacklevel=2)
        return self.add_caching_hooks(names, incl_bwd, device, remove_batch_dim, cache)

    def run_with_cache(self, *args: Any, names_filter: NamesFilter = None,
                       device: Optional[Union[str, torch.device]] = None,
                       remove_batch_dim: bool = False, incl_bwd: bool = False,
                       reset_hooks_end: bool = True, clear_contexts: bool = False,
                       pos_slice: Any = None, return_cache_object: bool = True,
                       **kwargs: Any) -> tuple[Any, Union[ActivationCache, dict]]:
        """Run forward once and return ``(output, cache)`` with the matched activations.

        ``remove_batch_dim`` needs a batch of 1 (an ``AssertionError`` otherwise, as in
        TransformerLens). With ``incl_bwd=True`` the output must be a scalar (e.g.
        ``return_type="loss"``); it is backpropagated and each gradient is cached as
        ``name + "_grad"``. The cache is a ``transformer_lens.ActivationCache`` too once
        TransformerLens has been imported.
        """
        _check_run_with_cache(args, kwargs, remove_batch_dim, incl_bwd)
        cache, fwd, bwd = self.get_caching_hooks(names_filter, incl_bwd, device, remove_batch_dim,
                                                 pos_slice=pos_slice)
        with self.hooks(fwd, bwd, reset_hooks_end, clear_contexts):
            out = self(*args, **kwargs)
            if incl_bwd:
                _backward_scalar(out)
        if reset_hooks_end:
            compact(cache)   # hooks left attached keep writing to this dict: leave it alone
        # The next call reuses this call's buffers (memory.py): the cache's and the output's.
        held = {**cache, "": out} if isinstance(out, torch.Tensor) else cache
        keep_freed_memory(cache_nbytes({k: v for k, v in held.items() if v.device.type == "cpu"}))
        if return_cache_object:
            return out, make_cache(cache, self, has_batch_dim=not remove_batch_dim)
        return out, cache


def _check_run_with_cache(args: tuple, kwargs: dict, remove_batch_dim: bool, incl_bwd: bool) -> None:
    """The argument checks TransformerLens makes before running (clear errors, nothing attached)."""
    if remove_batch_dim and args and isinstance(args[0], torch.Tensor):
        batch = args[0].shape[0] if args[0].ndim > 1 else 1
        assert batch == 1, f"Cannot remove batch dimension from cache with batch size {batch}"
    if incl_bwd and kwargs.get("stop_at_layer") is not None:
        raise ValueError("incl_bwd=True cannot be combined with stop_at_layer: the run returns the "
                         "residual stream at that layer, not a scalar to call backward() on")
    if incl_bwd and not torch.is_grad_enabled():
        raise ValueError("incl_bwd=True needs autograd, but gradient tracking is off (torch.no_grad(), "
                         "set_grad_enabled(False) or inference mode): run the call with gradients enabled")


def _backward_scalar(out: Any) -> None:
    if not (isinstance(out, torch.Tensor) and out.numel() == 1):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"incl_bwd=True needs a scalar output to backpropagate, got {shape}: "
                         "pass return_type='loss' (or a forward that returns a scalar)")
    if not out.requires_grad:
        raise ValueError("incl_bwd=True got an output with no grad_fn: no parameter or input requires "
                         "gradients, so there is nothing to differentiate")
    out.backward()
