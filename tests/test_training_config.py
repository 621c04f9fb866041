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
