"""Head detection from a model, from a store, and across the steps of a training recording."""
import pytest
import torch

from workbench.analysis.heads import detect_heads, get_patterns, head_scores, scores_across_steps, scores_table
from workbench.tasks import repeated_random_tokens


def _ideal_induction(batch, period, offset, heads=2):
    n = offset + 2 * period
    pat = torch.zeros(batch, heads, n, n)
    for q in range(n):
        pat[:, 0, q, q - period + 1 if q >= offset + period else 0] = 1.0  # head 0: induction
        pat[:, 1, q, max(q - 1, 0)] = 1.0                                  # head 1: previous token
    return pat


def test_labels_from_ideal_patterns():
    pats = _ideal_induction(2, 5, 1)[None]                                 # [1 layer, batch, head, q, k]
    df = scores_table(head_scores(pats, period=5, offset=1))
    assert list(df.columns[:2]) == ["layer", "head"]
    assert df.loc[0, "label"] == "induction" and df.loc[1, "label"] == "previous-token"
    assert df.loc[0, "induction"] == pytest.approx(1.0) and df.loc[1, "previous_token"] == pytest.approx(1.0)


def test_detect_heads_model_and_store_agree(tiny_model, tmp_path):
    from workbench.store import ActivationStore, StoreWriter
    tokens = repeated_random_tokens(4, 6, vocab_size=512, seed=0, bos_token_id=0)   # [4, 13]
    from_model = detect_heads(tiny_model, tokens, period=6, offset=1)
    assert len(from_model) == tiny_model.cfg.n_layers * tiny_model.cfg.n_heads
    pats = get_patterns(tiny_model, tokens)                                 # [layer, batch, head, q, k]
    torch.testing.assert_close(torch.tensor(from_model["induction"].values, dtype=torch.float32),
                               head_scores(pats, 6, 1)["induction"].flatten())
    hooks = {f"blocks.{i}.attn.hook_pattern": ((2, 13, 13), torch.float32) for i in range(2)}
    with StoreWriter(tmp_path / "p.h5", hooks=hooks, seq_len=13) as w:
        w.append(tokens, {n: pats[i] for i, n in enumerate(hooks)})
    from_store = detect_heads(ActivationStore.open(tmp_path / "p.h5"), period=6, offset=1)
    cols = ["previous_token", "induction", "duplicate_token", "first_token", "entropy"]
    assert from_store[cols].values == pytest.approx(from_model[cols].values, abs=1e-6)
    default = detect_heads(tiny_model, n_seqs=3)                            # generates its own sequences
    assert default["induction"].notna().all()


def test_store_without_patterns_is_a_clear_error(tmp_path):
    from workbench.store import ActivationStore, StoreWriter
    with StoreWriter(tmp_path / "r.h5", hooks={"blocks.0.hook_resid_post": ((4, 8), torch.float32)}, seq_len=4) as w:
        w.append(torch.zeros(1, 4, dtype=torch.long), {"blocks.0.hook_resid_post": torch.zeros(1, 4, 8)})
    with pytest.raises(KeyError, match="hook_pattern"):
        detect_heads(ActivationStore.open(tmp_path / "r.h5"))


def test_scores_across_training_steps(tmp_path):
    from workbench.store import ActivationStore, StoreWriter
    period, n = 5, 11
    tokens = repeated_random_tokens(3, period, vocab_size=100, bos_token_id=0)
    early = torch.ones(3, 2, n, n).tril()
    early = early / early.sum(-1, keepdim=True)                             # uniform attention
    hooks = {"blocks.0.attn.hook_pattern": ((2, n, n), torch.float32)}
    with StoreWriter(tmp_path / "rec.h5", hooks=hooks, seq_len=n, steps=True, probe_tokens=tokens,
                     attrs={"probe_period": period, "probe_offset": 1, "probe_repeated_rows": 3}) as w:
        w.append_step(0, {"blocks.0.attn.hook_pattern": early})
        w.append_step(100, {"blocks.0.attn.hook_pattern": _ideal_induction(3, period, 1)})
    df = scores_across_steps(ActivationStore.open(tmp_path / "rec.h5"))
    assert list(df["step"].unique()) == [0, 100]
    ind = df[df["head"] == 0].set_index("step")["induction"]
    assert ind[0] < 0.3 and ind[100] == pytest.approx(1.0)
    assert df[(df["step"] == 100) & (df["head"] == 0)]["label"].item() == "induction"
