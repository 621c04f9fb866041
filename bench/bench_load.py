"""Peak memory of loading a big checkpoint: ours vs transformers, in fresh processes (run by hand, not a test).

    python bench/bench_load.py --dir ~/bench-ckpt                  # phi-1_5 size (1.42B parameters)
    python bench/bench_load.py --dir ~/bench-ckpt --preset phi-2   # 2.78B: needs ~20 GiB free for HF's fp32 load
    python bench/bench_load.py --dir ~/bench-ckpt --before /tmp/old  # also an older copy of the package

The first run writes a random checkpoint of the preset in bf16 under ``--dir``, once as one
``model.safetensors`` and once as 1 GiB shards with an index (phi-1_5: 2 x 2.64 GiB of disk; phi-2:
2 x 5.2 GiB), streaming tensor by tensor so writing it needs little memory; later runs reuse it.
Each load then runs in its own fresh interpreter, one at a time (never two memory-heavy processes
together), which reads ``VmHWM`` (the kernel's peak resident set: anonymous memory and mapped file
pages alike) from ``/proc/self/status`` after loading. The figure is the whole process's peak,
interpreter and libraries included; the RSS just before the load is reported too. After loading,
one byte of every 4 KiB page of every parameter is read, as a first forward would: a loader that
returns tensors mapped from the file (transformers does, when no conversion is needed) has its
weights paged in then, so the peak after that touch, and the time to load and touch, are the
comparable figures (the peak and time of the load alone are reported too). Loaders:
``ours`` is ``PhiModel.from_pretrained(path, dtype=...)``, ``hf`` is
``transformers.PhiForCausalLM.from_pretrained(path, dtype=...)``. With ``--before DIR`` (a copy of an
older tree, e.g. ``git archive COMMIT workbench | tar -x -C DIR``), ``before`` runs ours from there.
The files are read once before the first load so every load finds them in the page cache (which
counts in no process's RSS).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from workbench.model import PhiConfig
from workbench.model.hf_format import shard_groups
from workbench.model.weight_map import hf_shapes

GIB = 1 << 30
SHARD_BYTES = 1 << 30
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


# -- writing the checkpoint once --------------------------------------------------------------------
def _write_safetensors(path: Path, shapes: dict[str, tuple[int, ...]], gen: torch.Generator) -> None:
    """A bf16 safetensors file of random tensors, written one tensor at a time (the library wants all at once)."""
    header, offset = {}, 0
    for name, shape in shapes.items():
        nbytes = math.prod(shape) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header["__metadata__"] = {"format": "pt"}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)   # the format pads the header so the data starts 8-byte aligned
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        for name, shape in shapes.items():
            if "layernorm.weight" in name:
                t = torch.ones(shape, dtype=torch.bfloat16)
            else:
                t = (torch.randn(shape, generator=gen) * 0.02).to(torch.bfloat16)
            f.write(t.view(-1).view(torch.uint8).numpy().tobytes())
            del t
    os.replace(tmp, path)


def _shards(shapes: dict[str, tuple[int, ...]]) -> list[dict[str, tuple[int, ...]]]:
    """The tensors (bf16) of each shard, cut as ``save_pretrained`` cuts them."""
    groups = shard_groups({name: math.prod(shape) * 2 for name, shape in shapes.items()}, SHARD_BYTES)
    return [{name: shapes[name] for name in group} for group in groups]


def write_checkpoints(root: Path, preset: str, layouts: list[str]) -> dict[str, Path]:
    """``{layout: folder}`` of a random bf16 checkpoint of ``preset``, "single" and/or "sharded" (written once)."""
    cfg = PhiConfig.from_name(preset)
    shapes = hf_shapes(cfg)
    hf_cfg = cfg.to_hf() | {"torch_dtype": "bfloat16", "dtype": "bfloat16"}
    folders = {"single": root / f"{preset}-bf16", "sharded": root / f"{preset}-bf16-sharded"}
    folders = {k: v for k, v in folders.items() if k in layouts}
    for kind, folder in folders.items():
        if (folder / "config.json").is_file():
            continue
        folder.mkdir(parents=True, exist_ok=True)
        print(f"writing {folder} ...", flush=True)
        gen = torch.Generator().manual_seed(0)
        if kind == "single":
            _write_safetensors(folder / "model.safetensors", shapes, gen)
        else:
            parts = _shards(shapes)
            weight_map = {}
            for i, part in enumerate(parts):
                name = f"model-{i + 1:05d}-of-{len(parts):05d}.safetensors"
                _write_safetensors(folder / name, part, gen)
                weight_map.update(dict.fromkeys(part, name))
            index = {"metadata": {"total_size": sum(math.prod(s) * 2 for s in shapes.values())},
                     "weight_map": weight_map}
            (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))
        (folder / "config.json").write_text(json.dumps(hf_cfg, indent=1))   # last: marks the folder complete
    return folders


# -- one load in a fresh process --------------------------------------------------------------------
# Run with `python -c`, not as this script: under --before the child imports an older tree, which
# may lack what this script imports.
CHILD = """
import json, sys, time
from pathlib import Path
import torch
def kib(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
loader, path, dtype = sys.argv[1:]
if loader == "hf":
    from transformers import PhiForCausalLM as cls
else:
    from workbench import PhiModel as cls
before = kib("VmRSS") << 10
t0 = time.perf_counter()
model = cls.from_pretrained(path, dtype={"fp32": torch.float32, "bf16": torch.bfloat16}[dtype])
seconds = time.perf_counter() - t0
peak_load = kib("VmHWM") << 10
weights = 0
with torch.no_grad():   # touch one byte of every 4 KiB page, as the first forward would (mapped files fault in)
    for p in model.parameters():
        weights += p.numel() * p.element_size()
        p.detach().reshape(-1).view(torch.uint8)[::4096].sum()
ready = time.perf_counter() - t0
print(json.dumps({"peak_load": peak_load, "peak": kib("VmHWM") << 10, "before": before,
                  "after": kib("VmRSS") << 10, "weights": weights, "seconds": seconds, "ready": ready}))
"""


def measure(loader: str, path: Path, dtype: str, before_tree: str | None, need: int) -> dict:
    """One load in a fresh interpreter: peak and pre-load RSS, weights (bytes), seconds."""
    _wait_for_memory(need)
    env = dict(os.environ)
    if loader == "before":
        env["PYTHONPATH"] = before_tree + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", CHILD, "ours" if loader == "before" else loader, str(path), dtype],
                         capture_output=True, text=True, env=env, check=False,
                         cwd=path.parent)   # not the repo: `python -c` puts the cwd first on sys.path
    if out.returncode != 0:
        raise SystemExit(f"{loader} {dtype} {path.name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _wait_for_memory(need: int, patience_s: int = 600) -> None:
    """Start a load only when the machine has room for it (other jobs may share it)."""
    t0 = time.monotonic()
    while _available_bytes() < need:
        if time.monotonic() - t0 > patience_s:
            raise SystemExit(f"only {_available_bytes() / GIB:.1f} GiB available, {need / GIB:.1f} GiB needed; "
                             "free memory or run on a bigger machine")
        time.sleep(10)


def _available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) << 10
    return 0


def _warm_page_cache(folder: Path) -> None:
    for f in sorted(folder.glob("*.safetensors")):
        with open(f, "rb", buffering=0) as fh:
            while fh.read(64 << 20):
                pass


def _row(layout: str, dtype: str, loader: str, runs: list[dict], hf_seconds: float | None) -> str:
    """One markdown row: medians over the runs (peaks barely move; seconds do on a shared machine)."""
    med = {k: statistics.median(r[k] for r in runs)
           for k in ("weights", "before", "peak", "peak_load", "seconds", "ready")}
    w = med["weights"]
    ratio = f"{med['ready'] / hf_seconds:.2f}x" if hf_seconds else "-"
    return (f"| {layout} | {dtype} | {loader} | {w / GIB:.2f} | {med['before'] / GIB:.2f} | {med['peak'] / GIB:.2f} | "
            f"**{med['peak'] / w:.3f}x** | {(med['peak'] - med['before']) / w:.3f}x | {med['peak_load'] / GIB:.2f} | "
            f"{med['seconds']:.1f} | {med['ready']:.1f} | {ratio} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", type=Path, help="where the random checkpoints are written once and reused")
    p.add_argument("--preset", default="phi-1_5", help="phi-1_5 (1.42B, default) or phi-2 (2.78B)")
    p.add_argument("--loaders", default="ours,hf", help="comma-separated: ours, hf, before")
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--layouts", default="single,sharded")
    p.add_argument("--repeats", type=int, default=1, help="rounds of every loader, alternating; medians reported")
    p.add_argument("--before", default=None, help="a copy of an older tree to run as the 'before' loader")
    p.add_argument("--json", type=Path, help="also write every run here")
    a = p.parse_args()
    if a.dir is None:
        p.error("--dir is required: the folder that holds (or will hold) the random checkpoints")
    loaders = a.loaders.split(",") + (["before"] if a.before and "before" not in a.loaders else [])
    folders = write_checkpoints(a.dir.expanduser(), a.preset, a.layouts.split(","))
    n_params = PhiConfig.from_name(a.preset).n_params()
    runs: list[dict] = []
    print(f"\n{a.preset} ({n_params / 1e9:.2f}B parameters), stored in bf16; {a.repeats} round(s); "
          f"load average at start {os.getloadavg()[0]:.1f}; torch {torch.__version__}\n")
    print("| layout | loaded as | loader | weights GiB | RSS before load GiB | peak RSS GiB | peak / weights "
          "| (peak - before) / weights | peak before touching GiB | load s | load + touch s | (load + touch) / hf |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for layout in a.layouts.split(","):
        _warm_page_cache(folders[layout])
        for dtype in a.dtypes.split(","):
            need = n_params * (4 if dtype == "fp32" else 2) * 17 // 10 + GIB   # HF's fp32 load peaks near 1.6x
            these = {loader: [] for loader in loaders}
            for _ in range(a.repeats):   # alternate loaders so each round sees the same machine load
                for loader in loaders:
                    r = measure(loader, folders[layout], dtype, a.before, need)
                    r.update(layout=layout, dtype=dtype, loader=loader, load_average=os.getloadavg()[0])
                    these[loader].append(r)
                    runs.append(r)
            hf = statistics.median(r["ready"] for r in these["hf"]) if "hf" in these else None
            for loader in loaders:
                print(_row(layout, dtype, loader, these[loader], hf), flush=True)
    print(f"\nload average at end {os.getloadavg()[0]:.1f}")
    if a.json:
        a.json.write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
