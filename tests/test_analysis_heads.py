"""Head detection from a model, from a store, from a run, and across the steps of a training recording.

The science the tables report is checked on patterns whose scores are known exactly (an ideal
induction head and an ideal previous-token head), and on models whose scores are recomputed from
the very tokens the task names.
"""
import warnings

import pytest
import torch

from helpers import (UNIFORM_INDUCTION, ideal_induction, make_hf_phi, save_checkpoint, uniform_attention,
                     write_recording)
from workbench.analysis.heads import (HeadTable, detect_heads, get_patterns, head_scores, scores_across_steps,
                                      scores_table, when_formed)
from workbench.analysis.probe_task import ProbeTask
from workbench.analysis.tasks import repeated_random_tokens


def test_labels_from_ideal_patterns():
    pats = ideal_induction(2, 5, 1)[None]                                 # [1 layer, batch, head, q, k]
    df = scores_table(head_scores(pats, period=5, offset=1))
    assert list(df.columns[:2]) == ["layer", "head_index"]
    assert df.loc[0, "label"] == "induction" and df.loc[1, "label"] == "previous-token"
    assert df.loc[0, "induction"] == pytest.approx(1.0) and df.loc[1, "previous_token"] == pytest.approx(1.0)
    # head 0 attends to position 0 from the queries of the first repeat (5 of 10 scored for first_token)
    assert df.loc[0, "first_token"] == pytest.approx(5 / 10) and df.loc[1, "induction"] == pytest.approx(0.0)
    assert df.loc[0, "entropy"] == pytest.approx(0.0, abs=1e-6)            # one-hot attention has no entropy


def test_head_column_no_longer_hides_dataframe_head():
    df = scores_table(head_scores(ideal_induction(1, 5, 1)[None], period=5, offset=1))
    assert isinstance(df, HeadTable) and len(df.head(1)) == 1             # DataFrame.head() works
    with pytest.warns(FutureWarning, match="now 'head_index'"):
        old = df["head"]                                                   # the old name reads the new column
    assert old.tolist() == [0, 1]
    best = df.best("induction")
    assert (int(best.layer), int(best.head_index), best["induction"]) == (0, 0, pytest.approx(1.0))
    assert isinstance(df.sort_values("induction"), HeadTable)


@pytest.mark.filterwarnings("ignore:no head passes")
def test_detect_heads_model_and_store_agree(tiny_model, tmp_path):
    from workbench.store import ActivationStore, StoreWriter
    tokens = repeated_random_tokens(4, 6, vocab_size=512, seed=0, bos_token_id=0)   # [4, 13]
    from_model = detect_heads(tiny_model, tokens, period=6, offset=1, verbose=False)
    assert len(from_model) == tiny_model.cfg.n_layers * tiny_model.cfg.n_heads
    pats = get_patterns(tiny_model, tokens)                                 # [layer, batch, head, q, k]
    torch.testing.assert_close(torch.tensor(from_model["induction"].values, dtype=torch.float32),
                               head_scores(pats, 6, 1)["induction"].flatten())
    hooks = {f"blocks.{i}.attn.hook_pattern": ((2, 13, 13), torch.float32) for i in range(2)}
    with StoreWriter(tmp_path / "p.h5", hooks=hooks, seq_len=13) as w:
        w.append(tokens, {n: pats[i] for i, n in enumerate(hooks)})
    from_store = detect_heads(ActivationStore.open(tmp_path / "p.h5"), period=6, offset=1, verbose=False)
    cols = ["previous_token", "induction", "duplicate_token", "first_token", "entropy"]
    assert from_store[cols].values == pytest.approx(from_model[cols].values, abs=1e-6)


