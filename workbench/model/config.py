"""PhiConfig: the numbers that define a Phi-architecture model.

Field names follow TransformerLens (``d_model``, ``n_heads``, ``n_layers``,
``d_mlp``, ``d_vocab``, ``n_ctx``) so its tools can read ``model.cfg``.
``d_head`` and ``rotary_dim`` are derived, never configured.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from numbers import Integral, Real
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from workbench.errors import DamagedFileError, InputError, MissingFileError


@dataclass
class PhiConfig:
    d_model: int = 2560
    n_layers: int = 32
    n_heads: int = 32
    d_mlp: int = 10240
    d_vocab: int = 51200
    n_ctx: int = 2048                   # max_position_embeddings
    partial_rotary_factor: float = 0.4  # share of each head's dims that is rotated
    rope_theta: float = 10000.0
    layer_norm_eps: float = 1e-5
    bos_token_id: Optional[int] = 50256
    eos_token_id: Optional[int] = 50256
    initializer_range: float = 0.02
    name: str = "custom"
    # Derived in __post_init__:
    d_head: int = field(init=False)
    rotary_dim: int = field(init=False)
    # Where the model lives; kept up to date by PhiModel (on its own copy of the config) so
    # TransformerLens's tools can read it.
    device: Optional[str] = field(default=None, compare=False, repr=False)
    # TransformerLens's switches for the split input hooks (PhiModel.set_use_split_qkv_input, ...).
    # They change which hook points fire, not the weights or the numbers: never saved.
    use_split_qkv_input: bool = field(default=False, compare=False, repr=False)
    use_attn_in: bool = field(default=False, compare=False, repr=False)
    use_hook_mlp_in: bool = field(default=False, compare=False, repr=False)
    # More of TransformerLens's run-time state, read by its tools: the parameters' dtype (kept
    # up to date by PhiModel), whether to_tokens prepends BOS by default (phi-2's tokenizer adds
    # none; TransformerLens's Phi adapter says False too), and whether an unfiltered
    # run_with_cache includes the per-head hook_result (PhiModel.set_use_attn_result).
    dtype: Any = field(default=None, compare=False, repr=False)
    default_prepend_bos: bool = field(default=False, compare=False, repr=False)
    use_attn_result: bool = field(default=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        # Checked here so every way of making a config (constructor, preset, config.json, saved
        # dict, TOML overrides) refuses a zero head count or a string width with one clear line.
        problems = field_problems(vars(self))
        if problems:
            raise InputError("PhiConfig: " + "; ".join(f"{name} {what}" for name, what in problems))
        for name in FLOAT_RULES:   # JSON writes 10000.0 as 10000: keep floats floats
            setattr(self, name, float(getattr(self, name)))
        if self.d_model % self.n_heads:
            raise InputError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        self.d_head = self.d_model // self.n_heads
        # HF's rule: int(), not round(). HF crashes later on an odd width; we say so now.
        self.rotary_dim = int(self.d_head * self.partial_rotary_factor)
        if self.rotary_dim % 2:
            raise InputError(
                f"rotary width int(d_head * partial_rotary_factor) = int({self.d_head} * "
                f"{self.partial_rotary_factor}) = {self.rotary_dim} is odd; rotary embeddings rotate "
                "pairs of dims, so pick a partial_rotary_factor (or d_head) that gives an even width")

    # TransformerLens's tools read these.
    @property
    def n_key_value_heads(self) -> None:
        return None

    @property
    def attn_only(self) -> bool:
        return False

    @property
    def final_rms(self) -> bool:
        return False

    @property
    def act_fn(self) -> str:
        return "gelu_new"

    @property
    def normalization_type(self) -> str:
        return "LN"

    @property
    def positional_embedding_type(self) -> str:
        return "rotary"

    @property
    def parallel_attn_mlp(self) -> bool:
        return True

    @property
    def gated_mlp(self) -> bool:
        return False

    @property
    def tokenizer_prepends_bos(self) -> bool:
        """The tokenizer adds no BOS itself; ``to_tokens(prepend_bos=True)`` adds it."""
        return False

    @property
    def rotary_base(self) -> float:
        return self.rope_theta

    @property
    def d_vocab_out(self) -> int:
        return self.d_vocab

    @property
    def eps(self) -> float:
        return self.layer_norm_eps

    @property
    def model_name(self) -> str:
        return self.name

    @property
    def original_architecture(self) -> str:
        return "PhiForCausalLM"

    @property
    def attention_dir(self) -> str:
        return "causal"

    @property
    def n_devices(self) -> int:
        return 1

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> "PhiConfig":
        """A preset by name (``phi-1``, ``phi-1_5``, ``phi-2``, ``tiny``, ``small``, ``mid``)."""
        key = name.split("/")[-1].lower().replace(".", "_")
        if key not in PRESETS:
            raise InputError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        unknown = set(overrides) - _configurable_fields()
        if unknown:
            raise InputError(f"unknown PhiConfig fields {sorted(unknown)}; valid: {sorted(_configurable_fields())}")
        return cls(**{**PRESETS[key], "name": key, **overrides})

    @classmethod
    def from_hf(cls, source: Union[str, Path, Mapping]) -> "PhiConfig":
        """From an HF ``config.json`` (path, folder or dict), old or transformers-5 style.

        A file that is not JSON raises ``DamagedFileError``; a missing field, a value of the
        wrong type or size, or another architecture raises ``InputError``. Each names the
        file and the HF key.
        """
        hf, where = _read_hf_config(source)
        if hf.get("model_type", "phi") != "phi":
            raise InputError(f"{where} has model_type {hf.get('model_type')!r}; this workbench loads "
                             "Phi checkpoints (model_type 'phi') only")
        missing = [k for k in REQUIRED_HF_KEYS if k not in hf]
        if missing:
            raise InputError(
                f"{where} has no {', '.join(missing)}: a Phi config.json needs {', '.join(REQUIRED_HF_KEYS)}; "
                "it looks cut short or is not a Phi config, so save or download the checkpoint again")
        rope = hf.get("rope_parameters") or {}
        eos = hf.get("eos_token_id")
        values = {
            "d_model": hf["hidden_size"], "n_layers": hf["num_hidden_layers"],
            "n_heads": hf["num_attention_heads"], "d_mlp": hf["intermediate_size"],
            "d_vocab": hf["vocab_size"], "n_ctx": hf.get("max_position_embeddings", 2048),
            # Original phi-2 config.json: top level; transformers 5: nested under rope_parameters.
            "partial_rotary_factor": rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", 0.5)),
            "rope_theta": rope.get("rope_theta", hf.get("rope_theta", 10000.0)),
            "layer_norm_eps": hf.get("layer_norm_eps", 1e-5),
            "bos_token_id": hf.get("bos_token_id"),
            "eos_token_id": eos[0] if isinstance(eos, list) and eos else eos,
            "initializer_range": hf.get("initializer_range", 0.02),
            "name": hf.get("_name_or_path") or "custom",
        }
        problems = field_problems(values)
        if problems:
            raise InputError(f"{where}: " + "; ".join(f"{HF_KEYS.get(k, k)} {what}" for k, what in problems)
                             + "; fix the file or save the checkpoint again")
        _check_architecture(hf, where)
        try:
            return cls(**values)
        except InputError as e:   # sizes that do not fit together (heads, rotary width)
            raise InputError(f"{where}: {e}") from None

    def to_hf(self) -> dict:
        """An HF ``config.json`` dict that ``transformers.PhiConfig`` reads (old and new style)."""
        return {
            "architectures": ["PhiForCausalLM"], "model_type": "phi",
            "vocab_size": self.d_vocab, "hidden_size": self.d_model,
            "intermediate_size": self.d_mlp, "num_hidden_layers": self.n_layers,
            "num_attention_heads": self.n_heads, "num_key_value_heads": self.n_heads,
            "max_position_embeddings": self.n_ctx, "hidden_act": "gelu_new",
            "layer_norm_eps": self.layer_norm_eps, "initializer_range": self.initializer_range,
            "partial_rotary_factor": self.partial_rotary_factor, "rope_theta": self.rope_theta,
            "rope_parameters": {"rope_type": "default", "rope_theta": self.rope_theta,
                                "partial_rotary_factor": self.partial_rotary_factor},
            "qk_layernorm": False, "tie_word_embeddings": False,
            "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attention_dropout": 0.0,
            "bos_token_id": self.bos_token_id, "eos_token_id": self.eos_token_id,
        }

    def to_dict(self) -> dict:
        """The configurable fields (no derived ones), JSON-serialisable."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.init and f.name not in RUNTIME_FIELDS}

    @classmethod
    def from_dict(cls, d: Mapping) -> "PhiConfig":
        """From ``to_dict()``'s output (derived fields are accepted and recomputed)."""
        if not isinstance(d, Mapping):
            raise InputError(f"a PhiConfig dict must be a mapping of field names to values, got {type(d).__name__}")
        init = _configurable_fields()
        unknown = set(d) - init - {"d_head", "rotary_dim"}
        if unknown:
            raise InputError(f"unknown PhiConfig fields {sorted(unknown)}; valid: {sorted(init)}")
        return cls(**{k: v for k, v in d.items() if k in init})

    def n_params(self) -> int:
        """Parameter count, computed from the shapes (no model needed)."""
        d, m, v, L = self.d_model, self.d_mlp, self.d_vocab, self.n_layers
        per_layer = 4 * (d * d + d) + 2 * d + (d * m + m) + (m * d + d)
        return v * d + L * per_layer + 2 * d + (d * v + v)


