"""Ported from TransformerLens 4.3.0 tests/integration/test_head_detector.py (MIT License, see LICENSE-TransformerLens).

Port: the tiny random PhiModel (BOS prepended by default, as solu-2l) in place of solu-2l;
the expected tensors are recomputed through TransformerLens's bridge over the same weights.
"""
import math

import pytest
import torch

from transformer_lens.head_detector import (
    HEAD_NAMES,
    ErrorMeasure,
    detect_head,
    get_duplicate_token_head_detection_pattern,
    get_induction_head_detection_pattern,
    get_previous_token_head_detection_pattern,
)

from tl_port import new_phi_model, phi_bridge



ATOL = 1e-4
# ATOL is set to 1e-4 because the tensors we check on are also to 4 decimal places.

# Port: the tiny random PhiModel in place of solu-2l. Like solu-2l it prepends BOS by default
# (the tests count it: "Four tokens including BOS"); the expected tensors, which were
# captured from solu-2l, are recomputed through TransformerLens's bridge over the same weights.
model = new_phi_model()
model.cfg.default_prepend_bos = True
test_regular_sequence = " four token sequence"  # Four tokens including BOS
test_duplicated_sequence = " seven token sequence seven token sequence"
test_duplicated_sequence2 = " one two three one two three"
test_regular_sequence_padded = " 2 2 2 seven token seq"
zeros_detection_pattern = torch.zeros(model.cfg.n_layers, model.cfg.n_heads)
test_duplicated_seq_len = model.to_tokens(test_duplicated_sequence).shape[-1]


def _bridge_detect(seq, head_name, **kwargs):
    bridge = phi_bridge()
    saved, bridge.cfg.default_prepend_bos = bridge.cfg.default_prepend_bos, True
    try:
        return detect_head(bridge, seq, head_name, **kwargs)
    finally:
        bridge.cfg.default_prepend_bos = saved


def _expected(seq, head_name, **kwargs):
    return {m: _bridge_detect(seq, head_name, error_measure=m, **kwargs) for m in ("mul", "abs")}


_e = _expected(test_regular_sequence, "previous_token_head")
expected_regular_sequence_previous_match_mul, expected_regular_sequence_previous_match_abs = _e["mul"], _e["abs"]
_e = _expected(test_duplicated_sequence, "previous_token_head")
expected_duplicated_sequence_previous_match_mul, expected_duplicated_sequence_previous_match_abs = _e["mul"], _e["abs"]
_e = _expected(test_duplicated_sequence, "duplicate_token_head")
expected_duplicated_sequence_duplicate_match_mul, expected_duplicated_sequence_duplicate_match_abs = _e["mul"], _e["abs"]
_e = _expected(test_duplicated_sequence, "induction_head")
expected_duplicated_sequence_induction_match_mul, expected_duplicated_sequence_induction_match_abs = _e["mul"], _e["abs"]
_e = _expected(test_regular_sequence, "previous_token_head", exclude_bos=True)
expected_previous_exclude_bos_match_mul, expected_previous_exclude_bos_match_abs = _e["mul"], _e["abs"]
_e = _expected(test_regular_sequence, "previous_token_head", exclude_current_token=True)
expected_previous_exclude_current_token_match_mul = _e["mul"]
expected_previous_exclude_current_token_match_abs = _e["abs"]
_e = _expected(test_regular_sequence, "previous_token_head", exclude_bos=True, exclude_current_token=True)
expected_previous_exclude_bos_and_current_token_match_mul = _e["mul"]
expected_previous_exclude_bos_and_current_token_match_abs = _e["abs"]


