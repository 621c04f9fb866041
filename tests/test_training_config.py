"""TrainConfig: TOML in, typos named with the closest key, types and values checked, round trips."""
from __future__ import annotations

import pytest

from workbench.training.config import CONFIG_DIR, ConfigError, TrainConfig, list_configs, load_config


def test_shipped_configs_load():
    assert {"default", "phi2-gpu", "tiny"} <= set(list_configs())
    for name in list_configs():
        cfg = load_config(name)
        assert cfg.name == name
    assert TrainConfig.default().record.hooks, "the default run must record"
    assert load_config("phi2-gpu").model.preset == "phi-2"


def test_misspelt_key_names_the_closest_valid_key(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[optimizer]\nlearning_rate = 1e-3\n")
    with pytest.raises(ConfigError, match="unknown key 'learning_rate'.*"):
        TrainConfig.from_toml(p)
    p.write_text("[schedule]\nmax_step = 10\n")
    with pytest.raises(ConfigError, match=r"\[schedule\].*'max_step'.*did you mean 'max_steps'"):
        TrainConfig.from_toml(p)
    p.write_text("[recrod]\nevery = 3\n")
    with pytest.raises(ConfigError, match="did you mean 'record'"):
        TrainConfig.from_toml(p)


def test_wrong_types_and_values_are_errors(tmp_path):
    with pytest.raises(ConfigError, match="max_steps must be int"):
        TrainConfig.from_dict({"schedule": {"max_steps": "ten"}})
    with pytest.raises(ConfigError, match="synthetic_fraction"):
        TrainConfig.from_dict({"data": {"synthetic_fraction": 1.5}})
    with pytest.raises(ConfigError, match="precision"):
        TrainConfig.from_dict({"system": {"precision": "fp8"}})
    p = tmp_path / "bad.toml"
    p.write_text("[data\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        TrainConfig.from_toml(p)
    with pytest.raises(ConfigError, match="no config file"):
        load_config(tmp_path / "missing.toml")


def test_ints_accepted_for_floats_and_strings_for_lists():
    cfg = TrainConfig.from_dict({"optimizer": {"lr": 1}, "record": {"hooks": "blocks.0.hook_resid_post"}})
    assert cfg.optimizer.lr == 1.0 and isinstance(cfg.optimizer.lr, float)
    assert cfg.record.hooks == ["blocks.0.hook_resid_post"]


def test_to_toml_round_trips(tmp_path):
    cfg = load_config(CONFIG_DIR / "default.toml").override(schedule__max_steps=7, seed=3)
    p = tmp_path / "resolved.toml"
    p.write_text(cfg.to_toml())
    again = TrainConfig.from_toml(p)
    assert again == cfg
    assert again.schedule.max_steps == 7 and again.seed == 3


def test_override_rejects_unknown_and_keeps_none():
    cfg = TrainConfig.default()
    assert cfg.override(schedule__max_steps=None) == cfg
    with pytest.raises(ConfigError, match="max_stepz"):
        cfg.override(schedule__max_stepz=3)


@pytest.mark.parametrize("section, key, value, needle", [
    ("system", "num_threads", -1, "system.num_threads must be >= 0"),
    ("optimizer", "lr", -1e-3, "optimizer.lr must be > 0"),
    ("optimizer", "lr", 0, "optimizer.lr must be > 0"),
    ("optimizer", "beta1", -0.1, "optimizer.beta1 must be in [0, 1)"),
    ("optimizer", "beta2", 1.0, "optimizer.beta2 must be in [0, 1)"),
    ("optimizer", "eps", 0, "optimizer.eps must be > 0"),
    ("optimizer", "weight_decay", -0.1, "optimizer.weight_decay must be >= 0"),
    ("optimizer", "grad_clip", -1, "optimizer.grad_clip must be >= 0"),
    ("schedule", "warmup_steps", -5, "schedule.warmup_steps must be >= 0"),
    ("schedule", "min_lr_ratio", 1.5, "schedule.min_lr_ratio"),
    ("schedule", "eval_every", -1, "schedule.eval_every must be >= 0"),
    ("data", "vocab_size", 5, "data.vocab_size is 5, but the byte-level BPE"),
    ("data", "max_corpus_bytes", -1, "data.max_corpus_bytes must be >= 0"),
    ("record", "probe_val_rows", -2, "record.probe_rows and record.probe_val_rows must be >= 0"),
    ("record", "queue_size", 0, "record.queue_size must be at least 1"),
    ("checkpoint", "keep_last", -1, "checkpoint.keep_last must be >= 0"),
    ("checkpoint", "log_spaced", -3, "checkpoint.log_spaced must be >= 0"),
    ("model", "d_model", 0, "model.d_model must be at least 1"),
])
def test_values_a_run_cannot_use_are_refused_naming_the_key(section, key, value, needle):
    with pytest.raises(ConfigError) as e:
        TrainConfig.from_dict({section: {key: value}})
    assert needle in str(e.value) and str(value) in str(e.value)


def test_vocab_size_rule_applies_only_when_a_bpe_is_trained():
    assert TrainConfig.from_dict({"data": {"vocab_size": 5, "sources": ["ids.bin"]}}).data.vocab_size == 5
    assert TrainConfig.from_dict({"data": {"vocab_size": 5, "tokenizer": "tok.json"}}).data.vocab_size == 5
    assert TrainConfig.from_dict({"data": {"vocab_size": 257}}).data.vocab_size == 257


def test_old_name_of_recompute_activations_works_with_a_warning(tmp_path):
    p = tmp_path / "old.toml"
    p.write_text("[system]\nactivation_checkpointing = true\n")
    with pytest.warns(FutureWarning, match="'activation_checkpointing' is renamed 'recompute_activations'"):
        cfg = TrainConfig.from_toml(p)
    assert cfg.system.recompute_activations is True
    assert "activation_checkpointing" not in cfg.to_toml() and "recompute_activations = true" in cfg.to_toml()
    p.write_text("[system]\nactivation_checkpointing = true\nrecompute_activations = false\n")
    with pytest.raises(ConfigError, match="keep only 'recompute_activations'"):
        TrainConfig.from_toml(p)


def test_resume_conflicts_name_the_keys_that_change_the_run():
    from workbench.training.config import resume_conflicts
    cfg = load_config("tiny")
    assert resume_conflicts(cfg, cfg) == []
    # Where and how fast it runs, and what it writes when, may change on a resume ...
    assert resume_conflicts(cfg, cfg.override(system__num_threads=2, system__device="cpu", checkpoint__every=7,
                                              schedule__log_every=3, checkpoint__log_spaced=4)) == []
    # ... but not the model, the data, the arithmetic or the length of the schedule.
    assert resume_conflicts(cfg, cfg.override(model__d_model=64, schedule__max_steps=99)) == [
        "model.d_model 32 -> 64", "schedule.max_steps 20 -> 99"]