def test_default_task_is_said_and_scored_on_its_own_tokens(tiny_model, capsys):
    with pytest.warns(UserWarning, match="no head passes the induction threshold 0.3"):  # a random model
        table = detect_heads(tiny_model, n_seqs=3)
    task = table.attrs["task"]
    assert (task.period, task.vocab_size, task.offset) == (20, tiny_model.cfg.d_vocab, 1)
    note = capsys.readouterr().out.strip()
    assert note == table.attrs["note"] and "period 20" in note and "the default task" in note
    expected = head_scores(get_patterns(tiny_model, task.tokens(3, 0, tiny_model.cfg.bos_token_id)), 20, 1)
    assert table["induction"].tolist() == pytest.approx(expected["induction"].flatten().tolist(), abs=1e-6)


def _run_folder(tmp_path, hf, period=5, alphabet=16, probe_rows=4):
    """A training run folder as ``workbench train`` leaves it: config.toml and a checkpoint."""
    from workbench.training import TrainConfig
    run = tmp_path / "run"
    cfg = TrainConfig.default().override(data__synthetic_vocab_size=alphabet, record__probe_period=period,
                                         record__probe_rows=probe_rows)
    save_checkpoint(hf, run / "checkpoints" / "step_00000010")
    (run / "config.toml").write_text(cfg.to_toml())
    return run


