"""Head detection: attention patterns from a model run or a store, a labelled table of head scores,
and the same scores at every recorded step of a training run (the induction transition).

Scores (``attention.py``): previous-token, duplicate-token and induction on repeated random
sequences, attention to the first token ("sink"), mean attention entropy (nats). The sequences
are a ``ProbeTask``: by default the one the model's training run was probed with.
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import pandas as pd
import torch

from ..errors import InputError
from ..model import PhiModel
from ..run_files import is_run_folder
from ..store import ActivationStore
from ..store.source import ActivationSource, StepSource
from .attention import (attention_entropy, duplicate_token_score, first_token_score, induction_score,
                        previous_token_score)
from .probe_task import ProbeTask

SCORES = ("previous_token", "duplicate_token", "induction", "first_token", "entropy")
# A head gets a label when its score passes the threshold; the highest score (relative to its threshold) wins.
DEFAULT_THRESHOLDS = {"induction": 0.3, "previous_token": 0.5, "duplicate_token": 0.3, "first_token": 0.6}
HEAD_COLUMN = "head_index"   # not "head": a column of that name hides DataFrame.head()


class HeadTable(pd.DataFrame):
    """A table of head scores (a pandas DataFrame), one row per head: ``layer, head_index, <scores>, label``.

    ``table.attrs``: ``task`` (the ``ProbeTask`` scored on) and ``note`` (one line saying so); from a
    recording also ``step``. The column was called ``head`` before; ``table["head"]`` still reads
    ``head_index``, with a ``FutureWarning``, for one release.
    """

    @property
    def _constructor(self):
        return HeadTable

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str) and key == "head" and "head" not in self.columns and HEAD_COLUMN in self.columns:
            warnings.warn("the head-score column 'head' is now 'head_index' ('head' hid DataFrame.head()); "
                          "table['head'] stops working in the next release", FutureWarning, stacklevel=2)
            key = HEAD_COLUMN
        return super().__getitem__(key)

    def best(self, score: str = "induction") -> pd.Series:
        """The row of the head with the highest ``score`` (``best.layer``, ``best.head_index``, ``best[score]``)."""
        if score not in self.columns:
            raise InputError(f"no {score!r} column; the table has {list(self.columns)}")
        return self.loc[self[score].idxmax()]


def head_name(layer: int, head: int) -> str:
    """``"L1.H3"``: how tables, notes and reports name a head."""
    return f"L{int(layer)}.H{int(head)}"


def pattern_name(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_pattern"


@torch.no_grad()
def get_patterns(model, tokens: torch.Tensor, layers: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Attention patterns of a model run, ``[layer, batch, head, q_pos, k_pos]``.

    Only the requested layers build explicit patterns; the others run fused attention.
    """
    layers = list(range(model.cfg.n_layers)) if layers is None else list(layers)
    names = [pattern_name(i) for i in layers]
    _, cache = model.run_with_cache(tokens.to(model.device), names_filter=names)
    return torch.stack([cache[n] for n in names])


def patterns_from_store(store, rows: slice | Sequence[int] = slice(None),
                        layers: Optional[Sequence[int]] = None) -> tuple[torch.Tensor, list[int]]:
    """Patterns read from a store (or ``store.at_step(s)``): ``([layer, rows, head, q, k], layers)``.

    ``layers`` defaults to every layer whose ``hook_pattern`` the store holds; a missing one is
    an error naming the hooks the store does have.
    """
    if layers is None:
        layers = sorted(int(m.group(1)) for n in store.hooks
                        if (m := re.fullmatch(r"blocks\.(\d+)\.attn\.hook_pattern", n)))
        if not layers:
            raise KeyError(f"the store holds no attention patterns (blocks.L.attn.hook_pattern); it has "
                           f"{sorted(store.hooks)[:8]}: cache them with names_filter='pattern'")
    return torch.stack([store[pattern_name(i)][rows].float() for i in layers]), list(layers)


def head_scores(patterns: torch.Tensor, period: Optional[int] = None, offset: int = 0) -> dict[str, torch.Tensor]:
    """Every score for patterns ``[..., batch, head, q, k]`` -> ``{score: [..., head]}``.

    ``period``/``offset`` describe repeated random sequences (``tasks.repeated_random_tokens``);
    without a period only the previous-token, first-token and entropy scores are computed.
    """
    out = {"previous_token": previous_token_score(patterns, offset),
           "first_token": first_token_score(patterns, start=max(1, offset)),
           "entropy": attention_entropy(patterns, start=max(1, offset))}
    if period is not None:
        out["induction"] = induction_score(patterns, period, offset)
        out["duplicate_token"] = duplicate_token_score(patterns, period, offset)
    return out


def _label(row: dict, thresholds: dict[str, float]) -> str:
    best, best_ratio = "", 1.0
    for score, t in thresholds.items():
        v = row.get(score)
        if v is not None and v >= t and v / t >= best_ratio:
            best, best_ratio = score, v / t
    return best.replace("_", "-")


