"""A full disk during training is one line ("disk full ... --resume"), a non-zero exit, and a run
folder whose checkpoints are each complete or absent, which `--resume` continues once space is free.
"""
from __future__ import annotations

import errno
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import assert_one_line_error, cli, tiny_config_file
from workbench.errors import DiskFullError
from workbench.training import run_state
from workbench.training.files import is_disk_full


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    return tiny_config_file(tmp_path_factory.mktemp("cfg"), schedule__max_steps=15)


def _torch_save_on_a_full_disk(obj, path, *a, **k):
    # What torch.save does when the disk fills: a RuntimeError raised while handling the OSError.
    try:
        raise OSError(errno.ENOSPC, "No space left on device")
    except OSError:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")


def test_the_shapes_writers_give_a_full_disk_are_recognised(tmp_path):
    try:
        _torch_save_on_a_full_disk(None, None)
    except RuntimeError as e:
        assert is_disk_full(e, tmp_path)
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"), tmp_path)
    assert is_disk_full(Exception("Error while serializing: I/O error: No space left on device (os error 28)"),
                        tmp_path)
    assert not is_disk_full(RuntimeError("shape mismatch"), tmp_path)   # this disk has room
    assert not is_disk_full(ValueError("bad value"), tmp_path)


def test_full_disk_in_the_checkpoint_writer_is_one_line_and_resumes(config, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    real_save = torch.save
    calls = {"n": 0}

    def save(obj, path, *a, **k):   # the second checkpoint (step 10) finds the disk full
        calls["n"] += 1
        if calls["n"] == 2:
            _torch_save_on_a_full_disk(obj, path)
        return real_save(obj, path, *a, **k)
    monkeypatch.setattr(run_state.torch, "save", save)
    code, _, err = cli(capsys, "train", config, "--out", run, "--no-progress")
    assert_one_line_error(code, err, "disk full while training", "free space and run with --resume",
                          "continues from checkpoint step 5")
    assert sorted(run_state.list_checkpoints(run)) == [5]          # complete or absent: no step 10
    assert not list((run / "checkpoints").glob(".tmp-*"))           # its partial folder was removed
    monkeypatch.setattr(run_state.torch, "save", real_save)         # space freed
    code, _, err = cli(capsys, "train", config, "--out", run, "--no-progress", "--resume")
    assert code == 0, err
    assert sorted(run_state.list_checkpoints(run)) == [5, 10, 15]


def test_disk_full_error_is_a_user_error_with_the_resume_hint(config, tmp_path, monkeypatch):
    from workbench.training.config import TrainConfig
    from workbench.training.trainer import train
    monkeypatch.setattr(run_state.torch, "save", _torch_save_on_a_full_disk)
    with pytest.raises(DiskFullError, match="starts over"):     # no checkpoint was ever written
        train(TrainConfig.from_toml(config), tmp_path / "run", progress=False)


def _can_mount_a_small_disk() -> bool:
    if not shutil.which("unshare"):
        return False
    r = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"],
                       capture_output=True)
    return r.returncode == 0


@pytest.mark.skipif(not _can_mount_a_small_disk(),
                    reason="needs user namespaces (unshare -rm) to mount a small tmpfs without root")
def test_a_real_full_disk(config, tmp_path):
    """`workbench train` on a 1.2 MB tmpfs (in a private mount namespace): the disk fills at a
    checkpoint; then the same tmpfs grows to 20 MB (space freed) and --resume finishes the run."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    py = sys.executable
    script = f"""
mount -t tmpfs -o size=1200k tmpfs {mnt}
{py} -m workbench.cli train {config} --out {mnt}/run --no-progress --max-steps 60 --checkpoint-every 5 \
    >{tmp_path}/1.out 2>{tmp_path}/1.err
echo $? > {tmp_path}/1.rc
ls -A {mnt}/run/checkpoints > {tmp_path}/ckpts
{py} -c "import sys; from workbench import PhiModel; [PhiModel.from_pretrained(p) for p in sys.argv[1:]]" \
    {mnt}/run/checkpoints/step_* > {tmp_path}/load.err 2>&1
echo $? > {tmp_path}/load.rc
mount -o remount,size=20m {mnt}
{py} -m workbench.cli train {config} --out {mnt}/run --no-progress --max-steps 60 --checkpoint-every 5 \
    --resume >{tmp_path}/2.out 2>{tmp_path}/2.err
echo $? > {tmp_path}/2.rc
ls {mnt}/run/checkpoints > {tmp_path}/ckpts2
"""
    subprocess.run(["unshare", "-rm", "sh", "-c", script], check=True, timeout=600)
    read = lambda name: (tmp_path / name).read_text()   # noqa: E731
    err = read("1.err")
    assert read("1.rc").strip() == "1", err                   # not 0, not a segfault (139)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: disk full") and "--resume" in lines[0], err
    ckpts = read("ckpts").split()
    assert ckpts and all(c.startswith("step_") for c in ckpts)   # no .tmp- folder left
    assert read("load.rc").strip() == "0", read("load.err")      # each one loads
    assert read("2.rc").strip() == "0", read("2.err")
    assert "step_00000060" in read("ckpts2").split()
