"""Ctrl-C and SIGTERM on `workbench train`: the step in flight finishes, a checkpoint is saved, the
recording and metrics are closed, one line says how to resume, exit 130 / 143, never a traceback.

Real `workbench train` subprocesses on a run far too long to finish (100,000 steps): each signal
is sent once the first metrics line is on disk, so no test depends on how fast the machine is.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest

from helpers import tiny_config_file

LONG = 100_000


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    # Recorded only at the log-spaced steps, checkpoints only at the end (or at a stop).
    return tiny_config_file(tmp_path_factory.mktemp("cfg"), "long.toml", schedule__max_steps=LONG,
                            record__every=0, checkpoint__every=0)


def _start(config: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "workbench.cli", "train", str(config), "--out", str(out),
                             "--no-progress", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _steps(out: Path) -> list[int]:
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [json.loads(x)["step"] for x in lines if x.endswith("}")]


def _wait_for_step(proc: subprocess.Popen, out: Path, after: int = 0) -> None:
    """Block until a metrics line past step ``after`` is on disk (or fail if the run died first)."""
    deadline = time.monotonic() + 300
    while not [s for s in _steps(out) if s > after]:
        assert proc.poll() is None, f"the run exited early: {proc.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, "no metrics line after 300 s"
        time.sleep(0.05)


def _finish(proc: subprocess.Popen) -> tuple[int, str]:
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


def _assert_stopped_cleanly(out: Path, code: int, want_code: int, err: str) -> int:
    assert code == want_code, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    stop_lines = [ln for ln in err.splitlines() if ln.startswith("stopped after step")]
    assert len(stop_lines) == 1 and f"workbench train --out {out} --resume" in stop_lines[0], err
    steps = _steps(out)
    last = steps[-1]
    assert steps == list(range(1, last + 1)) and last < LONG        # every finished step, once
    assert f"checkpoint saved at step {last:,}" in stop_lines[0]
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*"))[-1] == f"step_{last:08d}"
    with h5py.File(out / "activations.h5", "r") as f:                 # closed: opens without recovery
        recorded = [int(s) for s in f["steps"][: int(f.attrs["n_steps"])]]
    assert recorded and recorded[-1] <= last and recorded == sorted(set(recorded))
    assert not (out / "summary.json").exists()
    return last


def test_ctrl_c_finishes_the_step_saves_and_exits_130(config, tmp_path):
    out = tmp_path / "run"
    proc = _start(config, out)
    _wait_for_step(proc, out)
    proc.send_signal(signal.SIGINT)
    code, err = _finish(proc)
    _assert_stopped_cleanly(out, code, 130, err)


def test_sigterm_exits_143_and_the_run_resumes_where_it_stopped(config, tmp_path):
    out = tmp_path / "run"
    proc = _start(config, out)
    _wait_for_step(proc, out)
    proc.send_signal(signal.SIGTERM)
    code, err = _finish(proc)
    first = _assert_stopped_cleanly(out, code, 143, err)
    proc = _start(config, out, "--resume")
    _wait_for_step(proc, out, after=first)
    proc.send_signal(signal.SIGTERM)
    code, err = _finish(proc)
    second = _assert_stopped_cleanly(out, code, 143, err)
    assert second > first


def test_a_signal_while_setting_up_exits_143_without_a_traceback(tmp_path):
    out = tmp_path / "run"
    # The tiny config trains its own tokenizer first; the signal lands during set-up (or, on a very
    # fast machine, in the first steps): either way exit 143, no traceback, and a folder that trains.
    proc = subprocess.Popen([sys.executable, "-m", "workbench.cli", "train", "tiny", "--out", str(out),
                             "--no-progress", "--max-steps", str(LONG)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while "reading the corpus" not in (proc.stdout.readline() or ""):
        assert proc.poll() is None and time.monotonic() < deadline
    proc.send_signal(signal.SIGTERM)
    code, err = _finish(proc)
    assert code == 143 and "Traceback" not in err, err[-3000:]
    assert "stopped" in err


def test_a_second_ctrl_c_prints_no_traceback(config, tmp_path):
    out = tmp_path / "run"
    proc = _start(config, out)
    _wait_for_step(proc, out)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    code, err = _finish(proc)
    _assert_stopped_cleanly(out, code, 130, err)
