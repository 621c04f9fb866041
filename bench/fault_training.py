"""Fault campaign against `workbench train`: SIGKILLs at random moments, and bad inputs.

    python bench/fault_training.py --kills 30 --seed 0          # both parts (~15 min on a busy 2-core box)
    python bench/fault_training.py --kills 0                    # the bad inputs only

Kills: a reference run of the tiny config (2,000 steps, checkpoints every 200, recorded every 100
and at log-spaced steps) runs once uninterrupted, timing when its folder, its config.toml and its
first metrics line appear. Each trial starts the same command and SIGKILLs it after a random
delay: one trial in three waits until the run folder appears and kills within the creation
window (up to 0.2 s past the time the reference took from its folder to its first metrics line),
the others uniformly over the whole run; then it runs the command with --resume until it exits. A trial passes when the resume exits 0 and the run equals the
reference bit for bit: every logged loss, every recorded activation, the final weights. For each
kill during training it also counts the steps the kill lost (the last logged step minus the
checkpoint the resume started from).

Bad inputs: each case runs the CLI once and is classed as "clear" (exit 1, one line "error: ..."
and no traceback), "accepted" (exit 0; right for the cases marked so, wrong for the others),
"traceback" or "hang" (no exit within the time limit).

Prints a summary and writes it as JSON to --out.
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import h5py
import numpy as np

from workbench.training.config import load_config

STEPS, EVERY, RECORD = 2000, 200, 100
TIMEOUT_S = 300


def workbench(*args: str, timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workbench.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def train_args(config: Path, out: Path, *extra: str) -> list[str]:
    return ["train", str(config), "--out", str(out), "--no-progress", *extra]


def snapshot(run: Path) -> dict:
    """What must be identical between a resumed run and the reference."""
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    with h5py.File(run / "activations.h5", "r") as f:
        n = int(f.attrs["n_steps"])
        rec = {"steps": [int(s) for s in f["steps"][:n]], **{k: np.asarray(v[:n]) for k, v in f["hooks"].items()}}
    weights = (run / "checkpoints" / f"step_{STEPS:08d}" / "model.safetensors").read_bytes()
    return {"losses": [(r["step"], r.get("loss"), r.get("val_loss")) for r in rows], "recording": rec,
            "weights": weights}


def same(a: dict, b: dict) -> bool:
    ra, rb = a["recording"], b["recording"]
    return (a["losses"] == b["losses"] and a["weights"] == b["weights"] and ra.keys() == rb.keys()
            and all(np.array_equal(ra[k], rb[k]) for k in ra))


def last_logged(run: Path) -> Optional[int]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return None
    lines = [x for x in path.read_text().splitlines() if x.endswith("}")]
    return json.loads(lines[-1])["step"] if lines else None


def newest_checkpoint(run: Path) -> Optional[int]:
    found = sorted(p.name for p in (run / "checkpoints").glob("step_*") if (p / "trainer_state.pt").is_file()) \
        if (run / "checkpoints").is_dir() else []
    return int(found[-1][5:]) if found else None


@dataclass
class KillResult:
    delay_s: float
    phase: str
    resumed: bool
    identical: bool
    lost_steps: Optional[int] = None
    error: str = ""


def one_kill(config: Path, out: Path, delay: float, reference: dict, after_folder: bool = False) -> KillResult:
    """Start the run, SIGKILL it ``delay`` s after its start (or after its folder appears), resume it."""
    proc = subprocess.Popen([sys.executable, "-m", "workbench.cli", *train_args(config, out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while after_folder and not out.exists() and proc.poll() is None:
        time.sleep(0.002)   # the creation window is well under a second: start the clock at the event
    time.sleep(delay)
    finished = proc.poll() is not None
    proc.kill()
    proc.wait()
    logged, ckpt = last_logged(out), newest_checkpoint(out)
    phase = ("after the end" if finished else "start-up" if not out.exists()
             else "creating the run" if logged is None else f"training (step {logged})")
    r = workbench(*train_args(config, out, "--resume"))
    if r.returncode != 0:
        return KillResult(delay, phase, False, False, error=r.stderr.strip().splitlines()[-1][:300])
    ok = same(snapshot(out), reference)
    lost = (logged - (ckpt or 0)) if logged is not None and not finished else None
    return KillResult(delay, phase, True, ok, lost)


def reference_timeline(config: Path, out: Path) -> dict[str, float]:
    """Run the reference once, noting when its folder, config.toml and first metrics line appear."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "workbench.cli", *train_args(config, out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    marks: dict[str, float] = {}
    while proc.poll() is None:
        now = time.perf_counter() - t0
        for name, ready in (("folder", out.exists()), ("config", (out / "config.toml").exists()),
                            ("metrics", last_logged(out) is not None)):
            if ready and name not in marks:
                marks[name] = now
        time.sleep(0.01)
    if proc.returncode != 0:
        raise SystemExit(f"the reference run failed: {proc.stderr.read()[-2000:]}")
    marks["end"] = time.perf_counter() - t0
    return marks


