"""The task head scores are measured on: repeated random-token sequences, as a run was trained and probed with.

A head's induction score only means something on the sequences the model can do induction on. A
model trained by ``workbench train`` learned to copy over the repeated-sequence alphabet of its
config (``data.synthetic_vocab_size`` ids, e.g. 64), and its recording holds probe rows of one
period (``record.probe_period``): scored on sequences over the whole vocabulary, or of another
period, the same induction head can score near zero. ``ProbeTask`` carries that task from where it
is written (the run's ``config.toml``, the recording's attributes) to ``detect_heads``,
``scores_across_steps``, the run report and the notebooks, so they all score the same thing.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch

from ..errors import InputError
from ..run_files import CONFIG_FILE, read_run_config
from .tasks import repeated_random_tokens

DEFAULT_PERIOD = 20


@dataclass(frozen=True)
class ProbeTask:
    """Rows ``[BOS] A A ...``: a block ``A`` of ``period`` distinct random ids, repeated ``n_repeats`` times.

    Attributes:
        period: tokens per block; the induction target of query ``q`` is ``q - period + 1``.
        vocab_size: block ids are drawn from ``[0, vocab_size)``; ``None``: the model's whole vocabulary.
        n_repeats: copies of the block in a row (the second and later ones are scored).
        offset: tokens before the first block: 1 when rows start with the model's BOS token, else 0.
        rows: in a recording, how many of the first probe rows are repeated sequences (``None``: all rows).
        source: where the task came from, said in ``describe()``.
    """

    period: int = DEFAULT_PERIOD
    vocab_size: Optional[int] = None
    n_repeats: int = 2
    offset: int = 1
    rows: Optional[int] = None
    source: str = "the default task"

    def __post_init__(self) -> None:
        if self.period < 1 or self.n_repeats < 2:
            raise InputError(f"a probe task needs period >= 1 and n_repeats >= 2 (induction needs a repeat), "
                             f"got period={self.period}, n_repeats={self.n_repeats}")
        if self.offset not in (0, 1):
            raise InputError(f"offset is the number of tokens before the first block (0, or 1 for a BOS), "
                             f"got {self.offset}")
        if self.vocab_size is not None and self.vocab_size < 2:
            raise InputError(f"vocab_size must be at least 2 (or None for the whole vocabulary), got {self.vocab_size}")

    @classmethod
    def from_train_config(cls, config: Mapping[str, Any], source: str = "a training config") -> "ProbeTask":
        """The probe task of a resolved training config (``TrainConfig.to_dict()`` or a parsed ``config.toml``).

        ``period``/``n_repeats`` are ``record.probe_period``/``probe_repeats``; the alphabet is the
        repeated sequences' (``data.synthetic_vocab_size``, 0 meaning the whole vocabulary); the
        trainer puts its BOS (end-of-text) token first, so ``offset`` is 1.
        """
        record, data = config.get("record", {}), config.get("data", {})
        if "probe_period" not in record:
            raise InputError(f"{source} has no record.probe_period: it is not a workbench training config")
        return cls(period=int(record["probe_period"]), vocab_size=int(data.get("synthetic_vocab_size", 0)) or None,
                   n_repeats=int(record.get("probe_repeats", 2)), offset=1,
                   rows=int(record.get("probe_rows", 0)) or None, source=source)

    @classmethod
    def from_run(cls, run_dir: Union[str, Path]) -> "ProbeTask":
        """The probe task a training run was configured with (``RUN/config.toml``)."""
        return cls.from_train_config(read_run_config(run_dir), source=f"{Path(run_dir) / CONFIG_FILE}")

    @classmethod
    def from_recording(cls, attrs: Mapping[str, Any], source: str = "the recording") -> Optional["ProbeTask"]:
        """The task of a store's probe rows, from its attributes; ``None`` when they name none.

        Reads ``probe_period``, ``probe_offset``, ``probe_repeats``, ``probe_repeated_rows`` and the
        alphabet: ``probe_vocab_size`` when present, else the ``train_config``'s
        ``data.synthetic_vocab_size`` (the trainer draws probe rows from the same ids).
        """
        if not attrs.get("probe_period"):
            return None
        vocab = attrs.get("probe_vocab_size")
        if vocab is None:
            vocab = (attrs.get("train_config") or {}).get("data", {}).get("synthetic_vocab_size", 0)
        return cls(period=int(attrs["probe_period"]), vocab_size=int(vocab or 0) or None,
                   n_repeats=int(attrs.get("probe_repeats", 2) or 2), offset=int(attrs.get("probe_offset", 1)),
                   rows=int(attrs.get("probe_repeated_rows", 0) or 0) or None, source=source)

    @classmethod
    def of_model(cls, model: Any) -> Optional["ProbeTask"]:
        """The task of the run a model was loaded from (``model.run_dir``), or ``None``."""
        run_dir = getattr(model, "run_dir", None)
        return cls.from_run(run_dir) if run_dir is not None else None

    def for_model(self, cfg: Any) -> "ProbeTask":
        """This task fitted to a model config: the alphabet within ``d_vocab``, no BOS if the model has none."""
        vocab = cfg.d_vocab if self.vocab_size is None else min(self.vocab_size, cfg.d_vocab)
        offset = self.offset if cfg.bos_token_id is not None else 0
        return dataclasses.replace(self, vocab_size=vocab, offset=offset)

    def tokens(self, n: int, seed: int = 0, bos_token_id: Optional[int] = None) -> torch.Tensor:
        """``n`` rows of this task, ``[n, offset + period * n_repeats]`` token ids.

        Needs ``vocab_size`` (use ``for_model(model.cfg)`` first) and, when ``offset`` is 1, the BOS id.
        """
        if self.vocab_size is None:
            raise InputError("this task draws from the model's whole vocabulary: call task.for_model(model.cfg) "
                             "first, or give vocab_size")
        if self.offset and bos_token_id is None:
            raise InputError("this task's rows start with a BOS token: pass bos_token_id (model.cfg.bos_token_id)")
        return repeated_random_tokens(n, self.period, n_repeats=self.n_repeats, vocab_size=self.vocab_size,
                                      seed=seed, bos_token_id=bos_token_id if self.offset else None)

    def model_tokens(self, model: Any, n: int, seed: int = 0) -> torch.Tensor:
        """``n`` rows for ``model``: ``for_model(model.cfg).tokens(n, seed, model's BOS)``."""
        return self.for_model(model.cfg).tokens(n, seed, model.cfg.bos_token_id)

    def describe(self) -> str:
        """One line: what the rows are and where the task came from."""
        alphabet = f"ids [0, {self.vocab_size})" if self.vocab_size is not None else "the whole vocabulary"
        bos = "after a BOS" if self.offset else "with no BOS"
        rows = f", the first {self.rows} rows" if self.rows else ""
        return (f"repeated random tokens (period {self.period}, {self.n_repeats} repeats, {alphabet}, {bos}{rows}) "
                f"from {self.source}")
