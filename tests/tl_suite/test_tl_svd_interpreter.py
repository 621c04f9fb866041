"""Ported from TransformerLens 4.3.0 tests/unit/test_svd_interpreter.py (MIT License, see LICENSE-TransformerLens).

Port: the tiny random PhiModel (6 layers, as distilgpt2) in place of distilgpt2 and gpt2;
the expected singular vectors are recomputed through TransformerLens's bridge over the
same weights, and the head-index message uses this model's 4 heads (gpt2 has 12).
"""
import jaxtyping
import pytest
import torch

from transformer_lens import SVDInterpreter
from transformer_lens.model_bridge import TransformerBridge

from tl_port import new_phi_model, phi_bridge, phi_model



# Get TypeCheckError from jaxtyping module (it may be re-exported from typeguard)
TypeCheckError = getattr(jaxtyping, "TypeCheckError", None)
if TypeCheckError is None:
    # Fallback to typeguard
    from typeguard import TypeCheckError

MODEL = "distilgpt2"
VECTOR_TYPES = ["OV", "w_in", "w_out"]
ATOL = 2e-4  # Absolute tolerance for float comparisons



@pytest.fixture(scope="module")
def model():
    return phi_model()  # Port: the tiny random PhiModel in place of distilgpt2


@pytest.fixture(scope="module")
def unfolded_model():
    return phi_model()  # Port: PhiModel never folds LayerNorm weights (HF numerics)


@pytest.fixture(scope="module")
def second_model():
    return new_phi_model(seed=1)  # Port: other random weights in place of gpt2


def _bridge_vectors(vector_type, **kwargs):
    # Port: the expected tensors, captured from distilgpt2, are recomputed through
    # TransformerLens's bridge over the same weights.
    vectors = SVDInterpreter(phi_bridge()).get_singular_vectors(vector_type, **kwargs).abs()
    return vectors.topk(2, dim=0).values


expected_OV_match = _bridge_vectors("OV", num_vectors=4, layer_index=0, head_index=0)
expected_w_in_match = _bridge_vectors("w_in", num_vectors=4, layer_index=0, head_index=0)
expected_w_in_unfolded_match = expected_w_in_match
expected_w_out_match = _bridge_vectors("w_out", num_vectors=4, layer_index=0, head_index=0)

# Successes


def test_svd_interpreter(model):
    svd_interpreter = SVDInterpreter(model)
    ov = svd_interpreter.get_singular_vectors(
        "OV", num_vectors=4, layer_index=0, head_index=0
    ).abs()
    w_in = svd_interpreter.get_singular_vectors(
        "w_in", num_vectors=4, layer_index=0, head_index=0
    ).abs()
    w_out = svd_interpreter.get_singular_vectors(
        "w_out", num_vectors=4, layer_index=0, head_index=0
    ).abs()

    ov, w_in, w_out = (
        ov.topk(2, dim=0).values,
        w_in.topk(2, dim=0).values,
        w_out.topk(2, dim=0).values,
    )
    assert ov.shape == w_in.shape == w_out.shape == expected_OV_match.shape
    assert torch.allclose(ov.cpu(), expected_OV_match, atol=ATOL)
    assert torch.allclose(w_in.cpu(), expected_w_in_match, atol=ATOL)
    assert torch.allclose(w_out.cpu(), expected_w_out_match, atol=ATOL)


def test_w_in_when_fold_ln_is_false(unfolded_model):
    svd_interpreter = SVDInterpreter(unfolded_model)
    w_in = svd_interpreter.get_singular_vectors(
        "w_in", num_vectors=4, layer_index=0, head_index=0
    ).abs()
    w_in = w_in.topk(2, dim=0).values
    assert torch.allclose(w_in.cpu(), expected_w_in_unfolded_match, atol=ATOL)


