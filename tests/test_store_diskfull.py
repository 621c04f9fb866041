"""A full disk stops `workbench cache` with one line and a non-zero exit; the count names only rows on disk;
freeing space and --resume finishes a file equal to an uninterrupted run.

Two ways to fill a disk: a file-size limit (``RLIMIT_FSIZE``: writes past it fail with EFBIG, no
privileges needed, always runs) and a real tmpfs (ENOSPC), mounted in a user namespace with
``unshare`` where the system allows one, that another writer fills while the cache runs.
"""
from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import _CLI_CHILD, cli
from workbench.store import ActivationStore, CacheJob

RESID = "blocks.*.hook_resid_post"
LIMIT = 3_000_000   # bytes: the first 204-row chunks of both hooks fit, the next ones do not


@pytest.fixture(scope="module")
def setup(tiny_checkpoint, tmp_path_factory):
    """``(args without -o, reference store of the whole input)``."""
    d = tmp_path_factory.mktemp("full")
    ids = d / "ids.npy"
    np.save(ids, np.random.default_rng(3).integers(0, 512, size=(480, 16)))
    args = ["cache", tiny_checkpoint, "-i", ids, "-k", RESID, "--flush-seconds", 0]
    ref = d / "whole.h5"
    CacheJob(tiny_checkpoint, ids, RESID, ref, flush_seconds=0).run()   # in this process: no start-up cost
    return args, ref


def _python() -> str:
    import sys
    return sys.executable


def _limit_file_size() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)      # EFBIG from write() instead of a fatal signal
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))


def _check_full_then_resume(first: subprocess.CompletedProcess, out_after_full: Path, ref: Path) -> int:
    assert first.returncode == 1, first.stderr[-3000:]                       # not 0, not a segfault
    err = [ln for ln in first.stderr.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "is full:" in err[0] and "free space and run the same command with --resume" \
        in err[0], first.stderr[-3000:]
    assert "Traceback" not in first.stderr
    saved = int(err[0].split("is full: ")[1].split(" rows")[0].replace(",", ""))
    with ActivationStore.open(out_after_full) as s, ActivationStore.open(ref) as whole:
        assert len(s) == saved and 0 < saved < 480 and saved % 8 == 0
        for h in s.hooks:              # the rows it claims are the real ones, not zeros
            assert torch.equal(s[h][:], whole[h][:saved]), h
        assert s.verify() == saved
    return saved


def test_disk_full_by_file_size_limit(setup, tmp_path, capsys):
    args, ref = setup
    out = tmp_path / "a.h5"
    first = subprocess.run([_python(), "-c", _CLI_CHILD, *map(str, args), "-o", str(out)], capture_output=True,
                           text=True, preexec_fn=_limit_file_size)
    _check_full_then_resume(first, out, ref)
    code, stdout, err = cli(capsys, *args, "-o", out, "--resume")     # "space freed": no limit in this process
    assert code == 0, err
    with ActivationStore.open(out) as s, ActivationStore.open(ref) as whole:
        assert len(s) == 480 and all(torch.equal(s[h][:], whole[h][:]) for h in s.hooks)


_IN_NAMESPACE = """
set -u
mount -t tmpfs -o size=32m tmpfs "$MNT" || exit 77
WB_TEST_FILL_AFTER=5 "$PY" -c "$CHILD" "$@" -o "$MNT/a.h5" > "$OUT/first.out" 2> "$OUT/first.err"
echo $? > "$OUT/first.rc"
cp "$MNT/a.h5" "$OUT/after_full.h5"
rm "$MNT/filler"                                      # free space
"$PY" -c "$CHILD" "$@" -o "$MNT/a.h5" --resume > "$OUT/second.out" 2> "$OUT/second.err"; echo $? > "$OUT/second.rc"
cp "$MNT/a.h5" "$OUT/resumed.h5"
"""


def test_disk_full_on_a_real_small_filesystem(setup, tmp_path):
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1): the file-size-limit test covers the same path")
    args, ref = setup
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    env = {**os.environ, "MNT": str(mnt), "OUT": str(tmp_path), "PY": _python(), "CHILD": _CLI_CHILD}
    res = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "bash", "-c", _IN_NAMESPACE, "x",
                          *map(str, args)], env=env, capture_output=True, text=True)
    if res.returncode == 77 or "unshare failed" in res.stderr:
        pytest.skip(f"this system allows no tmpfs in a user namespace ({res.stderr.strip()[:200]}): "
                    "the file-size-limit test covers the same path")
    assert res.returncode == 0, res.stderr
    first = subprocess.CompletedProcess([], int((tmp_path / "first.rc").read_text()),
                                        (tmp_path / "first.out").read_text(), (tmp_path / "first.err").read_text())
    _check_full_then_resume(first, tmp_path / "after_full.h5", ref)
    assert (tmp_path / "second.rc").read_text().strip() == "0", (tmp_path / "second.err").read_text()[-3000:]
    with ActivationStore.open(tmp_path / "resumed.h5") as s, ActivationStore.open(ref) as whole:
        assert len(s) == 480 and all(torch.equal(s[h][:], whole[h][:]) for h in s.hooks)