def test_a_run_and_a_model_loaded_from_it_use_the_runs_task(tmp_path, capsys):
    from workbench import PhiModel
    run = _run_folder(tmp_path, make_hf_phi(seed=3))
    task = ProbeTask.from_run(run)
    assert (task.period, task.vocab_size, task.n_repeats, task.offset, task.rows) == (5, 16, 2, 1, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        from_path = detect_heads(run, n_seqs=4)
        model = PhiModel.from_pretrained(run)
        assert model.run_dir == run.resolve()     # loading a run folder remembers the run
        from_model = detect_heads(model, n_seqs=4)
        plain = PhiModel.from_pretrained(run)
        plain.run_dir = None                      # a model that knows no run
        default = detect_heads(plain, n_seqs=4, verbose=False)
    assert from_path.attrs["task"] == from_model.attrs["task"] == task.for_model(model.cfg)
    assert "period 5" in capsys.readouterr().out and "config.toml" in from_path.attrs["note"]
    tokens = task.model_tokens(model, 4)                                  # ids < 16 after the BOS
    assert tokens.shape == (4, 11) and int(tokens[:, 1:].max()) < 16
    expected = head_scores(get_patterns(model, tokens), 5, 1)["induction"].flatten().tolist()
    assert from_path["induction"].tolist() == pytest.approx(expected, abs=1e-6)
    assert from_model["induction"].tolist() == pytest.approx(expected, abs=1e-6)
    assert default.attrs["task"].period == 20                             # no run_dir: the default task


def test_a_recording_is_scored_at_its_last_step_on_its_repeated_rows(tmp_path):
    from workbench.store import ActivationStore
    period, n = 5, 11
    final = torch.cat([ideal_induction(3, period, 1), uniform_attention(2, 2, n)])  # 3 repeated rows, 2 text rows
    write_recording(tmp_path / "rec.h5", {0: uniform_attention(5, 2, n), 100: final}, n_rep=3, period=period)
    store = ActivationStore.open(tmp_path / "rec.h5")
    with warnings.catch_warnings():
        warnings.simplefilter("error")                                     # a head passes: no warning
        table = detect_heads(store, verbose=False)
    assert table.attrs["step"] == 100 and table.attrs["task"].rows == 3 and table.attrs["task"].vocab_size == 64
    assert table["induction"].tolist() == pytest.approx([1.0, 0.0])       # the text rows are left out
    assert table["previous_token"].tolist() == pytest.approx([0.0, 1.0])
    assert table["label"].tolist() == ["induction", "previous-token"]
    with pytest.warns(UserWarning, match="best is L0.H0 at 0.114"):
        early = detect_heads(store, step=0, verbose=False)
    assert early["induction"].tolist() == pytest.approx([UNIFORM_INDUCTION] * 2)


def test_recording_attribute_probe_vocab_size_wins(tmp_path):
    attrs = {"probe_period": 7, "probe_offset": 1, "probe_repeated_rows": 2,
             "train_config": {"data": {"synthetic_vocab_size": 64}}}
    assert ProbeTask.from_recording(attrs).vocab_size == 64
    assert ProbeTask.from_recording({**attrs, "probe_vocab_size": 32}).vocab_size == 32
    assert ProbeTask.from_recording({"probe_period": 7, "train_config": {"data": {"synthetic_vocab_size": 0}}}
                                    ).vocab_size is None             # 0 means the whole vocabulary
    assert ProbeTask.from_recording({"model_source": "x"}) is None   # a cache file with no probe task


def test_probe_task_tokens_and_fitting_to_a_model():
    task = ProbeTask(period=4, vocab_size=10)
    rows = task.tokens(3, seed=1, bos_token_id=99)
    assert rows.shape == (3, 9) and (rows[:, 0] == 99).all() and int(rows[:, 1:].max()) < 10
    assert torch.equal(rows[:, 1:5], rows[:, 5:9])                        # the block repeats
    assert torch.equal(rows, task.tokens(3, seed=1, bos_token_id=99))     # seeded
    from workbench.model import PhiConfig
    no_bos = PhiConfig.from_name("tiny", d_vocab=8, bos_token_id=None)
    fitted = task.for_model(no_bos)
    assert (fitted.vocab_size, fitted.offset) == (8, 0)                   # within d_vocab; no BOS to put first
    assert fitted.tokens(2).shape == (2, 8)
    with pytest.raises(ValueError, match="BOS"):
        task.tokens(2)
    with pytest.raises(ValueError, match="n_repeats >= 2"):
        ProbeTask(period=4, n_repeats=1)


def test_store_without_patterns_is_a_clear_error(tmp_path):
    from workbench.store import ActivationStore, StoreWriter
    with StoreWriter(tmp_path / "r.h5", hooks={"blocks.0.hook_resid_post": ((4, 8), torch.float32)}, seq_len=4) as w:
        w.append(torch.zeros(1, 4, dtype=torch.long), {"blocks.0.hook_resid_post": torch.zeros(1, 4, 8)})
    with pytest.raises(KeyError, match="hook_pattern"):
        detect_heads(ActivationStore.open(tmp_path / "r.h5"), verbose=False)


def test_scores_across_training_steps(tmp_path):
    period, n = 5, 11
    write_recording(tmp_path / "rec.h5", {0: uniform_attention(3, 2, n), 100: ideal_induction(3, period, 1)},
               n_rep=3, period=period)
    df = scores_across_steps(tmp_path / "rec.h5")                          # a path works as well as a store
    assert list(df["step"].unique()) == [0, 100] and df.attrs["task"].period == period
    ind = df[df["head_index"] == 0].set_index("step")["induction"]
    assert ind[0] == pytest.approx(UNIFORM_INDUCTION) and ind[100] == pytest.approx(1.0)
    assert df[(df["step"] == 100) & (df["head_index"] == 0)]["label"].item() == "induction"


def test_when_the_head_formed(tmp_path):
    period, n = 5, 11
    half = 0.5 * ideal_induction(3, period, 1) + 0.5 * uniform_attention(3, 2, n)   # head 0 halfway there
    write_recording(tmp_path / "rec.h5", {0: uniform_attention(3, 2, n), 50: half, 100: ideal_induction(3, period, 1)},
                    n_rep=3, period=period)
    table = scores_across_steps(tmp_path / "rec.h5")
    formed = when_formed(table)
    assert formed == {"name": "L0.H0", "layer": 0, "head_index": 0, "score": pytest.approx(1.0), "step": 100,
                      "formed_at": 50, "threshold": 0.3}                   # 0.5 + 0.5 * 0.114 passes 0.3 at step 50
    assert when_formed(table, threshold=0.9)["formed_at"] == 100
    assert when_formed(table[table["step"] == 0])["formed_at"] is None
    with pytest.raises(ValueError, match="scores_across_steps table"):
        when_formed(table.drop(columns="step"))
