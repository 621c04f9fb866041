"""Tokenizer: tokenizer.json from a checkpoint, to_tokens / to_str_tokens / to_string, explicit BOS."""
from __future__ import annotations

import pytest
import torch

from helpers import make_tokenizer
from workbench.model import PhiConfig, PhiModel, Tokenizer

TEXT = "def add(a, b):\n    return a + b"


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return make_tokenizer(512)


def test_round_trip_and_no_bos_by_default(tok):
    ids = tok.to_tokens(TEXT)
    assert ids.dtype == torch.long and ids.shape[0] == 1 and ids.shape[1] > 3
    assert tok.bos_token_id == 0 and int(ids[0, 0]) != tok.bos_token_id  # phi-2 prepends nothing
    assert tok.to_string(ids[0]) == TEXT
    assert tok.to_string(ids) == [TEXT]
    assert "".join(tok.to_str_tokens(TEXT)) == TEXT
    assert len(tok.to_str_tokens(TEXT)) == ids.shape[1]


def test_explicit_bos(tok):
    plain = tok.to_tokens(TEXT)
    with_bos = tok.to_tokens(TEXT, prepend_bos=True)
    assert int(with_bos[0, 0]) == tok.bos_token_id and torch.equal(with_bos[:, 1:], plain)
    assert tok.to_str_tokens(TEXT, prepend_bos=True)[0] == "<|endoftext|>"
    no_bos = Tokenizer(tok.tok, bos_token_id=None)
    with pytest.raises(ValueError, match="no BOS token"):
        no_bos.to_tokens(TEXT, prepend_bos=True)


def test_batch_is_right_padded(tok):
    ids = tok.to_tokens(["a", TEXT])
    n = len(tok.encode(TEXT))
    assert ids.shape == (2, n)
    assert torch.all(ids[0, len(tok.encode("a")):] == tok.pad_token_id)
    rows = tok.to_str_tokens(ids)
    assert isinstance(rows, list) and len(rows) == 2 and "".join(rows[1]) == TEXT
    assert tok.to_str_tokens([[5, 6], [7, 8]]) == [tok.to_str_tokens([5, 6]), tok.to_str_tokens([7, 8])]


def test_checkpoint_tokenizer_json_is_loaded(tiny_checkpoint, tiny_model, tok):
    assert (tiny_checkpoint / "tokenizer.json").is_file()
    assert tiny_model.tokenizer is not None
    assert tiny_model.tokenizer.vocab_size == tok.vocab_size <= tiny_model.cfg.d_vocab
    assert torch.equal(tiny_model.to_tokens(TEXT), tok.to_tokens(TEXT))
    assert tiny_model.to_str_tokens(TEXT) == tok.to_str_tokens(TEXT)
    assert tiny_model.to_string(tiny_model.to_tokens(TEXT)[0]) == TEXT
    # Text goes straight into the model.
    torch.testing.assert_close(tiny_model(TEXT), tiny_model(tok.to_tokens(TEXT)))


def test_from_file_accepts_folder_and_reports_missing(tiny_checkpoint, tmp_path):
    assert Tokenizer.from_file(tiny_checkpoint).vocab_size == make_tokenizer(512).vocab_size
    assert Tokenizer.from_file(tiny_checkpoint / "tokenizer.json").bos_token_id == 0
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        Tokenizer.from_file(tmp_path)


def test_save_and_reload(tok, tmp_path):
    tok.save(tmp_path)
    again = Tokenizer.from_file(tmp_path)
    assert torch.equal(again.to_tokens(TEXT), tok.to_tokens(TEXT))


def test_model_truncates_to_context_and_needs_a_tokenizer(tiny_model):
    long = "x = 1\n" * 400
    assert tiny_model.to_tokens(long).shape[1] == tiny_model.cfg.n_ctx
    assert tiny_model.to_tokens(long, truncate=False).shape[1] > tiny_model.cfg.n_ctx
    bare = PhiModel(PhiConfig.from_name("tiny"))
    with pytest.raises(ValueError, match="no tokenizer"):
        bare.to_tokens("hello")


def test_transformer_lens_token_conventions(tiny_model):
    ids = tiny_model.to_tokens("def add(a, b):")
    assert tiny_model.to_str_tokens(ids[:, :1]) == tiny_model.to_str_tokens(ids[0, :1])   # [1, 1]: a flat list
    assert len(tiny_model.to_str_tokens(ids[:, :1])) == 1
    assert tiny_model.to_string(ids[0, 0]) == tiny_model.to_str_tokens(ids[0, :1])[0]    # a 0-d tensor
    tok = tiny_model.tokenizer
    assert tok.encode("def", add_special_tokens=False) == tok.encode("def", add_special_tokens=True)
    single = tiny_model.to_str_tokens(ids[0, :1])[0]
    assert tiny_model.to_single_token(single) == ids[0, 0].item()
    assert tiny_model.to_single_str_token(ids[0, 0].item()) == single
    with pytest.raises(AssertionError, match="not a single token"):
        tiny_model.to_single_token("def add(a, b):")
    assert tiny_model.get_token_position(ids[0, 2].item(), ids) == 2
    left = tiny_model.to_tokens(["def", "def add(a, b):"], padding_side="left")
    assert left[0, -1] == ids[0, 0] and left[0, 0] == tok.pad_token_id


def test_hugging_face_twin_once_transformer_lens_is_loaded(tiny_model):
    """TransformerLens's utilities type-check for a Hugging Face tokenizer: model.tokenizer becomes one."""
    pytest.importorskip("transformer_lens")
    from transformers import PreTrainedTokenizerBase

    from workbench.model.tokenizer import TokenizerMethods
    tok = tiny_model.tokenizer
    assert isinstance(tok, PreTrainedTokenizerBase) and isinstance(tok, TokenizerMethods)
    text = "class Point:\n    def __init__(self, x):"
    assert tok(text)["input_ids"] == tok.encode(text) == tok.tok.encode(text).ids     # no special tokens added
    assert torch.equal(tok.to_tokens(text), tiny_model.to_tokens(text))
    assert tok.decode(tok.encode(text)) == text and tok.bos_token_id == tok.pad_token_id == 0
