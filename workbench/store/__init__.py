"""The HDF5 activation store: a versioned format, a background-thread writer, lazy readers, and
``cache_activations`` (the job behind ``workbench cache``).

See docs/activation-store.md for the format and the ``workbench cache`` / ``workbench inspect`` commands.
"""
from .dataset import ProbeDataset
from .format import FORMAT_NAME, FORMAT_VERSION
from .lock import WriterLock
from .reader import ActivationStore, CacheStore, HookView, Recording, StepView
from .source import ActivationSource, StepSource
from .virtual import join_stores
from .writer import RecordingWriter, StoreWriter
from .cache_job import CacheJob, CachePlan, CacheResult, cache_activations

__all__ = ["ActivationSource", "ActivationStore", "CacheJob", "CachePlan", "CacheResult", "CacheStore", "FORMAT_NAME", "FORMAT_VERSION", "HookView",
           "ProbeDataset", "Recording", "RecordingWriter", "StepSource", "StepView", "StoreWriter", "WriterLock",
           "cache_activations", "join_stores"]
