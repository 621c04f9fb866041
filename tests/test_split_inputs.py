"""Split input hooks (TransformerLens's ``use_split_qkv_input`` / ``use_attn_in`` / ``use_hook_mlp_in``).

Off by default (the hook points exist but never fire), equal logits when on, and the
same per-head semantics as TransformerLens's bridge on the same weights: a hook on one
head's key input changes that head's keys only.
"""
from __future__ import annotations

import contextlib

import pytest
import torch

from workbench.model import PhiModel

TOKENS = torch.randint(0, 512, (2, 9), generator=torch.Generator().manual_seed(31))
SPLIT = ("hook_q_input", "hook_k_input", "hook_v_input", "hook_attn_in", "hook_mlp_in")


@pytest.fixture(scope="module")
def model(tiny_checkpoint) -> PhiModel:
    return PhiModel.from_pretrained(tiny_checkpoint)


@contextlib.contextmanager
def switches(m, split: bool = False, attn_in: bool = False, mlp_in: bool = False):
    m.set_use_split_qkv_input(split)
    m.set_use_attn_in(attn_in)
    m.set_use_hook_mlp_in(mlp_in)
    try:
        yield m
    finally:
        m.set_use_split_qkv_input(False)
        m.set_use_attn_in(False)
        m.set_use_hook_mlp_in(False)


@torch.no_grad()
def test_off_by_default_and_silent(model):
    _, cache = model.run_with_cache(TOKENS)
    assert not any(n.endswith(SPLIT) for n in cache)
    assert all(f"blocks.0.{h}" in model.hook_dict for h in SPLIT)


@torch.no_grad()
@pytest.mark.parametrize("flags", [dict(split=True), dict(attn_in=True), dict(mlp_in=True),
                                   dict(split=True, attn_in=True, mlp_in=True)])
def test_switches_change_no_numbers(model, flags):
    plain = model(TOKENS)
    with switches(model, **flags):
        logits, cache = model.run_with_cache(TOKENS)
    torch.testing.assert_close(logits, plain, atol=1e-5, rtol=0)
    b, p = TOKENS.shape
    h, d = model.cfg.n_heads, model.cfg.d_model
    resid = cache["blocks.1.hook_resid_pre"]
    if flags.get("split"):
        for name in ("hook_q_input", "hook_k_input", "hook_v_input"):
            x = cache[f"blocks.1.{name}"]
            assert x.shape == (b, p, h, d)
            torch.testing.assert_close(x, resid[:, :, None].expand(b, p, h, d), atol=0, rtol=0)
    if flags.get("attn_in"):
        assert cache["blocks.1.hook_attn_in"].shape == (b, p, h, d)
    if flags.get("mlp_in"):
        torch.testing.assert_close(cache["blocks.1.hook_mlp_in"], resid, atol=0, rtol=0)


@torch.no_grad()
def test_one_heads_key_input_moves_only_that_heads_keys(model):
    other = torch.randn(TOKENS.shape[0], TOKENS.shape[1], model.cfg.d_model)

    def patch_head0(x, hook):
        x[:, :, 0] = other   # in place, as TransformerLens users write hooks
        return x
    _, clean = model.run_with_cache(TOKENS, names_filter="blocks.1.attn.hook_k")
    with switches(model, split=True):
        with model.hooks([("blocks.1.hook_k_input", patch_head0)]):
            _, patched = model.run_with_cache(TOKENS, names_filter="blocks.1.attn.hook_k")
    k0, k1 = clean["blocks.1.attn.hook_k"], patched["blocks.1.attn.hook_k"]
    torch.testing.assert_close(k1[:, :, 1:], k0[:, :, 1:], atol=1e-6, rtol=0)
    expected = torch.nn.functional.layer_norm(other, (model.cfg.d_model,), model.blocks[1].ln1.weight,
                                              model.blocks[1].ln1.bias, model.cfg.layer_norm_eps)
    expected = expected @ model.blocks[1].attn.W_K[0] + model.blocks[1].attn.b_K[0]
    torch.testing.assert_close(k1[:, :, 0], expected, atol=1e-5, rtol=0)


def test_split_qkv_inputs_match_transformer_lens(model):
    """The same per-head q/k/v-input patches on our model and on TransformerLens's bridge: same logits.

    (The bridge never fires ``hook_mlp_in`` on Phi's parallel block, so that hook is checked
    against the computation it stands for in the next test instead.)
    """
    bridge = model.to_transformer_lens()
    gen = torch.Generator().manual_seed(5)
    other = torch.randn(TOKENS.shape[0], TOKENS.shape[1], model.cfg.d_model, generator=gen)

    def patch(x, hook):
        x = x.clone()
        x[:, :, 1] = other
        return x
    with torch.no_grad():
        plain = model(TOKENS)
        bridge.set_use_split_qkv_input(True)
        for name in ("hook_q_input", "hook_k_input", "hook_v_input"):
            with switches(model, split=True):
                ours = model.run_with_hooks(TOKENS, fwd_hooks=[(f"blocks.1.{name}", patch)])
            theirs = bridge.run_with_hooks(TOKENS, fwd_hooks=[(f"blocks.1.{name}", patch)])
            assert not torch.allclose(ours, plain, atol=1e-3), name   # the patch did something
            torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0, msg=name)


@torch.no_grad()
def test_mlp_in_feeds_the_mlp_only(model):
    """Halving ``hook_mlp_in`` of block 0 equals running that MLP on ln1(resid_pre / 2) by hand."""
    _, clean = model.run_with_cache(TOKENS, names_filter=["blocks.0.hook_resid_pre", "blocks.0.hook_attn_out"])
    with switches(model, mlp_in=True):
        with model.hooks([("blocks.0.hook_mlp_in", lambda x, hook: x * 0.5)]):
            _, cache = model.run_with_cache(TOKENS, names_filter=["blocks.0.hook_mlp_out", "blocks.0.hook_attn_out"])
    block = model.blocks[0]
    expected = block.mlp(block.ln1(clean["blocks.0.hook_resid_pre"] * 0.5))
    torch.testing.assert_close(cache["blocks.0.hook_mlp_out"], expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(cache["blocks.0.hook_attn_out"], clean["blocks.0.hook_attn_out"], atol=1e-6, rtol=0)


def test_config_copy_is_private(model):
    """Two models built from one config do not share switches or device (a meta clone, say)."""
    cfg = model.cfg
    with torch.device("meta"):
        clone = PhiModel(cfg)
    assert clone.cfg is not cfg and clone.cfg.device == "meta"
    assert model.cfg.device == "cpu"
    clone.set_use_split_qkv_input(True)
    assert not model.cfg.use_split_qkv_input
    assert "use_split_qkv_input" not in cfg.to_dict() and "device" not in cfg.to_dict()
