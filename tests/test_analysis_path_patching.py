"""Batched path patching equals a direct, one-run-per-sender hook implementation."""
import pytest
import torch

from workbench.analysis import path_patching as PP
from workbench.analysis.metrics import make_logit_diff_metric
from workbench.analysis.patching import get_act_patch_attn_head_out_all_pos
from workbench.model import PhiConfig, PhiModel


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = PhiModel(PhiConfig.from_name("tiny", n_layers=3, n_heads=4, d_model=64)).eval()
    with torch.no_grad():  # larger weights than the init, so paths have visible effects
        for p in model.parameters():
            p.mul_(8.0 if p.ndim > 1 else 1.0)
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(0, 512, (2, 7), generator=g)
    corrupted = torch.randint(0, 512, (2, 7), generator=g)
    with torch.no_grad():
        _, cache = model.run_with_cache(clean)
    metric = make_logit_diff_metric(torch.tensor([[5, 9], [17, 3]]))
    return model, corrupted, cache, metric


@torch.no_grad()
def _direct(model, corrupted, clean_cache, metric, senders, receivers, receiver_input="q", freeze_mlps=False):
    """The textbook algorithm with full forwards and plain hooks."""
    _, corr = model.run_with_cache(corrupted)
    n = model.cfg.n_layers

    def z_hook(t, hook):
        layer = int(hook.name.split(".")[1])
        out = corr[hook.name].clone()
        for l2, h in senders:
            if l2 == layer:
                out[:, :, h] = clean_cache[hook.name][:, :, h]
        return out

    hooks = [(f"blocks.{i}.attn.hook_z", z_hook) for i in range(n)]
    if freeze_mlps:
        hooks += [(f"blocks.{i}.hook_mlp_out", lambda t, hook: corr[hook.name]) for i in range(n)]
    if receivers == "final":
        return metric(model.run_with_hooks(corrupted, fwd_hooks=hooks))
    seen = {}
    names = {f"blocks.{layer}.attn.hook_{receiver_input}" for layer, _ in receivers}
    rec = [(nm, lambda t, hook: seen.__setitem__(hook.name, t.clone())) for nm in names]
    model.run_with_hooks(corrupted, fwd_hooks=hooks + rec)

    def patch(t, hook):
        t = t.clone()
        for layer, h in receivers:
            if hook.name == f"blocks.{layer}.attn.hook_{receiver_input}":
                t[:, :, h] = seen[hook.name][:, :, h]
        return t
    return metric(model.run_with_hooks(corrupted, fwd_hooks=[(nm, patch) for nm in names]))


@pytest.mark.parametrize("freeze_mlps", [False, True])
def test_head_to_final_equals_direct(setup, freeze_mlps):
    model, corrupted, cache, metric = setup
    ours = PP.get_path_patch_head_to_final_resid(model, corrupted, cache, metric, freeze_mlps=freeze_mlps,
                                                 max_batch_tokens=30)
    direct = torch.tensor([[float(_direct(model, corrupted, cache, metric, [(l, h)], "final", freeze_mlps=freeze_mlps))
                            for h in range(4)] for l in range(3)])
    torch.testing.assert_close(ours, direct, atol=1e-4, rtol=1e-4)
    assert ours.std() > 1e-3                               # senders differ: the test has something to compare
    # In the last layer nothing downstream reads a head, so path = activation patching of its output.
    act = get_act_patch_attn_head_out_all_pos(model, corrupted, cache, metric)
    torch.testing.assert_close(ours[-1], act[-1], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("receiver_input", ["q", "k", "v"])
def test_head_to_heads_equals_direct(setup, receiver_input):
    model, corrupted, cache, metric = setup
    receivers = [(2, 1), (2, 3), (1, 0)]
    ours = PP.get_path_patch_head_to_receivers(model, corrupted, cache, metric, receivers, receiver_input)
    direct = torch.tensor([[float(_direct(model, corrupted, cache, metric, [(l, h)], receivers, receiver_input))
                            for h in range(4)] for l in range(3)])
    torch.testing.assert_close(ours, direct, atol=1e-4, rtol=1e-4)
    baseline = metric(model(corrupted))
    torch.testing.assert_close(ours[2], baseline.expand(4), atol=1e-5, rtol=0)  # no path from the last layer
    pair = PP.path_patch(model, corrupted, cache, metric, [(0, 1), (1, 2)], receivers, receiver_input)
    expected = _direct(model, corrupted, cache, metric, [(0, 1), (1, 2)], receivers, receiver_input)
    torch.testing.assert_close(pair, expected, atol=1e-4, rtol=1e-4)


def test_path_patching_bad_input(setup):
    model, corrupted, cache, metric = setup
    with pytest.raises(ValueError, match="outside"):
        PP.path_patch(model, corrupted, cache, metric, (5, 0))
    with pytest.raises(ValueError, match="differ in shape"):
        PP.path_patch(model, corrupted[:1], cache, metric, (0, 0))
    with pytest.raises(ValueError, match="receiver_input"):
        PP.path_patch(model, corrupted, cache, metric, (0, 0), [(1, 0)], receiver_input="z")