# Successes
class Test_detect_head_successful:
    class Test_mul:
        @pytest.mark.parametrize(
            ("head_name", "expected"),
            (
                ("previous_token_head", expected_regular_sequence_previous_match_mul),
                ("duplicate_token_head", zeros_detection_pattern),
                ("induction_head", zeros_detection_pattern),
            ),
        )
        def test_regular_sequence(self, head_name, expected):
            result = detect_head(
                model,
                test_regular_sequence,
                detection_pattern=head_name,
                error_measure="mul",
            )
            assert torch.allclose(result, expected, atol=ATOL)

        @pytest.mark.parametrize(
            ("head_name", "expected"),
            (
                (
                    "previous_token_head",
                    expected_duplicated_sequence_previous_match_mul,
                ),
                (
                    "duplicate_token_head",
                    expected_duplicated_sequence_duplicate_match_mul,
                ),
                ("induction_head", expected_duplicated_sequence_induction_match_mul),
            ),
        )
        def test_duplicated_sequence(self, head_name, expected):
            result = detect_head(
                model,
                test_duplicated_sequence,
                detection_pattern=head_name,
                error_measure="mul",
            )
            assert torch.allclose(result, expected, atol=ATOL)

    class Test_abs:
        @pytest.mark.parametrize(
            ("head_name", "expected"),
            (
                ("previous_token_head", expected_regular_sequence_previous_match_abs),
                ("duplicate_token_head", zeros_detection_pattern),
                ("induction_head", zeros_detection_pattern),
            ),
        )
        def test_regular_sequence(self, head_name, expected):
            result = detect_head(
                model,
                test_regular_sequence,
                detection_pattern=head_name,
                error_measure="abs",
            )
            assert torch.allclose(result, expected, atol=ATOL)

        @pytest.mark.parametrize(
            ("head_name", "expected"),
            (
                (
                    "previous_token_head",
                    expected_duplicated_sequence_previous_match_abs,
                ),
                (
                    "duplicate_token_head",
                    expected_duplicated_sequence_duplicate_match_abs,
                ),
                ("induction_head", expected_duplicated_sequence_induction_match_abs),
            ),
        )
        def test_duplicated_sequence(self, head_name, expected):
            result = detect_head(
                model,
                test_duplicated_sequence,
                detection_pattern=head_name,
                error_measure="abs",
            )
            assert torch.allclose(result, expected, atol=ATOL)


@pytest.mark.parametrize("head_name", HEAD_NAMES)
def test_batched_equal_lengths(head_name):
    result_regular_padded = detect_head(model, test_regular_sequence_padded, head_name)
    result_duplicated = detect_head(model, test_duplicated_sequence, head_name)
    result_duplicated2 = detect_head(model, test_duplicated_sequence2, head_name)
    result_batched = detect_head(
        model,
        [
            test_regular_sequence_padded,
            test_duplicated_sequence,
            test_duplicated_sequence2,
        ],
        head_name,
    )
    expected = (result_regular_padded + result_duplicated + result_duplicated2) / 3
    assert torch.allclose(result_batched, expected, atol=ATOL)


def test_batched_unequal_lengths():
    s1 = test_regular_sequence
    s2 = test_duplicated_sequence
    s3 = [s1, s2]
    r1 = detect_head(model, s1, "previous_token_head")
    r2 = detect_head(model, s2, "previous_token_head")
    r3 = detect_head(model, s3, "previous_token_head")

    assert torch.allclose(r3, (r1 + r2) / 2, atol=ATOL)


@pytest.mark.parametrize(
    "error_measure, expected",
    (
        ("mul", expected_previous_exclude_bos_match_mul),
        ("abs", expected_previous_exclude_bos_match_abs),
    ),
)
def test_detect_head_exclude_bos(error_measure: ErrorMeasure, expected: torch.Tensor):
    assert torch.allclose(
        detect_head(
            model,
            test_regular_sequence,
            "previous_token_head",
            exclude_bos=True,
            error_measure=error_measure,
        ),
        expected,
        atol=ATOL,
    )


