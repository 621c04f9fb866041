"""One-shot GPU check: numerics, speed, MFU, recording and caching cost at the phi-2 configuration.

Run it through ``bash bench/gpu_check.sh`` (which installs what it needs first); it writes
``gpu_check.json`` and ``gpu_check.md`` into ``--out``. Every section runs on its own: a
failure is written into the results and the next section still runs.

* parity: logits of a phi-2-sized random model vs ``transformers.PhiForCausalLM`` on the same
  weights, in fp32 and in bf16 (and how far each bf16 is from the fp32 reference);
* forward and training tokens/s and MFU at the phi-2 config, bf16 autocast, torch.compile
  off and on; training goes through ``Trainer.train_step`` (fused AdamW, recomputed activations);
* recording cost during training: a step, then 4 hooks / every residual recorded on the probe
  set, every step, interleaved, median ratio to the step without;
* ``workbench cache`` throughput vs a forward-only loop over the same rows;
* the circuit EAP time over every edge vs one forward + backward, and its peak memory.

``--dry-run``: the same code on a tiny config on CPU (compile with the "eager" backend), in
seconds; the tests run it.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from workbench import PhiConfig, PhiModel
from workbench.model.random_weights import randomize_norms_and_biases
from workbench.model.weight_map import from_hf
from workbench.training.config import TrainConfig
from workbench.training.recorder import Recorder
from workbench.training.trainer import Trainer

# Dense bf16 peak FLOP/s by GPU name (SXM parts; PCIe H100 is 756e12).
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12, "4090": 165e12}
GOALS = {"train_mfu_bf16": 0.45, "record_four_ratio": 1.05}


@dataclass
class Plan:
    """Sizes and counts of every measurement (the phi-2 plan, or a tiny one for --dry-run)."""
    dry_run: bool
    device: str
    model: dict = field(default_factory=dict)    # PhiConfig overrides of the phi-2 preset
    micro: int = 8                                # rows per training step
    seq: int = 2048
    warmup: int = 3
    steps: int = 10
    rounds: int = 8                               # interleaved recording rounds
    compile_backend: str = "inductor"
    cache_rows: int = 256
    cache_seq: int = 512
    cache_batch: int = 16
    budget_s: float = 450.0                       # sections are skipped beyond this (the goal: < 8 min)

    @classmethod
    def make(cls, dry_run: bool) -> "Plan":
        if not dry_run:
            return cls(dry_run=False, device="cuda")
        tiny = dict(d_model=64, n_layers=2, n_heads=4, d_mlp=256, d_vocab=512, n_ctx=128, partial_rotary_factor=0.5,
                    bos_token_id=0, eos_token_id=0)
        return cls(dry_run=True, device="cpu", model=tiny, micro=2, seq=64, warmup=1, steps=2, rounds=2,
                   compile_backend="eager", cache_rows=8, cache_seq=32, cache_batch=4, budget_s=600.0)

    def phi_config(self) -> PhiConfig:
        return PhiConfig.from_name("phi-2", **self.model)

    def four_hooks(self) -> list[str]:
        last = self.phi_config().n_layers - 1
        return ["blocks.0.attn.hook_pattern", "blocks.0.hook_resid_post",
                f"blocks.{last}.attn.hook_pattern", f"blocks.{last}.hook_resid_post"]

    def resid_hooks(self) -> list[str]:
        n = self.phi_config().n_layers
        return ["blocks.0.hook_resid_pre"] + [f"blocks.{i}.hook_resid_post" for i in range(n)]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peak_flops(device: str) -> Optional[float]:
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def env_info(plan: Plan) -> dict:
    info = {"torch": torch.__version__, "python": sys.version.split()[0], "device": plan.device,
            "dry_run": plan.dry_run, "n_params": plan.phi_config().n_params()}
    if plan.device.startswith("cuda"):
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), cuda=torch.version.cuda,
                    peak_bf16_flops=peak_flops(plan.device))
    return info


# -- parity -------------------------------------------------------------------------------------
def random_hf_model(plan: Plan):
    """A random ``transformers.PhiForCausalLM`` of the plan's size, built on the device, with random
    LayerNorm gains and biases (HF's 1/0 initialisation would hide loading mistakes)."""
    from transformers import PhiConfig as HFConfig, PhiForCausalLM
    cfg = plan.phi_config()
    hf_cfg = HFConfig(**{k: v for k, v in cfg.to_hf().items() if k not in ("architectures", "model_type")})
    torch.manual_seed(0)
    with torch.device(plan.device):
        hf = PhiForCausalLM(hf_cfg).eval()
    return randomize_norms_and_biases(hf)


def check_parity(plan: Plan) -> dict:
    """Max |logit difference| of ours vs HF in fp32 and bf16, with the bf16 error of each vs fp32."""
    hf = random_hf_model(plan)
    cfg = plan.phi_config()
    with torch.device("meta"):
        ours = PhiModel(cfg)
    ours.load_state_dict({k: v.clone() for k, v in from_hf(hf.state_dict(), cfg).items()}, assign=True)
    ours.eval()
    toks = torch.randint(0, cfg.d_vocab, (2, min(256, plan.seq)), generator=torch.Generator().manual_seed(1))
    toks = toks.to(plan.device)
    with torch.no_grad():
        ref = hf(toks).logits.float()
        ours32 = ours(toks).float()
        hf.to(torch.bfloat16)
        ours.to(torch.bfloat16)
        hf16, ours16 = hf(toks).logits.float(), ours(toks).float()
    scale = float(ref.std())
    out = {"tokens": list(toks.shape), "logit_std": round(scale, 4),
           "fp32_max_abs_diff": float((ours32 - ref).abs().max()),
           "bf16_max_abs_diff_ours_vs_hf": float((ours16 - hf16).abs().max()),
           "bf16_error_vs_fp32": {"ours": float((ours16 - ref).abs().max()), "hf": float((hf16 - ref).abs().max())},
           "bf16_argmax_agreement_ours_vs_hf": float((ours16.argmax(-1) == hf16.argmax(-1)).float().mean())}
    del hf, ours
    return out


# -- training and forward speed -------------------------------------------------------------------
def make_trainer(plan: Plan, folder: Path, record_hooks: Optional[list[str]] = None) -> Trainer:
    """A Trainer at the plan's size on random token ids (a .bin memmap), bf16 on the GPU."""
    cfg = plan.phi_config()
    ids = folder / "ids.bin"
    if not ids.exists():
        rng = np.random.default_rng(0)
        rng.integers(0, cfg.d_vocab, size=max(1 << 20, 4 * plan.micro * (plan.seq + 1)), dtype=np.uint16).tofile(ids)
    gpu = plan.device.startswith("cuda")
    model_keys = {"d_model", "n_layers", "n_heads", "d_mlp", "n_ctx", "partial_rotary_factor"}
    toml = {"model": {"preset": "phi-2", **{k: v for k, v in plan.model.items() if k in model_keys}},
            "data": {"sources": [str(ids)], "vocab_size": cfg.d_vocab, "seq_len": plan.seq,
                     "batch_size": plan.micro},
            "schedule": {"max_steps": 10**6, "warmup_steps": 10, "eval_every": 0},
            "system": {"device": plan.device, "precision": "bf16" if gpu else "fp32",
                       "recompute_activations": gpu, "num_threads": 0 if gpu else 1},
            "record": {"hooks": record_hooks or [], "probe_rows": 16, "probe_period": 64, "probe_val_rows": 0,
                       "dtype": "bfloat16"},
            "checkpoint": {"every": 0}}
    run = Path(tempfile.mkdtemp(dir=folder, prefix="run-"))
    return Trainer(TrainConfig.from_dict(toml), run, progress=False)


def timed_steps(step: Callable[[], Any], n: int, device: str) -> list[float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


def measure_training(plan: Plan, folder: Path, compile_: bool) -> dict:
    tr = make_trainer(plan, folder)
    if compile_:
        tr.forward = torch.compile(tr.wrapped, backend=plan.compile_backend)
    t0 = time.perf_counter()
    timed_steps(lambda: float(tr.train_step()[0]), plan.warmup, plan.device)   # compiles here
    warm_s = time.perf_counter() - t0
    times = timed_steps(lambda: float(tr.train_step()[0]), plan.steps, plan.device)
    step_s = statistics.median(times)
    return _speed(plan, step_s, warm_s, flops_per_token=6, mem=_peak_mem(plan))


def measure_forward(plan: Plan, folder: Path, compile_: bool) -> dict:
    cfg = plan.phi_config()
    torch.manual_seed(0)
    with torch.device(plan.device):   # initialising 2.8 B parameters on a CPU takes tens of seconds
        model = PhiModel(cfg).eval()
    fwd = torch.compile(model, backend=plan.compile_backend) if compile_ else model
    toks = torch.randint(0, cfg.d_vocab, (plan.micro, plan.seq), device=plan.device)
    ctx = (torch.autocast("cuda", dtype=torch.bfloat16) if plan.device.startswith("cuda")
           else torch.autocast("cpu", enabled=False))

    def run() -> None:
        with torch.no_grad(), ctx:
            fwd(toks)
    t0 = time.perf_counter()
    timed_steps(run, plan.warmup, plan.device)
    warm_s = time.perf_counter() - t0
    step_s = statistics.median(timed_steps(run, plan.steps, plan.device))
    del model, fwd
    return _speed(plan, step_s, warm_s, flops_per_token=2, mem=_peak_mem(plan))


def _peak_mem(plan: Plan) -> Optional[float]:
    if not plan.device.startswith("cuda"):
        return None
    gib = torch.cuda.max_memory_allocated() / 2**30
    torch.cuda.reset_peak_memory_stats()
    return round(gib, 1)


def _speed(plan: Plan, step_s: float, warm_s: float, flops_per_token: int, mem: Optional[float]) -> dict:
    tps = plan.micro * plan.seq / step_s
    peak = peak_flops(plan.device)
    n = plan.phi_config().n_params()
    return {"tokens_per_step": plan.micro * plan.seq, "step_s": round(step_s, 4), "tok_per_s": round(tps),
            "mfu": round(flops_per_token * n * tps / peak, 4) if peak else None,
            "warmup_s": round(warm_s, 1), "peak_mem_gib": mem}


# -- recording during training ----------------------------------------------------------------------
def measure_recording(plan: Plan, folder: Path) -> dict:
    """Step time with 4 hooks / every residual recorded every step, interleaved with plain steps."""
    tr = make_trainer(plan, folder)
    recorders = {"four": plan.four_hooks(), "resid": plan.resid_hooks()}
    recs: dict[str, Optional[Recorder]] = {"none": None}
    for name, hooks in recorders.items():
        cfg = tr.cfg.override(record__hooks=hooks)
        recs[name] = Recorder(tr.model, cfg, Path(tempfile.mkdtemp(dir=folder)), tr.data, tr.device)
    times: dict[str, list[float]] = {k: [] for k in recs}
    names, step = list(recs), [0]

    def one(name: str) -> None:
        float(tr.train_step()[0])
        if recs[name] is not None:
            step[0] += 1
            recs[name].record(step[0])
    for i in range(plan.warmup + plan.rounds):
        for name in names[i % 3:] + names[:i % 3]:      # rotate the order: each sees the same load
            t = timed_steps(lambda: one(name), 1, plan.device)[0]
            if i >= plan.warmup:
                times[name].append(t)
    for r in recs.values():
        if r is not None:
            r.close()
    ratio = {k: round(statistics.median(a / b for a, b in zip(times[k], times["none"])), 4) for k in recorders}
    return {"hooks": recorders, "median_step_s": {k: round(statistics.median(v), 4) for k, v in times.items()},
            "median_ratio_vs_none": ratio, "rounds": plan.rounds,
            "probe_rows": 16, "probe_tokens": 1 + 64 * 2}


# -- workbench cache ----------------------------------------------------------------------------------
def measure_cache(plan: Plan, folder: Path) -> dict:
    """`workbench cache` (a subprocess, as a user runs it) vs a forward-only loop over the same rows."""
    cfg = plan.phi_config()
    dtype = torch.bfloat16 if plan.device.startswith("cuda") else torch.float32
    torch.manual_seed(0)
    with torch.device(plan.device):
        model = PhiModel(cfg).to(dtype)
    ckpt = folder / "model"
    model.save_pretrained(ckpt)
    rows = np.random.default_rng(0).integers(0, cfg.d_vocab, size=(plan.cache_rows, plan.cache_seq), dtype=np.int64)
    np.save(folder / "rows.npy", rows)
    hooks = sorted({f"blocks.{i}.hook_resid_post" for i in (0, cfg.n_layers // 2, cfg.n_layers - 1)})
    dname = "bfloat16" if dtype == torch.bfloat16 else "float32"
    cmd = [sys.executable, "-m", "workbench.cli", "cache", str(ckpt), "--input", str(folder / "rows.npy"),
           "--out", str(folder / "acts.h5"), "--batch-size", str(plan.cache_batch), "--seq-len", str(plan.cache_seq),
           "--device", plan.device, "--model-dtype", dname, "--dtype", "bfloat16"]
    for h in hooks:
        cmd += ["--hooks", h]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"workbench cache failed ({r.returncode}): {r.stderr[-1500:]}")
    m = re.search(r"([\d,]+) tokens/s", r.stdout)
    cache_tps = float(m.group(1).replace(",", "")) if m else None
    model = model.eval()
    x = torch.from_numpy(rows).to(plan.device)
    fwd_s = statistics.median(timed_steps(lambda: [model(b, return_type=None) for b in x.split(plan.cache_batch)],
                                          3, plan.device))
    fwd_tps = plan.cache_rows * plan.cache_seq / fwd_s
    return {"hooks": hooks, "rows": plan.cache_rows, "seq": plan.cache_seq, "batch": plan.cache_batch,
            "stored_bytes": (folder / "acts.h5").stat().st_size, "cache_tok_per_s": cache_tps,
            "cache_wall_s_incl_start_and_load": round(wall, 1), "forward_only_tok_per_s": round(fwd_tps),
            "cache_vs_forward": round(cache_tps / fwd_tps, 3) if cache_tps else None}


def measure_eap(plan: Plan) -> dict:
    """EAP over every edge at the plan's config (fp32 weights), against one clean forward + backward."""
    from workbench.analysis.circuits import edge_attribution
    cfg = plan.phi_config()
    torch.manual_seed(0)
    with torch.device(plan.device):
        model = PhiModel(cfg).eval()
    batch, pos = (4, 128) if not plan.dry_run else (2, 16)
    g = torch.Generator().manual_seed(0)
    clean, corrupted = (torch.randint(0, cfg.d_vocab, (batch, pos), generator=g).to(plan.device) for _ in range(2))
    a, b = 17, 101

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return (logits[:, -1, a] - logits[:, -1, b]).mean()

    def fwd_bwd() -> None:
        model.zero_grad(set_to_none=True)
        metric(model(clean)).backward()

    graph = edge_attribution(model, clean, corrupted, metric)     # warm-up
    _peak_mem(plan)
    eap_s = timed_steps(lambda: edge_attribution(model, clean, corrupted, metric), plan.steps, plan.device)
    eap_mem = _peak_mem(plan)
    base_s = timed_steps(fwd_bwd, plan.steps, plan.device)
    base_mem = _peak_mem(plan)
    model.zero_grad(set_to_none=True)
    del model
    return {"measured": True, "edges": graph.n_edges, "batch": batch, "pos": pos,
            "eap_s": round(statistics.median(eap_s), 4), "fwd_bwd_s": round(statistics.median(base_s), 4),
            "eap_vs_fwd_bwd": round(statistics.median(eap_s) / statistics.median(base_s), 3),
            "peak_gib_eap": eap_mem, "peak_gib_fwd_bwd": base_mem}


# -- running and reporting -------------------------------------------------------------------------
def cleanup() -> None:
    """Free what a section left (compiled graphs hold their models) before the next one."""
    import gc
    torch._dynamo.reset()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_sections(plan: Plan, folder: Path) -> dict:
    t_start = time.perf_counter()
    sections: list[tuple[str, Callable[[], dict]]] = [
        ("parity", lambda: check_parity(plan)),
        ("train_eager", lambda: measure_training(plan, folder, compile_=False)),
        ("train_compiled", lambda: measure_training(plan, folder, compile_=True)),
        ("forward_eager", lambda: measure_forward(plan, folder, compile_=False)),
        ("forward_compiled", lambda: measure_forward(plan, folder, compile_=True)),
        ("recording", lambda: measure_recording(plan, folder)),
        ("cache", lambda: measure_cache(plan, folder)),
        ("eap", lambda: measure_eap(plan)),
    ]
    results: dict[str, Any] = {"env": env_info(plan), "plan": asdict(plan), "goals": GOALS}
    for name, fn in sections:
        elapsed = time.perf_counter() - t_start
        if elapsed > plan.budget_s:
            results[name] = {"skipped": f"over the time budget ({elapsed:.0f} s of {plan.budget_s:.0f} s)"}
            continue
        t0 = time.perf_counter()
        print(f"[{elapsed:6.1f} s] {name} ...", flush=True)
        try:
            results[name] = {**fn(), "section_s": round(time.perf_counter() - t0, 1)}
        except Exception as e:  # noqa: BLE001 (a failed section is a result; the others still run)
            results[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
        cleanup()
    results["total_s"] = round(time.perf_counter() - t_start, 1)
    return results


def _fmt(x: Any, pct: bool = False) -> str:
    if x is None:
        return "n/a"
    if pct:
        return f"{100 * x:.1f}%"
    return f"{x:,.4g}" if isinstance(x, float) else f"{x:,}" if isinstance(x, int) else str(x)


def _speed_rows(r: dict) -> list[str]:
    rows = []
    for key, label in (("train_eager", "training step, eager"), ("train_compiled", "training step, torch.compile"),
                       ("forward_eager", "forward, eager"), ("forward_compiled", "forward, torch.compile")):
        s = r.get(key, {})
        if "tok_per_s" in s:
            rows.append(f"| {label} | {_fmt(s['tok_per_s'])} | {_fmt(s['mfu'], pct=True)} | {s['step_s']} | "
                        f"{s['warmup_s']} | {_fmt(s['peak_mem_gib'])} |")
        else:
            rows.append(f"| {label} | {s.get('error') or s.get('skipped', 'n/a')} | | | | |")
    return rows


def to_markdown(r: dict) -> str:
    e, p = r["env"], r["plan"]
    lines = [f"# GPU check{' (DRY RUN: tiny config on CPU, not GPU figures)' if p['dry_run'] else ''}", "",
             f"{e.get('gpu', e['device'])}, torch {e['torch']}, CUDA {e.get('cuda', 'n/a')}; model "
             f"{e['n_params']:,} parameters; total {r['total_s']} s.", "", "## Logits vs transformers (random weights)", ""]
    par = r.get("parity", {})
    if "fp32_max_abs_diff" in par:
        lines += [f"- fp32: max |ours - HF| = {par['fp32_max_abs_diff']:.3g} (logit std {par['logit_std']})",
                  f"- bf16: max |ours - HF| = {par['bf16_max_abs_diff_ours_vs_hf']:.3g}; error vs the fp32 "
                  f"reference: ours {par['bf16_error_vs_fp32']['ours']:.3g}, HF {par['bf16_error_vs_fp32']['hf']:.3g}; "
                  f"argmax agreement {100 * par['bf16_argmax_agreement_ours_vs_hf']:.2f}%"]
    else:
        lines.append(f"- {par.get('error') or par.get('skipped')}")
    lines += ["", f"## Speed at {p['micro']} x {p['seq']} tokens (bf16 autocast; MFU = 6N (training) or 2N "
              f"(forward) x tokens/s / peak; goal: training >= {GOALS['train_mfu_bf16']:.0%})", "",
              "| what | tokens/s | MFU | step s | warm-up s | peak GiB |", "|---|---|---|---|---|---|", *_speed_rows(r)]
    rec = r.get("recording", {})
    lines += ["", f"## Recording during training (goal: 4 hooks every step <= {GOALS['record_four_ratio']}x)", ""]
    if "median_ratio_vs_none" in rec:
        lines += [f"- 4 hooks ({', '.join(rec['hooks']['four'])}): {rec['median_ratio_vs_none']['four']}x",
                  f"- every residual ({len(rec['hooks']['resid'])} hooks): {rec['median_ratio_vs_none']['resid']}x",
                  f"- median step s: {rec['median_step_s']} ({rec['rounds']} interleaved rounds)"]
    else:
        lines.append(f"- {rec.get('error') or rec.get('skipped')}")
    c = r.get("cache", {})
    lines += ["", "## `workbench cache` vs forward-only", ""]
    if "forward_only_tok_per_s" in c:
        lines += [f"- {c['rows']} rows x {c['seq']} tokens, batch {c['batch']}, hooks {', '.join(c['hooks'])}, "
                  f"{c['stored_bytes'] / 1e9:.2f} GB stored",
                  f"- cache {_fmt(c['cache_tok_per_s'])} tokens/s vs forward-only {_fmt(c['forward_only_tok_per_s'])}: "
                  f"{_fmt(c['cache_vs_forward'])}x (command wall time with start-up and load: "
                  f"{c['cache_wall_s_incl_start_and_load']} s)"]
    else:
        lines.append(f"- {c.get('error') or c.get('skipped')}")
    e = r.get("eap", {})
    lines += ["", "## Circuit EAP at the phi-2 config", ""]
    if e.get("measured"):
        lines += [f"- EAP over all {e['edges']:,} edges, batch {e['batch']} x {e['pos']} tokens: {e['eap_s']} s, "
                  f"{e['eap_vs_fwd_bwd']}x one clean forward + backward ({e['fwd_bwd_s']} s); "
                  f"peak {_fmt(e['peak_gib_eap'])} GiB (forward + backward: {_fmt(e['peak_gib_fwd_bwd'])} GiB)"]
    else:
        lines.append(f"- {e.get('error') or e.get('skipped')}")
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="a tiny config on CPU, to check the script itself")
    ap.add_argument("--out", type=Path, default=Path("gpu_check"), help="folder for gpu_check.json and .md")
    ap.add_argument("--budget-s", type=float, default=None, help="skip sections that start after this many seconds")
    a = ap.parse_args()
    plan = Plan.make(a.dry_run)
    if a.budget_s is not None:
        plan.budget_s = a.budget_s
    if not plan.dry_run and not torch.cuda.is_available():
        raise SystemExit("error: no CUDA GPU visible to torch; run with --dry-run to check the script on CPU")
    if plan.dry_run:
        torch.set_num_threads(1)
    a.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gpu-check-", dir=os.environ.get("GPU_CHECK_TMP")) as tmp:
        results = run_sections(plan, Path(tmp))
    (a.out / "gpu_check.json").write_text(json.dumps(results, indent=2))
    (a.out / "gpu_check.md").write_text(to_markdown(results))
    print(to_markdown(results))
    print(f"\nwrote {a.out / 'gpu_check.json'} and {a.out / 'gpu_check.md'}")


if __name__ == "__main__":
    main()
