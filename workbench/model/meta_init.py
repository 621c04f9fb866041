"""Build modules on the meta device without running their random initialisers.

A meta tensor has a shape and no values, so initialising it is wasted work, and
not free: ``Tensor.normal_`` (what ``nn.Embedding`` calls) has no meta kernel,
so on meta it runs torch's Python reference implementation, whose first use
imports sympy and ~820 other modules (measured: 2.2 s alone, 3.9 s of a 5.6 s
load on a busy 2-core machine, ~75 MB of RSS). ``meta_device()`` makes the
in-place initialisers return their meta input untouched.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

# torch.nn.init's functions (what the nn layers' reset_parameters() call; each dispatches to a
# mode with its tensor) and the in-place random fills they are built on.
_INITIALISERS = frozenset(
    [getattr(nn.init, name) for name in ("normal_", "uniform_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_",
                                         "xavier_uniform_", "xavier_normal_", "orthogonal_", "sparse_", "constant_",
                                         "ones_", "zeros_", "eye_", "dirac_")]
    + [torch.Tensor.normal_, torch.Tensor.uniform_, torch.Tensor.bernoulli_, torch.Tensor.exponential_,
       torch.Tensor.geometric_, torch.Tensor.log_normal_, torch.Tensor.cauchy_, torch.Tensor.random_])


class _SkipMetaInit(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _INITIALISERS:
            tensor = args[0] if args else kwargs.get("tensor")
            if isinstance(tensor, torch.Tensor) and tensor.is_meta:
                return tensor
        return func(*args, **kwargs)


@contextlib.contextmanager
def meta_device() -> Iterator[None]:
    """``with meta_device(): model = Cls(cfg)``: parameters on meta, no initialiser run."""
    with torch.device("meta"), _SkipMetaInit():
        yield
