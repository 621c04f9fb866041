"""Fault campaign against `workbench cache` / `inspect` / `hooks` (run by hand; figures in docs/bench-store.md).

    python bench/fault_campaign.py --dir /tmp/faults                 # kills and bad inputs
    python bench/fault_campaign.py --dir /tmp/faults --kills 40 --seed 1

Kills: `workbench cache` is SIGKILLed at a random moment (from start-up to the last batch), then
resumed with --resume, which may itself be killed; once a resume finishes, the file must equal an
uninterrupted run bit for bit (tokens, every hook, metadata) and pass `inspect --verify`.

Bad inputs: each invocation is classified as *clear* (exit 1, one line starting with "error:", no
traceback), *traceback*, or *wrong* (accepted when it should fail, a crash by signal, a hang past the
timeout, or a failure when it should work). ``area`` says whose code an invocation tests (model
loading errors come from the model layer, not the store).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from workbench.store import ActivationStore

CLI = [sys.executable, "-m", "workbench.cli"]
HOOKS = ["-k", "blocks.*.hook_resid_post", "-k", "blocks.1.attn.hook_pattern"]


def run(args: list, timeout: float = 180, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout, **kw)


def make_model(d: Path) -> Path:
    from transformers import PhiConfig, PhiForCausalLM
    folder = d / "tiny-phi"
    if not (folder / "config.json").exists():
        torch.manual_seed(0)
        cfg = PhiConfig(vocab_size=512, hidden_size=160, intermediate_size=640, num_hidden_layers=2,
                        num_attention_heads=2, partial_rotary_factor=0.4, max_position_embeddings=256)
        PhiForCausalLM(cfg).save_pretrained(folder)
    return folder


def stores_equal(a: Path, b: Path) -> bool:
    with ActivationStore.open(a) as x, ActivationStore.open(b) as y:
        if len(x) != len(y) or x.hooks != y.hooks or not torch.equal(x.tokens[:], y.tokens[:]):
            return False
        if any(not np.array_equal(x.meta(m), y.meta(m)) for m in x.meta_columns):
            return False
        return all(torch.equal(x[h][:].view(torch.int16), y[h][:].view(torch.int16)) for h in x.hooks)


# -- kills -------------------------------------------------------------------------------------------
def write_ids(d: Path) -> Path:
    """The token ids both campaigns cache: 600 rows of 32 random ids below 512."""
    ids = d / "ids.npy"
    np.save(ids, np.random.default_rng(0).integers(0, 512, size=(600, 32)))
    return ids


def kill_campaign(d: Path, model: Path, kills: int, rng: random.Random) -> dict:
    ids = write_ids(d)
    base = ["cache", model, "-i", ids, *HOOKS, "--batch-size", 8, "--dtype", "bfloat16"]
    ref = d / "reference.h5"
    t = time.monotonic()
    assert run([*base, "-o", ref, "--overwrite"]).returncode == 0
    span = time.monotonic() - t                       # start-up included: early kills hit file creation
    tally = {"kills": 0, "runs": 0, "survived": 0, "refused_resume": [], "not_equal": 0, "verify_failed": 0}
    for i in range(kills):
        out = d / f"killed{i}.h5"
        out.unlink(missing_ok=True)
        args, killed_this_file = [*base, "-o", out], 0
        while True:
            proc = subprocess.Popen([*CLI, *map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                    text=True)
            tally["runs"] += 1
            try:
                proc.wait(timeout=rng.uniform(0.0, span) if killed_this_file < 2 else None)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                tally["kills"] += 1
                killed_this_file += 1
                args = [*base, "-o", out, "--resume"] if out.exists() else [*base, "-o", out]
                continue
            err = proc.stderr.read()
            if proc.returncode != 0:
                tally["refused_resume"].append(err.strip().splitlines()[-1:] if err else proc.returncode)
                break
            same = stores_equal(out, ref)
            ok = run(["inspect", out, "--verify"]).returncode == 0
            tally["survived"] += same and ok
            tally["not_equal"] += not same
            tally["verify_failed"] += not ok
            break
        out.unlink(missing_ok=True)
    return tally


# -- bad inputs ----------------------------------------------------------------------------------------
def bad_inputs(d: Path, model: Path) -> list[tuple[str, str, list, bool]]:
    """``(area, what, args, should_work)`` for each invocation."""
    ids = write_ids(d)
    txt = d / "docs.txt"
    txt.write_text("def f(x):\n    return x\n" * 200)
    files = _input_files(d)
    out = d / "bad.h5"
    c = ["cache", model, "-i", ids, "-k", "blocks.0.hook_resid_post", "-o", out]
    cache_opts = [("--device bogus", ["--device", "bogus"]), ("--device cuda without CUDA", ["--device", "cuda"]),
                  ("--device cuda:7", ["--device", "cuda:7"]), ("--device mps", ["--device", "mps"]),
                  ("--queue-mb 0", ["--queue-mb", "0"]), ("--queue-mb -5", ["--queue-mb", "-5"]),
                  ("--flush-seconds -1", ["--flush-seconds", "-1"]), ("--flush-seconds nan", ["--flush-seconds", "nan"]),
                  ("--batch-size 0", ["--batch-size", "0"]), ("--max-rows 0", ["--max-rows", "0"]),
                  ("--seq-len 0", ["--seq-len", "0"]), ("--seq-len 100000", ["--seq-len", "100000"]),
                  ("--dtype int8", ["--dtype", "int8"]), ("--model-dtype bogus", ["--model-dtype", "bogus"]),
                  ("--compression zstd", ["--compression", "zstd"]), ("--threads 0", ["--threads", "0"]),
                  ("--documents bogus", ["--documents", "bogus"]), ("--resume and --overwrite", ["--resume", "--overwrite"]),
                  ("--resume with no file", ["--resume"]), ("--out is a folder", ["-o", d]),
                  ("--out on a read-only filesystem", ["-o", "/proc/acts.h5"])]
    cases = [("cache options", w, [*c, *a], False) for w, a in cache_opts]
    cases += [("cache inputs", w, ["cache", model, "-i", p, "-k", "hook_embed", "-o", out, *extra], ok)
              for w, p, extra, ok in files]
    cases += [("cache hooks", w, ["cache", model, "-i", ids, "-k", k, "-o", out], False) for w, k in
              [("hook typo", "blocks.0.hook_reid_post"), ("glob matching nothing", "blocks.*.hook_nothing"),
               ("layer out of range", "blocks.99.hook_resid_post"), ("empty hook name", "")]]
    cases += [("model loading", w, ["cache", m, "-i", ids, "-k", "hook_embed", "-o", out], False)
              for w, m in _bad_models(d, model)]
    cases += _store_cases(d, model, ids, out)
    return cases


def _input_files(d: Path) -> list[tuple[str, Path, list, bool]]:
    def npy(name: str, a: np.ndarray) -> Path:
        np.save(d / name, a)
        return d / name
    (d / "empty.txt").write_text("")
    (d / "binary.txt").write_bytes(b"\x7fELF\x00\x01" * 100)
    (d / "short.txt").write_text("x\n")
    (d / "broken.jsonl").write_text('{"text": "a"}\n{"text": \n')
    (d / "nofield.jsonl").write_text('{"body": "a"}\n')
    (d / "list.jsonl").write_text("[1, 2, 3]\n")
    (d / "latin1.txt").write_bytes("caf\xe9 cr\xe8me\n".encode("latin-1") * 50)
    (d / "notnpy.npy").write_bytes(b"not a numpy file")
    (d / "emptydir").mkdir(exist_ok=True)
    (d / "code").mkdir(exist_ok=True)
    (d / "code" / "a.py").write_text("import os\n" * 100)
    return [("missing input", d / "missing.txt", [], False), ("empty input", d / "empty.txt", [], False),
            ("binary input text", d / "binary.txt", [], False),
            ("input too short for one row", d / "short.txt", ["--seq-len", "64"], False),
            ("JSONL with a broken line", d / "broken.jsonl", [], False),
            ("JSONL without the field", d / "nofield.jsonl", [], False), ("JSONL of lists", d / "list.jsonl", [], False),
            ("latin-1 text (decoded with replacement)", d / "latin1.txt", ["--seq-len", "8", "--overwrite"], True),
            ("float .npy", npy("f.npy", np.zeros((4, 8), np.float32)), [], False),
            ("3-D .npy", npy("3d.npy", np.zeros((2, 2, 2), np.int64)), [], False),
            ("uint64 ids past the vocabulary", npy("u.npy", np.array([[2**64 - 1, 1]], np.uint64)), [], False),
            ("negative ids", npy("neg.npy", np.array([[-1, 1]], np.int64)), [], False),
            ("not a .npy file", d / "notnpy.npy", [], False), ("folder with no text files", d / "emptydir", [], False),
            ("folder of code (each file one document)", d / "code", ["--seq-len", "8", "--overwrite"], True),
            ("--documents lines on a folder", d / "code", ["--documents", "lines"], False),
            ("--documents on a .npy", d / "ids.npy", ["--documents", "file"], False)]


def _bad_models(d: Path, good: Path) -> list[tuple[str, Path]]:
    import shutil
    out = []
    for name, edit in [("config.json not JSON", lambda p: (p / "config.json").write_text("{not json")),
                       ("config.json cut short", lambda p: (p / "config.json").write_text(
                           (p / "config.json").read_text()[:40])),
                       ("hidden_size a string", lambda p: _edit_config(p, hidden_size="160")),
                       ("num_attention_heads 0", lambda p: _edit_config(p, num_attention_heads=0)),
                       ("safetensors cut short", lambda p: _cut(p / "model.safetensors")),
                       ("safetensors garbage", lambda p: (p / "model.safetensors").write_bytes(b"\x00" * 100))]:
        m = d / f"model-{len(out)}"
        shutil.rmtree(m, ignore_errors=True)
        shutil.copytree(good, m)
        edit(m)
        out.append((name, m))
    (d / "afile").write_text("x")
    return out + [("model folder missing", d / "no-model"), ("model is a file", d / "afile")]


def _edit_config(p: Path, **changes) -> None:
    cfg = json.loads((p / "config.json").read_text())
    cfg.update(changes)
    (p / "config.json").write_text(json.dumps(cfg))


def _cut(p: Path) -> None:
    os.truncate(p, p.stat().st_size // 2)


def _store_cases(d: Path, model: Path, ids: Path, out: Path) -> list:
    """Resume and inspect on damaged, truncated, foreign and recording files."""
    good = d / "good.h5"
    run(["cache", model, "-i", ids, "-k", "blocks.0.hook_resid_post", "-o", good, "--overwrite", "--max-rows", 64])
    killed = d / "killed.h5"
    killed.unlink(missing_ok=True)
    p = subprocess.Popen([*CLI, "cache", str(model), "-i", str(ids), "-k", "blocks.0.hook_resid_post", "-o",
                          str(killed), "--flush-seconds", "0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    while not (killed.exists() and _rows(killed) >= 64):
        if p.poll() is not None:
            raise SystemExit(f"the run to be killed ended first (exit {p.returncode}): {' '.join(map(str, p.args))}")
        time.sleep(0.05)
    p.kill()
    p.wait()
    variants = {"truncated": lambda b: b[: len(b) // 2], "superblock byte": lambda b: _flip(b, 30),
                "metadata byte": lambda b: _flip(b, 100), "not HDF5": lambda b: b"hello\n", "empty": lambda b: b""}
    cases = []
    for name, f in variants.items():
        path = d / f"damaged-{name.replace(' ', '_')}.h5"
        path.write_bytes(f(killed.read_bytes()))
        cases.append(("resume / inspect", f"inspect: killed file, {name}", ["inspect", path], False))
        cases.append(("resume / inspect", f"--resume: killed file, {name}",
                      ["cache", model, "-i", ids, "-k", "blocks.0.hook_resid_post", "-o", path, "--resume"], False))
    import h5py
    with h5py.File(d / "foreign.h5", "w") as f:
        f["x"] = [1, 2]
    cases += [("resume / inspect", "inspect: another program's HDF5", ["inspect", d / "foreign.h5"], False),
              ("resume / inspect", "inspect: a folder", ["inspect", d], False),
              ("resume / inspect", "inspect: missing", ["inspect", d / "nope.h5"], False),
              ("resume / inspect", "--resume with other hooks",
               ["cache", model, "-i", ids, "-k", "hook_embed", "-o", good, "--resume"], False),
              ("resume / inspect", "existing OUT without --resume/--overwrite",
               ["cache", model, "-i", ids, "-k", "hook_embed", "-o", good], False),
              ("resume / inspect", "inspect --verify of a killed file", ["inspect", killed, "--verify"], True),
              ("hooks", "hooks: missing model", ["hooks", d / "no-model"], False),
              ("hooks", "hooks: pattern matching nothing", ["hooks", model, "blocks.*.nothing"], False),
              ("hooks", "hooks: --seq-len 0", ["hooks", model, "--seq-len", "0"], False)]
    return cases


def _rows(path: Path) -> int:
    with ActivationStore.open(path) as s:
        return len(s)


def _flip(b: bytes, i: int) -> bytes:
    b = bytearray(b)
    b[i] ^= 0xFF
    return bytes(b)


def classify(res, should_work: bool) -> str:
    if res is None:
        return "wrong (hang)"
    if "Traceback" in res.stderr:
        return "traceback"
    if should_work:
        return "clear" if res.returncode == 0 else f"wrong (exit {res.returncode})"
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    if res.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "):
        return "clear"
    return f"wrong (exit {res.returncode}, {len(lines)} lines)"


def input_campaign(d: Path, model: Path) -> dict:
    rows, tally = [], {}
    for i, (area, what, args, should_work) in enumerate(bad_inputs(d, model)):
        fresh = d / f"case{i}.h5"                         # each case its own output (bad.h5 stands for it)
        fresh.unlink(missing_ok=True)
        args = [fresh if a == d / "bad.h5" else a for a in args]
        try:
            res = run(args, timeout=120)
        except subprocess.TimeoutExpired:
            res = None
        verdict = classify(res, should_work)
        kind = verdict.split(" ")[0]
        tally[kind] = tally.get(kind, 0) + 1
        last = (res.stderr.strip().splitlines() or [""])[-1][:160] if res is not None else "timed out"
        rows.append({"area": area, "input": what, "verdict": verdict, "said": last})
    return {"tried": len(rows), **tally, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, required=True)
    ap.add_argument("--kills", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-kills", action="store_true")
    args = ap.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    model = make_model(args.dir)
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    if not (model / "tokenizer.json").exists():       # text inputs need one
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel()
        tok.train_from_iterator(["def f(x): return x"] * 50, trainers.BpeTrainer(vocab_size=300,
                                special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
        tok.save(str(model / "tokenizer.json"))
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load_average": os.getloadavg()[0]}
    if not args.skip_kills:
        result["kills"] = kill_campaign(args.dir, model, args.kills, random.Random(args.seed))
        print(json.dumps({"kills": result["kills"]}), flush=True)
    result["inputs"] = input_campaign(args.dir, model)
    for r in result["inputs"]["rows"]:
        print(f"{r['verdict']:<24} {r['area']:<16} {r['input']:<44} {r['said']}")
    print(json.dumps({k: v for k, v in result.items() if k != "inputs"} |
                     {"inputs": {k: v for k, v in result["inputs"].items() if k != "rows"}}))


if __name__ == "__main__":
    main()