def test_svd_interpreter_returns_different_answers_for_different_layers(model):
    svd_interpreter = SVDInterpreter(model)
    ov = svd_interpreter.get_singular_vectors(
        "OV", layer_index=1, num_vectors=4, head_index=0
    ).abs()
    w_in = svd_interpreter.get_singular_vectors(
        "w_in", layer_index=1, num_vectors=4, head_index=0
    ).abs()
    w_out = svd_interpreter.get_singular_vectors(
        "w_out", layer_index=1, num_vectors=4, head_index=0
    ).abs()

    ov, w_in, w_out = (
        ov.topk(2, dim=0).values,
        w_in.topk(2, dim=0).values,
        w_out.topk(2, dim=0).values,
    )
    assert ov.shape == w_in.shape == w_out.shape == expected_OV_match.shape
    assert not torch.allclose(ov.cpu(), expected_OV_match, atol=ATOL)
    assert not torch.allclose(w_in.cpu(), expected_w_in_match, atol=ATOL)
    assert not torch.allclose(w_out.cpu(), expected_w_out_match, atol=ATOL)


def test_svd_interpreter_returns_different_answers_for_different_models(second_model):
    svd_interpreter = SVDInterpreter(second_model)
    ov = svd_interpreter.get_singular_vectors(
        "OV", layer_index=1, num_vectors=4, head_index=0
    ).abs()
    w_in = svd_interpreter.get_singular_vectors(
        "w_in", layer_index=1, num_vectors=4, head_index=0
    ).abs()
    w_out = svd_interpreter.get_singular_vectors(
        "w_out", layer_index=1, num_vectors=4, head_index=0
    ).abs()

    ov, w_in, w_out = (
        ov.topk(2, dim=0).values,
        w_in.topk(2, dim=0).values,
        w_out.topk(2, dim=0).values,
    )
    assert not torch.allclose(ov.cpu(), expected_OV_match, atol=ATOL)
    assert not torch.allclose(w_in.cpu(), expected_w_in_match, atol=ATOL)
    assert not torch.allclose(w_out.cpu(), expected_w_out_match, atol=ATOL)


# Failures


def test_svd_interpreter_fails_on_invalid_vector_type(model):
    svd_interpreter = SVDInterpreter(model)
    # Type checking can be done by jaxtyping (TypeCheckError) or beartype (BeartypeCallHintParamViolation)
    # Catch by checking the exception type name since jaxtyping may wrap typeguard's exception
    with pytest.raises(Exception) as exc_info:
        svd_interpreter.get_singular_vectors("test", layer_index=0, num_vectors=4, head_index=0)
    # Verify it's a type checking error (from jaxtyping, typeguard, or beartype)
    exc_name = type(exc_info.value).__name__
    assert "TypeCheckError" in exc_name or "Beartype" in exc_name
    assert "type-check" in str(exc_info.value).lower() or "vector_type" in str(exc_info.value)


def test_svd_interpreter_fails_on_not_passing_required_head_index(model):
    svd_interpreter = SVDInterpreter(model)
    with pytest.raises(AssertionError) as e:
        svd_interpreter.get_singular_vectors("OV", layer_index=0, num_vectors=4)
    assert str(e.value) == "Head index optional only for w_in and w_out, got OV"


def test_svd_interpreter_fails_on_invalid_layer_index(model):
    svd_interpreter = SVDInterpreter(model)
    for vector in VECTOR_TYPES:
        with pytest.raises(AssertionError) as e:
            svd_interpreter.get_singular_vectors(vector, layer_index=6, num_vectors=4, head_index=0)
        assert str(e.value) == "Layer index must be between 0 and 5 but got 6"


def test_svd_interpreter_fails_on_invalid_head_index(model):
    # Only OV uses head index.
    svd_interpreter = SVDInterpreter(model)
    with pytest.raises(AssertionError) as e:
        svd_interpreter.get_singular_vectors("OV", layer_index=0, num_vectors=4, head_index=12)
    assert str(e.value) == f"Head index must be between 0 and {model.cfg.n_heads - 1} but got 12"
