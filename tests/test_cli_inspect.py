"""`workbench inspect`: what a store holds, and one clear line for files that are not stores."""
from __future__ import annotations

import h5py
import numpy as np

from helpers import assert_one_line_error, cli


def test_inspect_describes_a_cache_file(tiny_checkpoint, tmp_path, capsys):
    ids = np.random.default_rng(0).integers(0, 512, size=(20, 8))
    np.save(tmp_path / "ids.npy", ids)
    out = tmp_path / "a.h5"
    assert cli(capsys, "cache", tiny_checkpoint, "-i", tmp_path / "ids.npy", "-k", "blocks.*.hook_resid_post",
               "-k", "blocks.1.attn.hook_pattern", "-o", out, "--dtype", "bfloat16")[0] == 0
    code, stdout, err = cli(capsys, "inspect", out)
    assert code == 0, err
    assert "workbench-activations v1" in stdout
    assert "20 complete x 8 tokens" in stdout
    assert f"model        {tiny_checkpoint}" in stdout and "n_layers=2, d_model=160" in stdout
    assert "blocks.1.attn.hook_pattern  [2, 8, 8] bfloat16 (as uint16)" in stdout
    assert "blocks.0.hook_resid_post" in stdout and "on disk" in stdout
    assert "command      workbench cache" in stdout and "ids.npy" in stdout
    assert "tokenizer.json stored" in stdout


def test_inspect_rejects_non_stores(tmp_path, capsys):
    txt = tmp_path / "notes.h5"
    txt.write_text("hello\n")
    code, _, err = cli(capsys, "inspect", txt)
    assert_one_line_error(code, err, "not an HDF5 file")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = np.arange(3)
    code, _, err = cli(capsys, "inspect", tmp_path / "other.h5")
    assert_one_line_error(code, err, "not a workbench activation store")
    code, _, err = cli(capsys, "inspect", tmp_path / "missing.h5")
    assert_one_line_error(code, err, "no such file")


def test_inspect_describes_a_training_recording(tmp_path, capsys):
    import torch

    from workbench.store import RecordingWriter
    path = tmp_path / "activations.h5"
    attrs = {"run_name": "r", "model_config": {"n_layers": 2, "d_model": 32}, "probe_period": 6, "probe_repeats": 2,
             "probe_offset": 1, "probe_repeated_rows": 4, "probe_val_rows": 2, "probe_vocab_size": 64}
    with RecordingWriter(path, {"blocks.0.attn.hook_pattern": ((2, 8, 8), torch.float16)}, seq_len=8,
                         probe_tokens=torch.zeros(6, 8, dtype=torch.long), attrs=attrs) as w:
        for step in (0, 100, 200):
            w.append_step(step, {"blocks.0.attn.hook_pattern": torch.rand(6, 2, 8, 8)})
    code, stdout, err = cli(capsys, "inspect", path, "--verify")
    assert code == 0, err
    assert "recording    3 steps (0..200) x 6 probe rows x 8 tokens" in stdout
    assert "model        training run 'r'  (n_layers=2, d_model=32)" in stdout
    assert ("probe task   4 rows of a random block of 6 tokens repeated 2 times (offset 1, ids < 64) "
            "+ 2 validation rows") in stdout
    assert "blocks.0.attn.hook_pattern  [2, 8, 8] float16" in stdout
    assert "verified     3 steps match their checksums" in stdout
