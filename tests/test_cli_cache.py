"""`workbench cache`: inputs, hooks, the plan and summary, refusals, SIGKILL/Ctrl-C and --resume."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import TEXT, assert_one_line_error, cli
from workbench.store import ActivationStore

RESID = "blocks.*.hook_resid_post"


@pytest.fixture(scope="module")
def docs(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("in") / "docs.txt"
    p.write_text("\n".join(ln for ln in TEXT.splitlines()[:40] if ln.strip()) + "\n")
    return p


def stores_equal(a: Path, b: Path) -> None:
    with ActivationStore.open(a) as x, ActivationStore.open(b) as y:
        assert len(x) == len(y) and x.hooks == y.hooks
        assert torch.equal(x.tokens[:], y.tokens[:])
        for h in x.hooks:
            assert torch.equal(x[h][:], y[h][:]), h
        for m in x.meta_columns:
            assert np.array_equal(x.meta(m), y.meta(m))


def test_cache_text_matches_run_with_cache(tiny_checkpoint, tiny_model, docs, tmp_path, capsys):
    out = tmp_path / "acts.h5"
    code, stdout, err = cli(capsys, "cache", tiny_checkpoint, "--input", docs, "--hooks", RESID,
                            "--hooks", "blocks.0.attn.hook_pattern", "--out", out, "--seq-len", 16,
                            "--batch-size", 4, "--dtype", "float32")
    assert code == 0, err
    with ActivationStore.open(out) as s:
        n = len(s)
        assert "rows x 16 tokens (packed)" in stdout and f"{n:,} rows" in stdout
        assert "hooks   3:" in stdout and "output" in stdout and "about" in stdout   # the plan
        assert "done:" in stdout and "tokens/s" in stdout and "MB/s" in stdout          # the summary
        assert set(s.hooks) == {"blocks.0.hook_resid_post", "blocks.1.hook_resid_post",
                                "blocks.0.attn.hook_pattern"}
        toks = s.tokens[:]
        # packing: documents joined by <|endoftext|>, exactly as the tokenizer encodes them
        tok = tiny_model.tokenizer
        lines = [ln for ln in docs.read_text().splitlines() if ln]
        stream = [i for ln in lines for i in tok.encode(ln) + [tok.bos_token_id]]
        assert toks.reshape(-1).tolist() == stream[: n * 16]
        with torch.no_grad():
            _, ref = tiny_model.run_with_cache(toks, names_filter=list(s.hooks))
        for h in s.hooks:
            torch.testing.assert_close(s[h][:], ref[h], rtol=0, atol=1e-5)
        assert s.attrs["model_source"] == str(tiny_checkpoint)
        assert s.attrs["model_config"]["d_model"] == 160
        assert json.loads(s.attrs["tokenizer"])["model"]["type"] == "BPE"
        assert s.attrs["input"]["kind"] == "text" and s.attrs["arguments"]["seq_len"] == 16
        assert s.meta("source")[0] == 1 and (s.meta("n_tokens") == 16).all()


def test_jsonl_truncate_and_npy_inputs(tiny_checkpoint, tiny_model, tmp_path, capsys):
    jl = tmp_path / "d.jsonl"
    jl.write_text("\n".join(json.dumps({"body": t, "id": i}) for i, t in
                            enumerate(["def f(x):", "return x + 1", "class A: pass"])) + "\n\n")
    out = tmp_path / "j.h5"
    code, _, err = cli(capsys, "cache", tiny_checkpoint, "-i", jl, "-k", "blocks.1.hook_resid_post", "-o", out,
                       "--seq-len", 6, "--truncate", "--text-field", "body", "--dtype", "bfloat16")
    assert code == 0, err
    with ActivationStore.open(out) as s:
        assert len(s) == 3 and s.meta("source").tolist() == [1, 2, 3]
        n0 = len(tiny_model.tokenizer.encode("def f(x):"))
        assert s.meta("n_tokens")[0] == min(n0, 6)
        assert s.tokens[0][: min(n0, 6)].tolist() == tiny_model.tokenizer.encode("def f(x):")[:6]
        assert s["blocks.1.hook_resid_post"][:].dtype == torch.bfloat16
    ids = np.random.default_rng(0).integers(0, 512, size=(10, 12))
    np.save(tmp_path / "ids.npy", ids)
    code, _, err = cli(capsys, "cache", tiny_checkpoint, "-i", tmp_path / "ids.npy", "-k", "hook_embed",
                       "-o", tmp_path / "n.h5", "--max-rows", 7)
    assert code == 0, err
    with ActivationStore.open(tmp_path / "n.h5") as s:
        assert len(s) == 7 and s.seq_len == 12 and torch.equal(s.tokens[:], torch.from_numpy(ids[:7]))
        assert s["hook_embed"][:].dtype == torch.float16
    np.save(tmp_path / "stream.npy", ids.reshape(-1))        # a 1-D stream is packed into rows
    code, _, err = cli(capsys, "cache", tiny_checkpoint, "-i", tmp_path / "stream.npy", "-k", "hook_embed",
                       "-o", tmp_path / "s.h5", "--seq-len", 50)
    assert code == 0, err
    with ActivationStore.open(tmp_path / "s.h5") as s:
        assert len(s) == 2 and s.tokens[1].tolist() == ids.reshape(-1)[50:100].tolist()


def test_existing_out_is_refused_and_untouched(tiny_checkpoint, docs, tmp_path, capsys):
    out = tmp_path / "keep.h5"
    out.write_bytes(b"precious")
    code, _, err = cli(capsys, "cache", tiny_checkpoint, "-i", docs, "-k", RESID, "-o", out)
    assert_one_line_error(code, err, "already exists", "--resume", "--overwrite")
    assert out.read_bytes() == b"precious"
    code, _, err = cli(capsys, "cache", tiny_checkpoint, "-i", docs, "-k", RESID, "-o", out, "--overwrite",
                       "--seq-len", 16, "--max-rows", 4)
    assert code == 0, err
    assert len(ActivationStore.open(out)) == 4


def test_resume_refuses_a_different_model_hooks_or_input(tiny_checkpoint, docs, tmp_path, capsys):
    from helpers import make_hf_phi, save_checkpoint
    out = tmp_path / "r.h5"
    base = ["cache", tiny_checkpoint, "-i", docs, "-o", out, "--seq-len", 16, "--max-rows", 8]
    assert cli(capsys, *base, "-k", RESID)[0] == 0
    code, _, err = cli(capsys, *base, "-k", "blocks.0.hook_resid_post", "--resume")
    assert_one_line_error(code, err, "--resume refused", "the hooks differ")
    other = tmp_path / "other.txt"
    other.write_text("something else entirely\n" * 30)
    code, _, err = cli(capsys, "cache", tiny_checkpoint, "-i", other, "-o", out, "--seq-len", 16,
                       "--max-rows", 8, "-k", RESID, "--resume")
    assert_one_line_error(code, err, "the input differs", "sha256")
    ckpt2 = save_checkpoint(make_hf_phi(seed=1), tmp_path / "ckpt2")
    code, _, err = cli(capsys, "cache", ckpt2, "-i", docs, "-o", out, "--seq-len", 16, "--max-rows", 8,
                       "-k", RESID, "--resume")
    assert_one_line_error(code, err, "the model differs")
    code, stdout, err = cli(capsys, *base, "-k", RESID, "--resume")   # same command: nothing left to do
    assert code == 0 and "nothing to do" in stdout


def test_bad_input_gives_one_clear_line(tiny_checkpoint, docs, tmp_path, capsys):
    out = tmp_path / "x.h5"
    code, _, err = cli(capsys, "cache", tiny_checkpoint, "-i", docs, "-k", "blocks.*.hook_reid_post", "-o", out)
    assert_one_line_error(code, err, "closest valid names", "hook_resid_post")
    code, _, err = cli(capsys, "cache", tiny_checkpoint, "-i", tmp_path / "nope.txt", "-k", RESID, "-o", out)
    assert_one_line_error(code, err, "input file not found")
    (tmp_path / "empty.txt").write_text("")
    code, _, err = cli(capsys, "cache", tiny_checkpoint, "-i", tmp_path / "empty.txt", "-k", RESID, "-o", out)
    assert_one_line_error(code, err, "is empty")
    np.save(tmp_path / "oov.npy", np.array([[1, 2, 3, 9999]]))
    code, _, err = cli(capsys, "cache", tiny_checkpoint, "-i", tmp_path / "oov.npy", "-k", RESID, "-o", out)
    assert_one_line_error(code, err, "token id 9999", "vocabulary [0, 512)")
    code, _, err = cli(capsys, "cache", tiny_checkpoint, "-i", docs, "-k", RESID, "-o", out, "--seq-len", 100000)
    assert_one_line_error(code, err, "exceeds the model's context of 256")
    (tmp_path / "short.txt").write_text("x = 1\n")
    code, _, err = cli(capsys, "cache", tiny_checkpoint, "-i", tmp_path / "short.txt", "-k", RESID, "-o", out,
                       "--seq-len", 200)
    assert_one_line_error(code, err, "yields no rows", "--truncate")
    jl = tmp_path / "d.jsonl"
    jl.write_text('{"content": "x"}\n')
    code, _, err = cli(capsys, "cache", tiny_checkpoint, "-i", jl, "-k", RESID, "-o", out)
    assert_one_line_error(code, err, "no 'text' field", "--text-field")
    assert not out.exists()


def test_refuses_when_the_disk_lacks_room(tiny_checkpoint, docs, tmp_path, capsys, monkeypatch):
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=10_000))
    code, _, err = cli(capsys, "cache", tiny_checkpoint, "-i", docs, "-k", RESID, "-o", tmp_path / "x.h5")
    assert_one_line_error(code, err, "not enough disk space", "--max-rows")
    assert not (tmp_path / "x.h5").exists()


# A `workbench cache` slowed by 50 ms per batch, so a signal reliably lands mid-run.
_SLOW_CLI = """
import sys, time
from workbench.store.writer import StoreWriter
append = StoreWriter.append
def slow(self, *a, **k):
    time.sleep(0.05)
    return append(self, *a, **k)
