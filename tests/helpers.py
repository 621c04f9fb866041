"""Helpers shared by the tests: tiny random HF Phi checkpoints, a tokenizer, running the CLI in-process.

Test modules import from here (``from helpers import make_hf_phi``); conftest.py only
defines fixtures, built on these.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from workbench.model.random_weights import randomize_norms_and_biases

TEXT = ("def add(a, b):\n    return a + b\n\nclass Point:\n    def __init__(self, x, y):\n"
        "        self.x = x\n        self.y = y\n") * 20


def make_hf_phi(d_model: int = 160, n_heads: int = 2, n_layers: int = 2, partial_rotary_factor: float = 0.4,
                vocab: int = 512, d_mlp: int | None = None, n_ctx: int = 256, seed: int = 0):
    """A random ``transformers.PhiForCausalLM`` in eval mode with randomised LayerNorms and biases."""
    from transformers import PhiConfig, PhiForCausalLM
    torch.manual_seed(seed)
    cfg = PhiConfig(vocab_size=vocab, hidden_size=d_model, intermediate_size=d_mlp or 4 * d_model,
                    num_hidden_layers=n_layers, num_attention_heads=n_heads,
                    partial_rotary_factor=partial_rotary_factor, max_position_embeddings=n_ctx,
                    bos_token_id=0, eos_token_id=0)
    return randomize_norms_and_biases(PhiForCausalLM(cfg).eval())


def make_tokenizer(vocab: int = 512):
    """A byte-level BPE trained on a little Python, so tests never download one."""
    from workbench.model import Tokenizer
    return Tokenizer.train_bpe([TEXT], vocab_size=vocab)


def save_checkpoint(hf, folder: Path, with_tokenizer: bool = True, **save_kwargs) -> Path:
    hf.save_pretrained(folder, **save_kwargs)
    if with_tokenizer:
        make_tokenizer(hf.config.vocab_size).save(folder / "tokenizer.json")
    return folder


def cli(capsys, *args):
    """Run `workbench ARGS` in-process through workbench.cli.main: (exit code, stdout, stderr)."""
    from workbench.cli import main
    capsys.readouterr()   # drop output from before the command (e.g. transformers' save progress)
    old = sys.argv
    sys.argv = ["workbench", *map(str, args)]
    try:
        with pytest.raises(SystemExit) as e:
            main()
    finally:
        sys.argv = old
    out = capsys.readouterr()
    return e.value.code or 0, out.out, out.err


def assert_one_line_error(code, err, *needles):
    assert code == 1
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]


# -- attention patterns whose head scores are known exactly, and a training recording of them ----------
def ideal_induction(batch, period, offset, heads=2, n_repeats=2):
    """Head 0 attends to ``q - period + 1`` in the later repeats (else to position 0); head 1 to ``q - 1``."""
    n = offset + n_repeats * period
    pat = torch.zeros(batch, heads, n, n)
    for q in range(n):
        pat[:, 0, q, q - period + 1 if q >= offset + period else 0] = 1.0  # head 0: induction
        pat[:, 1, q, max(q - 1, 0)] = 1.0                                  # head 1: previous token
    return pat


UNIFORM_INDUCTION = sum(1 / (q + 1) for q in range(6, 11)) / 5   # period 5 after a BOS: queries 6..10


def uniform_attention(batch, heads, n):
    causal = torch.ones(batch, heads, n, n).tril()
    return causal / causal.sum(-1, keepdim=True)


def write_recording(path, patterns_by_step, n_rep, period, extra_attrs=None):
    """A training recording of layer-0 patterns ``{step: [rows, head, pos, pos]}``: ``n_rep`` repeated rows
    (period ``period`` over ids [0, 64) after a BOS), then validation-text rows, with the trainer's attributes."""
    from workbench.store import RecordingWriter
    from workbench.analysis.tasks import repeated_random_tokens
    first = next(iter(patterns_by_step.values()))
    n_rows, heads, n = first.shape[0], first.shape[1], first.shape[-1]
    tokens = torch.cat([repeated_random_tokens(n_rep, period, vocab_size=64, bos_token_id=0),
                        torch.randint(1, 64, (n_rows - n_rep, n), generator=torch.Generator().manual_seed(0))])
    attrs = {"probe_period": period, "probe_offset": 1, "probe_repeated_rows": n_rep, "probe_repeats": 2,
             "train_config": {"data": {"synthetic_vocab_size": 64}}, **(extra_attrs or {})}
    hook = "blocks.0.attn.hook_pattern"
    with RecordingWriter(path, hooks={hook: ((heads, n, n), torch.float32)}, seq_len=n,
                         probe_tokens=tokens, attrs=attrs) as w:
        for step, pats in patterns_by_step.items():
            w.append_step(step, {hook: pats})


