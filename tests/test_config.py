"""PhiConfig: presets with HF's numbers, both config.json styles, derived fields, bad configs."""
from __future__ import annotations

import json

import pytest
import torch

from workbench.errors import DamagedFileError, InputError, MissingFileError
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
    with pytest.raises(MissingFileError, match="no config.json"):
        PhiConfig.from_hf(tmp_path)
    with pytest.raises(InputError, match=r"unknown PhiConfig fields \['n_experts'\]"):
        PhiConfig.from_dict({"n_experts": 8})


def test_to_dict_from_dict_round_trip():
    cfg = PhiConfig.from_name("small")
    assert PhiConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


# -- every way of making a config refuses nonsense with one line naming the field ------------------------
BAD_FIELDS = [
    ("n_heads", 0, "n_heads must be a positive integer, got 0"),
    ("d_model", "2560", "d_model must be a positive integer, got '2560'"),
    ("d_mlp", -1, "d_mlp must be a positive integer, got -1"),
    ("n_layers", 0, "n_layers must be a positive integer, got 0"),
    ("d_vocab", 2.5, "d_vocab must be a positive integer, got 2.5"),
    ("n_ctx", True, "n_ctx must be a positive integer, got True"),
    ("partial_rotary_factor", 1.5, "partial_rotary_factor must be a number at least 0 and at most 1, got 1.5"),
    ("rope_theta", 0, "rope_theta must be a number above 0, got 0"),
    ("layer_norm_eps", float("nan"), "layer_norm_eps must be a number at least 0, got nan"),
    ("initializer_range", "0.02", "initializer_range must be a number at least 0, got '0.02'"),
    ("bos_token_id", -1, "bos_token_id must be a token id (an integer >= 0) or null, got -1"),
    ("name", 3, "name must be a string, got 3"),
]


@pytest.mark.parametrize("field,value,message", BAD_FIELDS)
def test_every_constructor_refuses_a_bad_field(field, value, message):
    makers = [lambda: PhiConfig(**{field: value}),
              lambda: PhiConfig.from_dict({**PhiConfig.from_name("tiny").to_dict(), field: value})]
    if field != "name":   # from_name's own first argument is the preset's name
        makers.append(lambda: PhiConfig.from_name("tiny", **{field: value}))
    for make in makers:
        with pytest.raises(InputError) as e:
            make()
        assert str(e.value) == f"PhiConfig: {message}"


def test_several_bad_fields_are_named_in_one_line():
    with pytest.raises(InputError, match=r"^PhiConfig: d_model must .* got 0; n_heads must .* got -2$"):
        PhiConfig(d_model=0, n_heads=-2)


def test_whole_numbers_for_float_fields_become_floats():
    cfg = PhiConfig(rope_theta=10000, partial_rotary_factor=0, layer_norm_eps=0)
    assert isinstance(cfg.rope_theta, float) and cfg.rotary_dim == 0
    assert PhiConfig.from_hf({**PHI2_CONFIG_JSON, "rope_theta": 10000}) == PhiConfig.from_hf(PHI2_CONFIG_JSON)


@pytest.mark.parametrize("change,message", [
    ({"hidden_size": "2560"}, "hidden_size must be a positive integer, got '2560'"),
    ({"num_attention_heads": 0}, "num_attention_heads must be a positive integer, got 0"),
    ({"num_hidden_layers": -3}, "num_hidden_layers must be a positive integer, got -3"),
    ({"max_position_embeddings": 0}, "max_position_embeddings must be a positive integer, got 0"),
    ({"partial_rotary_factor": "0.4"}, "partial_rotary_factor must be a number"),
    ({"eos_token_id": [-5]}, "eos_token_id must be a token id"),
])
def test_from_hf_names_the_file_and_the_hf_key(tmp_path, change, message):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**PHI2_CONFIG_JSON, **change}))
    with pytest.raises(InputError) as e:
        PhiConfig.from_hf(tmp_path)
    assert str(e.value).startswith(f"{path}: {message}") and "save the checkpoint again" in str(e.value)


def test_from_hf_lists_every_missing_field(tmp_path):
    hf = {k: v for k, v in PHI2_CONFIG_JSON.items() if k not in ("hidden_size", "vocab_size")}
    (tmp_path / "config.json").write_text(json.dumps(hf))
    with pytest.raises(InputError, match=r"config.json has no hidden_size, vocab_size: a Phi config.json needs"):
        PhiConfig.from_hf(tmp_path)


def test_from_hf_json_errors_name_the_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(PHI2_CONFIG_JSON)[:200])
    with pytest.raises(DamagedFileError, match=rf"^{path} is not valid JSON \(.*line 1 column \d+.*\); the file"):
        PhiConfig.from_hf(path)
    path.write_bytes(b"\xff\xfe garbage")
    with pytest.raises(DamagedFileError, match="is not valid JSON"):
        PhiConfig.from_hf(path)
    path.write_text('"just a string"')
    with pytest.raises(InputError, match="holds a JSON str, not an object of config keys"):
        PhiConfig.from_hf(path)


@pytest.mark.parametrize("change,message", [
    ({"rope_scaling": {"type": "dynamic", "factor": 2.0}}, "rotary scaling"),
    ({"rope_parameters": {"rope_type": "linear", "factor": 2.0}}, "rotary scaling \\('linear'\\)"),
])
def test_from_hf_refuses_rotary_scaling_it_would_ignore(change, message):
    with pytest.raises(InputError, match=message):
        PhiConfig.from_hf({**PHI2_CONFIG_JSON, **change})


def test_from_name_and_from_dict_refuse_unknown_fields_and_non_dicts():
    with pytest.raises(InputError, match=r"unknown PhiConfig fields \['d_heads'\]"):
        PhiConfig.from_name("tiny", d_heads=4)
    with pytest.raises(InputError, match="must be a mapping of field names to values, got list"):
        PhiConfig.from_dict([("d_model", 4)])
