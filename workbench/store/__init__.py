"""The HDF5 activation store: a versioned format, a background-thread writer, a lazy reader.

See docs/activation-store.md for the format and the ``workbench cache`` / ``workbench inspect`` commands.
"""
from .format import FORMAT_NAME, FORMAT_VERSION
from .probe import ProbeDataset
from .reader import ActivationStore, HookView, StepView
from .virtual import join_stores
from .writer import StoreWriter

__all__ = ["ActivationStore", "FORMAT_NAME", "FORMAT_VERSION", "HookView", "ProbeDataset", "StepView",
           "StoreWriter", "join_stores"]
