"""Hook machinery on PhiModel: names, filters, forward/backward hooks, caching, and paying only for hooks used."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from workbench.hooks import UnknownHookError, get_act_name

TOKENS = torch.randint(0, 512, (2, 10), generator=torch.Generator().manual_seed(5))
LAYER_HOOKS = ["hook_resid_pre", "ln1.hook_scale", "ln1.hook_normalized", "attn.hook_q", "attn.hook_k",
               "attn.hook_v", "attn.hook_rot_q", "attn.hook_rot_k", "attn.hook_attn_scores", "attn.hook_pattern",
               "attn.hook_z", "attn.hook_result", "hook_attn_out", "mlp.hook_pre", "mlp.hook_post",
               "hook_mlp_out", "hook_resid_post"]
# They fire only when switched on (tests/test_split_inputs.py).
SWITCHED_HOOKS = ["hook_q_input", "hook_k_input", "hook_v_input", "hook_attn_in", "hook_mlp_in"]


def _no_hooks_left(model) -> bool:
    return not any(hp.fwd_hooks or hp.bwd_hooks for hp in model.hook_dict.values())


def test_hook_dict_has_every_design_name_and_no_resid_mid(tiny_model):
    expected = {"hook_embed", "ln_final.hook_scale", "ln_final.hook_normalized"}
    expected |= {f"blocks.{i}.{n}" for i in range(tiny_model.cfg.n_layers) for n in LAYER_HOOKS + SWITCHED_HOOKS}
    assert set(tiny_model.hook_dict) == expected
    assert not any("resid_mid" in n for n in tiny_model.hook_dict)
    assert all(hp.name == n for n, hp in tiny_model.hook_dict.items())


@torch.no_grad()
def test_cached_shapes_follow_transformer_lens(tiny_model):
    _, cache = tiny_model.run_with_cache(TOKENS)
    # As in TransformerLens, the per-head hook_result joins an unfiltered cache only when switched on.
    assert "blocks.0.attn.hook_result" not in cache
    tiny_model.set_use_attn_result(True)
    _, cache = tiny_model.run_with_cache(TOKENS)
    b, p, h, dh, d, m = 2, 10, 2, 80, 160, 640
    shapes = {"hook_embed": (b, p, d), "blocks.0.ln1.hook_scale": (b, p, 1), "blocks.0.attn.hook_q": (b, p, h, dh),
              "blocks.0.attn.hook_rot_k": (b, p, h, dh), "blocks.0.attn.hook_attn_scores": (b, h, p, p),
              "blocks.0.attn.hook_pattern": (b, h, p, p), "blocks.0.attn.hook_z": (b, p, h, dh),
              "blocks.0.attn.hook_result": (b, p, h, d), "blocks.0.mlp.hook_post": (b, p, m),
              "blocks.1.hook_resid_post": (b, p, d), "ln_final.hook_normalized": (b, p, d)}
    for name, shape in shapes.items():
        assert cache[name].shape == shape, name
    assert len(cache) == len(tiny_model.hook_dict) - tiny_model.cfg.n_layers * len(SWITCHED_HOOKS)


@torch.no_grad()
def test_replacing_an_activation_changes_the_output(tiny_model):
    clean = tiny_model(TOKENS)
    logits = tiny_model.run_with_hooks(TOKENS, fwd_hooks=[("blocks.1.hook_mlp_out", lambda x, hook: x * 0)])
    assert not torch.allclose(logits, clean)
    # Same as removing that MLP's weights.
    mlp = tiny_model.blocks[1].mlp
    saved = mlp.fc2.weight.clone(), mlp.fc2.bias.clone()
    mlp.fc2.weight.zero_()
    mlp.fc2.bias.zero_()
    try:
        torch.testing.assert_close(logits, tiny_model(TOKENS), atol=1e-6, rtol=0)
    finally:
        mlp.fc2.weight.copy_(saved[0])
        mlp.fc2.bias.copy_(saved[1])
    assert _no_hooks_left(tiny_model)
    torch.testing.assert_close(tiny_model(TOKENS), clean)


@torch.no_grad()
def test_hook_that_returns_none_observes_only(tiny_model):
    seen = []
    logits = tiny_model.run_with_hooks(TOKENS, fwd_hooks=[("blocks.0.hook_resid_post",
                                                            lambda x, hook: seen.append((hook.name, x.shape)))])
    assert seen == [("blocks.0.hook_resid_post", torch.Size([2, 10, 160]))]
    torch.testing.assert_close(logits, tiny_model(TOKENS))


@pytest.mark.parametrize("names_filter,expected", [
    (lambda n: n.endswith("hook_pattern"), ["blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern"]),
    (["blocks.1.hook_resid_post", "hook_embed"], ["hook_embed", "blocks.1.hook_resid_post"]),
    ("blocks.*.hook_resid_pre", ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre"]),
    ("resid_pre1", ["blocks.1.hook_resid_pre"]),
    ("scale0ln1", ["blocks.0.ln1.hook_scale"]),
    (get_act_name("pattern", 1), ["blocks.1.attn.hook_pattern"]),
    ("ln_final.hook_scale", ["ln_final.hook_scale"]),
])
@torch.no_grad()
def test_names_filters(tiny_model, names_filter, expected):
    _, cache = tiny_model.run_with_cache(TOKENS, names_filter=names_filter)
    assert list(cache) == expected
    fired = []
    tiny_model.run_with_hooks(TOKENS, fwd_hooks=[(names_filter, lambda x, hook: fired.append(hook.name))])
    assert fired == expected


def test_unknown_name_lists_closest_and_attaches_nothing(tiny_model):
    with pytest.raises(UnknownHookError) as err:
        tiny_model.run_with_hooks(TOKENS, fwd_hooks=[("hook_embed", lambda x, hook: x * 0),
                                                     ("blocks.0.hook_resid_psot", lambda x, hook: None)])
    assert "no hook point named 'blocks.0.hook_resid_psot'" in str(err.value)
    assert "blocks.0.hook_resid_post" in err.value.suggestions
    assert _no_hooks_left(tiny_model)
    with pytest.raises(UnknownHookError, match="blocks.0.hook_resid_mid.*closest valid names"):
        tiny_model.run_with_cache(TOKENS, names_filter="blocks.0.hook_resid_mid")
    with pytest.raises(UnknownHookError, match=r"'blocks\.7\.\*'; closest valid names: blocks\.1\."):
        tiny_model.run_with_cache(TOKENS, names_filter="blocks.7.*")
    with pytest.raises(TypeError, match="must be strings"):
        tiny_model.run_with_cache(TOKENS, names_filter=[3])


def test_hooks_context_manager_attaches_and_removes(tiny_model):
    calls = []
    with tiny_model.hooks(fwd_hooks=[("blocks.0.hook_attn_out", lambda x, hook: calls.append(1))]) as m:
        assert m is tiny_model and tiny_model.hook_dict["blocks.0.hook_attn_out"].active
        tiny_model(TOKENS)
        tiny_model(TOKENS)
    assert calls == [1, 1] and _no_hooks_left(tiny_model)


def test_hooks_are_removed_when_the_forward_raises(tiny_model):
    def boom(x, hook):
        raise RuntimeError("hook failed")
    with pytest.raises(RuntimeError, match="hook failed"):
        tiny_model.run_with_hooks(TOKENS, fwd_hooks=[("blocks.*.hook_mlp_out", boom)])
    assert _no_hooks_left(tiny_model)
    with pytest.raises(RuntimeError, match="hook failed"):
        with tiny_model.hooks(fwd_hooks=[("hook_embed", boom)], bwd_hooks=[("hook_embed", boom)]):
            tiny_model(TOKENS)
    assert _no_hooks_left(tiny_model)
    tiny_model.add_hook("blocks.1.hook_resid_pre", boom)  # run_with_cache's own hooks go too
    with pytest.raises(RuntimeError, match="hook failed"):
        tiny_model.run_with_cache(TOKENS)
    tiny_model.reset_hooks()
    assert _no_hooks_left(tiny_model)


def test_reset_hooks_keeps_permanent_hooks_unless_asked(tiny_model):
    calls = []
    tiny_model.add_perma_hook("hook_embed", lambda x, hook: calls.append("perma"))
    tiny_model.add_hook("hook_embed", lambda x, hook: calls.append("temp"))
    with torch.no_grad():
        tiny_model(TOKENS)
    assert calls == ["perma", "temp"]
    tiny_model.reset_hooks()
    with torch.no_grad():
        tiny_model(TOKENS)
    assert calls == ["perma", "temp", "perma"]
    # A permanent hook also survives run_with_hooks / hooks() exits.
    with torch.no_grad():
        tiny_model.run_with_hooks(TOKENS, fwd_hooks=[("hook_embed", lambda x, hook: calls.append("run"))])
    assert calls[-2:] == ["perma", "run"]
    tiny_model.reset_hooks(including_permanent=True)
    assert _no_hooks_left(tiny_model)


def test_backward_hooks_see_autograd_gradients(tiny_model):
    names = ["hook_embed", "blocks.0.attn.hook_pattern", "blocks.1.mlp.hook_post", "ln_final.hook_normalized"]
    acts, grads = {}, {}

    def keep(x, hook):
        x.retain_grad()
        acts[hook.name] = x

    with tiny_model.hooks(fwd_hooks=[(names, keep)],
                          bwd_hooks=[(names, lambda g, hook: grads.__setitem__(hook.name, g))]):
        tiny_model(TOKENS, return_type="loss").backward()
    assert set(grads) == set(names)
    for n in names:
        torch.testing.assert_close(grads[n], acts[n].grad, atol=0, rtol=0)
        assert grads[n].abs().sum() > 0
    # run_with_cache(incl_bwd=True) gives the same gradients, stored as name + "_grad".
    tiny_model.zero_grad()
    loss, cache = tiny_model.run_with_cache(TOKENS, names_filter=names, incl_bwd=True, return_type="loss")
    assert loss.ndim == 0 and set(cache) == set(names) | {n + "_grad" for n in names}
    for n in names:
        torch.testing.assert_close(cache[n + "_grad"], grads[n], atol=1e-7, rtol=0)
    assert _no_hooks_left(tiny_model)


def test_backward_hook_can_replace_the_gradient(tiny_model):
    tiny_model.zero_grad()
    with tiny_model.hooks(bwd_hooks=[("blocks.*.hook_resid_pre", lambda g, hook: g * 0),
                                     ("blocks.*.attn.hook_pattern", lambda g, hook: g * 0)]):
        tiny_model(TOKENS, return_type="loss").backward()
    # Blocking every route back to the embedding leaves it without gradient...
    assert tiny_model.embed.weight.grad.abs().max() == 0
    # ...while the unembedding still learns.
    assert tiny_model.unembed.weight.grad.abs().max() > 0
    tiny_model.zero_grad()


def test_run_with_hooks_refuses_backward_hooks_it_would_remove_early(tiny_model):
    with pytest.raises(ValueError, match="reset_hooks_end=False"):
        tiny_model.run_with_hooks(TOKENS, bwd_hooks=[("hook_embed", lambda g, hook: None)])
    grads = []
    loss = tiny_model.run_with_hooks(TOKENS, return_type="loss", reset_hooks_end=False,
                                     bwd_hooks=[("hook_embed", lambda g, hook: grads.append(g.shape))])
    loss.backward()
    tiny_model.reset_hooks()
    assert grads == [torch.Size([2, 10, 160])]


def test_incl_bwd_needs_a_scalar(tiny_model):
    with pytest.raises(ValueError, match="return_type='loss'"):
        tiny_model.run_with_cache(TOKENS, names_filter="hook_embed", incl_bwd=True)
    assert _no_hooks_left(tiny_model)


@torch.no_grad()
def test_run_with_cache_device_batch_and_pos_options(tiny_model):
    _, cache = tiny_model.run_with_cache(TOKENS, names_filter="blocks.0.attn.hook_z", device="meta")
    assert cache["z", 0].device.type == "meta"
    _, cache = tiny_model.run_with_cache(TOKENS[:1], names_filter="resid_post0", remove_batch_dim=True)
    assert cache["resid_post", 0].shape == (10, 160)
    _, full = tiny_model.run_with_cache(TOKENS, names_filter="resid_post0")
    _, last = tiny_model.run_with_cache(TOKENS, names_filter="resid_post0", pos_slice=slice(-1, None))
    torch.testing.assert_close(last["resid_post", 0], full["resid_post", 0][:, -1:])
    assert last.nbytes() == 2 * 1 * 160 * 4          # the slice was copied out of the full tensor
    with pytest.raises(UnknownHookError, match="cache has no 'blocks.1.hook_resid_post'; closest cached names: "
                                             "blocks.0.hook_resid_post"):
        full["resid_post1"]


def _spy(monkeypatch, module, name):
    calls = []
    real = getattr(module, name)

    def spy(*args, **kwargs):
        calls.append(name)
        return real(*args, **kwargs)
    monkeypatch.setattr(module, name, spy)
    return calls


@torch.no_grad()
def test_sdpa_runs_unless_pattern_or_scores_are_hooked(tiny_model, monkeypatch):
    calls = _spy(monkeypatch, F, "scaled_dot_product_attention")
    fast = tiny_model(TOKENS)
    assert len(calls) == tiny_model.cfg.n_layers
    calls.clear()
    tiny_model.run_with_cache(TOKENS, names_filter=lambda n: "pattern" not in n and "scores" not in n)
    assert len(calls) == tiny_model.cfg.n_layers        # q, k, v, z, result... cached: still fused
    calls.clear()
    _, cache = tiny_model.run_with_cache(TOKENS, names_filter="blocks.0.attn.hook_pattern")
    assert len(calls) == tiny_model.cfg.n_layers - 1    # only layer 0 builds its pattern
    calls.clear()
    slow = tiny_model.run_with_hooks(TOKENS, fwd_hooks=[("blocks.*.attn.hook_attn_scores", lambda x, hook: None)])
    assert calls == []
    torch.testing.assert_close(slow, fast, atol=1e-5, rtol=0)
    # The explicit pattern is causal and normalised.
    pattern = cache["pattern", 0]
    assert torch.all(pattern.triu(1) == 0)
    torch.testing.assert_close(pattern.sum(-1), torch.ones(2, 2, 10))


@torch.no_grad()
def test_hook_result_is_built_only_when_hooked_and_sums_to_attn_out(tiny_model, monkeypatch):
    calls = _spy(monkeypatch, torch, "einsum")
    _, cache = tiny_model.run_with_cache(TOKENS, names_filter=lambda n: not n.endswith("hook_result"))
    assert calls == []
    _, cache = tiny_model.run_with_cache(TOKENS, names_filter=["blocks.1.attn.hook_result", "attn_out1"])
    assert len(calls) == 1
    summed = cache["result", 1].sum(2) + tiny_model.blocks[1].attn.b_O
    torch.testing.assert_close(summed, cache["attn_out", 1], atol=1e-5, rtol=0)


@torch.no_grad()
def test_ablating_one_head_via_hook_result_or_hook_z_agrees(tiny_model):
    def kill_head(x, hook):
        x = x.clone()
        x[:, :, 1] = 0
        return x
    via_result = tiny_model.run_with_hooks(TOKENS, fwd_hooks=[("blocks.0.attn.hook_result", kill_head)])
    via_z = tiny_model.run_with_hooks(TOKENS, fwd_hooks=[("blocks.0.attn.hook_z", kill_head)])
    torch.testing.assert_close(via_result, via_z, atol=1e-5, rtol=0)
    assert not torch.allclose(via_z, tiny_model(TOKENS))


@torch.no_grad()
def test_layernorm_hooks_explicit_path_equals_fused(tiny_model):
    fused = tiny_model(TOKENS)
    scales = []
    explicit = tiny_model.run_with_hooks(TOKENS, fwd_hooks=[("*.hook_scale", lambda x, hook: scales.append(x))])
    torch.testing.assert_close(explicit, fused, atol=1e-5, rtol=0)
    assert len(scales) == tiny_model.cfg.n_layers + 1
    # Doubling every scale halves the normalised vector before the affine.
    _, a = tiny_model.run_with_cache(TOKENS, names_filter="blocks.0.ln1.hook_normalized")
    with tiny_model.hooks(fwd_hooks=[("blocks.0.ln1.hook_scale", lambda x, hook: 2 * x)]):
        _, b = tiny_model.run_with_cache(TOKENS, names_filter="blocks.0.ln1.hook_normalized")
    torch.testing.assert_close(b["normalized", 0, "ln1"], a["normalized", 0, "ln1"] / 2)


@torch.no_grad()
def test_cache_memory_is_exactly_the_requested_tensors(tiny_model):
    b, p, h, dh, d = 2, 10, 2, 80, 160
    names = ["blocks.0.attn.hook_q", "blocks.1.attn.hook_pattern", "blocks.1.attn.hook_z", "blocks.0.hook_resid_post"]
    _, cache = tiny_model.run_with_cache(TOKENS, names_filter=names)
    expected = 4 * (b * p * h * dh + b * h * p * p + b * p * h * dh + b * p * d)
    assert cache.nbytes() == expected
    # hook_q is a slice of the fused qkv output: the cache must not keep all of qkv alive.
    assert cache["q", 0].untyped_storage().nbytes() == 4 * b * p * h * dh
    # q, k and v together are exactly the fused qkv output: kept as views, not copied.
    _, qkv = tiny_model.run_with_cache(TOKENS, names_filter=["q0", "k0", "v0"])
    assert qkv.nbytes() == 3 * 4 * b * p * h * dh
    assert qkv["q", 0].untyped_storage().data_ptr() == qkv["v", 0].untyped_storage().data_ptr()
    _, everything = tiny_model.run_with_cache(TOKENS)
    # Every tensor once, except those that are one object under two names
    # (hook_embed is blocks.0.hook_resid_pre; resid_post of a layer is resid_pre of the next).
    total = sum(t.numel() * t.element_size() for t in everything.values())
    shared = sum(everything[f"blocks.{i}.hook_resid_pre"].numel() * 4 for i in range(tiny_model.cfg.n_layers))
    assert everything["hook_embed"].data_ptr() == everything["resid_pre0"].data_ptr()
    assert everything.nbytes() == total - shared


def test_readme_hook_example_runs_with_backward():
    """The README's in-place ablation (z[:, :, 7] = 0.0) with gradients on, then .backward()."""
    from workbench import PhiConfig, PhiModel
    torch.manual_seed(0)
    model = PhiModel(PhiConfig.from_name("tiny", n_heads=8, d_model=128, n_layers=4))

    def ablate_head(z, hook):
        z[:, :, 7] = 0.0
        return z

    tokens = torch.randint(0, 512, (2, 6))
    loss = model.run_with_hooks(tokens, return_type="loss", fwd_hooks=[("blocks.3.attn.hook_z", ablate_head)])
    loss.backward()
    # Head 7's output weights get no gradient through the ablated z; the other heads' do.
    w_o = model.blocks[3].attn.dense.weight.grad.view(128, 8, 16)     # [d_model, head, d_head]
    assert w_o[:, 7].abs().max() == 0 and w_o[:, 6].abs().max() > 0


