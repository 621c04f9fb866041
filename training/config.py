"""TrainConfig: every knob of a training run, in nested sections, loaded from TOML.

A TOML file mirrors the dataclasses: top-level ``seed`` and ``name``, then the
sections ``[model]``, ``[data]``, ``[optimizer]``, ``[schedule]``, ``[system]``,
``[record]`` and ``[checkpoint]``. Anything not given keeps its default, so a
config file only says what differs. An unknown or misspelt key is an error
that names the key and the closest valid one: a typo never silently trains
with a default.
"""
from __future__ import annotations

import dataclasses
import difflib
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from workbench.errors import InputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, packaged as tomli
    import tomli as tomllib

CONFIG_DIR = Path(__file__).parent / "configs"


class ConfigError(InputError):
    """A config that cannot be used; the message names the key and what to do."""


@dataclass
class ModelSection:
    """The model: a PhiConfig preset, with any field overridden (``d_vocab`` comes from the tokenizer)."""
    preset: str = "tiny"
    d_model: Optional[int] = None
    n_layers: Optional[int] = None
    n_heads: Optional[int] = None
    d_mlp: Optional[int] = None
    n_ctx: Optional[int] = None
    partial_rotary_factor: Optional[float] = None
    rope_theta: Optional[float] = None
    initializer_range: Optional[float] = None


@dataclass
class DataSection:
    """Where tokens come from and how batches are cut."""
    # "stdlib" (the running interpreter's standard library source), or paths to
    # .txt / .jsonl / .bin / .npy files or folders of them.
    sources: list = field(default_factory=lambda: ["stdlib"])
    jsonl_field: str = "text"          # which field of each JSONL object holds the text
    memmap_dtype: str = "uint16"       # token-id dtype of raw .bin files
    max_corpus_bytes: int = 0          # read at most this much text (0: all of it)
    val_fraction: float = 0.05         # share of FILES held out for validation
    tokenizer: str = ""                # a tokenizer.json; "" trains a byte-level BPE on the corpus
    vocab_size: int = 4096             # for the trained BPE (and the model's d_vocab)
    seq_len: int = 128                 # tokens per training sequence
    batch_size: int = 16               # sequences per optimizer step, summed over processes
    micro_batch_size: int = 0          # sequences per forward per process (0: batch_size / processes)
    synthetic_fraction: float = 0.0    # share of each batch that is repeated random tokens
    synthetic_period_min: int = 8      # period of the repeated random sequences, drawn uniformly
    synthetic_period_max: int = 32
    synthetic_vocab_size: int = 0      # draw their tokens from ids [0, this) (0: the whole vocabulary)


@dataclass
class OptimizerSection:
    """AdamW; weight decay applies to matrices only (not biases, LayerNorms or embeddings)."""
    lr: float = 1e-3
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0             # max global grad norm (0: no clipping)


@dataclass
class ScheduleSection:
    """How long to train, the learning-rate shape, and how often to log and evaluate."""
    max_steps: int = 1000
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1          # the cosine ends at lr * min_lr_ratio
    log_every: int = 10                # metrics.jsonl lines (every step when 1)
    eval_every: int = 100              # validation loss (0: only at the end)
    eval_batches: int = 4


@dataclass
class SystemSection:
    """Where and how the arithmetic runs."""
    device: str = "auto"               # auto (cuda > mps > cpu), cpu, cuda, cuda:1, mps
    precision: str = "auto"            # auto (bf16 autocast on GPUs that have it, else fp16; fp32 on CPU), fp32, bf16, fp16
    compile: bool = False              # torch.compile the training forward
    recompute_activations: bool = False  # recompute each block's activations in the backward instead of
                                         # storing them (less memory, ~1/3 more compute; "activation checkpointing")
    parallel: str = "ddp"              # under torchrun: ddp (replicated) or fsdp (sharded, FSDP2)
    num_threads: int = 0               # CPU threads for torch (0: workbench.threads' policy, cores - 1, at least 1)


