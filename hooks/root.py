"""HookedRootModule: the hook API of a model whose submodules hold HookPoints.

The same public surface as TransformerLens's ``HookedRootModule`` (``hook_dict``,
``run_with_hooks``, ``run_with_cache``, ``hooks()``, ``reset_hooks()``,
``add_hook``), written here so that ``import workbench`` does not pay the ~6 s
and ~480 MB of importing TransformerLens (docs/design-decisions.md).
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import torch
from torch import nn

from .cache import ActivationCache, compact
from .hook_point import HookFn, HookPoint
from .names import NamesFilter, match_names

HookSpec = tuple[Union[str, Callable[[str], bool]], HookFn]


class HookedRootModule(nn.Module):
    """Base class for a model with named hook points. Call ``self.setup()`` at the end of ``__init__``."""

    hook_dict: dict[str, HookPoint]
    mod_dict: dict[str, nn.Module]

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

    # -- adding and removing -------------------------------------------------
    def resolve_hooks(self, names_filter: NamesFilter) -> list[str]:
        """Hook names matched by a name, glob, shorthand, list of those, or predicate."""
        return match_names(names_filter, list(self.hook_dict))

    def add_hook(self, name: Union[str, Callable[[str], bool]], hook: HookFn, dir: str = "fwd",
                 is_permanent: bool = False, prepend: bool = False) -> list[Callable[[], None]]:
        """Attach ``hook`` to every matching hook point; returns their remover functions."""
        return [self.hook_dict[n].add_hook(hook, dir=dir, is_permanent=is_permanent, prepend=prepend)
                for n in self.resolve_hooks(name)]

    def add_perma_hook(self, name: Union[str, Callable[[str], bool]], hook: HookFn,
                       dir: str = "fwd") -> list[Callable[[], None]]:
        return self.add_hook(name, hook, dir=dir, is_permanent=True)

    def reset_hooks(self, including_permanent: bool = False) -> None:
        """Remove every hook (permanent ones only if ``including_permanent``)."""
        for hp in self.hook_dict.values():
            hp.remove_hooks("both", including_permanent=including_permanent)

    remove_all_hook_fns = reset_hooks

    def clear_contexts(self) -> None:
        for hp in self.hook_dict.values():
            hp.clear_context()

    @contextlib.contextmanager
    def hooks(self, fwd_hooks: Sequence[HookSpec] = (), bwd_hooks: Sequence[HookSpec] = (),
              reset_hooks_end: bool = True, clear_contexts: bool = False) -> Iterator["HookedRootModule"]:
        """Attach hooks for the duration of a ``with`` block; they go even if the block raises.

        Every name is checked before any hook is attached, so a typo attaches nothing.
        """
        plan = [(self.resolve_hooks(n), fn, "fwd") for n, fn in fwd_hooks]
        plan += [(self.resolve_hooks(n), fn, "bwd") for n, fn in bwd_hooks]
        removers: list[Callable[[], None]] = []
        try:
            for names, fn, direction in plan:
                for n in names:
                    removers.append(self.hook_dict[n].add_hook(fn, dir=direction))
            yield self
        finally:
            if reset_hooks_end:
                for remove in reversed(removers):
                    remove()
            if clear_contexts:
                self.clear_contexts()

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
                          pos_slice: Optional[slice] = None
                          ) -> tuple[dict, list[HookSpec], list[HookSpec]]:
        """Hooks that store detached activations (and gradients, as ``name + "_grad"``) in ``cache``."""
        cache = {} if cache is None else cache
        names = self.resolve_hooks(names_filter)

        def save(key: str) -> HookFn:
            def hook(t: torch.Tensor, hook: HookPoint) -> None:
                t = t.detach()
                if pos_slice is not None:
                    t = t[:, pos_slice] if t.ndim >= 2 else t
                if remove_batch_dim:
                    t = t[0]
                cache[key] = t.to(device) if device is not None else t
            return hook

        fwd = [(n, save(n)) for n in names]
        bwd = [(n, save(n + "_grad")) for n in names] if incl_bwd else []
        return cache, fwd, bwd

    def run_with_cache(self, *args: Any, names_filter: NamesFilter = None,
                       device: Optional[Union[str, torch.device]] = None,
                       remove_batch_dim: bool = False, incl_bwd: bool = False,
                       return_cache_object: bool = True, pos_slice: Optional[slice] = None,
                       **kwargs: Any) -> tuple[Any, Union[ActivationCache, dict]]:
        """Run forward once and return ``(output, cache)`` with the matched activations.

        With ``incl_bwd=True`` the output must be a scalar (e.g. ``return_type="loss"``);
        it is backpropagated and each gradient is cached as ``name + "_grad"``.
        """
        cache, fwd, bwd = self.get_caching_hooks(names_filter, incl_bwd, device, remove_batch_dim,
                                                 pos_slice=pos_slice)
        with self.hooks(fwd, bwd):
            out = self(*args, **kwargs)
            if incl_bwd:
                if not (isinstance(out, torch.Tensor) and out.ndim == 0):
                    raise ValueError("incl_bwd=True needs a scalar output to backpropagate: "
                                     "pass return_type='loss' (or a forward that returns a scalar)")
                out.backward()
        compact(cache)
        if return_cache_object:
            return out, ActivationCache(cache, self, has_batch_dim=not remove_batch_dim)
        return out, cache
