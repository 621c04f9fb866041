"""Training checkpoints: an HF-format model folder plus everything an exact resume needs.

``RUN/checkpoints/step_XXXXXXXX/`` holds ``config.json``, ``model.safetensors``
and ``tokenizer.json`` (so ``PhiModel.from_pretrained`` and
``transformers.PhiForCausalLM.from_pretrained`` load it) and
``trainer_state.pt``: optimizer, scheduler and grad-scaler state, the RNG
states (torch, CUDA, numpy, python) and the data position.

Atomic: everything is written into ``RUN/checkpoints/.tmp-step_XXXXXXXX`` and
the folder is renamed into place last, so a process killed at any moment
(SIGKILL included) leaves either a complete checkpoint or none; leftover
temporary folders are deleted on resume.
"""
from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

STATE_FILE = "trainer_state.pt"


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step_{step:08d}"


def rng_state() -> dict[str, Any]:
    """Every RNG a training step may draw from."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: Path, step: int, model, trainer_state: dict[str, Any],
                    keep_last: int = 0) -> Path:
    """Write the checkpoint of ``step`` atomically; ``model`` is a (full, unwrapped) ``PhiModel``.

    ``trainer_state`` holds the optimizer/scheduler/scaler state dicts and the
    data position; the RNG states are added here. Returns the final folder.
    """
    final = checkpoint_dir(run_dir, step)
    tmp = final.parent / f".tmp-{final.name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp)
    torch.save({**trainer_state, "step": step, "rng": rng_state()}, tmp / STATE_FILE)
    _fsync_dir(tmp)
    if final.exists():  # re-running a step after a resume: the new one replaces it
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    if keep_last > 0:
        for old in complete_checkpoints(run_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _fsync_dir(path: Path) -> None:
    # Make the rename durable: a crash after it must not bring the temp name back.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Finished checkpoint folders of a run, oldest first (temporary folders are never listed)."""
    root = Path(run_dir) / "checkpoints"
    return sorted(p for p in root.glob("step_*") if (p / STATE_FILE).is_file() and (p / "config.json").is_file())


def clean_partial(run_dir: Path) -> None:
    """Delete the temporary folders a killed run left behind."""
    for tmp in (Path(run_dir) / "checkpoints").glob(".tmp-step_*"):
        shutil.rmtree(tmp, ignore_errors=True)


def latest_checkpoint(run_dir: Path) -> Optional[Path]:
    found = complete_checkpoints(run_dir)
    return found[-1] if found else None


def load_trainer_state(folder: Path) -> dict[str, Any]:
    """The ``trainer_state.pt`` of a checkpoint (RNG states are numpy/python objects: not weights-only)."""
    return torch.load(folder / STATE_FILE, map_location="cpu", weights_only=False)


def load_model_state(folder: Path) -> dict[str, torch.Tensor]:
    """Our-named fp32 state dict of a checkpoint's model (for ``load_state_dict`` into a live model)."""
    from workbench import PhiModel
    return PhiModel.from_pretrained(folder).state_dict()
