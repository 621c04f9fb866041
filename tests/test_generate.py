"""Generation with a KV cache: same tokens as recomputing everything; seeded sampling; text in, text out."""
from __future__ import annotations

import pytest
import torch

from workbench.model import KVCache

PROMPT = torch.randint(0, 512, (3, 7), generator=torch.Generator().manual_seed(11))


@torch.no_grad()
def test_greedy_with_kv_cache_equals_recomputing_each_step(tiny_model):
    cached = tiny_model.generate(PROMPT, max_new_tokens=12, temperature=0)
    full = tiny_model.generate(PROMPT, max_new_tokens=12, temperature=0, use_kv_cache=False)
    assert cached.shape == (3, 19)
    assert torch.equal(cached[:, :7], PROMPT)
    assert torch.equal(cached, full)
    # And each greedy token is the argmax of a plain forward over everything before it.
    assert torch.equal(tiny_model(cached[:, :-1])[:, 6:].argmax(-1), cached[:, 7:])


@torch.no_grad()
def test_prefill_then_chunk_equals_full_forward(tiny_model):
    tokens = torch.randint(0, 512, (2, 20))
    full = tiny_model(tokens)
    cache = KVCache(tiny_model.cfg.n_layers)
    first = tiny_model(tokens[:, :8], kv_cache=cache)
    assert len(cache) == 8
    chunk = tiny_model(tokens[:, 8:15], kv_cache=cache)      # several queries after a cache
    one = tiny_model(tokens[:, 15:16], kv_cache=cache)       # one query
    rest = tiny_model(tokens[:, 16:], kv_cache=cache)
    assert len(cache) == 20
    torch.testing.assert_close(torch.cat([first, chunk, one, rest], dim=1), full, atol=1e-5, rtol=0)


@torch.no_grad()
def test_chunk_after_cache_with_explicit_pattern_matches_sdpa(tiny_model):
    tokens = torch.randint(0, 512, (2, 12))
    cache = KVCache(tiny_model.cfg.n_layers)
    tiny_model(tokens[:, :5], kv_cache=cache)
    sdpa_cache = KVCache(tiny_model.cfg.n_layers)
    tiny_model(tokens[:, :5], kv_cache=sdpa_cache)
    patterns = []
    explicit = tiny_model.run_with_hooks(tokens[:, 5:], kv_cache=cache,
                                         fwd_hooks=[("blocks.0.attn.hook_pattern", lambda x, hook: patterns.append(x))])
    fused = tiny_model(tokens[:, 5:], kv_cache=sdpa_cache)
    torch.testing.assert_close(explicit, fused, atol=1e-5, rtol=0)
    assert patterns[0].shape == (2, 2, 7, 12)                # new queries x all keys
    assert torch.all(patterns[0][..., 0, 6:] == 0)           # first new query sees 6 positions


@torch.no_grad()
def test_sampling_with_a_seed_is_reproducible(tiny_model):
    a = tiny_model.generate(PROMPT, max_new_tokens=10, temperature=1.0, top_k=20, seed=123)
    b = tiny_model.generate(PROMPT, max_new_tokens=10, temperature=1.0, top_k=20, seed=123)
    c = tiny_model.generate(PROMPT, max_new_tokens=10, temperature=1.0, top_k=20, seed=124)
    assert torch.equal(a, b) and not torch.equal(a, c)
    # Seeded sampling also agrees with and without the KV cache.
    d = tiny_model.generate(PROMPT, max_new_tokens=10, temperature=1.0, top_k=20, seed=123, use_kv_cache=False)
    assert torch.equal(a, d)


@torch.no_grad()
def test_top_k_one_is_greedy(tiny_model):
    greedy = tiny_model.generate(PROMPT, max_new_tokens=6, temperature=0)
    assert torch.equal(tiny_model.generate(PROMPT, max_new_tokens=6, temperature=0.7, top_k=1, seed=0), greedy)


@torch.no_grad()
def test_batch_rows_are_independent(tiny_model):
    batch = tiny_model.generate(PROMPT, max_new_tokens=8, temperature=0)
    for i in range(3):
        assert torch.equal(tiny_model.generate(PROMPT[i], max_new_tokens=8, temperature=0)[0], batch[i])


@torch.no_grad()
def test_text_in_text_out(tiny_model):
    out = tiny_model.generate("def add(a, b):", max_new_tokens=5, temperature=0)
    assert isinstance(out, str) and out.startswith("def add(a, b):") and len(out) > len("def add(a, b):")
    outs = tiny_model.generate(["class Point:", "def f"], max_new_tokens=3, temperature=0)
    assert isinstance(outs, list) and len(outs) == 2 and outs[0].startswith("class Point:")


@torch.no_grad()
def test_stop_at_eos_pads_finished_rows(tiny_model):
    eos = tiny_model.cfg.eos_token_id
    # Force EOS as the first new token of every row through the unembedding bias.
    with tiny_model.hooks(fwd_hooks=[("ln_final.hook_normalized", lambda x, hook: x * 0)]):
        saved = tiny_model.unembed.bias.clone()
        tiny_model.unembed.bias.zero_()
        tiny_model.unembed.bias[eos] = 100.0
        try:
            out = tiny_model.generate(PROMPT, max_new_tokens=5, temperature=0, stop_at_eos=True)
        finally:
            tiny_model.unembed.bias.copy_(saved)
    assert out.shape == (3, 8) and torch.all(out[:, 7] == eos)


def test_prompt_longer_than_context_is_refused(tiny_model):
    with pytest.raises(ValueError, match="exceeds the context length n_ctx=256"):
        tiny_model.generate(torch.zeros(1, 250, dtype=torch.long), max_new_tokens=10)


@torch.no_grad()
def test_kv_cache_from_a_prefix_of_the_layers_that_run(tiny_model):
    """A run that starts at a later layer needs a cache for that layer and above only, with an explicit length."""
    tokens = torch.randint(0, 512, (2, 9))
    full = tiny_model(tokens)
    _, cache = tiny_model.run_with_cache(tokens[:, :5], names_filter=lambda n: n.endswith(("hook_rot_k", "hook_v",
                                                                                           "hook_resid_pre")))
    _, later = tiny_model.run_with_cache(tokens, names_filter="blocks.1.hook_resid_pre")
    kv = KVCache.from_prefix(tiny_model.cfg.n_layers, {1: cache["rot_k", 1].transpose(1, 2)},
                             {1: cache["v", 1].transpose(1, 2)})
    assert len(kv) == 5
    resumed = tiny_model(later["resid_pre", 1][:, 5:], start_at_layer=1, kv_cache=kv)
    torch.testing.assert_close(resumed, full[:, 5:], atol=1e-5, rtol=0)
    assert len(kv) == 9
    with pytest.raises(RuntimeError, match="holds 0 positions but the cache has 9"):
        tiny_model(tokens[:, :1], kv_cache=kv)          # layer 0 was never cached
    with pytest.raises(ValueError, match="same length"):
        KVCache.from_prefix(2, {0: torch.zeros(1, 2, 3, 80), 1: torch.zeros(1, 2, 4, 80)},
                            {0: torch.zeros(1, 2, 3, 80), 1: torch.zeros(1, 2, 4, 80)})
    with pytest.raises(ValueError, match="stop_at_layer"):
        tiny_model(tokens[:, :1], kv_cache=KVCache(2), stop_at_layer=1)
