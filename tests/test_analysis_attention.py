"""Head scores against direct loops and hand-built patterns."""
import pytest
import torch

from workbench.analysis.attention import (attention_entropy, duplicate_token_score, first_token_score,
                                          induction_score, previous_token_score)


def _random_pattern(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    *lead, n, _ = shape
    scores = torch.randn(*shape, generator=g)
    scores = scores.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), float("-inf"))
    return scores.softmax(-1)


def _loop_score(pattern, lag, q_start):  # pattern [batch, head, q, k] -> [head]
    b, h, n, _ = pattern.shape
    out = torch.zeros(h)
    for head in range(h):
        vals = [pattern[i, head, q, q - lag] for i in range(b) for q in range(max(q_start, lag), n)]
        out[head] = torch.stack(vals).mean()
    return out


@pytest.mark.parametrize("offset", [0, 1])
def test_scores_match_loops(offset):
    period = 5
    pat = _random_pattern(3, 4, offset + 2 * period, 2 * period + offset)
    torch.testing.assert_close(induction_score(pat, period, offset), _loop_score(pat, period - 1, offset + period))
    torch.testing.assert_close(duplicate_token_score(pat, period, offset), _loop_score(pat, period, offset + period))
    torch.testing.assert_close(previous_token_score(pat, offset), _loop_score(pat, 1, offset + 1))
    torch.testing.assert_close(first_token_score(pat), pat[:, :, 1:, 0].mean(dim=(0, 2)))


def test_ideal_heads_score_one():
    period, n = 4, 9  # BOS + 2 repeats
    ind = torch.zeros(1, 1, n, n)
    prev = torch.zeros(1, 1, n, n)
    for q in range(n):
        ind[0, 0, q, q - period + 1 if q >= 1 + period else 0] = 1.0
        prev[0, 0, q, max(q - 1, 0)] = 1.0
    pat = torch.cat([ind, prev], dim=1)  # [1, 2 heads, n, n]
    torch.testing.assert_close(induction_score(pat, period, offset=1), torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(previous_token_score(pat, offset=1), torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(attention_entropy(pat), torch.zeros(2))


def test_leading_dims_and_entropy_bounds():
    pat = _random_pattern(2, 3, 4, 6, 6)  # [layer, batch, head, q, k]
    s = induction_score(pat, period=3)
    assert s.shape == (2, 4)
    torch.testing.assert_close(s[1], induction_score(pat[1], period=3))
    uniform = torch.ones(1, 1, 6, 6).tril()
    uniform = uniform / uniform.sum(-1, keepdim=True)
    expected = torch.log(torch.arange(2, 7, dtype=torch.float)).mean()
    torch.testing.assert_close(attention_entropy(uniform), expected.view(1))


def test_bad_patterns():
    with pytest.raises(ValueError, match="hook_pattern"):
        induction_score(torch.zeros(4, 4), period=2)
    with pytest.raises(ValueError, match="too short"):
        induction_score(torch.zeros(1, 1, 4, 4), period=6)