@pytest.mark.parametrize(
    "error_measure, expected",
    (
        ("mul", expected_previous_exclude_current_token_match_mul),
        ("abs", expected_previous_exclude_current_token_match_abs),
    ),
)
def test_detect_head_exclude_current_token(error_measure: ErrorMeasure, expected: torch.Tensor):
    assert torch.allclose(
        detect_head(
            model,
            test_regular_sequence,
            "previous_token_head",
            exclude_current_token=True,
            error_measure=error_measure,
        ),
        expected,
        atol=ATOL,
    )


@pytest.mark.parametrize(
    "error_measure, expected",
    (
        ("mul", expected_previous_exclude_bos_and_current_token_match_mul),
        ("abs", expected_previous_exclude_bos_and_current_token_match_abs),
    ),
)
def test_detect_head_exclude_bos_and_current_token(
    error_measure: ErrorMeasure, expected: torch.Tensor
):
    assert torch.allclose(
        detect_head(
            model,
            test_regular_sequence,
            "previous_token_head",
            exclude_bos=True,
            exclude_current_token=True,
            error_measure=error_measure,
        ),
        expected,
        atol=ATOL,
    )


@pytest.mark.parametrize(
    "error_measure, expected",
    (
        ("mul", expected_regular_sequence_previous_match_mul),
        ("abs", expected_regular_sequence_previous_match_abs),
    ),
)
def test_detect_head_with_cache(error_measure: ErrorMeasure, expected: torch.Tensor):
    _, cache = model.run_with_cache(test_regular_sequence, remove_batch_dim=True)
    assert torch.allclose(
        detect_head(
            model,
            test_regular_sequence,
            "previous_token_head",
            cache=cache,
            error_measure=error_measure,
        ),
        expected,
        atol=ATOL,
    )


##########
# Errors #
##########


def test_detect_head_with_invalid_head_name():
    with pytest.raises(Exception) as e:
        detect_head(model, test_regular_sequence, "test")
    # Type checking can be done by jaxtyping (TypeCheckError) or beartype (BeartypeCallHintParamViolation)
    exc_name = type(e.value).__name__
    exc_msg = str(e.value).lower()
    assert "TypeCheckError" in exc_name or "Beartype" in exc_name
    # Check for meaningful error message (different formats for different type checkers)
    assert (
        "type-check" in exc_msg
        or "vector_type" in exc_msg
        or "detection_pattern" in exc_msg
        or "violates type" in exc_msg
    )


def test_detect_head_with_zero_sequence_length():
    with pytest.raises(AssertionError) as e:
        detect_head(model, "", "previous_token_head")
    assert (
        str(e.value)
        == "The sequence must be non-empty and must fit within the model's context window."
    )


def test_detect_head_with_sequence_length_outside_context_window():
    with pytest.raises(AssertionError) as e:
        detect_head(model, "a " * model.cfg.n_ctx, "previous_token_head")
    assert (
        str(e.value)
        == "The sequence must be non-empty and must fit within the model's context window."
    )


def test_detect_head_with_invalid_detection_pattern():
    with pytest.raises(AssertionError) as e:
        detect_head(model, test_duplicated_sequence, torch.ones(4, 4))
    assert "The detection pattern must be a lower triangular" in str(e.value)


class Test_detect_head_non_lower_triangular_detection_pattern:
    detection_pattern = torch.tril(torch.ones(test_duplicated_seq_len, test_duplicated_seq_len))

    def test_no_error(self):
        detect_head(
            model,
            test_duplicated_sequence,
            self.detection_pattern.to(device=model.cfg.device),
        )
        assert True  # ugly, need to make a separate context manager for not raising an error

    def test_raises_error(self):
        detection_pattern = self.detection_pattern.clone()
        detection_pattern[0, 1] = 1
        with pytest.raises(AssertionError) as e:
            detect_head(model, test_duplicated_sequence, detection_pattern)
        assert "The detection pattern must be a lower triangular" in str(e.value)


#################################
# Detecting with specific heads #
#################################


