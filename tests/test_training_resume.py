"""Checkpoints and exact resume: a run SIGKILLed mid-way and resumed equals the uninterrupted run.

Both runs are real ``workbench train`` subprocesses on the tiny config (CPU,
one thread), so the check covers the CLI, the atomic checkpoint folders, the
metrics log and the recording's cut-back.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

STEPS, EVERY = 150, 20


def _cmd(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "workbench.cli", "train", "tiny", "--out", str(out), "--no-progress",
            "--max-steps", str(STEPS), "--checkpoint-every", str(EVERY), "--record-every", "10", *extra]


def _losses(run: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if "loss" in r]
    assert len(steps) == len(set(steps)), "a step was logged twice"
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def _recording(run: Path) -> tuple[list[int], dict[str, np.ndarray]]:
    with h5py.File(run / "activations.h5", "r") as f:
        n = int(f.attrs["n_steps"])
        return [int(s) for s in f["steps"][:n]], {k: v[:n] for k, v in f["hooks"].items()}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("full") / "run"
    subprocess.run(_cmd(out), check=True, capture_output=True, timeout=120)
    return out


def test_sigkill_then_resume_gives_the_same_losses_and_recording(uninterrupted, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(_cmd(out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 90
    killed_at = None
    # Kill it somewhere after its second checkpoint, wherever it happens to be.
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists():
            lines = metrics.read_text().splitlines()
            last = json.loads(lines[-1])["step"] if lines and lines[-1].endswith("}") else 0
            if last >= 2 * EVERY + 7:
                proc.send_signal(signal.SIGKILL)
                killed_at = last
                break
        time.sleep(0.002)
    proc.wait(timeout=30)
    assert killed_at is not None, f"the run finished or stalled before it could be killed: {proc.stderr.read()[-2000:]}"
    assert killed_at < STEPS
    ckpts = sorted(p.name for p in (out / "checkpoints").glob("step_*"))
    assert ckpts and ckpts[-1] <= f"step_{killed_at:08d}"
    done = subprocess.run(_cmd(out, "--resume"), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not list((out / "checkpoints").glob(".tmp-*"))
    full, resumed = _losses(uninterrupted), _losses(out)
    assert sorted(resumed) == list(range(1, STEPS + 1))
    assert resumed == full  # exactly, not approximately
    steps_a, acts_a = _recording(uninterrupted)
    steps_b, acts_b = _recording(out)
    assert steps_b == steps_a == sorted(set(steps_a))    # no duplicate, no missing step
    for name in acts_a:
        np.testing.assert_array_equal(acts_b[name], acts_a[name])


def test_resume_before_any_checkpoint_starts_over(tmp_path):
    from workbench.training.config import load_config
    from workbench.training.trainer import train
    out = tmp_path / "run"
    train(load_config("tiny").override(system__num_threads=0, schedule__max_steps=6), out, resume=True,
          progress=False)
    assert sorted(_losses(out)) == list(range(1, 7))


def test_checkpoints_load_in_workbench_and_transformers(uninterrupted):
    from transformers import PhiForCausalLM

    from workbench import PhiModel
    last = uninterrupted / "checkpoints" / f"step_{STEPS:08d}"
    assert (last / "trainer_state.pt").is_file() and (last / "tokenizer.json").is_file()
    ours = PhiModel.from_pretrained(uninterrupted)           # a run folder: its newest checkpoint
    hf = PhiForCausalLM.from_pretrained(last).eval()
    toks = torch.randint(0, ours.cfg.d_vocab, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(ours(toks), hf(toks).logits, atol=1e-5, rtol=1e-5)
    state = torch.load(last / "trainer_state.pt", weights_only=False)
    assert state["step"] == STEPS and {"optimizer", "scheduler", "rng", "data"} <= set(state)


def _cli(capsys, monkeypatch, *args: str) -> tuple[int, str]:
    """Run ``workbench ...`` in this process (no interpreter start-up); returns (exit code, stderr)."""
    from workbench import cli
    monkeypatch.setattr(sys, "argv", ["workbench", *args])
    try:
        cli.main()
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    return code, capsys.readouterr().err


def test_existing_run_without_resume_is_one_clear_error(uninterrupted, capsys, monkeypatch):
    code, err = _cli(capsys, monkeypatch, "train", "tiny", "--out", str(uninterrupted), "--no-progress")
    assert code == 1
    assert err.strip().startswith("error:") and "--resume" in err and len(err.strip().splitlines()) == 1


def test_forcing_cuda_without_one_is_one_line(tmp_path, capsys, monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, err = _cli(capsys, monkeypatch, "train", "tiny", "--out", str(tmp_path / "r"), "--device", "cuda")
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error:") and "cuda" in lines[0].lower()
    assert not (tmp_path / "r" / "metrics.jsonl").exists()
