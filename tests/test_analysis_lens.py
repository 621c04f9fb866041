"""Lens and attribution functions agree with TransformerLens's ActivationCache on our cache and model."""
import pytest
import torch

from workbench.analysis import lens


@pytest.fixture()
def run(tiny_model):
    tokens = torch.randint(1, 512, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits, cache = tiny_model.run_with_cache(tokens)
    data = {k: v for k, v in cache.items() if not k.endswith("hook_result")}  # make both compute results
    return tiny_model, tokens, logits, cache, data


def _tl_cache(model, data):
    """TL's own ActivationCache over our model: it reads cfg, blocks, ln_final and
    tokens_to_residual_directions, which PhiModel provides."""
    tl_cache = pytest.importorskip("transformer_lens.ActivationCache")
    return tl_cache.ActivationCache(dict(data), model)


@torch.no_grad()
def test_matches_transformer_lens(run):
    model, tokens, logits, cache, data = run
    tl = _tl_cache(model, data)
    close = lambda a, b: torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    for kw in [dict(), dict(apply_ln=True), dict(apply_ln=True, layer=1), dict(pos_slice=-1, apply_ln=True)]:
        ours, labels = lens.accumulated_resid(cache, return_labels=True, **kw)
        theirs, tl_labels = tl.accumulated_resid(return_labels=True, **kw)
        close(ours, theirs)
        assert labels == tl_labels
    for kw in [dict(), dict(apply_ln=True), dict(mode="attn", layer=1), dict(pos_slice=(2, 5))]:
        ours, labels = lens.decompose_resid(cache, return_labels=True, **kw)
        theirs, tl_labels = tl.decompose_resid(return_labels=True, **kw)
        close(ours, theirs)
        assert labels == tl_labels
    for kw in [dict(), dict(incl_remainder=True, apply_ln=True), dict(layer=1, pos_slice=3)]:
        ours, labels = lens.stack_head_results(cache, return_labels=True, **kw)
        theirs, tl_labels = tl.stack_head_results(return_labels=True, **kw)
        close(ours, theirs)
        assert labels == tl_labels
    stack = lens.decompose_resid(cache)
    close(lens.apply_ln_to_stack(cache, stack, 1), tl.apply_ln_to_stack(stack, 1))
    answers, wrong = torch.tensor([3, 8]), torch.tensor([11, 2])
    close(lens.logit_attrs(cache, stack, answers, wrong), tl.logit_attrs(stack, answers, wrong))
    close(lens.logit_attrs(cache, stack[:, :, -1], 5, pos_slice=-1), tl.logit_attrs(stack[:, :, -1], 5, pos_slice=-1))


@torch.no_grad()
def test_decomposition_and_lens_are_exact(run):
    model, tokens, logits, cache, _ = run
    torch.testing.assert_close(lens.decompose_resid(cache).sum(0), cache["blocks.1.hook_resid_post"],
                               atol=1e-5, rtol=1e-5)
    lensed, labels = lens.logit_lens(cache, return_labels=True)
    assert lensed.shape == (model.cfg.n_layers + 1, 2, 7, model.cfg.d_vocab) and labels[-1] == "final_post"
    torch.testing.assert_close(lensed[-1], logits, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(lensed[0], logits, atol=1e-3)


@torch.no_grad()
def test_direct_logit_attribution_sums_to_logit_diff(run):
    model, tokens, logits, cache, _ = run
    good, bad = torch.tensor([3, 8]), torch.tensor([11, 2])
    attrs, labels = lens.direct_logit_attribution(cache, good, bad, pos=-1)
    assert attrs.shape == (len(labels), 2)
    assert labels[:2] == ["embed", "L0H0"] and "L1_mlp" in labels
    b = torch.arange(2)
    target = logits[b, -1, good] - logits[b, -1, bad]
    torch.testing.assert_close(attrs.sum(0), target, atol=1e-4, rtol=1e-4)
    single, _ = lens.direct_logit_attribution(cache, good, pos=3)
    torch.testing.assert_close(single.sum(0), logits[b, 3, good], atol=1e-4, rtol=1e-4)


def test_missing_scale_is_a_clear_error(tiny_model):
    tokens = torch.randint(1, 512, (1, 4))
    _, cache = tiny_model.run_with_cache(tokens, names_filter=lambda n: "resid" in n)
    with pytest.raises(KeyError, match="hook_scale"):
        lens.accumulated_resid(cache, layer=1, apply_ln=True)


@torch.no_grad()
def test_lens_and_patching_from_a_store_cache(run, tmp_path):
    """A cache read back from the HDF5 store gives the same analyses as the in-memory one."""
    from workbench.analysis.patching import get_act_patch_resid_pre
    from workbench.store import ActivationStore, StoreWriter
    model, tokens, logits, cache, _ = run
    names = [n for n in cache if "resid" in n or n in ("hook_embed", "ln_final.hook_scale") or "_out" in n]
    with StoreWriter(tmp_path / "c.h5", hooks={n: (tuple(cache[n].shape[1:]), torch.float32) for n in names},
                     seq_len=tokens.shape[1]) as w:
        w.append(tokens, {n: cache[n] for n in names})
    stored = ActivationStore.open(tmp_path / "c.h5").to_cache(model=model)
    torch.testing.assert_close(lens.logit_lens(stored), lens.logit_lens(cache))
    torch.testing.assert_close(lens.decompose_resid(stored), lens.decompose_resid(cache))
    metric = lambda lg: lg[:, -1, 3].mean()
    corrupted = tokens.flip(0)
    torch.testing.assert_close(get_act_patch_resid_pre(model, corrupted, stored, metric),
                               get_act_patch_resid_pre(model, corrupted, cache, metric))
