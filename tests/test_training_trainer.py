"""Trainer pieces: schedules, optimizer groups, recording contents, activation checkpointing, report."""
from __future__ import annotations

import json
import sys

import pytest
import torch

from workbench.training.config import load_config
from workbench.training.schedule import lr_factor, record_steps


_TOKENIZER: list = []


def _tiny(**changes):
    """The tiny config, sharing one trained BPE across this file's runs (training it is the slow part)."""
    cfg = load_config("tiny").override(system__num_threads=0, **changes)
    if _TOKENIZER:
        cfg = cfg.override(data__tokenizer=_TOKENIZER[0])
    return cfg


@pytest.fixture(scope="module", autouse=True)
def _shared_tokenizer(tmp_path_factory):
    from workbench.training.data import build_data
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    build_data(load_config("tiny").data, None).tokenizer.save(path)
    _TOKENIZER.append(str(path))
    yield
    _TOKENIZER.clear()


def test_lr_schedule_warms_up_then_follows_a_cosine_to_the_floor():
    f = [lr_factor(s, warmup=10, max_steps=110, min_ratio=0.1) for s in range(111)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert f[10] == pytest.approx(1.0) and f[60] == pytest.approx(0.55) and f[110] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(f[10:], f[11:]))


def test_record_schedule_log_spaced_and_every():
    assert record_steps(20, 0, True) == [0, 1, 2, 4, 8, 16, 20]
    assert record_steps(20, 5, False) == [0, 5, 10, 15, 20]
    assert record_steps(10, 0, False) == [0, 10]


def test_param_groups_split_decay_from_no_decay():
    from workbench.training.trainer import param_groups
    from workbench import PhiConfig, PhiModel
    model = PhiModel(PhiConfig.from_name("tiny"))
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_recording_equals_the_checkpointed_model_on_the_probe_set(tmp_path):
    from workbench.training.trainer import train
    from workbench import PhiModel
    from workbench.store import ActivationStore
    run = tmp_path / "run"
    train(_tiny(schedule__max_steps=10), run, progress=False)
    store = ActivationStore.open(run / "activations.h5")
    assert store.steps == [0, 1, 2, 4, 5, 8, 10]
    assert store.attrs["probe_period"] == 6 and store.attrs["probe_repeated_rows"] == 2
    probe = store.tokens[:]
    assert probe.shape == (3, 13) and (probe[:2, 1:7] == probe[:2, 7:]).all()   # [BOS, A, A] rows
    model = PhiModel.from_pretrained(run / "checkpoints" / "step_00000010")
    _, cache = model.run_with_cache(probe, names_filter=list(store.hooks))
    for name in store.hooks:
        torch.testing.assert_close(store.at_step(10)[name][:].float(), cache[name].float(), atol=2e-3, rtol=2e-3)
    # Step 0 is the initialisation: the recording equals a freshly built model of the same seed.
    from workbench.training.data import build_data
    from workbench.training.trainer import build_model
    cfg = _tiny(schedule__max_steps=10)
    init = build_model(cfg, build_data(cfg.data, run)).eval()
    _, cache0 = init.run_with_cache(probe, names_filter=list(store.hooks))
    for name in store.hooks:
        torch.testing.assert_close(store.at_step(0)[name][:].float(), cache0[name].float(), atol=2e-3, rtol=2e-3)


def test_first_loss_is_the_initial_models_loss_on_the_first_batch(tmp_path):
    """The logged loss of update 1 is the cross-entropy of the step-0 model on batch 0, computed here
    independently of the trainer; update 1 then moves the weights by at most lr per entry (Adam)."""
    from workbench.training.data import Batches, build_data
    from workbench.training.metrics import read_metrics
    from workbench.training.trainer import build_model, train
    cfg = _tiny(schedule__max_steps=1, record__hooks=[])
    run = tmp_path / "run"
    train(cfg, run, progress=False)
    data = build_data(cfg.data, run)
    rows = Batches(data, cfg.data, cfg.seed).global_batch(0)
    model = build_model(cfg, data)
    logits = model(rows[:, :-1])
    want = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), rows[:, 1:].reshape(-1))
    got = read_metrics(run / "metrics.jsonl")[0]
    assert got["loss"] == pytest.approx(float(want.detach()), abs=1e-6)
    assert got["lr"] == pytest.approx(cfg.optimizer.lr / cfg.schedule.warmup_steps)   # warmup: step 1 of 2
    from workbench import PhiModel
    after = PhiModel.from_pretrained(run)
    lr = cfg.optimizer.lr / cfg.schedule.warmup_steps
    for (name, a), (_, b) in zip(model.named_parameters(), after.named_parameters()):
        step = (a.detach() - b.detach()).abs().max()
        assert 0 < step <= lr * 1.01, name   # Adam's first step moves every entry by ~lr (plus decay)