@dataclass
class RecordSection:
    """Activations recorded during training on a fixed probe set, written to RUN/activations.h5."""
    hooks: list = field(default_factory=list)   # hook names or globs; empty: no recording
    every: int = 0                     # record every N steps (0: only the log-spaced ones / none)
    log_spaced: bool = True            # also record at steps 0, 1, 2, 4, 8, ... (Pythia-style)
    probe_rows: int = 8                # repeated-random-token probe sequences (for induction)
    probe_period: int = 24             # period of those sequences
    probe_repeats: int = 2
    probe_val_rows: int = 0            # extra probe rows cut from the validation text
    dtype: str = "float16"             # stored dtype: float16, bfloat16 or float32
    queue_size: int = 8                # recorded steps in flight before training waits on disk


@dataclass
class CheckpointSection:
    """HF-format checkpoints plus trainer state, for ``--resume`` and for analysis."""
    every: int = 0                     # steps between checkpoints (0: only at the end)
    keep_last: int = 0                 # delete older checkpoints beyond this many (0: keep all)
    log_spaced: int = 0                # also keep up to this many model-only folders (weights + tokenizer) at
                                       # log-spaced steps from 0 to max_steps (each moved to the nearest
                                       # recorded step, so the recording lies beside it): circuits over training


# Keys renamed in this release: {(section, old name): new name}. The old name works for one
# release, with a warning that says what to write instead.
RENAMED = {("system", "activation_checkpointing"): "recompute_activations"}

SECTIONS: dict[str, type] = {
    "model": ModelSection, "data": DataSection, "optimizer": OptimizerSection,
    "schedule": ScheduleSection, "system": SystemSection, "record": RecordSection,
    "checkpoint": CheckpointSection,
}


@dataclass
class TrainConfig:
    name: str = "run"
    seed: int = 0
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optimizer: OptimizerSection = field(default_factory=OptimizerSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    system: SystemSection = field(default_factory=SystemSection)
    record: RecordSection = field(default_factory=RecordSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)

    def __post_init__(self) -> None:
        validate(self)

    # -- in and out ------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict, where: str = "config") -> "TrainConfig":
        """From nested dicts; unknown keys raise ``ConfigError`` naming the closest valid key."""
        top = {f.name for f in dataclasses.fields(cls)}
        _check_keys(d, top, where)
        kwargs: dict[str, Any] = {}
        for key, value in d.items():
            if key in SECTIONS:
                if not isinstance(value, dict):
                    raise ConfigError(f"{where}: [{key}] must be a table (a TOML section), got {value!r}")
                kwargs[key] = _section(SECTIONS[key], value, f"{where} [{key}]")
            else:
                kwargs[key] = _typed(cls, key, value, where)
        return cls(**kwargs)

    @classmethod
    def from_toml(cls, path: Union[str, Path]) -> "TrainConfig":
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"no config file at {path}; pass a TOML file (examples in {CONFIG_DIR})")
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path} is not valid TOML: {e}") from None
        return cls.from_dict(data, where=str(path))

    @classmethod
    def default(cls) -> "TrainConfig":
        """The embedded default run (``training/configs/default.toml``)."""
        return cls.from_toml(CONFIG_DIR / "default.toml")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        """The resolved config as TOML (every key, defaults included), readable by ``from_toml``."""
        d = self.to_dict()
        lines = [f"{k} = {_toml_value(v)}" for k, v in d.items() if k not in SECTIONS]
        for sec in SECTIONS:
            lines.append(f"\n[{sec}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in d[sec].items() if v is not None]
        return "\n".join(lines) + "\n"

    def override(self, **changes: Any) -> "TrainConfig":
        """A copy with ``section__key=value`` (or top-level ``key=value``) changes; ``None`` leaves a key alone."""
        d = self.to_dict()
        for k, v in changes.items():
            if v is None:
                continue
            sec, _, key = k.partition("__")
            if key:
                d[sec][key] = v
            else:
                d[sec] = v
        return TrainConfig.from_dict(d, where="override")


def _check_keys(d: dict, valid: set, where: str) -> None:
    for key in d:
        if key not in valid:
            close = difflib.get_close_matches(key, sorted(valid), n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(sorted(valid))}"
            raise ConfigError(f"{where}: unknown key {key!r}{hint}")


def _section(cls: type, d: dict, where: str) -> Any:
    d = _renamed(cls, d, where)
    _check_keys(d, {f.name for f in dataclasses.fields(cls)}, where)
    return cls(**{k: _typed(cls, k, v, where) for k, v in d.items()})


def _renamed(cls: type, d: dict, where: str) -> dict:
    section = next(name for name, c in SECTIONS.items() if c is cls)
    out = dict(d)
    for (sec, old), new in RENAMED.items():
        if sec == section and old in out:
            if new in out:
                raise ConfigError(f"{where}: {old!r} is the old name of {new!r}; keep only {new!r}")
            warnings.warn(f"{where}: {old!r} is renamed {new!r}; the old name stops working in the next "
                          "release", FutureWarning, stacklevel=2)
            out[new] = out.pop(old)
    return out


def _typed(cls: type, key: str, value: Any, where: str) -> Any:
    """Check a value against the field's default type (ints are accepted for floats)."""
    f = next(f for f in dataclasses.fields(cls) if f.name == key)
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, list):
        if isinstance(value, str):
            value = [value]
        ok = isinstance(value, list)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ConfigError(f"{where}: {key} must be {type(default).__name__}, got {value!r}")
    return value


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} to TOML")


