"""Fixtures of the ported TransformerLens 4.3 test suite (see README.md in this folder).

Ported tests are TransformerLens's own (MIT License, LICENSE-TransformerLens); each file
says where it comes from and what the port changed.
"""
from __future__ import annotations

import pytest

import tl_port


@pytest.fixture(scope="session")
def phi_model():
    """The shared tiny random PhiModel (read-only use, as TransformerLens's session bridges)."""
    return tl_port.phi_model()


@pytest.fixture(scope="session")
def phi_bridge():
    """TransformerLens's TransformerBridge over the same weights, for the numbers tests pinned on gpt2."""
    return tl_port.phi_bridge()


def pytest_collection_modifyitems(items):
    for item in items:
        if "tl_suite" in str(item.fspath):
            item.add_marker(pytest.mark.tl_suite)


@pytest.fixture(scope="session")
def phi_goldens(phi_bridge):
    """TransformerLens's golden artifacts, recomputed through the bridge over the same weights."""
    return tl_port.BridgeGoldens(phi_bridge)
