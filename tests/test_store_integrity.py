"""Nothing silently wrong: one writer per file, exclusive creation, killed files checked before they are trusted."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from helpers import assert_one_line_error, cli, finish, start_cli, wait_for
from workbench.errors import DamagedFileError, FileConflictError
from workbench.store import ActivationStore, CacheJob, StoreWriter
from workbench.store.lock import lock_path

RESID = "blocks.*.hook_resid_post"
HOOKS = {"h": ((8, 32), torch.float16)}

# A writer in another process: it opens and closes the store file over and over (closing any
# descriptor of a file dropped the old fcntl lock), commits 12 rows, says so, then waits for its
# stdin to close.
_WRITER = """
import sys, torch
from workbench.store import StoreWriter
w = StoreWriter(sys.argv[1], {"h": ((8, 32), torch.float16)}, seq_len=8, flush_seconds=0)
for i in range(3):
    w.append(torch.zeros(4, 8, dtype=torch.long), {"h": torch.full((4, 8, 32), float(i))})
    w.flush()
    open(sys.argv[1], "rb").close()
print("READY", flush=True)
sys.stdin.read()
w.close()
"""


@pytest.fixture()
def writer_process(tmp_path):
    path = tmp_path / "held.h5"
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "READY"
    yield proc, path
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_a_second_writer_is_refused_naming_the_first(writer_process):
    proc, path = writer_process
    for mode in ("a", "w"):
        with pytest.raises(FileConflictError, match=f"is being written by process {proc.pid}; wait for it"):
            StoreWriter(path, HOOKS, seq_len=8, mode=mode)
    with ActivationStore.open(path) as s:       # readers are never blocked
        assert len(s) == 12 and s.state() == "being written"
    proc.stdin.close()
    assert proc.wait() == 0
    with StoreWriter(path, HOOKS, seq_len=8, mode="a") as w:   # free again once it is done
        assert w.n_rows == 12
    assert not lock_path(path).exists()


def test_a_killed_writer_leaves_no_stale_lock(writer_process):
    proc, path = writer_process
    proc.kill()
    proc.wait()
    with StoreWriter(path, HOOKS, seq_len=8, mode="a") as w:
        assert w.n_rows == 12
        w.append(torch.zeros(4, 8, dtype=torch.long), {"h": torch.full((4, 8, 32), 9.0)})
    with ActivationStore.open(path) as s:
        assert len(s) == 16 and s.verify() == 16 and float(s["h"][15, 0, 0]) == 9.0


def test_existing_file_is_never_replaced_without_asking(tmp_path):
    path = tmp_path / "keep.h5"
    path.write_bytes(b"precious")
    with pytest.raises(FileConflictError, match="already exists"):
        StoreWriter(path, HOOKS, seq_len=8, mode="w-")
    assert path.read_bytes() == b"precious"
    with StoreWriter(path, HOOKS, seq_len=8, mode="w") as w:    # asked: replaced once the new one is valid
        w.append(torch.zeros(1, 8, dtype=torch.long), {"h": torch.ones(1, 8, 32)})
    assert len(ActivationStore.open(path)) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.h5"]   # no temporary or lock file left


def test_an_output_created_after_the_checks_is_not_replaced(tiny_checkpoint, tmp_path):
    """The existence check and the creation are one step: a file that appears in between survives."""
    ids = tmp_path / "ids.npy"
    np.save(ids, np.zeros((4, 8), dtype=np.int64))
    out = tmp_path / "race.h5"
    job = CacheJob(tiny_checkpoint, ids, "hook_embed", out)
    out.write_bytes(b"someone else's")
    with pytest.raises(FileConflictError, match="already exists"):
        job.run()
    assert out.read_bytes() == b"someone else's"


_KILL_WHILE_CREATING = """
import os, signal, sys, torch
from workbench.store import writer_core as W
real = W._move_into_place
def move(tmp, path, replace):
    if sys.argv[2] == "after":
        real(tmp, path, replace)
    os.kill(os.getpid(), signal.SIGKILL)