def validate(cfg: TrainConfig) -> None:
    """Value checks that a type check cannot do; each message names the key and the rule."""
    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ConfigError(msg)
    _validate_data(cfg.data, need)
    _validate_optimizer(cfg.optimizer, need)
    s, sy, r, c = cfg.schedule, cfg.system, cfg.record, cfg.checkpoint
    need(cfg.seed >= 0, f"seed must be >= 0, got {cfg.seed}")
    need(s.max_steps >= 1, f"schedule.max_steps must be at least 1, got {s.max_steps}")
    need(s.warmup_steps >= 0, f"schedule.warmup_steps must be >= 0, got {s.warmup_steps}")
    need(0.0 <= s.min_lr_ratio <= 1.0, f"schedule.min_lr_ratio must be between 0 and 1, got {s.min_lr_ratio}")
    need(s.log_every >= 1, f"schedule.log_every must be at least 1, got {s.log_every}")
    need(s.eval_every >= 0, f"schedule.eval_every must be >= 0 (0: only at the end), got {s.eval_every}")
    need(s.eval_batches >= 1, f"schedule.eval_batches must be at least 1, got {s.eval_batches}")
    need(sy.precision in ("auto", "fp32", "bf16", "fp16"),
         f"system.precision must be auto, fp32, bf16 or fp16, got {sy.precision!r}")
    need(sy.parallel in ("ddp", "fsdp"), f"system.parallel must be ddp or fsdp, got {sy.parallel!r}")
    need(sy.num_threads >= 0, f"system.num_threads must be >= 0 (0: one per core less one), got {sy.num_threads}")
    need(r.dtype in ("float16", "bfloat16", "float32"),
         f"record.dtype must be float16, bfloat16 or float32, got {r.dtype!r}")
    need(r.every >= 0, f"record.every must be >= 0 (0: log-spaced steps only), got {r.every}")
    need(r.probe_rows >= 0 and r.probe_val_rows >= 0, "record.probe_rows and record.probe_val_rows must be >= 0, "
         f"got {r.probe_rows} and {r.probe_val_rows}")
    need(r.probe_rows + r.probe_val_rows >= 1 or not r.hooks,
         "record.hooks is set but the probe set is empty: set record.probe_rows or record.probe_val_rows")
    need(r.probe_period >= 1, f"record.probe_period must be at least 1, got {r.probe_period}")
    need(r.probe_repeats >= 2, "record.probe_repeats must be at least 2 (induction needs a repeat)")
    need(r.queue_size >= 1, f"record.queue_size must be at least 1, got {r.queue_size}")
    need(c.every >= 0, f"checkpoint.every must be >= 0 (0: only at the end), got {c.every}")
    need(c.keep_last >= 0, f"checkpoint.keep_last must be >= 0 (0: keep all), got {c.keep_last}")
    need(c.log_spaced >= 0, f"checkpoint.log_spaced must be >= 0 (0: none), got {c.log_spaced}")
    for key in ("d_model", "n_layers", "n_heads", "d_mlp", "n_ctx"):
        v = getattr(cfg.model, key)
        need(v is None or v >= 1, f"model.{key} must be at least 1, got {v}")


# A byte-level BPE starts from the 256 byte tokens plus <|endoftext|>.
MIN_BPE_VOCAB = 257