def scores_table(scores: dict[str, torch.Tensor], thresholds: Optional[dict[str, float]] = None,
                 layers: Optional[Sequence[int]] = None, extra: Optional[dict[str, Any]] = None) -> HeadTable:
    """A ``HeadTable``, one row per (layer, head): ``layer, head_index``, every score and a ``label``."""
    thresholds = DEFAULT_THRESHOLDS if thresholds is None else thresholds
    first = next(iter(scores.values()))                             # [layer, head]
    layers = list(range(first.shape[0])) if layers is None else list(layers)
    rows = []
    for li, layer in enumerate(layers):
        for h in range(first.shape[1]):
            row: dict[str, Any] = dict(extra or {})
            row.update({"layer": layer, HEAD_COLUMN: h})
            row.update({k: float(v[li, h]) for k, v in scores.items()})
            row["label"] = _label(row, thresholds)
            rows.append(row)
    return HeadTable(rows)


def _task_from_arguments(task: Optional[ProbeTask], period: Optional[int], offset: Optional[int],
                         default_offset: int) -> Optional[ProbeTask]:
    """The task the caller named: ``task=``, or ``period=``/``offset=`` (the older spelling), else ``None``."""
    if task is not None:
        if period is not None or offset is not None:
            raise InputError("pass either task=ProbeTask(...) or period=/offset=, not both")
        return task
    if period is None:
        return None
    return ProbeTask(period=int(period), offset=default_offset if offset is None else int(offset),
                     source="the period/offset passed")


def _open_path(path: Union[str, Path]) -> tuple[Any, Optional[ProbeTask]]:
    """A model (from a run folder or a checkpoint folder) or a store (an ``.h5`` file), and the run's task."""
    path = Path(path)
    if path.is_file():
        return ActivationStore.open(path), None
    if not path.is_dir():
        raise InputError(f"{path} does not exist: pass a model, a store, a training run folder, "
                         "a checkpoint folder or an .h5 file")
    if is_run_folder(path):
        return PhiModel.from_pretrained(path).eval(), ProbeTask.from_run(path)
    return PhiModel.from_pretrained(path).eval(), None


def _warn_if_nothing_passes(table: HeadTable, task: Optional[ProbeTask], thresholds: dict[str, float]) -> None:
    """A ``UserWarning`` when no head passes the induction threshold (or, without a task, any threshold)."""
    if "induction" in table.columns and "induction" in thresholds:
        t = thresholds["induction"]
        if (table["induction"] < t).all():
            best = table.best("induction")
            warnings.warn(f"no head passes the induction threshold {t}: the best is "
                          f"{head_name(best['layer'], best[HEAD_COLUMN])} at {best['induction']:.3f}, scored on "
                          f"{task.describe()}. If the model learned induction on other sequences, pass "
                          "task=ProbeTask(period=..., vocab_size=...)", UserWarning, stacklevel=4)
    elif not (table["label"] != "").any():
        warnings.warn(f"no head passes any threshold {thresholds}", UserWarning, stacklevel=4)


def _finish(table: HeadTable, task: Optional[ProbeTask], thresholds: Optional[dict[str, float]],
            step: Optional[int], verbose: bool) -> HeadTable:
    """Attach the task and a one-line note to ``table``, print the note, warn if no head passes."""
    what = (task.describe() if task is not None
            else "no repeated-sequence task (induction not scored: pass task= or period=)")
    note = f"head scores on {what}" + (f", at recorded step {step}" if step is not None else "")
    table.attrs.update(task=task, note=note, **({"step": step} if step is not None else {}))
    if verbose:
        print(note)
    _warn_if_nothing_passes(table, task, DEFAULT_THRESHOLDS if thresholds is None else thresholds)
    return table


