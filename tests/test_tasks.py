"""Task generators: shapes, determinism, and the properties the analyses rely on."""
import pytest
import torch

from workbench.tasks import repeated_random_tokens


def test_repeated_random_tokens_shape_and_repeats():
    toks = repeated_random_tokens(5, period=7, n_repeats=3, vocab_size=50, seed=1)
    assert toks.shape == (5, 21) and toks.dtype == torch.long
    assert torch.equal(toks[:, :7], toks[:, 7:14]) and torch.equal(toks[:, :7], toks[:, 14:])
    assert int(toks.min()) >= 0 and int(toks.max()) < 50
    for row in toks[:, :7]:  # distinct within a block, so the induction target is unique
        assert len(set(row.tolist())) == 7


def test_repeated_random_tokens_bos_and_determinism():
    a = repeated_random_tokens(4, period=10, vocab_size=12, seed=3, bos_token_id=0)
    b = repeated_random_tokens(4, period=10, vocab_size=12, seed=3, bos_token_id=0)
    c = repeated_random_tokens(4, period=10, vocab_size=12, seed=4, bos_token_id=0)
    assert a.shape == (4, 21)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert (a[:, 0] == 0).all() and (a[:, 1:] != 0).all()  # BOS only in column 0


def test_repeated_random_tokens_bad_input():
    with pytest.raises(ValueError, match="vocab_size"):
        repeated_random_tokens(2, 5)
    with pytest.raises(ValueError, match=">= 1"):
        repeated_random_tokens(0, 5, vocab_size=10)