def _validate_data(d: DataSection, need) -> None:
    need(d.seq_len >= 2, f"data.seq_len must be at least 2, got {d.seq_len}")
    need(d.batch_size >= 1, f"data.batch_size must be at least 1, got {d.batch_size}")
    need(d.micro_batch_size >= 0, "data.micro_batch_size must be >= 0 (0: batch_size / processes)")
    need(d.max_corpus_bytes >= 0, f"data.max_corpus_bytes must be >= 0 (0: no cap), got {d.max_corpus_bytes}")
    need(0.0 <= d.synthetic_fraction <= 1.0, "data.synthetic_fraction must be between 0 and 1")
    need(0.0 < d.val_fraction < 1.0, "data.val_fraction must be between 0 and 1 (exclusive)")
    need(2 <= d.synthetic_period_min <= d.synthetic_period_max,
         "data.synthetic_period_min must be >= 2 and <= data.synthetic_period_max")
    need(d.synthetic_vocab_size == 0 or d.synthetic_vocab_size >= 3,
         "data.synthetic_vocab_size must be 0 (whole vocabulary) or at least 3")
    need(d.vocab_size >= 2, f"data.vocab_size must be at least 2, got {d.vocab_size}")
    memmap_only = bool(d.sources) and all(Path(s).suffix in (".bin", ".npy") for s in d.sources)
    need(bool(d.tokenizer) or memmap_only or d.vocab_size >= MIN_BPE_VOCAB,
         f"data.vocab_size is {d.vocab_size}, but the byte-level BPE trained on the corpus starts from "
         f"{MIN_BPE_VOCAB} tokens (256 bytes + <|endoftext|>): set data.vocab_size to at least {MIN_BPE_VOCAB}")


def _validate_optimizer(o: OptimizerSection, need) -> None:
    need(o.lr > 0, f"optimizer.lr must be > 0, got {o.lr}")
    need(0.0 <= o.beta1 < 1.0, f"optimizer.beta1 must be in [0, 1), got {o.beta1}")
    need(0.0 <= o.beta2 < 1.0, f"optimizer.beta2 must be in [0, 1), got {o.beta2}")
    need(o.eps > 0, f"optimizer.eps must be > 0, got {o.eps}")
    need(o.weight_decay >= 0, f"optimizer.weight_decay must be >= 0, got {o.weight_decay}")
    need(o.grad_clip >= 0, f"optimizer.grad_clip must be >= 0 (0: no clipping), got {o.grad_clip}")


# Keys a resumed run may change: where and how fast it runs, and what it writes when. Every
# other key shapes the model, the data or the arithmetic, so changing it would make the resumed
# run something other than the continuation of the run on disk.
CHANGEABLE_ON_RESUME = frozenset({
    "name", "system.device", "system.num_threads", "system.compile", "record.queue_size",
    "checkpoint.every", "checkpoint.keep_last", "checkpoint.log_spaced",
    "schedule.log_every", "schedule.eval_every", "schedule.eval_batches",
})


def flat(cfg: TrainConfig) -> dict[str, Any]:
    """``{"section.key": value}`` (top-level keys keep their name): the config as one flat dict."""
    out: dict[str, Any] = {}
    for k, v in cfg.to_dict().items():
        if isinstance(v, dict):
            out.update({f"{k}.{kk}": vv for kk, vv in v.items()})
        else:
            out[k] = v
    return out


def resume_conflicts(run: TrainConfig, given: TrainConfig) -> list[str]:
    """The keys (``"model.d_model 64 -> 128"``) on which ``given`` differs from the run's own config
    in a way a resume cannot honour (anything outside ``CHANGEABLE_ON_RESUME``)."""
    a, b = flat(run), flat(given)
    return [f"{k} {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
            if k not in CHANGEABLE_ON_RESUME and a.get(k) != b.get(k)]


def list_configs() -> list[str]:
    """Names of the example configs shipped in ``training/configs/``."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))


def load_config(path: Optional[Union[str, Path]]) -> TrainConfig:
    """A TOML path, the name of a shipped example (``list_configs()``), or None for the default."""
    if path is None:
        return TrainConfig.default()
    p = Path(path)
    if not p.exists() and (CONFIG_DIR / f"{path}.toml").is_file():
        p = CONFIG_DIR / f"{path}.toml"
    if not p.exists():
        raise ConfigError(f"no config file at {path}; pass a TOML file or one of {list_configs()}")
    return TrainConfig.from_toml(p)
