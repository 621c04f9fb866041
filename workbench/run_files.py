"""Reading what a training run folder holds, for the layers below training (analysis, viz) and for training itself.

A run folder (the ``--out`` of ``workbench train``) holds ``config.toml`` (the resolved
``TrainConfig``), ``metrics.jsonl`` (one JSON object per logged step), ``activations.h5``
(the recording) and ``checkpoints/``. The training package writes these files; this module
is the one place that reads ``metrics.jsonl`` and ``config.toml`` back, so that analysis and
figures need not import the trainer.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Union

from .errors import DamagedFileError, MissingFileError

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, packaged as tomli
    import tomli as tomllib

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.toml"


def is_run_folder(path: Union[str, Path]) -> bool:
    """True when ``path`` is a folder that ``workbench train`` wrote (it holds ``config.toml``)."""
    return Path(path).is_dir() and (Path(path) / CONFIG_FILE).is_file()


def parse_metrics_lines(text: str, where: str = "metrics.jsonl") -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl`` text, oldest first.

    The log is written and flushed line by line, so a killed run can leave a half-written
    last line (no newline at its end): it is skipped. A line that is not JSON anywhere else
    means the file was damaged, and is an error naming the line.
    """
    lines = text.split("\n")          # the last element is "" when the text ends in a newline
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if n == len(lines):        # the unfinished last line of a killed run
                continue
            raise DamagedFileError(f"{where}:{n} is not JSON ({e}); the file was damaged: "
                                   f"delete that line or re-run the training") from e
        if isinstance(row, dict):
            rows.append(row)
    return rows


def read_metrics(path: Union[str, Path]) -> list[dict[str, Any]]:
    """Every complete row of a run's ``metrics.jsonl`` (``path`` is the file or the run folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.is_file():
        raise MissingFileError(f"no metrics file at {path}: pass a training run folder (the --out of "
                               "workbench train) or its metrics.jsonl")
    return parse_metrics_lines(path.read_text(encoding="utf-8"), str(path))


def read_run_config(run_dir: Union[str, Path]) -> dict[str, Any]:
    """A run's resolved training config (``RUN/config.toml``) as nested dicts, e.g. ``cfg["record"]["probe_period"]``."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise MissingFileError(f"{run_dir} is not a training run folder (no {CONFIG_FILE}); "
                               "pass the --out folder of workbench train")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise DamagedFileError(f"{path} is not valid TOML ({e}); restore it from the run's checkpoint "
                               "or re-run the training") from e
