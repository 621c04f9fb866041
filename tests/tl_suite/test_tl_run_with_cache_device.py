"""Ported from TransformerLens 4.3.0 tests/integration/model_bridge/test_bridge_run_with_cache_device.py (MIT License, see LICENSE-TransformerLens).

Port: the model is the tiny random PhiModel; the spy is on the model's own .to (the bridge
spies on its wrapped HF model).
"""
from unittest.mock import patch

import pytest


@pytest.fixture()
def distilgpt2_bridge(phi_model):
    """Port: the tiny random PhiModel in place of distilgpt2."""
    return phi_model


@pytest.fixture()
def bridge(distilgpt2_bridge):
    """Alias the session fixture for concise test signatures."""
    return distilgpt2_bridge


def test_run_with_cache_device_does_not_move_model(bridge):
    """`run_with_cache(device=...)` must not relocate the underlying model.

    CPU runners cannot reproduce the original cross-device crash directly
    (`to('cpu')` is a no-op there), so we spy on `original_model.to` with
    `Mock(wraps=...)` and assert it isn't invoked during the call. That
    catches the regression on any platform.
    """
    with patch.object(bridge, "to", wraps=bridge.to) as to_spy:
        _, cache = bridge.run_with_cache(bridge.to_tokens("hello"), device="cpu")

    assert to_spy.call_count == 0, (
        f"run_with_cache(device=...) moved the underlying model "
        f"({to_spy.call_count} call(s): {to_spy.call_args_list})."
    )
    # And the cache itself still lands on the requested device.
    assert next(iter(cache.values())).device.type == "cpu"
