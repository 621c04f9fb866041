"""Batched activation patching equals transformer_lens.patching run on our model, and rejects bad input."""
import itertools

import pytest
import torch

from workbench.analysis import patching as P
from workbench.analysis.metrics import make_logit_diff_metric, make_normalised_logit_diff_metric

NAMES = ["get_act_patch_resid_pre", "get_act_patch_attn_out", "get_act_patch_mlp_out",
         "get_act_patch_attn_head_out_all_pos", "get_act_patch_attn_head_out_by_pos",
         "get_act_patch_attn_head_q_all_pos", "get_act_patch_attn_head_k_all_pos",
         "get_act_patch_attn_head_v_all_pos", "get_act_patch_attn_head_q_by_pos",
         "get_act_patch_attn_head_k_by_pos", "get_act_patch_attn_head_v_by_pos",
         "get_act_patch_attn_head_pattern_all_pos", "get_act_patch_attn_head_pattern_by_pos",
         "get_act_patch_attn_head_pattern_dest_src_pos"]


@pytest.fixture()
def setup(tiny_model):
    pytest.importorskip("transformer_lens")   # imported first, so the caches below are TransformerLens's type too
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(1, 512, (2, 6), generator=g)
    corrupted = clean.clone()
    corrupted[:, 2] = torch.randint(1, 512, (2,), generator=g)  # one token differs
    answers = torch.tensor([[5, 9], [17, 3]])
    with torch.no_grad():
        clean_logits, cache = tiny_model.run_with_cache(clean)
        corrupted_logits = tiny_model(corrupted)
    metric = make_normalised_logit_diff_metric(answers, clean_logits, corrupted_logits)
    return tiny_model, clean, corrupted, cache, metric


@pytest.mark.parametrize("name", NAMES)
def test_patching_equals_transformer_lens(setup, name):
    tl_patching = pytest.importorskip("transformer_lens.patching")
    model, clean, corrupted, cache, metric = setup
    ours = getattr(P, name)(model, corrupted, cache, metric, max_batch_tokens=40)  # several chunks
    theirs = getattr(tl_patching, name)(model, corrupted, cache, metric)
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs.cpu().float(), atol=2e-5, rtol=1e-4)


def test_patching_recovers_clean_at_the_changed_position(setup):
    model, clean, corrupted, cache, metric = setup
    out = P.get_act_patch_resid_pre(model, corrupted, cache, metric)
    assert out.shape == (model.cfg.n_layers, 6)
    # Layer 0, position 2 carries all of the difference: patching it gives the clean run (1.0).
    torch.testing.assert_close(out[0, 2], torch.tensor(1.0), atol=1e-5, rtol=0)
    torch.testing.assert_close(out[0, :2], torch.zeros(2), atol=1e-5, rtol=0)  # identical positions


def test_bad_input(setup):
    model, clean, corrupted, cache, metric = setup
    with pytest.raises(ValueError, match="differ in shape"):
        P.get_act_patch_resid_pre(model, corrupted[:, :5], cache, metric)
    with pytest.raises(ValueError, match="must return a scalar"):
        P.get_act_patch_mlp_out(model, corrupted, cache, lambda logits: logits[:, -1, 0])
    _, small_cache = model.run_with_cache(clean, names_filter="blocks.0.hook_resid_pre")
    with pytest.raises(KeyError, match="no 'blocks.0.attn.hook_z'"):
        P.get_act_patch_attn_head_out_by_pos(model, corrupted, small_cache, metric)


def test_logit_diff_metric():
    logits = torch.zeros(2, 3, 10)
    logits[0, -1, 4], logits[1, -1, 7] = 2.0, -1.0
    m = make_logit_diff_metric(torch.tensor([[4, 5], [6, 7]]))
    torch.testing.assert_close(m(logits), torch.tensor((2.0 + 1.0) / 2))
    with pytest.raises(ValueError, match=r"\[batch, 2\]"):
        make_logit_diff_metric(torch.tensor([1, 2, 3]))


def test_chunk_plan_skips_unchanged_positions():
    from workbench.analysis import patch_runs as R
    rows = torch.tensor(list(itertools.product(range(6), range(2))))          # (pos, head) of z, by position
    masks = R.row_masks(rows, (0, 1), (6, 2, 4))                               # [12 variants, 6, 2, 1]
    assert masks.shape == (12, 6, 2, 1) and masks.sum().item() == 12
    assert masks[7, 3, 1, 0] and not masks[7, 3, 0, 0]                         # row 7 = (pos 3, head 1)
    starts = R.first_positions(rows, (0, 1), query_dim=0)
    assert starts.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    chunks = R.plan_chunks(starts, batch=2, pos=6, max_tokens=24, min_tokens=0)
    assert [s for s, _ in chunks] == [0, 1, 2, 3, 4, 5]                  # one chunk per first position
    assert sorted(v for _, ids in chunks for v in ids) == list(range(12))
    for s, ids in chunks:
        assert all(int(starts[v]) >= s for v in ids)                     # never starts after a variant's patch
        assert len(ids) * 2 * (6 - s) <= 24
    heads_only = torch.tensor([[0], [1]])                                # all positions of head h
    assert R.first_positions(heads_only, (1,), query_dim=0).tolist() == [0, 0]
