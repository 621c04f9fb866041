"""Hook machinery, independent of any model: HookPoint, HookedRootModule, ActivationCache."""
from .cache import ActivationCache, make_cache
from .hook_point import HookPoint, LensHandle
from .names import UnknownHookError, closest_names, get_act_name, match_names
from .root import HookedRootModule, HookIntrospectionMixin

__all__ = ["ActivationCache", "HookIntrospectionMixin", "HookPoint", "HookedRootModule", "LensHandle",
           "UnknownHookError", "closest_names", "get_act_name", "make_cache", "match_names"]