def detect_heads(source, tokens: Optional[torch.Tensor] = None, period: Optional[int] = None,
                 offset: Optional[int] = None, n_seqs: int = 32, seed: int = 0,
                 thresholds: Optional[dict[str, float]] = None, rows: slice | Sequence[int] = slice(None),
                 task: Optional[ProbeTask] = None, step: Optional[int] = None, verbose: bool = True) -> HeadTable:
    """Score and label every head: a ``HeadTable`` with ``layer, head_index, previous_token, first_token,
    entropy, induction, duplicate_token, label``.

    ``source`` is a ``PhiModel``, a store holding ``hook_pattern`` s (a cache file or a training
    recording), or a path to one of them or to a training run folder. The sequences scored on are a
    ``ProbeTask``, chosen in this order: ``task=``; ``period=``/``offset=``; the task the source's run
    was trained and probed with (a run folder's ``config.toml``, ``model.run_dir``'s, a recording's
    attributes); else, for a model, the default (period 20 over the whole vocabulary). With a model and
    no ``tokens``, ``n_seqs`` rows of that task are generated (``seed``); a recording is read at
    ``step`` (default its last). The task used is in ``table.attrs["task"]`` and said in one printed line
    (``verbose``); a ``UserWarning`` says when no head passes the induction threshold.
    """
    if isinstance(source, (str, Path)):
        source, path_task = _open_path(source)
        task = task if task is not None or period is not None else path_task
    if hasattr(source, "run_with_cache"):
        generated = tokens is None
        task = _task_from_arguments(task, period, offset, default_offset=1 if generated else 0)
        if task is None and generated:
            task = ProbeTask.of_model(source) or ProbeTask()
        if task is not None and generated:
            task = task.for_model(source.cfg)
            tokens = task.tokens(n_seqs, seed, source.cfg.bos_token_id)
        patterns, layers = get_patterns(source, tokens), list(range(source.cfg.n_layers))
    else:
        attrs = source.attrs if isinstance(source, (ActivationSource, StepSource)) else {}
        task = _task_from_arguments(task, period, offset, default_offset=0) \
            or ProbeTask.from_recording(attrs, source=f"the attributes of {getattr(source, 'path', 'the store')}")
        if isinstance(source, StepSource):          # a whole recording: its last (or the given) step
            step = source.steps[-1] if step is None else step
            source = source.at_step(step)
        if task is not None and task.rows and rows == slice(None):
            rows = slice(0, task.rows)
        patterns, layers = patterns_from_store(source, rows)
    scores = head_scores(patterns, task.period if task else None, task.offset if task else 0)
    return _finish(scores_table(scores, thresholds, layers), task, thresholds, step, verbose)


def scores_across_steps(store, period: Optional[int] = None, offset: Optional[int] = None,
                        rows: Optional[slice] = None, layers: Optional[Sequence[int]] = None,
                        thresholds: Optional[dict[str, float]] = None, task: Optional[ProbeTask] = None,
                        verbose: bool = False) -> HeadTable:
    """Head scores at every recorded step of a training recording: a ``HeadTable`` with a ``step`` column
    (``step, layer, head_index, <scores>, label``), e.g. to plot the induction score against training steps.

    ``store`` is an open recording or the path to one (or to its run folder). The task is ``task=``,
    or ``period=``/``offset=``, else the recording's own (``ProbeTask.from_recording(store.attrs)``);
    ``rows`` defaults to its repeated rows.
    """
    if isinstance(store, (str, Path)):
        path = Path(store) / "activations.h5" if Path(store).is_dir() else Path(store)
        with ActivationStore.open(path) as opened:
            return scores_across_steps(opened, period, offset, rows, layers, thresholds, task, verbose)
    steps = list(store.steps) if isinstance(store, StepSource) else []
    if not steps:
        raise InputError("this store has no recorded steps: scores_across_steps needs a training recording")
    task = _task_from_arguments(task, period, offset, default_offset=1) \
        or ProbeTask.from_recording(store.attrs, source=f"the attributes of {getattr(store, 'path', 'the recording')}")
    if rows is None:
        rows = slice(0, task.rows) if task is not None and task.rows else slice(None)
    tables = []
    for s in steps:
        patterns, found = patterns_from_store(store.at_step(s), rows, layers)
        scores = head_scores(patterns, task.period if task else None, task.offset if task else 0)
        tables.append(scores_table(scores, thresholds, found, extra={"step": s}))
    table = HeadTable(pd.concat(tables, ignore_index=True))
    what = task.describe() if task is not None else "no repeated-sequence task (induction not scored)"
    table.attrs.update(task=task, note=f"head scores at {len(steps)} recorded steps on {what}")
    if verbose:
        print(table.attrs["note"])
    return table


def when_formed(table: pd.DataFrame, score: str = "induction", threshold: Optional[float] = None) -> dict[str, Any]:
    """When the head that ends highest on ``score`` got there, from a ``scores_across_steps`` table.

    Returns ``{"name", "layer", "head_index", "score", "step", "formed_at", "threshold"}``: the head
    with the highest ``score`` at the last recorded ``step``, that score, and the first recorded step
    at which the same head reached ``threshold`` (default ``DEFAULT_THRESHOLDS[score]``; ``formed_at``
    is ``None`` if it never did).
    """
    missing = [c for c in ("step", "layer", HEAD_COLUMN, score) if c not in table.columns]
    if missing:
        raise InputError(f"when_formed needs a scores_across_steps table; this one lacks {missing}")
    threshold = DEFAULT_THRESHOLDS.get(score, 0.5) if threshold is None else threshold
    last = int(table["step"].max())
    final = table[table["step"] == last]
    best = final.loc[final[score].idxmax()]
    layer, head = int(best["layer"]), int(best[HEAD_COLUMN])
    curve = table[(table["layer"] == layer) & (table[HEAD_COLUMN] == head)]
    passed = curve[curve[score] >= threshold]["step"]
    return {"name": head_name(layer, head), "layer": layer, "head_index": head, "score": float(best[score]),
            "step": last, "formed_at": int(passed.min()) if len(passed) else None, "threshold": threshold}
