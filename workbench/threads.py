"""How many threads torch uses: one policy that commands, notebooks and analysis helpers call.

torch's default (one thread per core) is the worst choice on small machines: on a 2-core
box a tiny model's forward ran several times slower with 2 threads than with 1, because
OpenMP's spinning team competes with everything else that runs (the store's writer
thread, the tokenizer, other processes), and a team that loses a core stalls at every
barrier. Measured for ``workbench cache`` in docs/bench-store.md ("Threads"): one thread
per core, less one for the store's writer thread and the rest of the process, at least 1.
"""
from __future__ import annotations

import os
from typing import Optional

import torch

from workbench.errors import InputError


def available_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup CPU quota if one is set."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:          # not on Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def default_threads() -> int:
    """The thread count the workbench uses unless told otherwise: cores - 1, at least 1."""
    return max(1, available_cores() - 1)


def use_threads(n: Optional[int] = None) -> int:
    """Set torch's intra-op threads to ``n`` (None: ``default_threads()``); returns the count set."""
    if n is None:
        n = default_threads()
    if n < 1:
        raise InputError(f"--threads must be at least 1, got {n}")
    torch.set_num_threads(int(n))
    return int(n)
