"""DDP under torchrun on CPU (gloo, 2 processes) equals one process with the same global batch."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

STEPS = 8


def _train(out: Path, nproc: int, config: str = "tiny") -> subprocess.CompletedProcess:
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                 "-m", "workbench.cli"] if nproc > 1 else [sys.executable, "-m", "workbench.cli"])
    cmd = launcher + ["train", config, "--out", str(out), "--no-progress", "--max-steps", str(STEPS),
                      "--device", "cpu", "--checkpoint-every", "4"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single") / "run"
    r = _train(out, 1)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def test_ddp_two_processes_match_one_process(single, tmp_path):
    ddp = tmp_path / "ddp"
    r2 = _train(ddp, 2)
    assert r2.returncode == 0, r2.stderr[-3000:]
    a, b = _metrics(single), _metrics(ddp)
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        for key in ("loss", "val_loss"):
            if key in ra:
                assert abs(ra[key] - rb[key]) < 1e-5, (ra["step"], key, ra[key], rb[key])
    assert json.loads((ddp / "summary.json").read_text())["world"] == 2
    # Rank 0 alone records the (replicated) probe set: one file, the same steps and activations.
    with h5py.File(single / "activations.h5", "r") as fa, h5py.File(ddp / "activations.h5", "r") as fb:
        assert list(fa["steps"][:]) == list(fb["steps"][:])
        for name in fa["hooks"]:
            np.testing.assert_allclose(fa["hooks"][name][:], fb["hooks"][name][:], atol=2e-3)
    assert sorted(p.name for p in (ddp / "checkpoints").glob("step_*")) == ["step_00000004", "step_00000008"]


def test_fsdp2_two_processes_match_one_process(single, tmp_path):
    from workbench.training.config import load_config
    from workbench import PhiModel
    cfg = tmp_path / "fsdp.toml"
    cfg.write_text(load_config("tiny").override(system__parallel="fsdp").to_toml())
    fsdp = tmp_path / "fsdp"
    r2 = _train(fsdp, 2, str(cfg))
    assert r2.returncode == 0, r2.stderr[-3000:]
    a, b = _metrics(single), _metrics(fsdp)
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        assert abs(ra["loss"] - rb["loss"]) < 1e-5, (ra["step"], ra["loss"], rb["loss"])
    # Checkpoints gather the shards into one full HF-format model.
    ma, mb = PhiModel.from_pretrained(single), PhiModel.from_pretrained(fsdp)
    for (k, va), (_, vb) in zip(ma.state_dict().items(), mb.state_dict().items()):
        assert (va - vb).abs().max() < 1e-4, k
