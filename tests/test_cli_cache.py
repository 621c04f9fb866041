"""`workbench cache`: inputs, hooks, the plan and summary, refusals, SIGKILL/Ctrl-C and --resume."""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import TEXT, assert_one_line_error, cli, finish, start_cli, wait_for
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
        assert "rows x 16 tokens (one document per line, packed)" in stdout and f"{n:,} rows" in stdout
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
    assert_one_line_error(code, err, "input not found")
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


@pytest.fixture(scope="module")
def ids_npy(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("ids") / "ids.npy"
    np.save(p, np.random.default_rng(1).integers(0, 512, size=(160, 16)))
    return p


def test_sigkill_then_resume_equals_an_uninterrupted_run(tiny_checkpoint, ids_npy, tmp_path, capsys):
    args = ["cache", tiny_checkpoint, "-i", ids_npy, "-k", RESID, "-k", "blocks.1.attn.hook_pattern",
            "--batch-size", 8, "--dtype", "bfloat16", "--flush-seconds", 0]
    killed = tmp_path / "killed.h5"
    proc = start_cli([*args, "-o", killed], tmp_path, block_after=5)
    assert wait_for(proc, "BLOCKED") == "BLOCKED 40"
    proc.kill()
    assert finish(proc)[0] == -signal.SIGKILL
    with ActivationStore.open(killed) as s:      # readable, with the rows of the last commit
        assert len(s) == 40
    code, stdout, _ = cli(capsys, "inspect", killed)
    assert code == 0 and "40 complete" in stdout and "left open by a writer that stopped" in stdout
    code, stdout, err = cli(capsys, *args, "-o", killed, "--resume")
    assert code == 0, err
    assert "40 rows already there, resuming" in stdout
    whole = tmp_path / "whole.h5"
    assert cli(capsys, *args, "-o", whole)[0] == 0
    stores_equal(killed, whole)
    code, stdout, _ = cli(capsys, "inspect", killed, "--verify")
    assert code == 0 and "verified     160 rows match their checksums" in stdout and "state" not in stdout
    if shutil.which("h5ls"):   # and the standard tools read the resumed file
        ls = subprocess.run(["h5ls", "-r", str(killed)], capture_output=True, text=True)
        assert ls.returncode == 0 and "Dataset {160/Inf, 16, 160}" in ls.stdout


@pytest.mark.parametrize("sig, code, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_ctrl_c_and_sigterm_save_what_was_done(tiny_checkpoint, ids_npy, tmp_path, sig, code, word):
    """The run is blocked mid-way when the signal comes, so it cannot finish first."""
    out = tmp_path / "int.h5"
    proc = start_cli(["cache", tiny_checkpoint, "-i", ids_npy, "-k", RESID, "-o", out], tmp_path, block_after=3)
    assert wait_for(proc, "BLOCKED") == "BLOCKED 24"
    proc.send_signal(sig)
    rc, _, err = finish(proc)
    assert rc == code, err
    assert "interrupted: 24 of 160 rows saved" in err and "--resume" in err and word in err
    assert "Traceback" not in err
    with ActivationStore.open(out) as s:
        assert len(s) == 24 and s.state() is None          # closed cleanly
        assert torch.equal(s.tokens[:], torch.from_numpy(np.load(ids_npy)[:24]))


def test_a_second_ctrl_c_while_closing_keeps_the_file_and_the_line(tiny_checkpoint, ids_npy, tmp_path):
    out = tmp_path / "twice.h5"
    proc = start_cli(["cache", tiny_checkpoint, "-i", ids_npy, "-k", RESID, "-o", out], tmp_path,
                     block_after=2, slow_close=True)
    wait_for(proc, "BLOCKED")
    proc.send_signal(signal.SIGINT)
    wait_for(proc, "CLOSING")              # the writer is closing the file now
    proc.send_signal(signal.SIGINT)        # held back until the file is closed
    proc.send_signal(signal.SIGTERM)
    proc.stdin.write("go on\n")
    proc.stdin.flush()
    rc, _, err = finish(proc)
    assert rc in (130, 143), err
    assert "interrupted: 16 of 160 rows saved" in err and "Traceback" not in err
    with ActivationStore.open(out) as s:
        assert len(s) == 16 and s.state() is None


def test_two_runs_on_one_output_the_second_is_refused_naming_the_first(tiny_checkpoint, ids_npy, tmp_path, capsys):
    out = tmp_path / "one.h5"
    args = ["cache", tiny_checkpoint, "-i", ids_npy, "-k", RESID, "-o", out]
    first = start_cli(args, tmp_path, block_after=2)
    wait_for(first, "BLOCKED")
    for extra in ([], ["--resume"], ["--overwrite"]):
        code, _, err = cli(capsys, *args, *extra)
        assert_one_line_error(code, err, f"is being written by process {first.pid}", "wait for it")
    first.send_signal(signal.SIGINT)
    assert finish(first)[0] == 130
    code, stdout, err = cli(capsys, *args, "--resume")      # once it is gone, resuming works
    assert code == 0, err
    with ActivationStore.open(out) as s:
        assert len(s) == 160


def test_model_can_be_a_training_run_folder(tiny_checkpoint, ids_npy, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_checkpoint, run / "checkpoints" / "step_00000010")
    out = tmp_path / "run.h5"
    code, stdout, err = cli(capsys, "cache", run, "-i", ids_npy, "-k", "resid_post1", "-o", out, "--max-rows", 4)
    assert code == 0, err
    with ActivationStore.open(out) as s:
        assert list(s.hooks) == ["blocks.1.hook_resid_post"] and len(s) == 4


def test_more_bad_input_is_one_clear_line(tiny_checkpoint, ids_npy, docs, tmp_path, capsys):
    out = tmp_path / "x.h5"
    base = ["cache", tiny_checkpoint, "-i", ids_npy, "-k", RESID]
    cases = [
        (["--device", "bogus"], ["--device 'bogus' is not a device", "cpu, cuda"]),
        (["--device", "cuda"], ["sees no CUDA GPU", "--device cpu"]),
        (["--queue-mb", "0"], ["--queue-mb must be at least 1"]),
        (["--flush-seconds", "-1"], ["--flush-seconds must be 0"]),
        (["--model-dtype", "bogus"], ["--model-dtype must be one of", "bfloat16"]),
        (["--dtype", "int8"], ["--dtype must be one of", "float16"]),
        (["--max-rows", "0"], ["--max-rows must be at least 1"]),
        (["--threads", "0"], ["--threads must be at least 1"]),
        (["--documents", "file"], ["--documents applies to text inputs"]),
    ]
    if torch.cuda.is_available():
        cases = [c for c in cases if c[0] != ["--device", "cuda"]]
    for extra, needles in cases:
        code, _, err = cli(capsys, *base, "-o", out, *extra)
        assert_one_line_error(code, err, *needles)
    folder = tmp_path / "outdir"
    folder.mkdir()
    code, _, err = cli(capsys, *base, "-o", folder)
    assert_one_line_error(code, err, "is a folder; pass a file name such as")
    np.save(tmp_path / "big.npy", np.array([[1, 2, 2**64 - 1]], dtype=np.uint64))
    code, _, err = cli(capsys, "cache", tiny_checkpoint, "-i", tmp_path / "big.npy", "-k", RESID, "-o", out)
    assert_one_line_error(code, err, "token id 18446744073709551615", "vocabulary [0, 512)")
    (tmp_path / "blob.txt").write_bytes(b"\x7fELF\x02\x01\x00\x00" + bytes(range(256)) * 4)
    code, _, err = cli(capsys, "cache", tiny_checkpoint, "-i", tmp_path / "blob.txt", "-k", RESID, "-o", out)
    assert_one_line_error(code, err, "blob.txt looks binary")
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"text": broken\n')
    code, _, err = cli(capsys, "cache", tiny_checkpoint, "-i", tmp_path / "bad.jsonl", "-k", RESID, "-o", out)
    assert_one_line_error(code, err, "bad.jsonl line 2 is not valid JSON")
    code, _, err = cli(capsys, "cache", tiny_checkpoint, "-i", docs, "-k", "blocks.0.hook_reid_post", "-o", out)
    assert_one_line_error(code, err, "closest valid names", f"workbench hooks {tiny_checkpoint}")
    assert "hook_dict" not in err
    assert not out.exists() and not list(tmp_path.glob(".x.h5*"))   # no lock or temporary file left


def test_disk_check_margin_is_proportional_and_read_only_is_said(tiny_checkpoint, ids_npy, tmp_path, capsys,
                                                                  monkeypatch):
    import os as os_mod

    from workbench.store import cache_job
    job = cache_job.CacheJob(tiny_checkpoint, ids_npy, RESID, tmp_path / "probe.h5")
    need = job.plan.estimate_bytes
    job.close()
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=int(need * 1.06) + (256 << 10)))
    code, _, err = cli(capsys, "cache", tiny_checkpoint, "-i", ids_npy, "-k", RESID, "-o", tmp_path / "fits.h5")
    assert code == 0, err                       # a small output that fits is not refused for a fixed margin
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=need))
    code, _, err = cli(capsys, "cache", tiny_checkpoint, "-i", ids_npy, "-k", RESID, "-o", tmp_path / "no.h5")
    assert_one_line_error(code, err, "not enough disk space")
    monkeypatch.setattr(shutil, "disk_usage", real)
    real_statvfs = os_mod.statvfs

    class ReadOnly:
        def __init__(self, st):
            self.st = st

        def __getattr__(self, k):
            return os_mod.ST_RDONLY if k == "f_flag" else getattr(self.st, k)
    monkeypatch.setattr(cache_job.os, "statvfs", lambda p: ReadOnly(real_statvfs(p)))
    code, _, err = cli(capsys, "cache", tiny_checkpoint, "-i", ids_npy, "-k", RESID, "-o", tmp_path / "ro.h5")
    assert_one_line_error(code, err, "is on a read-only filesystem")