class Test_specific_heads:
    class Test_regular_sentence_previous_token_head:
        match_mul = detect_head(
            model,
            test_regular_sequence,
            "previous_token_head",
            heads=[(0, 0)],
            error_measure="mul",
        )
        match_abs = detect_head(
            model,
            test_regular_sequence,
            "previous_token_head",
            heads=[(0, 0)],
            error_measure="abs",
        )

        def test_allclose_mul(self):
            assert torch.allclose(
                self.match_mul[0, 0],
                expected_regular_sequence_previous_match_mul[0, 0],
                atol=ATOL,
            )

        def test_allclose_abs(self):
            assert torch.allclose(
                self.match_abs[0, 0],
                expected_regular_sequence_previous_match_abs[0, 0],
                atol=ATOL,
            )

        def test_isclose_mul(self):
            assert math.isclose(
                torch.sum(self.match_mul),
                self.match_mul[0, 0].item() - (model.cfg.n_layers * model.cfg.n_heads - 1),
                abs_tol=ATOL,
            )

        def test_isclose_abs(self):
            assert math.isclose(
                torch.sum(self.match_abs),
                self.match_abs[0, 0].item() - (model.cfg.n_layers * model.cfg.n_heads - 1),
                abs_tol=ATOL,
            )

    class Test_duplicated_sentence_previous_token_head:
        match_mul = detect_head(
            model,
            test_duplicated_sequence,
            "previous_token_head",
            heads=[(0, 0)],
            error_measure="mul",
        )
        match_abs = detect_head(
            model,
            test_duplicated_sequence,
            "previous_token_head",
            heads=[(0, 0)],
            error_measure="abs",
        )

        def test_allclose_mul(self):
            assert torch.allclose(
                self.match_mul[0, 0],
                expected_duplicated_sequence_previous_match_mul[0, 0],
                atol=ATOL,
            )

        def test_allclose_abs(self):
            assert torch.allclose(
                self.match_abs[0, 0],
                expected_duplicated_sequence_previous_match_abs[0, 0],
                atol=ATOL,
            )

        def test_isclose_mul(self):
            assert math.isclose(
                torch.sum(self.match_mul),
                self.match_mul[0, 0].item() - (model.cfg.n_layers * model.cfg.n_heads - 1),
                abs_tol=ATOL,
            )

        def test_isclose_abs(self):
            assert math.isclose(
                torch.sum(self.match_abs),
                self.match_abs[0, 0].item() - (model.cfg.n_layers * model.cfg.n_heads - 1),
                abs_tol=ATOL,
            )

    class Test_duplicated_sentence_duplicate_token_head:
        match_mul = detect_head(
            model,
            test_duplicated_sequence,
            "duplicate_token_head",
            heads=[(0, 0)],
            error_measure="mul",
        )
        match_abs = detect_head(
            model,
            test_duplicated_sequence,
            "duplicate_token_head",
            heads=[(0, 0)],
            error_measure="abs",
        )

        def test_allclose_mul(self):
            assert torch.allclose(
                self.match_mul[0, 0],
                expected_duplicated_sequence_duplicate_match_mul[0, 0],
                atol=ATOL,
            )

        def test_allclose_abs(self):
            assert torch.allclose(
                self.match_abs[0, 0],
                expected_duplicated_sequence_duplicate_match_abs[0, 0],
                atol=ATOL,
            )

        def test_isclose_mul(self):
            assert math.isclose(
                torch.sum(self.match_mul),
                self.match_mul[0, 0].item() - (model.cfg.n_layers * model.cfg.n_heads - 1),
                abs_tol=ATOL,
            )

        def test_isclose_abs(self):
            assert math.isclose(
                torch.sum(self.match_abs),
                self.match_abs[0, 0].item() - (model.cfg.n_layers * model.cfg.n_heads - 1),
                abs_tol=ATOL,
            )

    class Test_duplicated_sentence_induction_head:
        match_mul = detect_head(
            model,
            test_duplicated_sequence,
            "induction_head",
            heads=[(0, 0)],
            error_measure="mul",
        )
        match_abs = detect_head(
            model,
            test_duplicated_sequence,
            "induction_head",
            heads=[(0, 0)],
            error_measure="abs",
        )

        def test_allclose_mul(self):
            assert torch.allclose(
                self.match_mul[0, 0],
                expected_duplicated_sequence_induction_match_mul[0, 0],
                atol=ATOL,
            )

        def test_allclose_abs(self):
            assert torch.allclose(
                self.match_abs[0, 0],
                expected_duplicated_sequence_induction_match_abs[0, 0],
                atol=ATOL,
            )

        def test_isclose_mul(self):
            assert math.isclose(
                torch.sum(self.match_mul),
                self.match_mul[0, 0].item() - (model.cfg.n_layers * model.cfg.n_heads - 1),
                abs_tol=ATOL,
            )

        def test_isclose_abs(self):
            assert math.isclose(
                torch.sum(self.match_abs),
                self.match_abs[0, 0].item() - (model.cfg.n_layers * model.cfg.n_heads - 1),
                abs_tol=ATOL,
            )


