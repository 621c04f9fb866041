"""PhiConfig: the numbers that define a Phi-architecture model.

Field names follow TransformerLens (``d_model``, ``n_heads``, ``n_layers``,
``d_mlp``, ``d_vocab``, ``n_ctx``) so its tools can read ``model.cfg``.
``d_head`` and ``rotary_dim`` are derived, never configured.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union


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
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        self.d_head = self.d_model // self.n_heads
        # HF's rule: int(), not round(). HF crashes later on an odd width; we say so now.
        self.rotary_dim = int(self.d_head * self.partial_rotary_factor)
        if self.rotary_dim % 2:
            raise ValueError(
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
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[key], "name": key, **overrides})

    @classmethod
    def from_hf(cls, source: Union[str, Path, dict]) -> "PhiConfig":
        """From an HF ``config.json`` (path, folder or dict), old or transformers-5 style."""
        if isinstance(source, (str, Path)):
            path = Path(source)
            if path.is_dir():
                path = path / "config.json"
            if not path.is_file():
                raise FileNotFoundError(f"no config.json at {path}: pass an HF-format checkpoint folder")
            hf = json.loads(path.read_text())
        else:
            hf = dict(source)
        if hf.get("model_type", "phi") != "phi":
            raise ValueError(f"config has model_type {hf.get('model_type')!r}; this workbench loads "
                             "Phi checkpoints (model_type 'phi') only")
        rope = hf.get("rope_parameters") or {}
        # Original phi-2 config.json: top level; transformers 5: nested under rope_parameters.
        prf = rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", 0.5))
        theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
        kv = hf.get("num_key_value_heads")
        if kv not in (None, hf["num_attention_heads"]):
            raise ValueError("grouped-query attention (num_key_value_heads != num_attention_heads) "
                             "is not part of the Phi-2 architecture")
        if hf.get("qk_layernorm"):
            raise ValueError("qk_layernorm=True is not part of the Phi-2 architecture")
        if hf.get("hidden_act", "gelu_new") != "gelu_new":
            raise ValueError(f"hidden_act {hf['hidden_act']!r} is not supported; Phi uses gelu_new")
        eos = hf.get("eos_token_id")
        return cls(
            d_model=hf["hidden_size"], n_layers=hf["num_hidden_layers"],
            n_heads=hf["num_attention_heads"], d_mlp=hf["intermediate_size"],
            d_vocab=hf["vocab_size"], n_ctx=hf.get("max_position_embeddings", 2048),
            partial_rotary_factor=float(prf), rope_theta=float(theta),
            layer_norm_eps=hf.get("layer_norm_eps", 1e-5),
            bos_token_id=hf.get("bos_token_id"),
            eos_token_id=eos[0] if isinstance(eos, list) else eos,
            initializer_range=hf.get("initializer_range", 0.02),
            name=hf.get("_name_or_path") or "custom",
        )

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
    def from_dict(cls, d: dict) -> "PhiConfig":
        init = {f.name for f in dataclasses.fields(cls) if f.init} - RUNTIME_FIELDS
        unknown = set(d) - init - {"d_head", "rotary_dim"}
        if unknown:
            raise ValueError(f"unknown PhiConfig fields {sorted(unknown)}; valid: {sorted(init)}")
        return cls(**{k: v for k, v in d.items() if k in init})

    def n_params(self) -> int:
        """Parameter count, computed from the shapes (no model needed)."""
        d, m, v, L = self.d_model, self.d_mlp, self.d_vocab, self.n_layers
        per_layer = 4 * (d * d + d) + 2 * d + (d * m + m) + (m * d + d)
        return v * d + L * per_layer + 2 * d + (d * v + v)


# Fields that say how a model runs, not what it is: left out of to_dict() and saved configs.
RUNTIME_FIELDS = frozenset({"device", "use_split_qkv_input", "use_attn_in", "use_hook_mlp_in",
                            "dtype", "default_prepend_bos", "use_attn_result"})

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
