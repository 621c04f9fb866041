"""Phi-2 interpretability workbench: a hookable Phi model, an HDF5 activation store, analysis tools.

Names are imported lazily (PEP 562) so that ``workbench --help`` starts without
importing torch; ``from workbench import PhiModel`` works as usual.
"""
from __future__ import annotations

import importlib
from typing import Any

from . import _moved

__version__ = "0.1.0"
_moved.install()

_LAZY = {
    "PhiConfig": "workbench.model", "PhiModel": "workbench.model", "Tokenizer": "workbench.model",
    "KVCache": "workbench.model", "ActivationCache": "workbench.hooks", "HookPoint": "workbench.hooks",
    "get_act_name": "workbench.hooks",
}
__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'workbench' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