######################
# Detection patterns #
######################


class Test_previous_token_head:
    regular_detection_pattern = get_previous_token_head_detection_pattern(
        model.to_tokens(test_regular_sequence).cpu()
    )

    def test_regular_detection_pattern1(self):
        assert self.regular_detection_pattern.shape == (4, 4)

    def test_regular_detection_pattern2(self):
        assert (self.regular_detection_pattern[1:, :-1] == torch.eye(3)).all()

    def test_regular_detection_pattern3(self):
        assert torch.sum(self.regular_detection_pattern) == 3

    duplicate_detection_pattern = get_previous_token_head_detection_pattern(
        model.to_tokens(test_duplicated_sequence).cpu()
    )

    def test_duplicate_detection_pattern1(self):
        assert self.duplicate_detection_pattern.shape == (7, 7)

    def test_duplicate_detection_pattern2(self):
        assert (self.duplicate_detection_pattern[1:, :-1] == torch.eye(6)).all()

    def test_duplicate_detection_pattern3(self):
        assert torch.sum(self.duplicate_detection_pattern) == 6


class Test_duplicate_token_head:
    detection_pattern = get_duplicate_token_head_detection_pattern(
        model.to_tokens(test_duplicated_sequence).cpu()
    )

    def test1(self):
        assert (
            get_duplicate_token_head_detection_pattern(model.to_tokens(test_regular_sequence).cpu())
            == torch.zeros(4, 4)
        ).all()

    def test2(self):
        assert self.detection_pattern.shape == (7, 7)

    def test3(self):
        assert (self.detection_pattern[4:, 1:4] == torch.eye(3)).all()

    def test4(self):
        assert torch.sum(self.detection_pattern) == 3


class Test_induction_head_detection:
    detection_pattern = get_induction_head_detection_pattern(
        model.to_tokens(test_duplicated_sequence).cpu()
    )

    def test1(self):
        assert (
            get_duplicate_token_head_detection_pattern(model.to_tokens(test_regular_sequence).cpu())
            == torch.zeros(4, 4)
        ).all()

    def test2(self):
        assert self.detection_pattern.shape == (7, 7)

    def test3(self):
        assert (self.detection_pattern[4:, 2:5] == torch.eye(3)).all()

    def test4(self):
        assert torch.sum(self.detection_pattern) == 3


