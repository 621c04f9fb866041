"""Training step time with and without activation recording, side by side.

CPU (what docs/bench-training.md reports):
    python bench/bench_training.py --config default --rounds 40

Each round runs one training step of each variant in a rotating order, so the
variants see the same machine load; we report the median step time of each and
the median over rounds of the per-round ratio:
  * none:  a training step, nothing recorded
  * four:  a step, then 4 hook points recorded on the probe set (every step)
  * resid: a step, then every layer's residual stream recorded (every step)

GPU figures (tokens/s, MFU, recording cost at the phi-2 config) come from
``bash bench/gpu_check.sh`` (docs/bench-training.md).
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from workbench.training.config import load_config
from workbench.training.recorder import Recorder
from workbench.training.trainer import Trainer

FOUR_HOOKS = ["blocks.0.attn.hook_pattern", "blocks.0.hook_resid_post",
              "blocks.1.attn.hook_pattern", "blocks.1.hook_resid_post"]


def bench_cpu(config: str, rounds: int, warmup: int, threads: int) -> dict:
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="default")
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    res = bench_cpu(a.config, a.rounds, a.warmup, a.threads)
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
