"""Parity with TransformerLens 4.x: its TransformerBridge on the same weights, and its patching tools on our model.

Booting a bridge costs seconds (docs/bench-model.md), so one serves the whole session.
Where the bridge's hooks differ in convention from ours the equivalent quantity is
compared (documented in docs/model.md): ``hook_attn_scores`` is masked with
``finfo.min`` there and ``-inf`` here.
"""
from __future__ import annotations

import warnings

import pytest
import torch

from workbench.model import PhiModel

TOKENS = torch.randint(0, 512, (2, 9), generator=torch.Generator().manual_seed(21))
CORRUPT = torch.randint(0, 512, (2, 9), generator=torch.Generator().manual_seed(22))


@pytest.fixture(scope="session")
def ours(tiny_checkpoint) -> PhiModel:
    return PhiModel.from_pretrained(tiny_checkpoint)


@pytest.fixture(scope="session")
def bridge(ours):
    tl = ours.to_transformer_lens()
    tl.set_use_attn_result(True)  # the bridge builds hook_result only when asked, as we do
    return tl


def shared_names(ours, bridge) -> list[str]:
    return [n for n in ours.hook_dict if n in bridge.hook_dict]


def test_bridge_is_transformer_lens_and_has_our_weights(ours, bridge):
    from transformer_lens.model_bridge import TransformerBridge
    assert isinstance(bridge, TransformerBridge)
    # Booting must not have rewired or moved our own modules.
    assert type(ours.blocks[0].attn).__module__ == "workbench.model.model"
    assert not ours.training and not bridge.training


@torch.no_grad()
def test_same_logits_and_loss(ours, bridge):
    torch.testing.assert_close(bridge(TOKENS), ours(TOKENS), atol=1e-5, rtol=0)
    torch.testing.assert_close(bridge(TOKENS, return_type="loss"), ours(TOKENS, return_type="loss"),
                               atol=1e-5, rtol=0)


@torch.no_grad()
def test_every_shared_hook_equals_transformer_lens(ours, bridge):
    names = shared_names(ours, bridge)
    # Every hook we have exists in TransformerLens under the same name.
    assert names == list(ours.hook_dict)
    ours.set_use_attn_result(True)   # hook_result joins an unfiltered cache only when switched on, in both tools
    _, mine = ours.run_with_cache(TOKENS)
    ours.set_use_attn_result(False)
    # The split input hooks fire only when switched on (tests/test_split_inputs.py), in both tools.
    switched = ("hook_q_input", "hook_k_input", "hook_v_input", "hook_attn_in", "hook_mlp_in")
    assert set(names) - set(mine) == {n for n in names if n.endswith(switched)}
    names = [n for n in names if n in mine]
    _, theirs = bridge.run_with_cache(TOKENS, names_filter=names)
    assert set(names) <= set(theirs.keys())  # the bridge also returns aliases (embed.hook_out, ...)
    for n in names:
        a, b = mine[n], theirs[n]
        assert a.shape == b.shape, f"{n}: ours {tuple(a.shape)} vs TransformerLens {tuple(b.shape)}"
        if n.endswith("hook_attn_scores"):
            causal = torch.ones(a.shape[-2:], dtype=torch.bool).tril()
            torch.testing.assert_close(a[..., causal], b[..., causal], atol=1e-5, rtol=0, msg=n)
            assert torch.all(a[..., ~causal] == float("-inf"))                 # ours: -inf
            assert torch.all(b[..., ~causal] <= torch.finfo(b.dtype).min / 2)  # TL: finfo.min
        else:
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0, msg=n)


def test_shared_hook_gradients_equal_transformer_lens(ours, bridge):
    names = shared_names(ours, bridge)
    _, mine = ours.run_with_cache(TOKENS, names_filter=names, incl_bwd=True, return_type="loss")
    with warnings.catch_warnings():  # TL warns that backward hooks move its LayerNorm to a python path
        warnings.simplefilter("ignore", UserWarning)
        _, theirs = bridge.run_with_cache(TOKENS, names_filter=names, incl_bwd=True, return_type="loss")
    compared = [n for n in names if n + "_grad" in theirs]
    # TL caches gradients only for hooks its autograd graph reaches; that must include the residual stream.
    assert {"blocks.0.hook_resid_pre", "blocks.1.attn.hook_pattern", "blocks.1.mlp.hook_post"} <= set(compared)
    for n in compared:
        torch.testing.assert_close(mine[n + "_grad"], theirs[n + "_grad"], atol=1e-5, rtol=0, msg=n)
    ours.zero_grad()


@pytest.fixture(scope="module")
def patch_inputs(ours):
    metric_token = 7

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return logits[:, -1, metric_token].mean()
    with torch.no_grad():
        _, clean_cache = ours.run_with_cache(TOKENS)
    return clean_cache, metric


@torch.no_grad()
def test_tl_get_act_patch_resid_pre_on_our_model(ours, patch_inputs):
    from transformer_lens import patching
    clean_cache, metric = patch_inputs
    got = patching.get_act_patch_resid_pre(ours, CORRUPT, clean_cache, metric)
    assert got.shape == (ours.cfg.n_layers, TOKENS.shape[1])
    expected = torch.zeros_like(got)
    for layer in range(ours.cfg.n_layers):
        for pos in range(TOKENS.shape[1]):
            def patch(x, hook, pos=pos):
                x = x.clone()
                x[:, pos] = clean_cache[hook.name][:, pos]
                return x
            logits = ours.run_with_hooks(CORRUPT, fwd_hooks=[(f"blocks.{layer}.hook_resid_pre", patch)])
            expected[layer, pos] = metric(logits)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    # Patching layer 0 at every position is the clean run; a real effect shows somewhere.
    assert expected.std() > 0


@torch.no_grad()
def test_tl_get_act_patch_attn_head_out_all_pos_on_our_model(ours, patch_inputs):
    from transformer_lens import patching
    clean_cache, metric = patch_inputs
    got = patching.get_act_patch_attn_head_out_all_pos(ours, CORRUPT, clean_cache, metric)
    assert got.shape == (ours.cfg.n_layers, ours.cfg.n_heads)
    expected = torch.zeros_like(got)
    for layer in range(ours.cfg.n_layers):
        for head in range(ours.cfg.n_heads):
            def patch(z, hook, head=head):
                z = z.clone()
                z[:, :, head] = clean_cache[hook.name][:, :, head]
                return z
            logits = ours.run_with_hooks(CORRUPT, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", patch)])
            expected[layer, head] = metric(logits)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


@torch.no_grad()
def test_tl_patching_gives_the_same_answer_on_our_model_and_on_the_bridge(ours, bridge, patch_inputs):
    from transformer_lens import patching
    clean_cache, metric = patch_inputs
    _, tl_clean = bridge.run_with_cache(TOKENS)
    ours_result = patching.get_act_patch_mlp_out(ours, CORRUPT, clean_cache, metric)
    tl_result = patching.get_act_patch_mlp_out(bridge, CORRUPT, tl_clean, metric)
    torch.testing.assert_close(ours_result, tl_result, atol=1e-5, rtol=0)