def kill_campaign(config: Path, work: Path, n: int, seed: int) -> dict:
    ref = work / "reference"
    marks = reference_timeline(config, ref)
    reference = snapshot(ref)
    rng = random.Random(seed)
    results = []
    for i in range(n):
        out = work / f"kill{i}"
        creating = i % 3 == 0
        hi = (marks.get("metrics", marks["end"]) - marks["folder"] + 0.2) if creating else marks["end"]
        res = one_kill(config, out, rng.uniform(0, hi), reference, after_folder=creating)
        results.append(res)
        print(f"  kill {i + 1}/{n} at {res.delay_s:5.1f} s ({res.phase}): "
              f"{'bit-equal' if res.identical else 'DIFFERENT' if res.resumed else 'RESUME FAILED ' + res.error}",
              flush=True)
        shutil.rmtree(out, ignore_errors=True)
    lost = [r.lost_steps for r in results if r.lost_steps is not None]
    return {"reference_s": {k: round(v, 1) for k, v in marks.items()}, "kills": n,
            "resumed": sum(r.resumed for r in results), "bit_equal": sum(r.identical for r in results),
            "phases": {p: sum(r.phase.startswith(p) for r in results)
                       for p in ("start-up", "creating the run", "training", "after the end")},
            "lost_steps": {"max": max(lost), "median": float(np.median(lost)), "n": len(lost),
                           "checkpoint_every": EVERY} if lost else None,
            "failures": [vars(r) for r in results if not r.identical]}


# -- bad inputs -----------------------------------------------------------------------------------------
@dataclass
class Case:
    name: str
    run: Callable[[Path], subprocess.CompletedProcess]   # given a fresh folder
    accept: bool = False                                  # True: the input is fine and must be accepted
    needle: str = ""                                      # a clear error line must contain this


@dataclass
class Setup:
    """A base config and one finished run that the resume cases copy and damage."""
    config: Path
    finished: Path
    tok: Path

    def toml(self, folder: Path, old: str, new: str, *more: str) -> Path:
        """The base config with ``old`` replaced by ``new`` (and further old, new pairs)."""
        p = folder / "c.toml"
        text = self.config.read_text()
        pairs = [(old, new), *zip(more[::2], more[1::2])]
        for a, b in pairs:
            assert a in text, a
            text = text.replace(a, b)
        p.write_text(text)
        return p

    def fresh(self, folder: Path, old: str, new: str, *more: str) -> subprocess.CompletedProcess:
        """A new run of the base config with lines of its TOML changed."""
        return workbench(*train_args(self.toml(folder, old, new, *more), folder / "run"))

    def resume_damaged(self, folder: Path, damage: Callable[[Path], None], config: Optional[Path] = None):
        run = folder / "run"
        shutil.copytree(self.finished, run)
        shutil.rmtree(run / "checkpoints" / f"step_{STEPS:08d}")
        damage(run)
        args = ["train", "--out", str(run), "--no-progress", "--resume"]
        if config is not None:
            args.insert(1, str(config))
        return workbench(*args)


