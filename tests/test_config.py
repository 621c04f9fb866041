"""PhiConfig: presets with HF's numbers, both config.json styles, derived fields, bad configs."""
from __future__ import annotations

import json

import pytest
import torch

from workbench.model import PhiConfig, PhiModel

# microsoft/phi-2's config.json as published (transformers 4.37 era: rotary keys at top level).
PHI2_CONFIG_JSON = {
    "_name_or_path": "microsoft/phi-2", "architectures": ["PhiForCausalLM"], "attention_dropout": 0.0,
    "bos_token_id": 50256, "embd_pdrop": 0.0, "eos_token_id": 50256, "hidden_act": "gelu_new",
    "hidden_size": 2560, "initializer_range": 0.02, "intermediate_size": 10240, "layer_norm_eps": 1e-05,
    "max_position_embeddings": 2048, "model_type": "phi", "num_attention_heads": 32,
    "num_hidden_layers": 32, "num_key_value_heads": 32, "partial_rotary_factor": 0.4,
    "qk_layernorm": False, "resid_pdrop": 0.1, "rope_scaling": None, "rope_theta": 10000.0,
    "tie_word_embeddings": False, "torch_dtype": "float16", "transformers_version": "4.37.0",
    "use_cache": True, "vocab_size": 51200,
}


def _meta_params(cfg: PhiConfig) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in PhiModel(cfg).parameters())


def _hf_meta_params(cfg: PhiConfig) -> int:
    """Parameter count of transformers' own PhiForCausalLM for the same config."""
    from transformers import PhiConfig as HFPhiConfig, PhiForCausalLM
    hf_cfg = {k: v for k, v in cfg.to_hf().items() if k not in ("architectures", "model_type")}
    with torch.device("meta"):
        return sum(p.numel() for p in PhiForCausalLM(HFPhiConfig(**hf_cfg)).parameters())


def test_phi2_preset_has_exact_parameter_count():
    cfg = PhiConfig.from_name("phi-2")
    assert (cfg.d_head, cfg.rotary_dim) == (80, 32)
    assert _meta_params(cfg) == 2_779_683_840
    assert cfg.n_params() == 2_779_683_840


@pytest.mark.parametrize("name", ["phi-1", "phi-1_5", "phi-2", "tiny", "small", "mid"])
def test_presets_match_transformers_parameter_count(name):
    cfg = PhiConfig.from_name(name)
    assert _meta_params(cfg) == _hf_meta_params(cfg) == cfg.n_params()


def test_preset_names_accept_hub_spelling_and_overrides():
    assert PhiConfig.from_name("microsoft/phi-1.5") == PhiConfig.from_name("phi-1_5")
    cfg = PhiConfig.from_name("phi-2", n_layers=2)
    assert cfg.n_layers == 2 and cfg.d_model == 2560
    with pytest.raises(ValueError, match="unknown preset 'phi-9'.*phi-2"):
        PhiConfig.from_name("phi-9")


def test_from_hf_reads_original_phi2_config_json(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(PHI2_CONFIG_JSON))
    for source in (PHI2_CONFIG_JSON, tmp_path, tmp_path / "config.json", str(tmp_path)):
        cfg = PhiConfig.from_hf(source)
        assert cfg.to_dict() | {"name": "x"} == PhiConfig.from_name("phi-2").to_dict() | {"name": "x"}
        assert cfg.name == "microsoft/phi-2"


def test_from_hf_reads_transformers5_nested_rope_parameters():
    from transformers import PhiConfig as HFPhiConfig
    hf = HFPhiConfig(hidden_size=128, num_attention_heads=4, num_hidden_layers=2, intermediate_size=256,
                     vocab_size=300, partial_rotary_factor=0.25, rope_theta=12345.0).to_dict()
    assert "partial_rotary_factor" not in hf and hf["rope_parameters"]["partial_rotary_factor"] == 0.25
    cfg = PhiConfig.from_hf(hf)
    assert (cfg.partial_rotary_factor, cfg.rope_theta, cfg.rotary_dim) == (0.25, 12345.0, 8)
    # Nested values win over stale top-level ones.
    cfg = PhiConfig.from_hf({**hf, "partial_rotary_factor": 0.5, "rope_theta": 1.0})
    assert (cfg.partial_rotary_factor, cfg.rope_theta) == (0.25, 12345.0)


def test_to_hf_round_trips_through_transformers():
    from transformers import PhiConfig as HFPhiConfig
    cfg = PhiConfig.from_name("phi-2")
    hf = HFPhiConfig(**{k: v for k, v in cfg.to_hf().items() if k not in ("architectures", "model_type")})
    back = PhiConfig.from_hf(hf.to_dict())
    assert back.to_dict() | {"name": ""} == cfg.to_dict() | {"name": ""}


@pytest.mark.parametrize("d_model,n_heads,factor,d_head,rotary", [
    (2560, 32, 0.4, 80, 32),   # phi-2
    (2048, 32, 0.5, 64, 32),   # phi-1 / phi-1.5
    (144, 2, 0.4, 72, 28),     # 72 * 0.4 = 28.8: HF truncates with int()
    (128, 4, 0.5, 32, 16),
])
def test_derived_fields(d_model, n_heads, factor, d_head, rotary):
    cfg = PhiConfig(d_model=d_model, n_heads=n_heads, partial_rotary_factor=factor)
    assert (cfg.d_head, cfg.rotary_dim) == (d_head, rotary)


def test_derived_fields_cannot_be_configured():
    with pytest.raises(TypeError):
        PhiConfig(d_head=64)  # type: ignore[call-arg]
    assert "d_head" not in PhiConfig().to_dict()
    assert PhiConfig.from_dict({**PhiConfig().to_dict(), "d_head": 80}).d_head == 80


def test_odd_rotary_width_is_a_clear_error():
    # d_head 64 * 0.4 = 25.6 -> 25: HF would crash deep inside the rotary code.
    with pytest.raises(ValueError, match=r"rotary width .* = 25 is odd"):
        PhiConfig(d_model=128, n_heads=2, partial_rotary_factor=0.4)
    with pytest.raises(ValueError, match="odd"):
        PhiConfig.from_hf({**PHI2_CONFIG_JSON, "hidden_size": 2048})  # d_head 64


@pytest.mark.parametrize("change,message", [
    ({"model_type": "llama"}, "model_type 'llama'"),
    ({"num_key_value_heads": 8}, "grouped-query"),
    ({"qk_layernorm": True}, "qk_layernorm"),
    ({"hidden_act": "relu"}, "hidden_act 'relu'"),
    ({"hidden_size": 2561}, "divisible"),
])
def test_from_hf_rejects_other_architectures(change, message):
    with pytest.raises(ValueError, match=message):
        PhiConfig.from_hf({**PHI2_CONFIG_JSON, **change})


def test_from_hf_missing_file_and_unknown_fields(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        PhiConfig.from_hf(tmp_path)
    with pytest.raises(ValueError, match=r"unknown PhiConfig fields \['n_experts'\]"):
        PhiConfig.from_dict({"n_experts": 8})


def test_to_dict_from_dict_round_trip():
    cfg = PhiConfig.from_name("small")
    assert PhiConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