@pytest.mark.parametrize("name", ["attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_z", "attn.hook_pattern",
                                  "attn.hook_attn_scores", "attn.hook_result", "ln1.hook_scale", "ln1.hook_normalized",
                                  "hook_resid_pre", "mlp.hook_post"])
def test_in_place_edits_in_hooks_work_with_gradients(tiny_model, name):
    """Editing the activation in place inside a hook gives the gradients of editing a copy."""
    full = f"blocks.1.{name}"

    def in_place(x, hook):
        x[:, 1] *= 0.5
        return x

    def on_copy(x, hook):
        x = x.clone()
        x[:, 1] *= 0.5
        return x

    grads = []
    for edit in (in_place, on_copy):
        tiny_model.zero_grad()
        loss = tiny_model.run_with_hooks(TOKENS, return_type="loss", fwd_hooks=[(full, edit)])
        loss.backward()
        grads.append((loss.detach(), tiny_model.blocks[0].attn.qkv.weight.grad.clone()))
    torch.testing.assert_close(grads[0][0], grads[1][0], atol=0, rtol=0)
    torch.testing.assert_close(grads[0][1], grads[1][1], atol=1e-7, rtol=1e-5)
    tiny_model.zero_grad()


def test_backward_hook_may_return_transformer_lens_tuple(tiny_model):
    tiny_model.zero_grad()
    with tiny_model.hooks(bwd_hooks=[("blocks.*.hook_resid_pre", lambda g, hook: (g * 0,))]):
        tiny_model(TOKENS, return_type="loss").backward()
    assert tiny_model.embed.weight.grad.abs().max() == 0
    tiny_model.zero_grad()


