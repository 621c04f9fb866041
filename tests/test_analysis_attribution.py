"""Attribution patching approximates exact patching where the model is close to linear."""
import pytest
import torch

from workbench.analysis import attribution as A
from workbench.analysis import patching as P
from workbench.analysis.metrics import make_logit_diff_metric


@pytest.fixture()
def near_linear(tiny_model):
    """A clean run that differs from the corrupted one by a tiny embedding nudge: first order holds."""
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(1, 512, (2, 6), generator=g)
    nudge = 1e-3 * torch.randn(2, 6, tiny_model.cfg.d_model, generator=g)
    with torch.no_grad():
        clean_cache_dict, fwd, _ = tiny_model.get_caching_hooks()
        with tiny_model.hooks([("hook_embed", lambda t, hook: t + nudge)] + fwd):
            tiny_model(tokens)
    from workbench.hooks import ActivationCache
    metric = make_logit_diff_metric(torch.tensor([[5, 9], [17, 3]]))
    return tiny_model, tokens, ActivationCache(clean_cache_dict, tiny_model), metric


@pytest.mark.parametrize("name", ["resid_pre", "attn_out", "mlp_out", "attn_head_out_by_pos",
                                  "attn_head_out_all_pos", "attn_head_q_by_pos", "attn_head_k_all_pos",
                                  "attn_head_v_by_pos", "attn_head_pattern_by_pos"])
def test_attribution_approximates_exact(near_linear, name):
    model, tokens, clean_cache, metric = near_linear
    base = metric(model(tokens)).item()
    exact = getattr(P, f"get_act_patch_{name}")(model, tokens, clean_cache, metric) - base
    approx = getattr(A, f"attr_patch_{name}")(model, tokens, clean_cache, metric)
    assert approx.shape == exact.shape
    scale = exact.abs().max()
    assert scale > 1e-6  # the nudge has an effect to approximate
    assert (approx - exact).abs().max() <= 0.05 * scale
    assert torch.corrcoef(torch.stack([approx.flatten(), exact.flatten()]))[0, 1] > 0.99


def test_attribution_all_matches_single_targets(near_linear):
    model, tokens, clean_cache, metric = near_linear
    everything = A.attribution_patch_all(model, tokens, clean_cache, metric)
    torch.testing.assert_close(everything["z"], A.attr_patch_attn_head_out_by_pos(model, tokens, clean_cache, metric))
    torch.testing.assert_close(everything["mlp_out"], A.attr_patch_mlp_out(model, tokens, clean_cache, metric))


def test_attribution_bad_metric(near_linear):
    model, tokens, clean_cache, metric = near_linear
    with pytest.raises(ValueError, match="must return a scalar"):
        A.attr_patch_resid_pre(model, tokens, clean_cache, lambda logits: logits[:, -1, 0])
    with pytest.raises(ValueError, match="no gradient"):
        A.attr_patch_resid_pre(model, tokens, clean_cache, lambda logits: torch.tensor(1.0))
