"""PhiModel numerics: logits equal transformers' PhiForCausalLM; partial runs; dtypes and devices."""
from __future__ import annotations

import pytest
import torch

from helpers import make_hf_phi, save_checkpoint
from workbench.model import PhiConfig, PhiModel

# (d_model, n_heads, partial_rotary_factor) -> d_head, rotary_dim
GEOMETRIES = {
    "phi2-heads": (160, 2, 0.4),   # d_head 80, rotary 32, as phi-2
    "trunc-rot": (144, 2, 0.4),    # d_head 72: 72 * 0.4 = 28.8, HF's int() gives 28
    "half-rot": (128, 4, 0.5),     # d_head 32, rotary 16, as phi-1 / phi-1.5
}


@pytest.fixture(scope="module", params=list(GEOMETRIES))
def hf_and_ours(request, tmp_path_factory):
    d_model, n_heads, factor = GEOMETRIES[request.param]
    hf = make_hf_phi(d_model=d_model, n_heads=n_heads, partial_rotary_factor=factor, n_layers=3, seed=1)
    folder = save_checkpoint(hf, tmp_path_factory.mktemp(request.param), with_tokenizer=False)
    return hf, PhiModel.from_pretrained(folder)


def test_geometry_is_the_one_intended(hf_and_ours):
    hf, ours = hf_and_ours
    assert ours.cfg.rotary_dim == int(ours.cfg.d_head * ours.cfg.partial_rotary_factor)
    assert ours.cfg.rotary_dim in (32, 28, 16)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in hf.parameters())


