"""Benchmark PhiModel against transformers' PhiForCausalLM and TransformerLens's TransformerBridge (CPU).

Run by hand (not a test):

    python bench/bench_model.py                 # timings, peak memory, start-up; prints a markdown report
    python bench/bench_model.py --repeats 9 --json out.json
    python bench/bench_model.py --sweep         # caching every hook vs HF's forward across sizes, 1 and 2 threads
    python bench/bench_model.py --sweep --quick # three sizes, one thread count, 3 rounds: a few minutes

Timings: every variant runs once per round, rounds are repeated, and the median
of each is reported with its ratio to HF's forward (interleaving keeps the
ratios honest on a machine shared with other jobs). Both wall time and process
CPU time (user + system) are recorded; with one thread (``--threads 1``, the
default) CPU time measures the work itself and barely moves when other jobs
share the cores. Caching pays for fresh memory: glibc hands large freed blocks
back to the kernel, so every cached megabyte is page-faulted (zeroed) anew on
each run. Run once more with ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736``
to keep freed memory in the process and see the compute cost alone. Peak memory: each variant
runs in its own subprocess; after a warm-up run the kernel's peak-RSS counter
is reset (``/proc/self/clear_refs``) and the peak of one more run is read back
from ``VmHWM``, minus the RSS before it (tracemalloc does not see torch's
allocations). Start-up: fresh interpreters, median of several.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]

FWD = ["ours_fwd", "hf_fwd", "tl_fwd", "ours_cache_all", "tl_cache_all"]
FWD_BWD = ["ours_fwd_bwd", "hf_fwd_bwd", "tl_fwd_bwd"]


# -- the models ------------------------------------------------------------------
def build(seed: int = 0):
    """Our mid-size model (d_model 640, 8 heads of 80, 8 layers, vocab 51200), HF and TL twins."""
    import torch

    from workbench.model import PhiConfig, PhiModel
    from workbench.model.tl_bridge import to_hf_model
    torch.manual_seed(seed)
    ours = PhiModel(PhiConfig.from_name("mid")).eval()
    hf = to_hf_model(ours)
    hf.config._attn_implementation = "sdpa"
    tl = ours.to_transformer_lens()
    return ours, hf.eval(), tl


def variants(ours, hf, tl, tokens) -> dict[str, Callable[[], object]]:
    """name -> a function that runs it once (forward-only ones under no_grad)."""
    import torch

    def nograd(f):
        def run():
            with torch.no_grad():
                return f()
        return run

    def fwd_bwd(model, loss_fn):
        def run():
            model.zero_grad(set_to_none=True)
            loss_fn().backward()
        return run

    return {
        "ours_fwd": nograd(lambda: ours(tokens)),
        "hf_fwd": nograd(lambda: hf(tokens, use_cache=False).logits),
        "tl_fwd": nograd(lambda: tl(tokens)),
        "ours_cache_all": nograd(lambda: ours.run_with_cache(tokens)),
        "tl_cache_all": nograd(lambda: tl.run_with_cache(tokens)),
        "ours_fwd_bwd": fwd_bwd(ours, lambda: ours(tokens, return_type="loss")),
        "hf_fwd_bwd": fwd_bwd(hf, lambda: hf(tokens, labels=tokens, use_cache=False).loss),
        "tl_fwd_bwd": fwd_bwd(tl, lambda: tl(tokens, return_type="loss")),
    }


def make_tokens(batch: int, seq: int):
    import torch
    return torch.randint(0, 51200, (batch, seq), generator=torch.Generator().manual_seed(1))


# -- timing ----------------------------------------------------------------------
def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def time_variants(names: list[str], repeats: int, batch: int, seq: int) -> tuple[dict, dict]:
    """(wall seconds, CPU seconds) per variant, one list entry per round."""
    ours, hf, tl = build()
    runs = variants(ours, hf, tl, make_tokens(batch, seq))
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for n in names:  # warm-up: first-call allocations and lazy inits
        runs[n]()
    for r in range(repeats):
        order = names if r % 2 == 0 else names[::-1]  # alternate order: no variant always runs first
        for n in order:
            gc.collect()
            c0, t0 = _cpu_seconds(), time.perf_counter()
            runs[n]()
            wall[n].append(time.perf_counter() - t0)
            cpu[n].append(_cpu_seconds() - c0)
        print(f"  round {r + 1}/{repeats}: " + " ".join(f"{n}={cpu[n][-1]:.2f}s" for n in names),
              file=sys.stderr)
    return wall, cpu


# -- memory (one variant per subprocess) -----------------------------------------
def _kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def measure_memory(name: str, batch: int, seq: int) -> dict:
    """Peak RSS growth of one run of ``name`` (MiB), plus cache sizes for the caching variants."""
    ours, hf, tl = build()
    tokens = make_tokens(batch, seq)
    variants(ours, hf, tl, make_tokens(1, 8))[name]()  # lazy inits, without big buffers
    run = variants(ours, hf, tl, tokens)[name]
    gc.collect()
    before = _kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS counter to the current RSS
    out = run()  # first full-size run: memory freed by an earlier one could hide the growth
    peak = _kib("VmHWM")
    result = {"variant": name, "peak_delta_mib": (peak - before) / 1024}
    if name.endswith("cache_all"):
        cache = out[1]
        tensors = {k: cache[k] for k in cache.keys()}
        result["cache_tensors"] = len(tensors)
        result["requested_mib"] = sum(t.numel() * t.element_size() for t in tensors.values()) / 2**20
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors.values()}
        result["held_mib"] = sum(storages.values()) / 2**20
    return result


def memory_all(names: list[str], batch: int, seq: int, threads: int) -> list[dict]:
    out = []
    for n in names:
        proc = subprocess.run([sys.executable, __file__, "--memory-of", n, "--batch", str(batch), "--seq", str(seq),
                               "--threads", str(threads)],
                              capture_output=True, text=True, cwd=ROOT)
        if proc.returncode:
            raise RuntimeError(f"memory run of {n} failed:\n{proc.stderr[-2000:]}")
        out.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"  memory {n}: {out[-1]}", file=sys.stderr)
    return out


# -- start-up --------------------------------------------------------------------
IMPORTS = {  # name -> (untimed set-up, timed statement)
    "torch": ("", "import torch"),
    "workbench+PhiModel": ("", "import workbench; from workbench import PhiModel"),
    "workbench+PhiModel after torch": ("import torch", "import workbench; from workbench import PhiModel"),
    "hooks": ("", "import workbench.hooks"),
    "transformer_lens.hook_points": ("", "import transformer_lens.hook_points"),
}


def import_cost(setup: str, stmt: str) -> tuple[float, float]:
    """(seconds, peak RSS MiB) of ``stmt`` in a fresh interpreter, after an untimed ``setup``."""
    code = ("import time, re, pathlib\n" + setup + "\nt0 = time.perf_counter()\n" + stmt + "\n"
            "dt = time.perf_counter() - t0\n"
            "hwm = int(re.search(r'VmHWM:\\s+(\\d+)', pathlib.Path('/proc/self/status').read_text()).group(1))\n"
            "print(dt, hwm / 1024)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    dt, mib = out.stdout.split()
    return float(dt), float(mib)


def startup(repeats: int) -> dict:
    res: dict[str, list] = {k: [] for k in IMPORTS}
    res["workbench --help"] = []
    exe = str(Path(sys.executable).with_name("workbench"))
    for _ in range(repeats):
        for k, (setup, stmt) in IMPORTS.items():
            res[k].append(import_cost(setup, stmt))
        t0 = time.perf_counter()
        subprocess.run([exe, "--help"], capture_output=True, check=True, cwd=ROOT)
        res["workbench --help"].append((time.perf_counter() - t0, 0.0))
    return {k: {"s": statistics.median(x[0] for x in v), "mib": statistics.median(x[1] for x in v)}
            for k, v in res.items()}


# -- size sweep: caching every hook vs HF's forward (issue 11) ---------------------
# name -> (d_model, n_layers, n_heads, d_vocab, batch, seq); d_head 64 (rotary 0.5) or 80 (rotary 0.4)
SWEEP = {
    "d256-v8k": (256, 4, 4, 8192, 4, 256), "d320-v8k": (320, 4, 4, 8192, 4, 256),
    "d256-v51k": (256, 4, 4, 51200, 4, 256), "d640-v51k": (640, 8, 8, 51200, 4, 256),
    "d1280-v8k": (1280, 4, 16, 8192, 2, 256), "d2560-v8k": (2560, 2, 32, 8192, 1, 256),
    "d2560-v51k": (2560, 2, 32, 51200, 1, 256),
}
QUICK = ["d256-v8k", "d640-v51k", "d2560-v51k"]
SWEEP_VARIANTS = ["hf_fwd", "ours_fwd", "ours_cache_all", "tl_cache_all"]


def sweep_point(name: str, repeats: int) -> dict:
    """Wall and CPU medians of the sweep variants at one size (in this process, interleaved)."""
    import torch
    import transformers

    from workbench.model import PhiConfig, PhiModel
    from workbench.model.tl_bridge import to_hf_model
    transformers.logging.set_verbosity_error()
    d, n_layers, n_heads, vocab, batch, seq = SWEEP[name]
    cfg = PhiConfig(d_model=d, n_layers=n_layers, n_heads=n_heads, d_mlp=4 * d, d_vocab=vocab, n_ctx=max(seq, 512),
                    partial_rotary_factor=0.4 if d // n_heads == 80 else 0.5, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    ours = PhiModel(cfg).eval()
    hf = to_hf_model(ours)
    hf.config._attn_implementation = "sdpa"
    tl = ours.to_transformer_lens()
    tokens = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(1))
    runs = {"hf_fwd": lambda: hf(tokens, use_cache=False).logits, "ours_fwd": lambda: ours(tokens),
            "ours_cache_all": lambda: ours.run_with_cache(tokens), "tl_cache_all": lambda: tl.run_with_cache(tokens)}
    wall: dict[str, list[float]] = {n: [] for n in runs}
    cpu: dict[str, list[float]] = {n: [] for n in runs}
    with torch.no_grad():
        for f in runs.values():     # warm-up
            f()
        for r in range(repeats):
            for n in (SWEEP_VARIANTS if r % 2 == 0 else SWEEP_VARIANTS[::-1]):
                gc.collect()
                c0, t0 = _cpu_seconds(), time.perf_counter()
                out = runs[n]()
                wall[n].append(time.perf_counter() - t0)
                cpu[n].append(_cpu_seconds() - c0)
                del out
    from workbench.hooks import memory
    return {"wall": {n: statistics.median(v) for n, v in wall.items()},
            "cpu": {n: statistics.median(v) for n, v in cpu.items()}, "rounds": repeats,
            "keep_freed": memory._mallopt is not None}


def sweep(names: list[str], threads: list[int], repeats: int) -> list[dict]:
    """Each (size, threads) point in a fresh interpreter, so no point inherits another's allocator state."""
    out = []
    for name in names:
        for t in threads:
            proc = subprocess.run([sys.executable, __file__, "--sweep-point", name, "--threads", str(t),
                                   "--repeats", str(repeats)], capture_output=True, text=True, cwd=ROOT)
            if proc.returncode:
                raise RuntimeError(f"sweep point {name} ({t} threads) failed:\n{proc.stderr[-2000:]}")
            point = {"size": name, "threads": t, **json.loads(proc.stdout.strip().splitlines()[-1])}
            out.append(point)
            w = point["wall"]
            print(f"  {name} {t} thread(s): cache/HF {w['ours_cache_all'] / w['hf_fwd']:.2f}  "
                  f"ours/HF {w['ours_fwd'] / w['hf_fwd']:.2f}  cache/TL cache {w['ours_cache_all'] / w['tl_cache_all']:.2f}",
                  file=sys.stderr, flush=True)
    return out


