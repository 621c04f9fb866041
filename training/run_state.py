"""A run's saved states: full checkpoints for ``--resume`` and model-only snapshots for analysis.

``RUN/checkpoints/step_XXXXXXXX/`` holds ``config.json``, ``model.safetensors``
and ``tokenizer.json`` (so ``PhiModel.from_pretrained`` and
``transformers.PhiForCausalLM.from_pretrained`` load it). A *full checkpoint*
also holds ``trainer_state.pt``: optimizer, scheduler and grad-scaler state,
the RNG states (torch, CUDA, numpy, python), the data position and the run's
config. A *model snapshot* (``checkpoint.log_spaced``) holds the model alone.

Atomic: everything is written into ``RUN/checkpoints/.tmp-step_XXXXXXXX`` and
the folder is renamed into place last, so a process killed at any moment
(SIGKILL included) leaves either a complete folder or none; a failed write
(a full disk) removes its temporary folder. Leftover temporary folders are
deleted on resume.
"""
from __future__ import annotations

import os
import pickle
import random
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any, Collection, Optional

import numpy as np
import torch

from workbench.errors import DamagedFileError, InputError
from workbench.model import PhiModel

from .files import fsync_dir

STATE_FILE = "trainer_state.pt"
STEP_DIR = re.compile(r"step_(\d{8})")


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


# -- writing -----------------------------------------------------------------------------------
def _write_folder(final: Path, fill) -> Path:
    """Fill a temporary folder with ``fill(tmp)``, then rename it to ``final`` (replacing it)."""
    tmp = final.parent / f".tmp-{final.name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        tmp.mkdir(parents=True)
        fill(tmp)
        fsync_dir(tmp)
        if final.exists():  # re-running a step after a resume: the new one replaces it
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)   # a full disk gets its space back
        raise
    fsync_dir(final.parent)
    return final


def save_checkpoint(run_dir: Path, step: int, model: PhiModel, trainer_state: dict[str, Any],
                    keep_last: int = 0, keep_models: Collection[int] = ()) -> Path:
    """Write the full checkpoint of ``step`` atomically; ``model`` is a (full, unwrapped) ``PhiModel``.

    ``trainer_state`` holds the optimizer/scheduler/scaler state dicts, the data
    position and the config; the RNG states are added here. With ``keep_last``,
    older full checkpoints are removed, except that those at ``keep_models`` steps
    keep their model (only ``trainer_state.pt`` goes). Returns the final folder.
    """
    def fill(tmp: Path) -> None:
        model.save_pretrained(tmp)
        torch.save({**trainer_state, "step": step, "rng": rng_state()}, tmp / STATE_FILE)
    final = _write_folder(checkpoint_dir(run_dir, step), fill)
    if keep_last > 0:
        for old in complete_checkpoints(run_dir)[:-keep_last]:
            if step_of(old) in keep_models:
                (old / STATE_FILE).unlink(missing_ok=True)
            else:
                shutil.rmtree(old, ignore_errors=True)
    return final


def save_model_snapshot(run_dir: Path, step: int, model: PhiModel) -> Path:
    """Write the model of ``step`` (weights, config, tokenizer; no trainer state) atomically."""
    return _write_folder(checkpoint_dir(run_dir, step), lambda tmp: model.save_pretrained(tmp))


# -- finding -----------------------------------------------------------------------------------
def step_of(folder: Path) -> int:
    m = STEP_DIR.fullmatch(Path(folder).name)
    if m is None:
        raise ValueError(f"{folder} is not a checkpoint folder (step_XXXXXXXX)")
    return int(m.group(1))


def _step_folders(run_dir: Path) -> list[Path]:
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if STEP_DIR.fullmatch(p.name) and (p / "config.json").is_file())


def list_checkpoints(run_dir: Path) -> dict[int, Path]:
    """``{step: folder}`` of every saved model of a run (full checkpoints and snapshots), by step.

    Each folder loads with ``PhiModel.from_pretrained(folder)``.
    """
    return {step_of(p): p for p in _step_folders(run_dir)}


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Full checkpoints of a run (those a resume can start from), oldest first."""
    return [p for p in _step_folders(run_dir) if (p / STATE_FILE).is_file()]


def latest_checkpoint(run_dir: Path) -> Optional[Path]:
    found = complete_checkpoints(run_dir)
    return found[-1] if found else None


def clean_partial(run_dir: Path) -> None:
    """Delete the temporary folders a killed run left behind."""
    root = Path(run_dir) / "checkpoints"
    if root.is_dir():
        for tmp in root.glob(".tmp-step_*"):
            shutil.rmtree(tmp, ignore_errors=True)


def remove_after(run_dir: Path, step: int) -> None:
    """Remove saved models past ``step`` (a killed run's snapshots the resumed run will write again)."""
    for s, folder in list_checkpoints(run_dir).items():
        if s > step:
            shutil.rmtree(folder, ignore_errors=True)


# -- reading -----------------------------------------------------------------------------------
def _damaged(path: Path, e: BaseException, others: list[Path]) -> DamagedFileError:
    folder = path.parent
    earlier = [p for p in others if p != folder and step_of(p) < step_of(folder)]
    fix = (f"delete {folder} to resume from {earlier[-1].name}" if earlier
           else f"delete {folder} to start the run over")
    detail = str(e).split(". ")[0][:100]
    return DamagedFileError(f"{path} is damaged ({type(e).__name__}: {detail}); {fix}")


def load_trainer_state(folder: Path) -> dict[str, Any]:
    """The ``trainer_state.pt`` of a checkpoint (RNG states are numpy/python objects: not weights-only).

    A truncated or unreadable file is a ``DamagedFileError`` that says which folder to delete.
    """
    path = Path(folder) / STATE_FILE
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise _damaged(path, e, complete_checkpoints(Path(folder).parent.parent)) from None
    if not isinstance(state, dict) or not {"optimizer", "scheduler", "step", "rng"} <= set(state):
        raise _damaged(path, ValueError("not a trainer state"), complete_checkpoints(Path(folder).parent.parent))
    return state


def load_model_state(folder: Path) -> dict[str, torch.Tensor]:
    """Our-named fp32 state dict of a checkpoint's model (for ``load_state_dict`` into a live model)."""
    try:
        return PhiModel.from_pretrained(folder).state_dict()
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 (a damaged weights file shows up as any of several types)
        raise _damaged(Path(folder) / "model.safetensors", e,
                       complete_checkpoints(Path(folder).parent.parent)) from None
