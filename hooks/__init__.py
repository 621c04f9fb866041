"""Hook machinery, independent of any model: HookPoint, HookedRootModule, ActivationCache."""
from .cache import ActivationCache
from .hook_point import HookPoint
from .names import UnknownHookError, closest_names, get_act_name, match_names
from .root import HookedRootModule

__all__ = ["ActivationCache", "HookPoint", "HookedRootModule", "UnknownHookError",
           "closest_names", "get_act_name", "match_names"]