def sweep_report(points: list[dict]) -> str:
    """The sweep as a markdown table: wall medians (primary) and ratios, with CPU-time ratios beside them."""
    malloc = " ".join(f"{k}={v}" for k, v in os.environ.items() if k.startswith("MALLOC_")) or "glibc defaults"
    if points and all(p.get("keep_freed") for p in points):
        malloc += " + the workbench's keep-freed-memory policy (hooks/memory.py)"
    lines = [f"Command: `python bench/bench_model.py {' '.join(sys.argv[1:])}`",
             f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC. Machine: {platform.machine()}, "
             f"{os.cpu_count()} CPUs, load average before: {os.getloadavg()[0]:.1f}; malloc: {malloc}; fp32, "
             f"{points[0]['rounds'] if points else 0} interleaved rounds, medians.", "",
             "| size (d_model, layers, heads, vocab, batch x seq) | threads | HF fwd s | ours fwd / HF | "
             "ours cache-all / HF | TL bridge cache-all / HF | ours cache-all / TL cache-all | cache-all / HF (CPU s) |",
             "|---|---|---|---|---|---|---|---|"]
    for p in points:
        w, c = p["wall"], p["cpu"]
        d, layers, heads, vocab, batch, seq = SWEEP[p["size"]]
        lines.append(f"| {p['size']} ({d}, {layers}, {heads}, {vocab}, {batch}x{seq}) | {p['threads']} | "
                     f"{w['hf_fwd']:.3f} | {w['ours_fwd'] / w['hf_fwd']:.2f}x | {w['ours_cache_all'] / w['hf_fwd']:.2f}x | "
                     f"{w['tl_cache_all'] / w['hf_fwd']:.2f}x | {w['ours_cache_all'] / w['tl_cache_all']:.2f}x | "
                     f"{c['ours_cache_all'] / c['hf_fwd']:.2f}x |")
    return "\n".join(lines)