W._move_into_place = move
from workbench.store import StoreWriter
StoreWriter(sys.argv[1], {"h": ((8, 32), torch.float16)}, seq_len=8, mode="w-")
"""


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_kill_while_creating_leaves_nothing_unresumable(tmp_path, when):
    path = tmp_path / "new.h5"
    proc = subprocess.run([sys.executable, "-c", _KILL_WHILE_CREATING, str(path), when])
    assert proc.returncode == -signal.SIGKILL
    if when == "before":       # killed before the file was valid: no file under its name
        assert not path.exists()
        mode = "w-"
    else:                      # killed after: a valid, empty store
        with ActivationStore.open(path) as s:
            assert len(s) == 0
        mode = "a"
    with StoreWriter(path, HOOKS, seq_len=8, mode=mode) as w:
        w.append(torch.zeros(2, 8, dtype=torch.long), {"h": torch.ones(2, 8, 32)})
    assert len(ActivationStore.open(path)) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.h5"]   # the stale temporary file is gone


@pytest.fixture(scope="module")
def killed_store(tiny_checkpoint, tmp_path_factory) -> Path:
    """A `workbench cache` output SIGKILLed after 48 committed rows (its writer never closed it)."""
    d = tmp_path_factory.mktemp("killed")
    ids = d / "ids.npy"
    np.save(ids, np.random.default_rng(2).integers(0, 512, size=(400, 16)))
    out = d / "killed.h5"
    proc = start_cli(["cache", tiny_checkpoint, "-i", ids, "-k", RESID, "-o", out, "--flush-seconds", 0], d,
                     block_after=6)
    assert wait_for(proc, "BLOCKED") == "BLOCKED 48"
    proc.kill()
    finish(proc)
    return out


def _copy(src: Path, dst: Path) -> Path:
    dst.write_bytes(src.read_bytes())
    return dst


def _open_in_child(path: Path) -> subprocess.CompletedProcess:
    """Open the store in another process; a hang (HDF5's SWMR retry loop) fails the test instead of blocking."""
    code = ("import sys\nfrom workbench.store import ActivationStore\n"
            "try:\n    s = ActivationStore.open(sys.argv[1]); print('OPENED', len(s))\n"
            "except Exception as e:\n    print(type(e).__name__, e)\n")
    return subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)


def test_a_truncated_killed_store_is_refused_not_padded(killed_store, tmp_path, capsys):
    cut = _copy(killed_store, tmp_path / "cut.h5")
    os.truncate(cut, cut.stat().st_size // 2)
    before = cut.read_bytes()
    with pytest.raises(DamagedFileError, match="truncated"):
        ActivationStore.open(cut)
    code, _, err = cli(capsys, "inspect", cut)
    assert_one_line_error(code, err, "truncated", "delete it")
    with pytest.raises(DamagedFileError, match="truncated"):
        StoreWriter(cut, {"blocks.0.hook_resid_post": ((16, 160), "float16"),
                          "blocks.1.hook_resid_post": ((16, 160), "float16")}, seq_len=16, mode="a",
                    meta={"source": "int64", "n_tokens": "int32"})
    assert cut.read_bytes() == before                 # refused without changing a byte


@pytest.mark.parametrize("offset", [30, 100, 600])   # superblock, root object header, an attribute
def test_a_damaged_byte_fails_at_once_instead_of_hanging(killed_store, tmp_path, offset):
    bad = _copy(killed_store, tmp_path / "bad.h5")
    raw = bytearray(bad.read_bytes())
    raw[offset] ^= 0xFF
    bad.write_bytes(bytes(raw))
    res = _open_in_child(bad)
    assert res.stdout.startswith("DamagedFileError") and "damaged" in res.stdout, res.stdout + res.stderr


def test_damaged_rows_fail_their_checksum(killed_store, tmp_path, capsys):
    bad = _copy(killed_store, tmp_path / "rows.h5")
    with h5py.File(_copy(killed_store, tmp_path / "probe.h5"), "r", swmr=True, locking=False) as f:
        info = f["hooks/blocks.1.hook_resid_post"].id.get_chunk_info(0)
    with open(bad, "r+b") as fh:        # one byte inside row 3 of a committed chunk
        fh.seek(info.byte_offset + 3 * 16 * 160 * 2 + 11)
        b = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([b[0] ^ 0x01]))
    with ActivationStore.open(bad) as s:    # lengths are fine: opening is quick and does not read rows
        assert len(s) == 48
        with pytest.raises(DamagedFileError, match="entries 0 to 7 do not match the checksum"):
            s.verify()
    code, _, err = cli(capsys, "inspect", bad, "--verify")
    assert_one_line_error(code, err, "do not match the checksum")
    with pytest.raises(DamagedFileError, match="do not match the checksum"):   # --resume checks every commit
        StoreWriter(bad, {"blocks.0.hook_resid_post": ((16, 160), "float16"),
                          "blocks.1.hook_resid_post": ((16, 160), "float16")}, seq_len=16, mode="a",
                    meta={"source": "int64", "n_tokens": "int32"})