# A `workbench` process that blocks at a chosen point, so a test signals it at a known moment
# (never by timing). WB_TEST_BLOCK_AFTER=K: the (K+1)-th StoreWriter.append first waits until the
# K batches before it are committed, prints "BLOCKED <rows committed>", then waits for a signal.
# WB_TEST_FILL_AFTER=K: after K committed batches, a filler file takes all free space beside the store.
# WB_TEST_SLOW_CLOSE=1: closing the store prints "CLOSING" and waits for a line on stdin (signals
# that arrive meanwhile are held back by the writer).
_CLI_CHILD = r"""
import os, sys, threading
from workbench.store import writer as W
block_after = int(os.environ.get("WB_TEST_BLOCK_AFTER", "0"))
if block_after:
    real_append, calls = W.StoreWriter.append, [0]
    def append(self, *a, **k):
        calls[0] += 1
        if calls[0] > block_after:
            self.flush()
            print("BLOCKED", self.committed, flush=True)
            threading.Event().wait()
        return real_append(self, *a, **k)
    W.StoreWriter.append = append
fill_after = int(os.environ.get("WB_TEST_FILL_AFTER", "0"))
if fill_after:    # another program fills the disk: a filler file beside the store, written until ENOSPC
    real_append2, seen = W.StoreWriter.append, [0]
    def append_then_fill(self, *a, **k):
        seen[0] += 1
        if seen[0] == fill_after + 1:
            self.flush()
            with open(self.path.parent / "filler", "wb", buffering=0) as f:
                for size in (1 << 20, 4096, 1):
                    try:
                        while True:
                            f.write(b"x" * size)
                    except OSError:
                        pass
        return real_append2(self, *a, **k)
    W.StoreWriter.append = append_then_fill
if os.environ.get("WB_TEST_SLOW_CLOSE"):
    real_close_file = W.StoreWriter._close_file
    def close_file(self):
        print("CLOSING", flush=True)
        sys.stdin.readline()
        real_close_file(self)
    W.StoreWriter._close_file = close_file
from workbench.cli import main
sys.argv = ["workbench", *sys.argv[1:]]
main()
"""


def start_cli(args, tmp_path: Path, block_after: int = 0, slow_close: bool = False, preexec_fn=None):
    """Start `workbench ARGS` in a child process (see _CLI_CHILD); stderr goes to a file (tqdm writes a lot)."""
    import os
    import subprocess
    env = dict(os.environ, WB_TEST_BLOCK_AFTER=str(block_after), WB_TEST_SLOW_CLOSE="1" if slow_close else "")
    err = open(tmp_path / f"stderr-{os.urandom(4).hex()}.txt", "w+")
    proc = subprocess.Popen([sys.executable, "-c", _CLI_CHILD, *map(str, args)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=err, text=True, env=env, preexec_fn=preexec_fn)
    proc.err_file = err
    return proc


def wait_for(proc, word: str) -> str:
    """Read the child's stdout until a line starting with ``word``; returns that line."""
    for line in proc.stdout:
        if line.startswith(word):
            return line.strip()
    raise AssertionError(f"the process ended (exit {proc.wait()}) before printing {word!r}: "
                         f"{finish(proc)[2][-2000:]}")


def finish(proc, timeout: float = 300):
    """Wait for the child; returns ``(exit code, rest of stdout, stderr)``."""
    out, _ = proc.communicate(timeout=timeout)
    proc.err_file.seek(0)
    return proc.returncode, out, proc.err_file.read()


def tiny_config_file(folder: Path, name: str = "tiny.toml", **overrides) -> Path:
    """The tiny training config with ``overrides``, written to ``folder/name``, using a BPE trained once
    into ``folder/tokenizer.json`` (training the BPE is the slow part of a tiny run)."""
    from workbench.training.config import load_config
    from workbench.training.data import build_data
    tok = folder / "tokenizer.json"
    if not tok.exists():
        build_data(load_config("tiny").data, None).tokenizer.save(tok)
    path = folder / name
    path.write_text(load_config("tiny").override(data__tokenizer=str(tok), **overrides).to_toml())
    return path
