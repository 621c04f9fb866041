"""Benchmarks for workbench.analysis (run by hand; results in docs/bench-analysis.md).

  python bench/bench_analysis.py patching    [--preset small --batch 4 --pos 16 --repeats 5]
  python bench/bench_analysis.py attribution [--preset mid --batch 8 --pos 64 --repeats 7]
  python bench/bench_analysis.py probe       [--gb 4 --budget-gb 1 --path /tmp/probe-bench.h5]

patching:    a full head-by-position sweep (get_act_patch_attn_head_out_by_pos) with ours vs
             transformer_lens.patching on the SAME PhiModel and clean cache, interleaved A/B
             (TL under torch.no_grad, its fastest setting); also checks the results agree.
attribution: attribution patching over all heads (by position) vs one plain forward.
probe:       writes a store --gb large, then trains probes on two hooks in a child process and
             reports the child's peak RSS (the store is --gb / --budget-gb times the budget).
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # TL's sweep draws a progress bar per call
import torch  # noqa: E402

from common import interleaved, random_model, random_prompts, timed  # noqa: E402


def _inputs(model, batch: int, pos: int):
    from workbench.analysis.metrics import make_logit_diff_metric
    clean, corrupted = random_prompts(model, batch, pos)
    answers = torch.randint(0, model.cfg.d_vocab, (batch, 2), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        _, cache = model.run_with_cache(clean)
    return clean, corrupted, cache, make_logit_diff_metric(answers)


def bench_patching(a) -> None:
    import transformer_lens.patching as tlp

    from workbench.analysis import patching as P
    model = random_model(a.preset)
    _, corrupted, cache, metric = _inputs(model, a.batch, a.pos)
    n_runs = model.cfg.n_layers * a.pos * model.cfg.n_heads
    def theirs() -> torch.Tensor:
        with torch.no_grad():
            return tlp.get_act_patch_attn_head_out_by_pos(model, corrupted, cache, metric)
    t, last = interleaved({"ours": lambda: P.get_act_patch_attn_head_out_by_pos(model, corrupted, cache, metric),
                           "TL": theirs}, a.repeats)
    ours_t, tl_t = t["ours"], t["TL"]
    diff = (last["ours"] - last["TL"].float()).abs().max().item()
    ratios = [o / t for o, t in zip(ours_t, tl_t)]
    print(f"patching sweep, preset {a.preset}, batch {a.batch} x pos {a.pos}, {n_runs} patched runs:")
    print(f"  ours median {statistics.median(ours_t):.3f} s, TL median {statistics.median(tl_t):.3f} s, "
          f"median ratio ours/TL {statistics.median(ratios):.3f} (goal <= 0.5); max |ours - TL| {diff:.2e}")


def bench_attribution(a) -> None:
    from workbench.analysis import attribution as A
    model = random_model(a.preset)
    _, corrupted, cache, metric = _inputs(model, a.batch, a.pos)
    def forward() -> None:
        with torch.no_grad():
            model(corrupted)

    def clean_cache() -> None:
        with torch.no_grad():
            model.run_with_cache(corrupted, names_filter=lambda n: n.endswith("hook_z"))
    t, _ = interleaved({"forward": forward,
                        "attr heads": lambda: A.attr_patch_attn_head_out_by_pos(model, corrupted, cache, metric),
                        "attr all": lambda: A.attribution_patch_all(model, corrupted, cache, metric),
                        "clean cache run": clean_cache}, a.repeats)
    fwd_t, attr_t, all_t, clean_t = t["forward"], t["attr heads"], t["attr all"], t["clean cache run"]
    med = statistics.median
    heads = med([t / f for t, f in zip(attr_t, fwd_t)])
    every = med([t / f for t, f in zip(all_t, fwd_t)])
    with_clean = med([(t + c) / f for t, c, f in zip(attr_t, clean_t, fwd_t)])
    n = model.cfg.n_layers * model.cfg.n_heads * a.pos
    print(f"attribution patching, preset {a.preset}, batch {a.batch} x pos {a.pos} ({n} head x position targets):")
    print(f"  one forward median {med(fwd_t):.3f} s; all heads by position {heads:.2f}x a forward (goal <= 3.5); "
          f"resid/attn/mlp/heads together {every:.2f}x; heads incl. making the clean cache {with_clean:.2f}x")


def bench_probe(a) -> None:
    path = Path(a.path)
    if not path.exists() or a.rewrite:
        t, _ = timed(lambda: _write_store(path, a.gb))
        print(f"  wrote {path} ({path.stat().st_size / 2**30:.2f} GiB) in {t:.1f} s", flush=True)
    cmd = [sys.executable, __file__, "probe-train", "--path", str(path), "--epochs", str(a.epochs)]
    t, proc = timed(lambda: subprocess.run(cmd, capture_output=True, text=True))
    print(proc.stdout.strip())
    if proc.returncode:
        print(proc.stderr[-3000:])
        raise SystemExit(proc.returncode)
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB -> GiB
    size = path.stat().st_size / 2**30
    print(f"probe training over a {size:.2f} GiB store ({size / a.budget_gb:.1f}x a {a.budget_gb} GiB budget): "
          f"{t:.1f} s, peak RSS of the training process {rss:.3f} GiB (goal <= 1)")


ROWS_PER_GB, POS, D = 2048, 128, 1024   # two fp16 hooks [128, 1024]: 512 KiB a row


def _write_store(path: Path, gb: float) -> None:
    from workbench.store import StoreWriter
    rows = int(gb * ROWS_PER_GB)
    g = torch.Generator().manual_seed(0)
    direction = torch.randn(D, generator=g)
    hooks = {f"blocks.{i}.hook_resid_post": ((POS, D), torch.float16) for i in range(2)}
    with StoreWriter(path, hooks=hooks, seq_len=POS) as w:
        for start in range(0, rows, 64):
            n = min(64, rows - start)
            tokens = torch.randint(0, 4096, (n, POS), generator=g)
            y = _labels(tokens)
            x = torch.randn(n, POS, D, generator=g) + 0.03 * (2 * y[..., None] - 1) * direction
            w.append(tokens, {"blocks.0.hook_resid_post": x.half(), "blocks.1.hook_resid_post": (0.5 * x).half()})


def _labels(tokens: torch.Tensor) -> torch.Tensor:
    return ((tokens * 2654435761) % 97 < 48).long()      # a fixed pseudo-random bit per token id


def probe_train(a) -> None:
    from workbench.analysis.probing import train_probes
    from workbench.store import ActivationStore
    store = ActivationStore.open(a.path)
    labels = torch.cat([_labels(t) for t, _ in store.iter_batches([], batch_size=1024)])
    t, res = timed(lambda: train_probes(store, list(store.hooks), labels, epochs=a.epochs, batch_size=16))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    for h, r in res.items():
        print(f"  {h}: val accuracy {r.val['accuracy']:.3f} over {r.val['n']} tokens, train loss per epoch "
              f"{[round(x, 4) for x in r.history]}")
    print(f"  trained in {t:.1f} s; child peak RSS {rss:.3f} GiB")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    s = sub.add_parser("patching")
    s.add_argument("--preset", default="small")
    s.add_argument("--batch", type=int, default=4)
    s.add_argument("--pos", type=int, default=16)
    s.add_argument("--repeats", type=int, default=5)
    s = sub.add_parser("attribution")
    s.add_argument("--preset", default="mid")
    s.add_argument("--batch", type=int, default=8)
    s.add_argument("--pos", type=int, default=64)
    s.add_argument("--repeats", type=int, default=7)
    for name in ("probe", "probe-train"):
        s = sub.add_parser(name)
        s.add_argument("--path", default="/tmp/probe-bench.h5")
        s.add_argument("--gb", type=float, default=4.0)
        s.add_argument("--budget-gb", type=float, default=1.0)
        s.add_argument("--epochs", type=int, default=2)
        s.add_argument("--rewrite", action="store_true")
    for s in sub.choices.values():
        s.add_argument("--threads", type=int, default=1,
                       help="torch threads (1: other jobs on this 2-core box make OpenMP spin-waits erratic)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    print(f"# {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    {"patching": bench_patching, "attribution": bench_attribution, "probe": bench_probe,
     "probe-train": probe_train}[a.what](a)


if __name__ == "__main__":
    main()
