"""Keep freed memory in the process, so a cache of every hook does not page-fault its memory in anew each run.

With glibc's defaults, freeing a large cache hands most of its memory back to the
kernel (the heap top is trimmed beyond a threshold that tops out at 64 MiB), and the
next ``run_with_cache`` takes it back one zeroed 4 KiB page fault at a time. Measured
(docs/bench-model.md): at small sizes those faults made caching every hook cost 1.3x
HF's forward in wall time on a loaded 2-core machine, against ~1.0x with the memory
kept. So ``run_with_cache`` tells glibc to serve allocations below 32 MiB (its largest
mmap threshold) from the heap and to keep as much freed heap as the largest cache of
the process so far (at least 64 MiB, glibc's own ceiling): the previous cache's buffers
are then reused by the next one. Memory held beyond use is bounded by what the largest
cache took anyway; larger blocks are still mapped and returned as before.

Nothing is changed on other C libraries, when the user set glibc's ``MALLOC_*``
variables, or when ``WORKBENCH_KEEP_FREED_MEMORY=0``.
"""
from __future__ import annotations

import ctypes
import os
import platform

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3      # glibc's mallopt parameter numbers (malloc.h)
MMAP_THRESHOLD = 32 * 2**20                       # glibc's maximum (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit)
MIN_KEEP = 64 * 2**20                             # glibc's own dynamic trim threshold tops out here

_mallopt = None        # set once the policy is in force
_keep = 0              # the trim threshold in force, bytes


def _glibc_mallopt():
    if os.environ.get("WORKBENCH_KEEP_FREED_MEMORY", "1") == "0" or platform.libc_ver()[0] != "glibc":
        return None
    if any(k in os.environ for k in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_MMAP_MAX_")):
        return None    # the user chose their own allocator settings
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return None
    # Threshold first: setting either turns off glibc's dynamic thresholds, and a trim threshold
    # alone would leave the mmap threshold at its 128 KiB default (many more faults, not fewer).
    return mallopt if mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 else None


def keep_freed_memory(cache_bytes: int = 0) -> bool:
    """Keep at least ``cache_bytes`` (and 64 MiB) of freed heap in the process; True if the policy is in force."""
    global _mallopt, _keep
    if _mallopt is None:
        if _keep < 0:       # tried before and not applicable here
            return False
        _mallopt = _glibc_mallopt()
        if _mallopt is None:
            _keep = -1
            return False
    want = max(MIN_KEEP, int(cache_bytes * 1.25))
    if want > _keep and _mallopt(M_TRIM_THRESHOLD, want) == 1:
        _keep = want
    return True