def test_two_runs_of_one_config_are_identical(tmp_path):
    """Determinism on one machine: the same config twice gives bit-identical losses and recordings."""
    from workbench.store import ActivationStore
    from workbench.training.metrics import read_metrics
    from workbench.training.trainer import train
    cfg = _tiny(schedule__max_steps=8)
    for name in ("a", "b"):
        train(cfg, tmp_path / name, progress=False)
    keep = ("step", "loss", "val_loss", "grad_norm", "lr", "tokens")
    rows = [[{k: r[k] for k in keep if k in r} for r in read_metrics(tmp_path / n / "metrics.jsonl")] for n in "ab"]
    assert rows[0] == rows[1] and len(rows[0]) == 8
    a, b = (ActivationStore.open(tmp_path / n / "activations.h5") for n in "ab")
    assert a.steps == b.steps
    for step in a.steps:
        for hook in a.hooks:
            assert torch.equal(a.at_step(step)[hook][:], b.at_step(step)[hook][:]), (step, hook)


def test_recomputing_activations_gives_the_same_losses(tmp_path):
    from workbench.training.metrics import read_metrics
    from workbench.training.trainer import train
    cfg = _tiny(schedule__max_steps=4, record__hooks=[], checkpoint__every=0)
    train(cfg, tmp_path / "plain", progress=False)
    train(cfg.override(system__recompute_activations=True), tmp_path / "ckpt", progress=False)
    a = [r["loss"] for r in read_metrics(tmp_path / "plain" / "metrics.jsonl") if "loss" in r]
    b = [r["loss"] for r in read_metrics(tmp_path / "ckpt" / "metrics.jsonl") if "loss" in r]
    assert len(a) == 4 and a == pytest.approx(b, abs=1e-6)


def test_grad_accumulation_matches_one_big_batch(tmp_path):
    from workbench.training.metrics import read_metrics
    from workbench.training.trainer import train
    cfg = _tiny(schedule__max_steps=3, record__hooks=[], checkpoint__every=0)
    train(cfg, tmp_path / "one", progress=False)
    train(cfg.override(data__micro_batch_size=1), tmp_path / "accum", progress=False)
    a = [r["loss"] for r in read_metrics(tmp_path / "one" / "metrics.jsonl") if "loss" in r]
    b = [r["loss"] for r in read_metrics(tmp_path / "accum" / "metrics.jsonl") if "loss" in r]
    assert a == pytest.approx(b, abs=1e-5)


def test_metrics_rows_and_report_command(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    from workbench.training.trainer import train
    run = tmp_path / "run"
    train(_tiny(schedule__max_steps=6), run, progress=False)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert {"step", "loss", "lr", "tokens", "tok_per_s", "grad_norm"} <= set(rows[0])
    assert rows[-1]["tokens"] == 6 * 4 * 32 and "val_loss" in rows[4]
    assert (run / "config.toml").is_file() and (run / "tokenizer.json").is_file()
    from workbench import cli
    for args, want_code in (([str(run)], 0), ([str(tmp_path)], 1)):
        try:
            sys.argv = ["workbench", "report", *args]
            cli.main()
            code = 0
        except SystemExit as e:
            code = int(e.code or 0)
        out = capsys.readouterr()
        assert code == want_code, out.err
        if want_code == 0:
            assert "loss curve:" in out.out and "induction score" in out.out and "step      6:" in out.out
        else:
            assert "not a training run folder" in out.err


def test_old_name_of_enable_recompute_activations_warns_and_works():
    from workbench import PhiConfig, PhiModel
    from workbench.training.trainer import enable_activation_checkpointing
    model = PhiModel(PhiConfig.from_name("tiny"))
    plain = model.blocks[0].forward
    with pytest.warns(FutureWarning, match="renamed enable_recompute_activations"):
        enable_activation_checkpointing(model)
    assert model.blocks[0].forward is not plain


def test_saving_leaves_the_live_models_config_alone(tmp_path):
    """Checkpoints are written from a clone built on the meta device: the live model keeps its cfg and device."""
    from workbench.training.trainer import Trainer
    trainer = Trainer(_tiny(schedule__max_steps=2), tmp_path / "run", progress=False)
    cfg = trainer.model.cfg
    trainer.save()
    assert trainer.model.cfg is cfg and cfg.device == "cpu"
    assert all(p.device.type == "cpu" for p in trainer.model.parameters())
    clone = trainer._full_model()
    assert clone.cfg is not cfg and clone.cfg.device == "meta" and cfg.device == "cpu"