def test_permanence_belongs_to_each_handle_not_to_the_function(tiny_model):
    calls = []

    def fn(x, hook):
        calls.append(hook.name)
    hp = tiny_model.hook_dict["hook_embed"]
    perma = hp.add_hook(fn, is_permanent=True)
    temp = hp.add_hook(fn)
    assert perma.is_permanent and not temp.is_permanent and perma.user_hook is temp.user_hook is fn
    hp.remove_hooks("fwd")                                  # drops the temporary copy only
    assert hp.fwd_hooks == [perma] and hp.has_hooks(including_permanent=True)
    assert not hp.has_hooks(including_permanent=False)
    with torch.no_grad():
        tiny_model(TOKENS)
    assert calls == ["hook_embed"]
    tiny_model.reset_hooks(including_permanent=True)
    assert _no_hooks_left(tiny_model)


@torch.no_grad()
def test_pos_slice_follows_transformer_lens(tiny_model):
    names = ["blocks.0.attn.hook_pattern", "blocks.0.attn.hook_z", "blocks.1.hook_resid_post"]
    _, full = tiny_model.run_with_cache(TOKENS, names_filter=names)
    for pos_slice, idx in [(3, [3]), (-1, [9]), ((1, 4), [1, 2, 3]), ([0, 2, 5], [0, 2, 5]), (slice(2, 4), [2, 3])]:
        _, part = tiny_model.run_with_cache(TOKENS, names_filter=names, pos_slice=pos_slice)
        for n in names:
            dim = 2 if n.endswith("hook_pattern") else 1         # patterns: the query axis
            torch.testing.assert_close(part[n], full[n].index_select(dim, torch.tensor(idx)))