# Fields that say how a model runs, not what it is: left out of to_dict() and saved configs.
RUNTIME_FIELDS = frozenset({"device", "use_split_qkv_input", "use_attn_in", "use_hook_mlp_in",
                            "dtype", "default_prepend_bos", "use_attn_result"})


def _configurable_fields() -> set[str]:
    return {f.name for f in dataclasses.fields(PhiConfig) if f.init} - RUNTIME_FIELDS


# -- validation: one set of rules, worded with our field names or HF's config.json keys ---------
SIZE_FIELDS = ("d_model", "n_layers", "n_heads", "d_mlp", "d_vocab", "n_ctx")    # integers >= 1
# name -> (lowest, highest, whether the lowest is allowed)
FLOAT_RULES: dict[str, tuple[float, float, bool]] = {
    "partial_rotary_factor": (0.0, 1.0, True),
    "rope_theta": (0.0, math.inf, False),
    "layer_norm_eps": (0.0, math.inf, True),
    "initializer_range": (0.0, math.inf, True),
}
TOKEN_FIELDS = ("bos_token_id", "eos_token_id")                                   # None or integers >= 0
HF_KEYS = {"d_model": "hidden_size", "n_layers": "num_hidden_layers", "n_heads": "num_attention_heads",
           "d_mlp": "intermediate_size", "d_vocab": "vocab_size", "n_ctx": "max_position_embeddings",
           "name": "_name_or_path"}
