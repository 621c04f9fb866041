"""Task generators: shapes, determinism, and the properties the analyses rely on."""
import pytest
import torch

from workbench.analysis.tasks import repeated_random_tokens


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


# -- IOI ------------------------------------------------------------------------------------------
from workbench.analysis.tasks import (CODE_CLASSES, IOI_TEMPLATES, NAMES, OBJECTS, PLACES, char_labels, ioi_prompts,
                             python_probe_set, single_token_names)


@pytest.fixture(scope="module")
def story_tokenizer():
    """A BPE that has seen the names and template words often enough to make them single tokens."""
    from workbench.model import Tokenizer
    texts = [t.format(A=a, B=b, S=a, PLACE=p, OBJECT=o) for t in IOI_TEMPLATES for a, b in zip(NAMES, NAMES[1:])
             for p, o in zip(PLACES, OBJECTS)]
    return Tokenizer.train_bpe(texts * 3, vocab_size=600)


def test_ioi_prompts_pairs(story_tokenizer):
    tok = story_tokenizer
    ds = ioi_prompts(tok, 24, seed=1)
    assert ds.clean_tokens.shape == ds.corrupted_tokens.shape and ds.clean_tokens.shape[0] == 24
    assert ds.answer_tokens.shape == (24, 2)
    names = set(single_token_names(tok))
    for text, bad, (io, s) in zip(ds.clean_texts, ds.corrupted_texts, ds.answer_tokens.tolist()):
        io_name, s_name = tok.to_string([io]).strip(), tok.to_string([s]).strip()
        assert io_name in names and s_name in names and io_name != s_name
        assert text.count(io_name) == 1 and text.count(s_name) == 2       # S repeated, IO once
        assert io_name not in bad and s_name not in bad                   # "abc": all three names replaced
    swap = ioi_prompts(tok, 8, seed=2, corruption="swap")
    for text, bad, (io, s) in zip(swap.clean_texts, swap.corrupted_texts, swap.answer_tokens.tolist()):
        io_name = tok.to_string([io]).strip()
        assert bad.count(io_name) == 2 and text.count(io_name) == 1
    assert torch.equal(ioi_prompts(tok, 5, seed=3).clean_tokens, ioi_prompts(tok, 5, seed=3).clean_tokens)


def test_ioi_needs_single_token_names():
    from helpers import make_tokenizer
    with pytest.raises(ValueError, match="single tokens"):
        ioi_prompts(make_tokenizer(), 4)


# -- Python probing sets --------------------------------------------------------------------------
def test_char_labels():
    src = 'x = f(a, "(")  # c(\ny = [1]\n'
    lab = char_labels(src)
    cls, dep = lab["token_class"], lab["bracket_depth"]
    assert cls[src.index("x")] == 1 and cls[src.index("=")] == 0
    assert cls[src.index('"(')] == 2 and cls[src.index("#")] == 3
    assert dep[src.index("a")] == 1 and dep[src.index('"(') + 1] == 1      # the string's "(" opens nothing
    assert dep[src.index("(")] == 0 and dep[src.index("1")] == 1 and dep[src.index("y")] == 0


def test_python_probe_set_on_a_small_code_bpe():
    from helpers import TEXT, make_tokenizer
    tok = make_tokenizer()                                                 # BPE trained on Python code
    src = TEXT + '\ns = "a string"  # and a comment\n'
    ps = python_probe_set(tok, [src], seq_len=32, prepend_bos=True)
    assert ps.tokens.shape[1] == 32 and (ps.tokens[:, 0] == tok.bos_token_id).all()
    assert int(ps.tokens.max()) < tok.vocab_size
    for name, lab in ps.labels.items():
        assert lab.shape == ps.tokens.shape and (lab[:, 0] == -1).all()
    tc = ps.labels["token_class"][:, 1:]
    assert set(tc.unique().tolist()) <= set(range(len(CODE_CLASSES)))
    assert (tc == 1).any() and (ps.labels["bracket_depth"] > 0).any()
    assert torch.equal(ps.labels["is_identifier"][:, 1:], (tc == 1).long())
    std = python_probe_set(tok, seq_len=64, max_rows=20)                   # default: stdlib sources
    assert std.tokens.shape == (20, 64)
    for c in range(4):
        assert (std.labels["token_class"] == c).any()