@torch.no_grad()
def test_logits_equal_transformers(hf_and_ours):
    hf, ours = hf_and_ours
    tokens = torch.randint(0, ours.cfg.d_vocab, (3, 40), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(ours(tokens), hf(tokens).logits, atol=1e-5, rtol=0)


@torch.no_grad()
def test_loss_equals_transformers(hf_and_ours):
    hf, ours = hf_and_ours
    tokens = torch.randint(0, ours.cfg.d_vocab, (2, 24), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(ours(tokens, return_type="loss"), hf(tokens, labels=tokens).loss,
                               atol=1e-5, rtol=0)
    logits, loss = ours(tokens, return_type="both")
    per_token = ours(tokens, return_type="loss", loss_per_token=True)
    assert per_token.shape == (2, 23)
    torch.testing.assert_close(per_token.mean(), loss)
    assert ours(tokens, return_type=None) is None


@torch.no_grad()
def test_start_and_stop_at_layer_compose_to_the_full_forward(tiny_model):
    tokens = torch.randint(0, 512, (2, 12))
    resid = tiny_model(tokens, stop_at_layer=1)                        # [batch, pos, d_model]
    assert resid.shape == (2, 12, 160)
    logits = tiny_model(resid, start_at_layer=1)
    torch.testing.assert_close(logits, tiny_model(tokens), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="needs tokens="):
        tiny_model(resid, start_at_layer=1, return_type="loss")
    loss = tiny_model(resid, start_at_layer=1, return_type="loss", tokens=tokens)
    torch.testing.assert_close(loss, tiny_model(tokens, return_type="loss"))


def test_bad_return_type(tiny_model):
    with pytest.raises(ValueError, match="return_type must be"):
        tiny_model(torch.zeros(1, 3, dtype=torch.long), return_type="probs")


@torch.no_grad()
def test_one_dimensional_tokens_get_a_batch_dim(tiny_model):
    tokens = torch.randint(0, 512, (9,))
    torch.testing.assert_close(tiny_model(tokens), tiny_model(tokens[None]))


@pytest.mark.parametrize("dtype,atol", [(torch.bfloat16, 0.15), (torch.float16, 0.03)])
@torch.no_grad()
def test_half_precision_forward_is_close_to_fp32(tiny_checkpoint, dtype, atol):
    ref = PhiModel.from_pretrained(tiny_checkpoint)
    half = PhiModel.from_pretrained(tiny_checkpoint, dtype=dtype)
    assert half.dtype == dtype and all(p.dtype == dtype for p in half.parameters())
    tokens = torch.randint(0, 512, (2, 20))
    logits = half(tokens)
    assert logits.dtype == dtype and torch.isfinite(logits).all()
    torch.testing.assert_close(logits.float(), ref(tokens), atol=atol, rtol=0)
    # The cached path (explicit attention pattern) also runs in half precision.
    _, cache = half.run_with_cache(tokens, names_filter="blocks.0.attn.hook_pattern")
    assert cache["pattern", 0].dtype == dtype
    torch.testing.assert_close(cache["pattern", 0].float().sum(-1), torch.ones(2, 2, 20), atol=1e-2, rtol=0)


def test_to_keeps_cfg_device_up_to_date():
    model = PhiModel(PhiConfig.from_name("tiny"))
    assert model.cfg.device == "cpu"
    model.to("meta")  # any device change goes through _apply; meta needs no hardware
    assert model.cfg.device == "meta" and model.device.type == "meta"
    model.to(torch.bfloat16)
    assert model.cfg.device == "meta" and model.dtype == torch.bfloat16


def test_meta_build_allocates_nothing_and_fresh_init_follows_hf_scheme():
    with torch.device("meta"):
        meta = PhiModel(PhiConfig.from_name("phi-2"))
    assert all(p.device.type == "meta" for p in meta.parameters())
    model = PhiModel(PhiConfig.from_name("tiny"))
    assert torch.equal(model.blocks[0].ln1.weight, torch.ones(160))
    assert torch.equal(model.blocks[0].attn.qkv.bias, torch.zeros(480))
    assert abs(model.embed.weight.std().item() - 0.02) < 0.002


@torch.no_grad()
def test_weight_views_reproduce_hooked_activations(tiny_model):
    """W_Q/W_K/W_V/b_*, W_O/b_O, W_E, W_U/b_U are views TransformerLens-style code can use."""
    tokens = torch.randint(0, 512, (2, 7))
    logits, cache = tiny_model.run_with_cache(tokens)
    attn = tiny_model.blocks[1].attn
    ln = tiny_model.blocks[1].ln1
    x = cache["normalized", 1, "ln1"] * ln.weight + ln.bias          # [batch, pos, d_model]
    for name, W, b in (("q", attn.W_Q, attn.b_Q), ("k", attn.W_K, attn.b_K), ("v", attn.W_V, attn.b_V)):
        torch.testing.assert_close(torch.einsum("bpm,hmd->bphd", x, W) + b, cache[name, 1], atol=1e-5, rtol=0)
    out = torch.einsum("bphd,hdm->bpm", cache["z", 1], attn.W_O) + attn.b_O
    torch.testing.assert_close(out, cache["attn_out", 1], atol=1e-5, rtol=0)
    torch.testing.assert_close(tiny_model.W_E[tokens], cache["hook_embed"])
    final = cache["ln_final.hook_normalized"] * tiny_model.ln_final.weight + tiny_model.ln_final.bias
    torch.testing.assert_close(final @ tiny_model.W_U + tiny_model.b_U, logits, atol=1e-5, rtol=0)
    assert tiny_model.W_Q.shape == (2, 2, 160, 80) and tiny_model.W_O.shape == (2, 2, 80, 160)


def test_transformer_lens_weight_views(tiny_model):
    """TransformerLens's names and layouts, as views of the fused parameters."""
    m, c = tiny_model, tiny_model.cfg
    assert m.W_E is m.embed.W_E and torch.equal(m.W_U, m.unembed.W_U) and m.b_U is m.unembed.b_U
    assert m.W_in.shape == (c.n_layers, c.d_model, c.d_mlp) and m.W_out.shape == (c.n_layers, c.d_mlp, c.d_model)
    assert m.b_in.shape == (c.n_layers, c.d_mlp) and m.b_out.shape == (c.n_layers, c.d_model)
    assert m.b_Q.shape == (c.n_layers, c.n_heads, c.d_head) and m.b_O.shape == (c.n_layers, c.d_model)
    assert m.blocks[0].ln1.w is m.blocks[0].ln1.weight and m.ln_final.b is m.ln_final.bias
    x = torch.randn(3, c.d_model)
    torch.testing.assert_close(x @ m.W_in[1] + m.b_in[1], m.blocks[1].mlp.fc1(x))
    params = m.tl_parameters()
    assert params["blocks.1.attn.W_V"].shape == (c.n_heads, c.d_model, c.d_head) and "blocks.1.ln2.w" not in params
    with pytest.raises(AttributeError, match="rotary"):
        m.W_pos
    assert m.all_head_labels[:3] == ["L0H0", "L0H1", "L1H0"]
    assert torch.equal(m.accumulated_bias(1), m.blocks[0].attn.b_O + m.blocks[0].mlp.b_out)
    assert torch.equal(m.accumulated_bias(1, mlp_input=True), m.accumulated_bias(1))   # parallel block