class Test_batched_kwargs_are_forwarded:
    """The multi-prompt path used to recurse with positional args only, so
    error_measure, exclude_bos, exclude_current_token and heads were silently
    reset to their defaults and a different metric was returned."""

    seqs = [test_duplicated_sequence, test_duplicated_sequence2]

    def _reference(self, **kwargs):
        return torch.stack(
            [detect_head(model, s, "induction_head", **kwargs) for s in self.seqs]
        ).mean(0)

    def test_error_measure_is_forwarded(self):
        assert torch.allclose(
            detect_head(model, self.seqs, "induction_head", error_measure="abs"),
            self._reference(error_measure="abs"),
        )

    def test_exclude_bos_is_forwarded(self):
        assert torch.allclose(
            detect_head(model, self.seqs, "induction_head", exclude_bos=True),
            self._reference(exclude_bos=True),
        )

    def test_exclude_current_token_is_forwarded(self):
        assert torch.allclose(
            detect_head(model, self.seqs, "induction_head", exclude_current_token=True),
            self._reference(exclude_current_token=True),
        )

    def test_heads_filter_is_forwarded(self):
        result = detect_head(model, self.seqs, "induction_head", heads=[(0, 3)])
        assert torch.allclose(result, self._reference(heads=[(0, 3)]))
        # every head except (0, 3) must remain at the -1 sentinel
        mask = torch.ones_like(result, dtype=torch.bool)
        mask[0, 3] = False
        assert (result[mask] == -1).all()


class Test_cache_is_rejected_for_multiple_prompts:
    """A single cache holds one prompt's activations and cannot serve a list.

    Forwarding it would be wrong and silently ignoring it is the same failure
    mode as the dropped keyword arguments, so the list path rejects it.
    """

    seqs = [test_duplicated_sequence, test_duplicated_sequence2]

    def test_cache_with_a_list_raises(self):
        tokens = model.to_tokens(test_duplicated_sequence)
        _, cache = model.run_with_cache(tokens, remove_batch_dim=True)
        with pytest.raises(ValueError, match="cannot be reused across multiple prompts"):
            detect_head(model, self.seqs, "induction_head", cache=cache)

    def test_cache_with_a_single_prompt_still_works(self):
        tokens = model.to_tokens(test_duplicated_sequence)
        _, cache = model.run_with_cache(tokens, remove_batch_dim=True)
        with_cache = detect_head(model, test_duplicated_sequence, "induction_head", cache=cache)
        without_cache = detect_head(model, test_duplicated_sequence, "induction_head")
        assert torch.allclose(with_cache, without_cache)

    def test_list_without_a_cache_is_unaffected(self):
        result = detect_head(model, self.seqs, "induction_head")
        reference = torch.stack([detect_head(model, s, "induction_head") for s in self.seqs]).mean(
            0
        )
        assert torch.allclose(result, reference)


class Test_cache_is_not_mutated:
    """compute_head_attention_similarity_score masked in place on a view into
    the caller's ActivationCache, so the cached attention pattern stopped
    summing to 1 and every later read of that cache was corrupted."""

    def test_exclude_bos_does_not_corrupt_cache(self):
        tokens = model.to_tokens(test_duplicated_sequence)
        _, cache = model.run_with_cache(tokens, remove_batch_dim=True)
        before = cache["pattern", 0, "attn"].clone()
        detect_head(
            model,
            test_duplicated_sequence,
            "induction_head",
            cache=cache,
            exclude_bos=True,
            error_measure="mul",
        )
        assert torch.equal(before, cache["pattern", 0, "attn"])

    def test_exclude_current_token_does_not_corrupt_cache(self):
        tokens = model.to_tokens(test_duplicated_sequence)
        _, cache = model.run_with_cache(tokens, remove_batch_dim=True)
        before = cache["pattern", 0, "attn"].clone()
        detect_head(
            model,
            test_duplicated_sequence,
            "induction_head",
            cache=cache,
            exclude_current_token=True,
            error_measure="mul",
        )
        assert torch.equal(before, cache["pattern", 0, "attn"])

    def test_pattern_rows_still_sum_to_one(self):
        tokens = model.to_tokens(test_duplicated_sequence)
        _, cache = model.run_with_cache(tokens, remove_batch_dim=True)
        detect_head(
            model,
            test_duplicated_sequence,
            "induction_head",
            cache=cache,
            exclude_bos=True,
            error_measure="mul",
        )
        row_sums = cache["pattern", 0, "attn"].sum(-1)
        assert torch.allclose(row_sums, torch.ones_like(row_sums), atol=1e-5)