def _truncate(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def _garble(path: Path, n: int = 64) -> None:
    data = bytearray(path.read_bytes())
    data[:n] = b"\x17" * n
    path.write_bytes(bytes(data))


def _checkpoints_as_file(run: Path) -> None:
    shutil.rmtree(run / "checkpoints")
    (run / "checkpoints").write_text("x")


def cases(s: Setup) -> list[Case]:
    last = f"step_{STEPS - EVERY:08d}"
    c = [
        Case("system.num_threads = -1", lambda d: s.fresh(d, "num_threads = 1", "num_threads = -1"),
             needle="num_threads"),
        Case("optimizer.lr negative", lambda d: s.fresh(d, "lr = 0.001", "lr = -0.001"), needle="optimizer.lr"),
        Case("optimizer.beta1 negative", lambda d: s.fresh(d, "beta1 = 0.9", "beta1 = -0.9"),
             needle="optimizer.beta1"),
        Case("schedule.warmup_steps = -5", lambda d: s.fresh(d, "warmup_steps = 2", "warmup_steps = -5"),
             needle="warmup_steps"),
        Case("data.vocab_size = 5", lambda d: s.fresh(d, "vocab_size = 300", "vocab_size = 5", f'tokenizer = "{s.tok}"',
                                                      'tokenizer = ""'), needle="vocab_size"),
        Case("record.probe_val_rows > data", lambda d: s.fresh(d, "probe_val_rows = 1", "probe_val_rows = 1000000"),
             needle="probe_val_rows"),
        Case("binary input text", _binary_source(s), needle="binary"),
        Case("missing data source", lambda d: s.fresh(d, 'sources = ["stdlib"]', f'sources = ["{d}/nope.txt"]'),
             needle="nope.txt"),
        Case("misspelt key", lambda d: s.fresh(d, "[schedule]", "[schedule]\nmax_step = 3"), needle="max_steps"),
        Case("invalid TOML", lambda d: s.fresh(d, "[schedule]", "[schedule"), needle="TOML"),
        Case("no such config", lambda d: workbench("train", str(d / "no.toml"), "--out", str(d / "r")),
             needle="no config file"),
        Case("d_model not divisible by n_heads", lambda d: s.fresh(d, "d_model = 32", "d_model = 33"),
             needle="divisible"),
        Case("odd rotary width", lambda d: s.fresh(d, "partial_rotary_factor = 0.5", "partial_rotary_factor = 0.2"),
             needle="rotary"),
        Case("batch_size = 0", lambda d: s.fresh(d, "batch_size = 4", "batch_size = 0"), needle="batch_size"),
        Case("seq_len longer than the data", lambda d: s.fresh(d, "seq_len = 32", "seq_len = 100000"),
             needle="seq_len"),
        Case("unknown hook in record.hooks", lambda d: s.fresh(d, '"blocks.1.hook_resid_post"]',
                                                               '"blocks.0.hook_bogus"]'), needle="hook_bogus"),
        Case("--device cuda without CUDA", lambda d: workbench(*train_args(s.config, d / "r", "--device", "cuda")),
             needle="cuda"),
        Case("--device bogus", lambda d: workbench(*train_args(s.config, d / "r", "--device", "bogus")),
             needle="bogus"),
        Case("--out is a file", lambda d: (d / "f").write_text("x") and workbench(*train_args(s.config, d / "f")),
             needle="is a file"),
        Case("existing run without --resume", lambda d: (shutil.copytree(s.finished, d / "r"), workbench(
            *train_args(s.config, d / "r")))[1], needle="--resume"),
        Case("resume: truncated trainer_state.pt", lambda d: s.resume_damaged(
            d, lambda r: _truncate(r / "checkpoints" / last / "trainer_state.pt", 300)), needle="trainer_state.pt"),
        Case("resume: truncated model.safetensors", lambda d: s.resume_damaged(
            d, lambda r: _truncate(r / "checkpoints" / last / "model.safetensors", 200)), needle="model.safetensors"),
        Case("resume: another d_model", lambda d: s.resume_damaged(
            d, lambda r: None, s.toml(d, "d_model = 32", "d_model = 64")), needle="d_model"),
        Case("resume: damaged recording", lambda d: s.resume_damaged(d, lambda r: _garble(r / "activations.h5")),
             needle="activations.h5"),
        Case("resume: checkpoints/ is a file", lambda d: s.resume_damaged(d, _checkpoints_as_file),
             needle="checkpoints"),
        Case("resume: config.toml emptied", lambda d: s.resume_damaged(d, lambda r: (r / "config.toml").write_text("")),
             needle="config"),
        Case("resume: config.toml cut at a line", lambda d: s.resume_damaged(
            d, lambda r: (r / "config.toml").write_text((r / "config.toml").read_text().split("[record]")[0])),
             needle="config"),
        Case("resume: garbage tokenizer.json", lambda d: s.resume_damaged(
            d, lambda r: (shutil.rmtree(r / "data"), (r / "tokenizer.json").write_text("{"))), needle="tokenizer"),
        Case("old key activation_checkpointing", lambda d: workbench(*train_args(s.toml(
            d, "recompute_activations = false", "activation_checkpointing = false"), d / "r", "--max-steps", "2")),
             accept=True),
    ]
    return c


def _binary_source(s: Setup) -> Callable[[Path], subprocess.CompletedProcess]:
    def run(d: Path) -> subprocess.CompletedProcess:
        (d / "a.txt").write_text("some text\n" * 200)
        (d / "b.txt").write_bytes(bytes(range(256)) * 16)
        return workbench(*train_args(s.toml(d, 'sources = ["stdlib"]', f'sources = ["{d}/a.txt", "{d}/b.txt"]'),
                                     d / "r"))
    return run


def classify(case: Case, folder: Path) -> tuple[str, str]:
    try:
        r = case.run(folder)
    except subprocess.TimeoutExpired:
        return "hang", ""
    err = r.stderr.strip()
    lines = [x for x in err.splitlines() if x.strip() and not x.startswith("warning:")]
    if r.returncode == 0:
        return ("accepted", "") if case.accept else ("wrong: accepted", "")
    if "Traceback" in err:
        return "traceback", err.splitlines()[-1][:200]
    if len(lines) == 1 and lines[0].startswith("error: ") and case.needle.lower() in lines[0].lower():
        return "clear", lines[0][:300]
    return "unclear", (lines[-1] if lines else f"exit {r.returncode}")[:300]


def bad_input_campaign(s: Setup, work: Path) -> dict:
    results = {}
    for i, case in enumerate(cases(s)):
        folder = work / f"case{i}"
        folder.mkdir()
        kind, line = classify(case, folder)
        results[case.name] = {"result": kind, "line": line}
        print(f"  {kind:>16}  {case.name}: {line}", flush=True)
        shutil.rmtree(folder, ignore_errors=True)
    kinds = [r["result"] for r in results.values()]
    return {"tried": len(kinds), **{k: kinds.count(k) for k in sorted(set(kinds))}, "cases": results}


def make_setup(work: Path) -> Setup:
    from workbench.training.data import build_data
    tok = work / "tokenizer.json"
    build_data(load_config("tiny").data, None).tokenizer.save(tok)
    config = work / "tiny.toml"
    config.write_text(load_config("tiny").override(
        schedule__max_steps=STEPS, checkpoint__every=EVERY, record__every=RECORD, data__tokenizer=str(tok),
        optimizer__lr=0.001, optimizer__beta1=0.9).to_toml())
    finished = work / "finished"
    r = workbench(*train_args(config, finished))
    if r.returncode != 0:
        raise SystemExit(f"the base run failed: {r.stderr[-2000:]}")
    return Setup(config, finished, tok)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-bad-inputs", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("fault_training.json"))
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="fault-train-") as tmp:
        work = Path(tmp)
        setup = make_setup(work)
        summary: dict = {"command": " ".join(sys.argv)}
        if a.kills:
            print(f"SIGKILL at random moments ({a.kills} trials):", flush=True)
            summary["kills"] = kill_campaign(setup.config, work, a.kills, a.seed)
        if not a.no_bad_inputs:
            print("bad inputs:", flush=True)
            summary["bad_inputs"] = bad_input_campaign(setup, work)
    a.out.write_text(json.dumps(summary, indent=2))
    short = {k: ({kk: vv for kk, vv in v.items() if kk not in ("cases", "failures")} if isinstance(v, dict) else v)
             for k, v in summary.items()}
    print(json.dumps(short, indent=2))


if __name__ == "__main__":
    main()
