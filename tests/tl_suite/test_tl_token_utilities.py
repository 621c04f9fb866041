"""Ported from TransformerLens 4.3.0 tests/unit/test_utils.py (class TestAttentionMask) and
tests/unit/test_tokenizer_padding_side.py (test_test_prompt_multiple_answers_ignore_tokenizer_padding_side)
(MIT License, see LICENSE-TransformerLens): TransformerLens's token utilities used with a model.

Port: a fresh tiny random PhiModel (with its offline-trained BPE) in place of gpt2 / a native bridge
with gpt2's tokenizer. The rest of those files tests TransformerLens's utilities on Hugging Face or
mock tokenizers, with no model, and is not ported.
"""
import re

import pytest
import torch

from tl_port import new_phi_model, not_applicable
from transformer_lens import utilities
from transformer_lens import utilities as utils


class TestAttentionMask:
    prompts = [
        "Hello world!",
        "How are you today?",
        "I'm fine, thank you.",
        "I am happy.",
    ]

    prompts_with_sep = [
        "I like cats<|endoftext|>Cats are so cute",
        "Hello world!",
        "How are you<|endoftext|>I am fine, thanks",
    ]

    # fixtures
    @pytest.fixture(scope="class", params=["gpt2-small", pytest.param("facebook/opt-125m", marks=not_applicable(
        "a second pretrained architecture (OPT); the port has one model"))])
    def model_name(self, request):
        return request.param

    @pytest.fixture(scope="class")
    def model(self, model_name):
        return new_phi_model()  # Port: a fresh tiny random PhiModel (the test sets its tokenizer's padding side)

    # tests
    @pytest.mark.parametrize("padding_side", ["left", "right"])
    @pytest.mark.parametrize("prepend_bos", [True, False])
    @pytest.mark.parametrize("prompts_with_sep", [True, False])
    def test_get_attention_mask(self, model, padding_side, prepend_bos, prompts_with_sep):
        # setup
        model.tokenizer.padding_side = padding_side
        model.tokenizer.sep_token_id = model.tokenizer.pad_token_id
        prepend_bos = prepend_bos

        prompts = self.prompts_with_sep if prompts_with_sep else self.prompts
        tokens = model.to_tokens(prompts, prepend_bos=prepend_bos)

        attention_mask = utils.get_attention_mask(
            model.tokenizer, tokens, prepend_bos=prepend_bos
        )  # [batch pos]

        # dimension should be the same
        assert attention_mask.shape == tokens.shape

        # number of attended tokens for each sequence
        # should be the same as the number of 1s in the attention mask for that sequence
        str_tokens = model.to_str_tokens(prompts, prepend_bos=prepend_bos)
        intended_num_attended_tokens = torch.tensor(
            [len(t) for t in str_tokens], device=attention_mask.device
        )
        assert (intended_num_attended_tokens == attention_mask.sum(dim=1)).all()

        # all the masked tokens should be the padding token
        assert (tokens[attention_mask == 0] == model.tokenizer.pad_token_id).all()

        if padding_side == "right":
            # the first token is always attended
            assert (attention_mask[:, 0] == 1).all()

            # attended tokens are at the beginning of the sequence
            for i, num in enumerate(intended_num_attended_tokens.tolist()):
                assert (attention_mask[i, 0:num] == 1).all()

        else:  # left padding case
            # the last token is always attended
            assert (attention_mask[:, -1] == 1).all()

            # attended tokens are at the end of the sequence
            for i, num in enumerate(intended_num_attended_tokens.tolist()):
                assert (attention_mask[i, -num:] == 1).all()

        # the following tests make sense only when the prompts do not contain the separator token
        if not prompts_with_sep:
            non_pad_token_mask = (tokens != model.tokenizer.pad_token_id).int()
            attended_but_non_pad_mask = attention_mask != non_pad_token_mask
            if model.tokenizer.bos_token == model.tokenizer.pad_token and prepend_bos:
                # if bos_token is the same as pad_token and prepend_bos is True,
                # then there is one attended but non-pad token (bos token) in each sequence
                assert attended_but_non_pad_mask.sum() == tokens.shape[0]
            else:
                # otherwise, there should be no attended but non-pad token
                assert attended_but_non_pad_mask.sum() == 0


def test_test_prompt_multiple_answers_ignore_tokenizer_padding_side(capsys):
    """test_prompt must rank each answer's first token, not a pad token, under left padding."""
    model = new_phi_model()  # Port: a fresh tiny random PhiModel in place of a native bridge with gpt2's tokenizer
    prompt, answers = "Why did the elephant cross the", ["road", "super highway"]
    outputs = {}
    for side in ("right", "left"):
        model.tokenizer.padding_side = side
        utilities.test_prompt(prompt, answers, model, print_details=False)
        outputs[side] = capsys.readouterr().out

    utilities.test_prompt(prompt, "road", model, print_details=False)
    single_answer_rank = re.search(r"\(' road', (\d+)\)", capsys.readouterr().out)
    # A multi-token answer's first rank is read at the prompt's last position, the same
    # position the multi-answer call ranks every answer's first token at.
    utilities.test_prompt(prompt, "super highway", model, print_details=False)
    first_token_rank = re.search(r"\(' super', (\d+)\)", capsys.readouterr().out)

    assert single_answer_rank is not None and first_token_rank is not None
    assert outputs["left"] == outputs["right"]
    assert f"(' road', {single_answer_rank.group(1)})" in outputs["left"]
    assert f"(' super', {first_token_rank.group(1)})" in outputs["left"]