def test_run_with_cache_refuses_what_transformer_lens_refuses(tiny_model):
    with pytest.raises(AssertionError, match="batch size 2"):
        tiny_model.run_with_cache(TOKENS, remove_batch_dim=True)
    with torch.no_grad(), pytest.raises(ValueError, match="gradient tracking is off"):
        tiny_model.run_with_cache(TOKENS, return_type="loss", incl_bwd=True)
    assert _no_hooks_left(tiny_model)


@torch.no_grad()
def test_switched_hooks_join_an_unfiltered_cache_only_when_on(tiny_model):
    _, cache = tiny_model.run_with_cache(TOKENS)
    assert not any(n.endswith(("hook_result", "_input", "hook_attn_in", "hook_mlp_in")) for n in cache)
    tiny_model.set_use_attn_result(True)
    tiny_model.set_use_hook_mlp_in(True)
    _, cache = tiny_model.run_with_cache(TOKENS)
    assert {"blocks.1.attn.hook_result", "blocks.1.hook_mlp_in"} <= set(cache)
    _, named = tiny_model.run_with_cache(TOKENS, names_filter="blocks.1.attn.hook_result")
    tiny_model.set_use_attn_result(False)
    _, asked = tiny_model.run_with_cache(TOKENS, names_filter="blocks.1.attn.hook_result")   # asked by name: built
    torch.testing.assert_close(asked["result", 1], named["result", 1])


def test_layernorm_hooks_are_fp32_under_bf16_weights(tiny_checkpoint):
    from workbench import PhiModel
    model = PhiModel.from_pretrained(tiny_checkpoint, dtype=torch.bfloat16)
    with torch.no_grad():
        logits, cache = model.run_with_cache(TOKENS, names_filter=lambda n: "ln" in n)
        fused = model(TOKENS)
    assert cache["blocks.0.ln1.hook_scale"].dtype == torch.float32
    assert cache["ln_final.hook_normalized"].dtype == torch.float32
    assert logits.dtype == torch.bfloat16
    torch.testing.assert_close(logits, fused, atol=0.05, rtol=0)    # the explicit path is the fused one's numbers