REQUIRED_HF_KEYS = ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers", "vocab_size")


def _is_int(v: Any) -> bool:
    return isinstance(v, Integral) and not isinstance(v, bool)


def field_problems(values: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(field, what is wrong)`` for each value of ``values`` that breaks PhiConfig's rules."""
    problems = []
    for name in SIZE_FIELDS:
        v = values.get(name)
        if not _is_int(v) or v < 1:
            problems.append((name, f"must be a positive integer, got {v!r}"))
    for name, (low, high, low_ok) in FLOAT_RULES.items():
        v = values.get(name)
        ok = isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v) and \
            (v >= low if low_ok else v > low) and v <= high
        if not ok:
            bound = f"{'at least' if low_ok else 'above'} {low:g}" + (f" and at most {high:g}" if high < math.inf else "")
            problems.append((name, f"must be a number {bound}, got {v!r}"))
    for name in TOKEN_FIELDS:
        v = values.get(name)
        if v is not None and (not _is_int(v) or v < 0):
            problems.append((name, f"must be a token id (an integer >= 0) or null, got {v!r}"))
    if not isinstance(values.get("name"), str):
        problems.append(("name", f"must be a string, got {values.get('name')!r}"))
    return problems


def _read_hf_config(source: Union[str, Path, Mapping]) -> tuple[dict, str]:
    """The config dict and how to name it in messages (its path, or "config dict")."""
    if not isinstance(source, (str, Path)):
        if not isinstance(source, Mapping):
            raise InputError(f"an HF config must be a path or a dict, got {type(source).__name__}")
        return dict(source), "config dict"
    path = Path(source)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise MissingFileError(f"no config.json at {path}: pass an HF-format checkpoint folder")
    try:
        hf = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DamagedFileError(f"{path} is not valid JSON ({e}); the file is damaged or cut short: "
                               "save or download the checkpoint again") from None
    if not isinstance(hf, dict):
        raise InputError(f"{path} holds a JSON {type(hf).__name__}, not an object of config keys; "
                         "pass the config.json of an HF-format Phi checkpoint")
    return hf, str(path)


