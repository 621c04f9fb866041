"""Training step time with and without activation recording, side by side.

CPU (what docs/bench-training.md reports):
    python bench/bench_training.py --config default --rounds 40

Each round runs one training step of each variant in a rotating order, so the
variants see the same machine load; we report the median step time of each and
the median over rounds of the per-round ratio:
  * none:  a training step, nothing recorded
  * four:  a step, then 4 hook points recorded on the probe set (every step)
  * resid: a step, then every layer's residual stream recorded (every step)

GPU (written for an H100, not measured in this session):
    python bench/bench_training.py --gpu --preset phi-2 --micro 4 --seq 2048 --steps 20
prints tokens/s and MFU = 6 * n_params * tokens/s / peak bf16 FLOP/s, and the
same with 4 hook points recorded every step.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

FOUR_HOOKS = ["blocks.0.attn.hook_pattern", "blocks.0.hook_resid_post",
              "blocks.1.attn.hook_pattern", "blocks.1.hook_resid_post"]
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense bf16 FLOP/s (SXM)


def bench_cpu(config: str, rounds: int, warmup: int, threads: int) -> dict:
    from workbench.training.config import load_config
    from workbench.training.recorder import Recorder
    from workbench.training.trainer import Trainer
    tmp = Path(tempfile.mkdtemp(prefix="bench-training-"))
    cfg = load_config(config).override(record__hooks=[], checkpoint__every=0, schedule__eval_every=0,
                                       schedule__max_steps=10**6, system__num_threads=threads,
                                       system__device="cpu")
    tr = Trainer(cfg, tmp / "run", progress=False)
    L = tr.model.cfg.n_layers
    resid = ["blocks.0.hook_resid_pre"] + [f"blocks.{i}.hook_resid_post" for i in range(L)]
    recs = {"none": None,
            "four": Recorder(tr.model, cfg.override(record__hooks=FOUR_HOOKS), tmp / "four", tr.data, tr.device),
            "resid": Recorder(tr.model, cfg.override(record__hooks=resid), tmp / "resid", tr.data, tr.device)}
    times: dict[str, list[float]] = {k: [] for k in recs}
    names = list(recs)
    for i in range(warmup + rounds):
        order = names[i % 3:] + names[:i % 3]
        for name in order:
            t0 = time.perf_counter()
            loss, _ = tr.train_step()
            float(loss)
            if recs[name] is not None:
                recs[name].record(tr.step)
            dt = time.perf_counter() - t0
            if i >= warmup:
                times[name].append(dt)
    for r in recs.values():
        if r is not None:
            r.close()
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = {k: statistics.median(a / b for a, b in zip(times[k], times["none"])) for k in ("four", "resid")}
    probe = recs["four"].tokens.shape if recs["four"] else None
    return {"config": config, "threads": threads, "rounds": rounds, "n_params": sum(p.numel() for p in tr.model.parameters()),
            "batch_tokens": cfg.data.batch_size * cfg.data.seq_len, "probe_shape": list(probe),
            "median_step_s": {k: round(v, 5) for k, v in med.items()},
            "median_ratio_vs_none": {k: round(v, 4) for k, v in ratio.items()},
            "resid_hooks": resid}


def bench_gpu(preset: str, micro: int, seq: int, steps: int, compile_: bool) -> dict:
    from workbench import PhiConfig, PhiModel
    if not torch.cuda.is_available():
        raise SystemExit("--gpu needs a CUDA device")
    dev = torch.device("cuda")
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    cfg = PhiConfig.from_name(preset)
    model = PhiModel(cfg).to(dev)
    from workbench.training.trainer import enable_recompute_activations
    enable_recompute_activations(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    fwd = torch.compile(model) if compile_ else model
    n = sum(p.numel() for p in model.parameters())
    toks = torch.randint(0, cfg.d_vocab, (micro, seq + 1), device=dev)
    probe = torch.randint(0, cfg.d_vocab, (16, 129), device=dev)
    from workbench.store import StoreWriter

    def step(record: "StoreWriter | None", i: int) -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = fwd(toks[:, :-1])
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), toks[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if record is not None:
            acts = {}
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
                model.run_with_hooks(probe, return_type=None, fwd_hooks=[
                    (h, lambda t, hook: acts.__setitem__(hook.name, t)) for h in FOUR_HOOKS])
            record.append_step(i, acts)

    out = {"device": name, "preset": preset, "n_params": n, "micro": micro, "seq": seq}
    tmp = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    for label in ("none", "four"):
        writer = None
        if label == "four":
            shapes = {}
            with torch.no_grad():
                model.run_with_hooks(probe[:1], return_type=None, fwd_hooks=[
                    (h, lambda t, hook: shapes.__setitem__(hook.name, tuple(t.shape[1:]))) for h in FOUR_HOOKS])
            writer = StoreWriter(tmp / "rec.h5", {h: (s, "bfloat16") for h, s in shapes.items()},
                                 seq_len=probe.shape[1], steps=True, probe_tokens=probe.cpu())
        for i in range(3):
            step(writer, i)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for i in range(3, 3 + steps):
            step(writer, i)
        torch.cuda.synchronize()
        dt = (time.perf_counter() - t0) / steps
        if writer is not None:
            writer.close()
        tps = micro * seq / dt
        out[label] = {"step_s": round(dt, 4), "tok_per_s": round(tps), "mfu": round(6 * n * tps / peak, 4) if peak else None}
    out["recording_ratio"] = round(out["four"]["step_s"] / out["none"]["step_s"], 4)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="default")
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--gpu", action="store_true")
    ap.add_argument("--preset", default="phi-2")
    ap.add_argument("--micro", type=int, default=4)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--no-compile", action="store_true")
    a = ap.parse_args()
    res = (bench_gpu(a.preset, a.micro, a.seq, a.steps, not a.no_compile) if a.gpu
           else bench_cpu(a.config, a.rounds, a.warmup, a.threads))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
