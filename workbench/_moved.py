"""Old module names that still import, with a FutureWarning, for one release.

Modules were renamed so that each says its job (docs/architecture.md). An old
name resolves to the module under its new name (the same module object, so
classes and isinstance checks agree) and warns once where it is imported.
Installed by ``import workbench``; remove an entry one release after its rename.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

MOVED = {
    "workbench.model.checkpoint": "workbench.model.hf_format",
    "workbench.model.transformer_lens": "workbench.model.tl_bridge",
    "workbench.analysis_demo": "workbench.analysis.cache_summary",
    "workbench.training.checkpoint": "workbench.training.run_state",
    "workbench.store.probe": "workbench.store.dataset",
    "workbench.tasks": "workbench.analysis.tasks",
}


class _Alias(importlib.abc.Loader):
    def __init__(self, new: str) -> None:
        self.new = new

    def create_module(self, spec):  # the module object is the renamed module itself
        return importlib.import_module(self.new)

    def exec_module(self, module) -> None:
        pass


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Finds ``MOVED`` names before the path finders (which would not find them)."""

    def find_spec(self, fullname, path=None, target=None):
        new = MOVED.get(fullname)
        if new is None:
            return None
        warnings.warn(f"{fullname} is now {new}; the old name goes in the next release",
                      FutureWarning, stacklevel=3)
        return importlib.util.spec_from_loader(fullname, _Alias(new))


def install() -> None:
    if not any(isinstance(f, MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, MovedModuleFinder())