def _check_architecture(hf: Mapping, where: str) -> None:
    """Refuse Phi variants this model does not implement."""
    kv = hf.get("num_key_value_heads")
    if kv not in (None, hf["num_attention_heads"]):
        raise InputError(f"{where}: grouped-query attention (num_key_value_heads {kv!r} != "
                         f"num_attention_heads {hf['num_attention_heads']!r}) is not part of the Phi-2 architecture")
    if hf.get("qk_layernorm"):
        raise InputError(f"{where}: qk_layernorm=True is not part of the Phi-2 architecture")
    if hf.get("hidden_act", "gelu_new") != "gelu_new":
        raise InputError(f"{where}: hidden_act {hf['hidden_act']!r} is not supported; Phi uses gelu_new")
    rope = hf.get("rope_parameters") or {}
    if hf.get("rope_scaling") or rope.get("rope_type", "default") != "default":
        raise InputError(f"{where}: rotary scaling ({hf.get('rope_scaling') or rope.get('rope_type')!r}) "
                         "is not implemented here; only Phi's default rotary embeddings load exactly")

# Exact HF numbers for the published models; small ones for experiments and tests.
PRESETS: dict[str, dict] = {
    "phi-1": dict(d_model=2048, n_layers=24, n_heads=32, d_mlp=8192, d_vocab=51200, n_ctx=2048,
                  partial_rotary_factor=0.5),
    "phi-1_5": dict(d_model=2048, n_layers=24, n_heads=32, d_mlp=8192, d_vocab=51200, n_ctx=2048,
                    partial_rotary_factor=0.5),
    "phi-2": dict(d_model=2560, n_layers=32, n_heads=32, d_mlp=10240, d_vocab=51200, n_ctx=2048,
                  partial_rotary_factor=0.4),
    # phi-2's head geometry (d_head 80, rotary 32) at toy sizes.
    "tiny": dict(d_model=160, n_layers=2, n_heads=2, d_mlp=640, d_vocab=512, n_ctx=256,
                 partial_rotary_factor=0.4),
    "small": dict(d_model=256, n_layers=4, n_heads=4, d_mlp=1024, d_vocab=4096, n_ctx=512,
                  partial_rotary_factor=0.5),
    "mid": dict(d_model=640, n_layers=8, n_heads=8, d_mlp=2560, d_vocab=51200, n_ctx=2048,
                partial_rotary_factor=0.4),
}