# -- report ----------------------------------------------------------------------
def report(args, wall, cpu, memory, start) -> str:
    import torch
    med = {n: statistics.median(v) for n, v in cpu.items()}
    wmed = {n: statistics.median(v) for n, v in wall.items()}
    malloc = " ".join(f"{k}={v}" for k, v in os.environ.items() if k.startswith("MALLOC_")) or "glibc defaults"
    lines = [f"Command: `{malloc if malloc != 'glibc defaults' else ''} python bench/bench_model.py "
             f"{' '.join(sys.argv[1:])}`".replace("`  ", "`").replace("` ", "`"),
             f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC. "
             f"Machine: {platform.machine()}, {os.cpu_count()} CPUs (shared with other jobs), "
             f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), malloc: {malloc}; config `mid` "
             f"(d_model 640, 8 heads of 80, 8 layers, vocab 51200), batch {args.batch} x {args.seq}, fp32, "
             f"{args.repeats} interleaved rounds.", "",
             "| variant | CPU s (median) | vs HF forward | vs HF fwd+bwd | wall s (median) | wall vs HF |",
             "|---|---|---|---|---|---|"]
    for n in FWD + FWD_BWD:
        if n in med:
            vs_f = med[n] / med["hf_fwd"] if "hf_fwd" in med else float("nan")
            vs_b = med[n] / med["hf_fwd_bwd"] if n in FWD_BWD and "hf_fwd_bwd" in med else None
            ref = "hf_fwd_bwd" if n in FWD_BWD else "hf_fwd"
            w_vs = wmed[n] / wmed[ref] if ref in wmed else float("nan")
            lines.append(f"| {n} | {med[n]:.3f} | {vs_f:.2f}x | {'' if vs_b is None else f'{vs_b:.2f}x'} | "
                         f"{wmed[n]:.3f} | {w_vs:.2f}x |")
    if memory:
        lines += ["", "| variant | peak RSS growth MiB | cached tensors | tensor MiB | memory held MiB |",
                  "|---|---|---|---|---|"]
        for m in memory:
            lines.append(f"| {m['variant']} | {m['peak_delta_mib']:.0f} | {m.get('cache_tensors', '')} | "
                         f"{m.get('requested_mib', 0):.1f} | {m.get('held_mib', 0):.1f} |")
    if start:
        lines += ["", "| start-up (fresh interpreter, median) | seconds | peak RSS MiB |", "|---|---|---|"]
        for k, v in start.items():
            label = f"`{IMPORTS[k][1]}`" + (f" (after an untimed `{IMPORTS[k][0]}`)" if IMPORTS.get(k, ("",))[0] else "") \
                if k in IMPORTS else k
            lines.append(f"| {label} | {v['s']:.2f} | {v['mib']:.0f} |" if k != "workbench --help"
                         else f"| `workbench --help` (wall, whole process) | {v['s']:.2f} | |")
        extra = start["workbench+PhiModel"]["s"] - start["torch"]["s"]
        lines.append(f"| `import workbench; from workbench import PhiModel` minus `import torch` "
                     f"(difference of the medians above) | {extra:.2f} | |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1: see above)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--only", nargs="*", help="variants to time (default: all)")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--skip-startup", action="store_true")
    p.add_argument("--startup-repeats", type=int, default=9)
    p.add_argument("--memory-of", help=argparse.SUPPRESS)
    p.add_argument("--json", type=Path, help="also write raw numbers here")
    p.add_argument("--sweep", action="store_true", help="caching every hook vs HF's forward across sizes and threads")
    p.add_argument("--quick", action="store_true", help="with --sweep: sizes " + ", ".join(QUICK) + ", one thread, 3 rounds")
    p.add_argument("--sizes", nargs="*", choices=list(SWEEP), help="with --sweep: these sizes only")
    p.add_argument("--sweep-point", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.sweep:
        names = args.sizes or (QUICK if args.quick else list(SWEEP))
        points = sweep(names, [1] if args.quick else [1, 2], 3 if args.quick else args.repeats)
        print(sweep_report(points))
        if args.json:
            args.json.write_text(json.dumps(points, indent=2))
        return
    import torch
    torch.set_num_threads(args.threads)
    if args.sweep_point:
        print(json.dumps(sweep_point(args.sweep_point, args.repeats)))
        return
    if args.memory_of:
        print(json.dumps(measure_memory(args.memory_of, args.batch, args.seq)))
        return
    names = args.only or FWD + FWD_BWD
    wall, cpu = time_variants(names, args.repeats, args.batch, args.seq)
    memory = [] if args.skip_memory else memory_all(names, args.batch, args.seq, args.threads)
    start = {} if args.skip_startup else startup(args.startup_repeats)
    print(report(args, wall, cpu, memory, start))
    if args.json:
        args.json.write_text(json.dumps({"wall": wall, "cpu": cpu, "memory": memory, "startup": start}, indent=2))


if __name__ == "__main__":
    main()
