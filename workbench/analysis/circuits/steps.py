"""Circuits across training: the circuit of one task at each saved checkpoint of a run.

A run's checkpoints are HF-format folders ``RUN/checkpoints/step_XXXXXXXX/`` that
``PhiModel.from_pretrained`` loads. The same task (same prompts) is scored at every step, so
the graphs differ only by the model: a step slider over them shows the circuit assembling.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch

from workbench.analysis.tasks import induction_task, run_induction_params
from workbench.errors import InputError, MissingFileError
from workbench.model import PhiModel

from .find import find_circuit
from .graph import Graph

_STEP_DIR = re.compile(r"step_(\d+)")


def list_checkpoints(run_dir: Union[str, Path]) -> dict[int, Path]:
    """``{step: folder}`` of a run's complete model checkpoints, oldest first.

    A folder counts once it holds ``config.json`` and its weights (``model.safetensors`` or a shard
    index): training writes into a temporary name and renames, so a listed folder is complete.
    """
    root = Path(run_dir) / "checkpoints"
    out = {}
    for p in sorted(root.glob("step_*")) if root.is_dir() else []:
        m = _STEP_DIR.fullmatch(p.name)
        if m and (p / "config.json").is_file() and any((p / w).is_file() for w in
                                                        ("model.safetensors", "model.safetensors.index.json")):
            out[int(m.group(1))] = p
    return dict(sorted(out.items()))


def pick_steps(run_dir: Union[str, Path], steps: Optional[Sequence[int]] = None,
               max_steps: Optional[int] = None) -> dict[int, Path]:
    """The checkpoints of ``steps`` (all by default; at most ``max_steps`` spread over the run,
    first and last included). A step without a checkpoint is an error naming the saved ones."""
    saved = list_checkpoints(run_dir)
    if not saved:
        raise MissingFileError(f"{run_dir} has no model checkpoints (checkpoints/step_*/ with config.json and "
                               "weights); train with checkpoint.every > 0 to keep some")
    if steps is not None:
        missing = [s for s in steps if s not in saved]
        if missing:
            raise InputError(f"step {missing[0]} has no checkpoint in {Path(run_dir) / 'checkpoints'}; "
                             f"saved steps: {_short(list(saved))}")
        return {s: saved[s] for s in steps}
    keys = list(saved)
    if max_steps is not None and len(keys) > max_steps >= 2:
        idx = sorted({round(i * (len(keys) - 1) / (max_steps - 1)) for i in range(max_steps)})
        keys = [keys[i] for i in idx]
    return {s: saved[s] for s in keys}


def _short(steps: list[int]) -> str:
    return ", ".join(map(str, steps)) if len(steps) <= 12 else \
        ", ".join(map(str, steps[:6])) + ", ..., " + ", ".join(map(str, steps[-3:]))


def circuits_across_steps(run: Union[str, Path], task, steps: Optional[Sequence[int]] = None,
                          max_steps: Optional[int] = None, device=None, ig_steps: int = 5,
                          on_step: Optional[Callable[[int, int, int], None]] = None, **find_kwargs) -> list[Graph]:
    """``find_circuit`` at each checkpoint of ``run``: one ``Graph`` per step, ``graph.metadata["step"]`` set.

    Args:
        task: a ``CircuitTask``, or ``"induction"`` for the run's own induction probes
            (``workbench.analysis.tasks.run_induction_params``).
        steps: the steps to analyse (each must have a checkpoint); default all, or ``max_steps``
            of them spread over the run.
        ig_steps: EAP-IG's integration steps (``find_circuit``'s ``steps``; here ``steps`` are training steps).
        on_step: ``on_step(step, index, count)`` before each step (progress).
        find_kwargs: passed to ``find_circuit`` (``method``, ``n_edges``, ``target`` ...).
    """
    chosen = pick_steps(run, steps, max_steps)
    if isinstance(task, str):
        if task != "induction":
            raise InputError(f"task {task!r} is not built from a run; pass a CircuitTask (workbench.analysis.tasks) or 'induction'")
        task = induction_task(**run_induction_params(run))
    graphs = []
    for i, (step, folder) in enumerate(chosen.items()):
        if on_step is not None:
            on_step(step, i, len(chosen))
        model = PhiModel.from_pretrained(folder, device=device).eval()
        graph = find_circuit(model, task, steps=ig_steps, **find_kwargs)
        graph.metadata["step"] = step
        graphs.append(graph)
        del model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return graphs