StoreWriter.append = slow
from workbench.cli import main
sys.argv = ["workbench", *sys.argv[1:]]
main()
"""


def _start_and_signal(args, out: Path, sig: int, min_rows: int) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_CLI, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    deadline, n = time.monotonic() + 60, 0
    while n < min_rows and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
        try:
            with ActivationStore.open(out) as s:
                n = len(s)
        except (ValueError, OSError):
            pass   # not created yet
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


@pytest.fixture(scope="module")
def ids_npy(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("ids") / "ids.npy"
    np.save(p, np.random.default_rng(1).integers(0, 512, size=(160, 16)))
    return p


def test_sigkill_then_resume_equals_an_uninterrupted_run(tiny_checkpoint, ids_npy, tmp_path, capsys):
    args = ["cache", tiny_checkpoint, "-i", ids_npy, "-k", RESID, "-k", "blocks.1.attn.hook_pattern",
            "--batch-size", 8, "--dtype", "bfloat16", "--flush-seconds", 0]
    killed = tmp_path / "killed.h5"
    res = _start_and_signal([*args, "-o", killed], killed, signal.SIGKILL, min_rows=40)
    assert res.returncode == -signal.SIGKILL
    with ActivationStore.open(killed) as s:      # readable, with the rows of the last flush
        n = len(s)
        assert 40 <= n < 160 and n % 8 == 0
    code, stdout, _ = cli(capsys, "inspect", killed)
    assert code == 0 and f"{n:,} complete" in stdout and "killed before closing" in stdout
    code, stdout, err = cli(capsys, *args, "-o", killed, "--resume")
    assert code == 0, err
    assert f"{n:,} rows already there, resuming" in stdout
    whole = tmp_path / "whole.h5"
    assert cli(capsys, *args, "-o", whole)[0] == 0
    stores_equal(killed, whole)
    if shutil.which("h5ls"):   # and the standard tools read the resumed file
        ls = subprocess.run(["h5ls", "-r", str(killed)], capture_output=True, text=True)
        assert ls.returncode == 0 and "Dataset {160/Inf, 16, 160}" in ls.stdout


def test_ctrl_c_saves_what_was_done(tiny_checkpoint, ids_npy, tmp_path):
    out = tmp_path / "int.h5"
    res = _start_and_signal(["cache", tiny_checkpoint, "-i", ids_npy, "-k", RESID, "-o", out,
                             "--flush-seconds", 0], out, signal.SIGINT, min_rows=24)
    assert res.returncode == 130, res.stderr
    assert "interrupted" in res.stderr and "--resume" in res.stderr and "Traceback" not in res.stderr
    with ActivationStore.open(out) as s:
        assert 24 <= len(s) < 160
        assert torch.equal(s.tokens[:], torch.from_numpy(np.load(ids_npy)[: len(s)]))


def test_model_can_be_a_training_run_folder(tiny_checkpoint, ids_npy, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_checkpoint, run / "checkpoints" / "step_00000010")
    out = tmp_path / "run.h5"
    code, stdout, err = cli(capsys, "cache", run, "-i", ids_npy, "-k", "resid_post1", "-o", out, "--max-rows", 4)
    assert code == 0, err
    with ActivationStore.open(out) as s:
        assert list(s.hooks) == ["blocks.1.hook_resid_post"] and len(s) == 4