def test_plan_wording_one_hook_and_rows_as_they_are(tiny_checkpoint, ids_npy, tmp_path, capsys):
    code, stdout, err = cli(capsys, "cache", tiny_checkpoint, "-i", ids_npy, "-k", "blocks.0.hook_resid_post",
                            "-o", tmp_path / "one.h5", "--max-rows", 8)
    assert code == 0, err
    assert "8 rows x 16 tokens (token ids, one row each)" in stdout and "packed" not in stdout
    assert "of 1 hook in" in stdout and "1 hooks" not in stdout
    code, stdout, err = cli(capsys, "inspect", tmp_path / "one.h5")
    assert "(npy, rows as they are, sha256" in stdout and "packed" not in stdout


def test_default_seq_len_never_exceeds_the_context(tmp_path, docs, capsys):
    from helpers import make_hf_phi, save_checkpoint
    ckpt = save_checkpoint(make_hf_phi(n_ctx=64), tmp_path / "ctx64")
    code, stdout, err = cli(capsys, "cache", ckpt, "-i", docs, "-k", RESID, "-o", tmp_path / "c.h5")
    assert code == 0, err
    assert "x 64 tokens" in stdout
    assert ActivationStore.open(tmp_path / "c.h5").seq_len == 64


def test_help_is_not_cut_off(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    code, stdout, _ = cli(capsys, "cache", "--help")
    assert code == 0 and "…" not in stdout
    assert "workbench hooks" in stdout and "(resid_post3)" in stdout


def test_final_layernorm_and_split_input_hooks(tiny_checkpoint, tiny_model, ids_npy, tmp_path, capsys):
    """ln_final hooks can be cached; a split input named exactly is switched on for the run (and the plan
    says so), while a glob leaves switched-off split inputs out instead of failing."""
    out = tmp_path / "split.h5"
    code, stdout, err = cli(capsys, "cache", tiny_checkpoint, "-i", ids_npy, "-k", "ln_final.hook_scale",
                            "-k", "ln_final.hook_normalized", "-k", "blocks.0.hook_k_input", "-k", "blocks.1.hook_mlp_in",
                            "-o", out, "--max-rows", 6, "--dtype", "float32")
    assert code == 0, err
    assert "model.set_use_hook_mlp_in(True), model.set_use_split_qkv_input(True)" in stdout
    toks = torch.from_numpy(np.load(ids_npy)[:6])
    names = ["ln_final.hook_scale", "ln_final.hook_normalized", "blocks.0.hook_k_input", "blocks.1.hook_mlp_in"]
    tiny_model.set_use_split_qkv_input(True)
    tiny_model.set_use_hook_mlp_in(True)
    with torch.no_grad():
        _, ref = tiny_model.run_with_cache(toks, names_filter=names)
    with ActivationStore.open(out) as s:
        assert s.hooks["blocks.0.hook_k_input"][0] == (16, 2, 160) and s.hooks["ln_final.hook_scale"][0] == (16, 1)
        for h in names:
            torch.testing.assert_close(s[h][:], ref[h], rtol=0, atol=1e-5)
    code, stdout, err = cli(capsys, "cache", tiny_checkpoint, "-i", ids_npy, "-k", "blocks.0.*", "-o",
                            tmp_path / "glob.h5", "--max-rows", 2)
    assert code == 0, err
    with ActivationStore.open(tmp_path / "glob.h5") as s:
        assert "blocks.0.attn.hook_pattern" in s.hooks and "blocks.0.hook_q_input" not in s.hooks
        assert "blocks.1.hook_resid_post" not in s.hooks


def test_old_names_still_work_with_a_warning(tiny_checkpoint, ids_npy, tmp_path, capsys):
    from workbench.commands.cache import run_cache
    with pytest.warns(FutureWarning, match="CacheJob"):
        run_cache(tiny_checkpoint, ids_npy, [RESID], tmp_path / "old.h5", max_rows=8)
    assert "done: 8 rows" in capsys.readouterr().out
    with ActivationStore.open(tmp_path / "old.h5") as s:
        assert getattr(s, "steps", []) == []        # how the old code asked a cache file for steps
        with pytest.raises(AttributeError, match="isinstance"):
            s.steps
    with pytest.warns(FutureWarning, match="workbench.store.dataset"):
        import importlib
        import sys
        sys.modules.pop("workbench.store.probe", None)
        old = importlib.import_module("workbench.store.probe")
    from workbench.store.dataset import ProbeDataset
    assert old.ProbeDataset is ProbeDataset
