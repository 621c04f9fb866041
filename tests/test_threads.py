"""The thread policy: one per core less one, at least 1, within the process's affinity."""
from __future__ import annotations

import os

import pytest
import torch

from workbench import threads
from workbench.errors import InputError


def test_policy_follows_the_cores_this_process_may_use(monkeypatch):
    monkeypatch.setattr(threads, "available_cores", lambda: 2)
    assert threads.default_threads() == 1
    monkeypatch.setattr(threads, "available_cores", lambda: 1)
    assert threads.default_threads() == 1
    monkeypatch.setattr(threads, "available_cores", lambda: 16)
    assert threads.default_threads() == 15


def test_available_cores_respects_affinity():
    assert 1 <= threads.available_cores() <= len(os.sched_getaffinity(0))


def test_use_threads_sets_torch(monkeypatch):
    before = torch.get_num_threads()
    try:
        assert threads.use_threads(1) == 1 and torch.get_num_threads() == 1
        monkeypatch.setattr(threads, "available_cores", lambda: 3)
        assert threads.use_threads() == 2 and torch.get_num_threads() == 2
        with pytest.raises(InputError, match="--threads must be at least 1"):
            threads.use_threads(0)
    finally:
        torch.set_num_threads(before)
