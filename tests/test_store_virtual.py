"""Per-rank files joined by an HDF5 virtual dataset; standard HDF5 tools read the files."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import torch

from workbench.store import ActivationStore, StoreWriter, join_stores

H = "blocks.0.hook_resid_post"


def _rank_file(path, start, n, meta=True):
    hooks = {H: ((4, 8), torch.bfloat16)}
    with StoreWriter(path, hooks, seq_len=4, meta={"row": "int64"} if meta else None) as w:
        rows = torch.arange(start, start + n)
        w.append(rows[:, None].expand(n, 4), {H: rows.bfloat16()[:, None, None].expand(n, 4, 8)},
                 **({"meta": {"row": rows.numpy()}} if meta else {}))


def test_join_two_rank_files(tmp_path):
    _rank_file(tmp_path / "rank0.h5", 0, 70)
    _rank_file(tmp_path / "rank1.h5", 70, 30)
    out = join_stores([tmp_path / "rank0.h5", tmp_path / "rank1.h5"], tmp_path / "all.h5")
    here = os.getcwd()
    os.chdir("/")   # the sources are found relative to the joined file, not the working directory
    try:
        with ActivationStore.open(out) as s:
            assert len(s) == 100
            assert torch.equal(s.tokens[:, 0], torch.arange(100))
            assert torch.equal(s[H][:, 0, 0], torch.arange(100).bfloat16())
            assert torch.equal(s[H][[99, 3, 70]][:, 0, 0], torch.tensor([99, 3, 70]).bfloat16())
            assert s.meta("row").tolist() == list(range(100))
    finally:
        os.chdir(here)


def test_join_refuses_mismatched_files(tmp_path):
    _rank_file(tmp_path / "a.h5", 0, 5)
    _rank_file(tmp_path / "b.h5", 5, 5, meta=False)
    with pytest.raises(ValueError, match="meta_columns differ"):
        join_stores([tmp_path / "a.h5", tmp_path / "b.h5"], tmp_path / "all.h5")


@pytest.mark.skipif(shutil.which("h5dump") is None, reason="needs Debian's hdf5-tools (CI installs them)")
def test_h5ls_and_h5dump_read_store_and_joined_files(tmp_path):
    _rank_file(tmp_path / "rank0.h5", 0, 7)
    _rank_file(tmp_path / "rank1.h5", 7, 3)
    join_stores([tmp_path / "rank0.h5", tmp_path / "rank1.h5"], tmp_path / "all.h5")
    ls = subprocess.run(["h5ls", "-r", str(tmp_path / "rank0.h5")], capture_output=True, text=True)
    assert ls.returncode == 0, ls.stderr
    assert f"/hooks/{H}" in ls.stdout and "Dataset {7/Inf, 4, 8}" in ls.stdout
    head = subprocess.run(["h5dump", "-H", str(tmp_path / "rank0.h5")], capture_output=True, text=True)
    assert head.returncode == 0 and 'ATTRIBUTE "n_rows"' in head.stdout and "H5T_STD_U16LE" in head.stdout
    # the values themselves, through the virtual dataset: tokens column 0 is the row number
    data = subprocess.run(["h5dump", "-d", "/tokens", "-s", "0,0", "-c", "10,1", str(tmp_path / "all.h5")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert data.returncode == 0, data.stderr
    body = data.stdout.split("DATA {")[1]
    values = [int(v.split(":")[-1]) for v in body.replace("}", "").replace("\n", ",").split(",")
              if ":" in v]
    assert values == list(range(10))
