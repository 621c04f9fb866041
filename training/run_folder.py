"""Checks on a run folder before training touches it: is it a run, can it be resumed, does it match.

Nothing here writes. The trainer runs every check first and changes the folder
(writes a new run's files, or cuts a resumed run's metrics and recording back to
its checkpoint) only once all of them have passed, so a resume that cannot go on
leaves the folder as it found it.

A run has *started* once ``config.toml`` exists: it is the last file written when
a run is created, atomically, and never rewritten. A folder without it (a kill
while the run was being created) is treated as empty.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from workbench.errors import DamagedFileError, FileConflictError, InputError
from workbench.model import PhiConfig, PhiModel

from . import run_state
from .config import ConfigError, TrainConfig, resume_conflicts
from .data import TokenData

CONFIG_FILE = "config.toml"
# PhiConfig fields that fix the shapes of a checkpoint's tensors.
SHAPE_FIELDS = ("d_model", "n_layers", "n_heads", "d_mlp", "d_vocab", "rotary_dim")


@dataclass
class ResumePoint:
    """The checkpoint a resumed run continues from."""
    folder: Path
    state: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.state["step"])


@dataclass
class RunCheck:
    started: bool                       # the folder holds a run (its config.toml exists)
    resume_from: Optional[ResumePoint]  # None: a new run, or a resume with no checkpoint (starts over)


def check_run_folder(run_dir: Path, cfg: TrainConfig, resume: bool, world: int) -> RunCheck:
    """Whether ``run_dir`` can take this run, and from which checkpoint it resumes; raises otherwise."""
    rd = Path(run_dir)
    if rd.exists() and not rd.is_dir():
        raise InputError(f"--out {rd} is a file; pass a folder for the run")
    ckpts = rd / "checkpoints"
    if ckpts.exists() and not ckpts.is_dir():
        raise InputError(f"{ckpts} is a file, but the run keeps its checkpoints in that folder; "
                         "move the file away and run again")
    started = (rd / CONFIG_FILE).is_file()
    if not resume:
        if started or (rd / "metrics.jsonl").exists():
            raise FileConflictError(f"{rd} already holds a run; pass --resume to continue it, or choose "
                                    "a new --out folder")
        return RunCheck(started=False, resume_from=None)
    if not started:
        return RunCheck(started=False, resume_from=None)
    _check_same_config(run_config(rd), cfg, f"{rd} was started with another config", rd)
    folder = run_state.latest_checkpoint(rd)
    if folder is None:
        return RunCheck(started=True, resume_from=None)
    state = run_state.load_trainer_state(folder)
    if "config" in state:
        saved = TrainConfig.from_dict(state["config"], where=str(folder / run_state.STATE_FILE))
        _check_same_config(saved, cfg, f"{folder.name} was trained with another config than "
                                       f"{rd / CONFIG_FILE} says", rd)
    if state.get("world") not in (None, world):
        raise InputError(f"{folder} was written by {state['world']} processes, this run has "
                         f"{world}: resume with the same number of processes")
    return RunCheck(started=True, resume_from=ResumePoint(folder, state))


def run_config(run_dir: Path) -> TrainConfig:
    """The run's own config (``RUN/config.toml``); a damaged file is a ``DamagedFileError``."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.read_text().strip():
        raise DamagedFileError(f"{path} is empty; it is written once when the run starts: restore it, or "
                               "start a new run in another --out folder")
    try:
        return TrainConfig.from_toml(path)
    except ConfigError as e:
        raise DamagedFileError(f"{path} is damaged or was edited ({e}); it is written once when the run "
                               "starts: restore it, or start a new run in another --out folder") from None


def _check_same_config(run: TrainConfig, given: TrainConfig, what: str, rd: Path) -> None:
    conflicts = resume_conflicts(run, given)
    if conflicts:
        shown = ", ".join(conflicts[:4]) + (f" and {len(conflicts) - 4} more" if len(conflicts) > 4 else "")
        raise ConfigError(f"{what}: {shown}; resume with the run's own config (`workbench train --out {rd} "
                          "--resume`), or start a new run in another --out folder")


def check_checkpoint_model(folder: Path, pcfg: PhiConfig) -> None:
    """The checkpoint's model has the shapes this config builds (else one line naming both)."""
    try:
        saved = PhiConfig.from_hf(folder)
    except Exception as e:  # noqa: BLE001 (a damaged config.json: any of several errors)
        raise DamagedFileError(f"{folder / 'config.json'} is damaged ({str(e)[:120]}); delete {folder} to "
                               "resume from the checkpoint before it") from None
    diff = [f"{k} {getattr(saved, k)} (checkpoint) vs {getattr(pcfg, k)} (config)"
            for k in SHAPE_FIELDS if getattr(saved, k) != getattr(pcfg, k)]
    if diff:
        raise ConfigError(f"{folder} holds another model than the config builds: {', '.join(diff)}; resume "
                          "with the run's own config, or start a new run in another --out folder")


def check_record_hooks(cfg: TrainConfig, pcfg: PhiConfig) -> None:
    """Every name or glob in record.hooks matches a hook point of the model (else the model's error,
    which lists the closest names)."""
    if cfg.record.hooks:
        with torch.device("meta"):
            PhiModel(pcfg).resolve_hooks(list(cfg.record.hooks))


def check_data(cfg: TrainConfig, data: TokenData) -> None:
    """Checks that need the data: the validation windows the probe set asks for exist."""
    r = cfg.record
    width = 1 + r.probe_period * r.probe_repeats
    if r.hooks and r.probe_val_rows:
        windows = len(data.val) - width + 1
        if windows < r.probe_val_rows:
            raise ConfigError(f"record.probe_val_rows is {r.probe_val_rows}, but the validation split has "
                              f"{len(data.val):,} tokens: {max(0, windows)} windows of {width} tokens; lower "
                              "record.probe_val_rows (or record.probe_period) or add data")


def damaged_recording(path: Path, e: BaseException) -> DamagedFileError:
    return DamagedFileError(f"the recording {path} cannot be resumed ({type(e).__name__}: {str(e)[:160]}); "
                            "move it away (or delete it) to resume without the steps recorded so far")
