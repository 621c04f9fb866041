"""Benchmarks for workbench.analysis.circuits (run by hand; results in docs/circuits.md).

  python bench/bench_circuits.py eap    [--preset mid --batch 8 --pos 64 --ig-steps 5 --repeats 5]
  python bench/bench_circuits.py tl     [--preset small --batch 4 --pos 32 --repeats 3]
  python bench/bench_circuits.py exact  [--preset mid --batch 8 --pos 64 --edges 100 --repeats 3]
  python bench/bench_circuits.py memory [--preset mid --batch 8 --pos 64]
  python bench/bench_circuits.py tasks  [--run runs/default]
  python bench/bench_circuits.py all    (eap, tl, exact and memory with their defaults)

eap:    EAP over every edge, and EAP-IG with k steps, against one clean forward + backward of the
        same batch (metric.backward(), the usual training-style pass), interleaved, medians of ratios.
        Goals: EAP <= 3.0x, EAP-IG <= (k + 2)x.
tl:     ours vs TransformerLens 4.3's attribution patching on its TransformerBridge over the same
        weights and prompts. TL's edge mode refuses Phi (its bridge's hook_mlp_in never fires on the
        parallel block), so TL runs the steps its attribution_patch runs (per prompt: a clean cached
        forward, a corrupt forward + backward, enumerate_edges, _edge_effects) for every edge except
        those into MLPs; ours scores all edges. Goal: ours <= 0.5x TL.
exact:  exact patching of the top --edges edges (batched), per edge vs one forward (no grad).
memory: peak RSS above the loaded model, each computation in its own process.
tasks:  not a timing: the circuits the docs report. The induction circuit of --run (default
        runs/default) by each method, with its K-composition edges; and IOI on the small model
        tests/test_circuits_ioi.py trains (the same code, imported).
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

os.environ.setdefault("TQDM_DISABLE", "1")
import torch  # noqa: E402

from common import interleaved, median_ratio, random_model, random_prompts, timed  # noqa: E402


def _task(model, batch: int, pos: int):
    """Random clean/corrupted prompts; metric: mean logit difference of two tokens at the last position."""
    clean, corrupted = random_prompts(model, batch, pos)
    a, b = 17, 101

    def metric(logits):
        return (logits[:, -1, a] - logits[:, -1, b]).mean()

    def metric_one(logits):
        return logits[0, -1, a] - logits[0, -1, b]
    return clean, corrupted, metric, metric_one


def _load() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def _fwd_bwd(model, tokens, metric):
    model.zero_grad(set_to_none=True)
    metric(model(tokens)).backward()


def bench_eap(a) -> None:
    from workbench.analysis.circuits import edge_attribution
    model = random_model(a.preset)
    clean, corrupted, metric, _ = _task(model, a.batch, a.pos)
    t, last = interleaved({"forward+backward": lambda: _fwd_bwd(model, clean, metric),
                           "EAP": lambda: edge_attribution(model, clean, corrupted, metric, method="eap"),
                           f"EAP-IG({a.ig_steps})": lambda: edge_attribution(model, clean, corrupted, metric,
                                                                            method="eap-ig", steps=a.ig_steps)},
                          a.repeats)
    base, g = t["forward+backward"], last["EAP"]
    med = statistics.median
    print(f"EAP, preset {a.preset}, batch {a.batch} x pos {a.pos}, {g.n_edges} edges; {_load()}:")
    print(f"  forward+backward median {med(base):.3f} s; EAP {median_ratio(t['EAP'], base):.2f}x "
          f"(goal <= 3.0); EAP-IG with {a.ig_steps} steps {median_ratio(t[f'EAP-IG({a.ig_steps})'], base):.2f}x "
          f"(goal <= {a.ig_steps + 2})")


def _tl_edges(ap, bridge, clean, corrupted, metric_one) -> int:
    """TransformerLens's attribution_patch edge loop, without the MLP readers its Phi bridge lacks."""
    names = [n for n in ap._edge_hook_names(bridge.cfg.n_layers) if not n.endswith("hook_mlp_in")]
    count = 0
    for i in range(clean.shape[0]):
        c = ap.cache_activation_and_gradient(bridge, clean[i:i + 1], metric_one, names, compute_gradient=False)
        x = ap.cache_activation_and_gradient(bridge, corrupted[i:i + 1], metric_one, names)
        for layer in range(bridge.cfg.n_layers):
            x.activations[f"blocks.{layer}.hook_mlp_in"] = torch.zeros(1)
        edges = [e for e in ap.enumerate_edges(bridge, x) if e[1].kind != "mlp_in"]
        count = len(ap._edge_effects(c, x, edges))
    return count


def bench_tl(a) -> None:
    import transformer_lens.tools.analysis.attribution_patching as ap

    from workbench.analysis.circuits import edge_attribution
    model = random_model(a.preset)
    bridge = model.to_transformer_lens()
    bridge.set_use_attn_result(True)
    bridge.set_use_split_qkv_input(True)
    clean, corrupted, metric, metric_one = _task(model, a.batch, a.pos)
    t, last = interleaved({"ours": lambda: edge_attribution(model, corrupted, clean, metric),   # TL's orientation
                           "TL": lambda: _tl_edges(ap, bridge, clean, corrupted, metric_one)}, a.repeats)
    ours_t, tl_t = t["ours"], t["TL"]
    print(f"  ours scores {last['ours'].n_edges} edges; TL {last['TL']} edge x position scores")
    med = statistics.median
    print(f"EAP vs TransformerLens attribution patching, preset {a.preset}, batch {a.batch} x pos {a.pos}; {_load()}:")
    print(f"  ours median {med(ours_t):.3f} s, TL median {med(tl_t):.3f} s, median ratio ours/TL "
          f"{median_ratio(ours_t, tl_t):.4f} (goal <= 0.5)")


def _no_grad(model, tokens):
    with torch.no_grad():
        return model(tokens)


def bench_exact(a) -> None:
    from workbench.analysis.circuits import edge_attribution, exact_edge_effects
    model = random_model(a.preset)
    clean, corrupted, metric, _ = _task(model, a.batch, a.pos)
    graph = edge_attribution(model, clean, corrupted, metric)
    top = graph.ranked()[:a.edges]
    t, _ = interleaved({"forward": lambda: _no_grad(model, clean),
                        f"exact patching of {len(top)} edges": lambda: exact_edge_effects(model, clean, corrupted,
                                                                                           metric, top)}, a.repeats)
    fwd, ex = t["forward"], t[f"exact patching of {len(top)} edges"]
    med = statistics.median
    print(f"exact edge patching, preset {a.preset}, batch {a.batch} x pos {a.pos}, top {len(top)} edges; {_load()}:")
    print(f"  forward median {med(fwd):.3f} s; per edge {med([e / len(top) / f for e, f in zip(ex, fwd)]):.3f} "
          "forwards (the base run and the corrupted run included)")


def bench_memory(a) -> None:
    for what in ("fwd-bwd", "eap", "eap-ig", "exact"):
        cmd = [sys.executable, __file__, "_mem", what, "--preset", a.preset, "--batch", str(a.batch),
               "--pos", str(a.pos), "--ig-steps", str(a.ig_steps), "--threads", str(a.threads)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            print(out.stderr[-2000:])
            raise SystemExit(out.returncode)
        print("  " + out.stdout.strip().splitlines()[-1], flush=True)


def _mem(a) -> None:
    from workbench.analysis.circuits import edge_attribution, exact_edge_effects
    model = random_model(a.preset)
    clean, corrupted, metric, _ = _task(model, a.batch, a.pos)
    with torch.no_grad():
        model(clean[:1, :2])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10       # MiB (peak so far)
    if a.which == "fwd-bwd":
        _fwd_bwd(model, clean, metric)
    elif a.which == "exact":
        g = edge_attribution(model, clean, corrupted, metric)
        exact_edge_effects(model, clean, corrupted, metric, g.ranked()[:100])
    else:
        edge_attribution(model, clean, corrupted, metric, method=a.which, steps=a.ig_steps)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    print(f"{a.which:8s} peak RSS {peak:,.0f} MiB, {peak - before:,.0f} MiB above the loaded model "
          f"({before:,.0f} MiB)")


def bench_tasks(a) -> None:
    from workbench import PhiModel
    from workbench.analysis.circuits import find_circuit
    from workbench.analysis.heads import detect_heads
    from workbench.analysis.tasks import induction_task, ioi_task, run_induction_params
    run = Path(a.run)
    if (run / "activations.h5").is_file():
        model = PhiModel.from_pretrained(run).eval()
        task = induction_task(**run_induction_params(run))
        heads = detect_heads(model, task.clean_tokens, period=task.params["period"], offset=1)
        prev = heads[heads.layer == 0].sort_values("previous_token").iloc[-1]
        ind = heads[heads.layer == model.cfg.n_layers - 1].sort_values("induction").iloc[-1]
        print(f"{run}: {task.description}")
        print(f"  previous-token head a0.h{int(prev.head_index)} ({prev.previous_token:.3f}), induction head "
              f"a{int(ind.layer)}.h{int(ind.head_index)} ({ind.induction:.3f})")
        for method in ("eap", "eap-ig", "exact"):
            g = find_circuit(model, task, method=method)
            k = [e for e in g.circuit_edges() if e.startswith("a0.") and e.endswith("<k>")]
            kept = int(g.in_graph.sum())
            print(f"  {method:6s}: {kept} of {g.n_edges} edges ({100 * kept / g.n_edges:.1f}%), faithfulness "
                  f"{g.faithfulness:.3f}, area {g.curve.area:.3f}; K-composition edges in it: {k}")
    else:
        print(f"{run} has no recording: skipping the induction circuit (train it: workbench train --out {run})")
    from workbench.analysis.toy_ioi import TEMPLATE, train_ioi_model
    t, (model, tok) = timed(train_ioi_model)
    task = ioi_task(tok, 16, seed=7, templates=TEMPLATE)
    g = find_circuit(model, task, method="eap-ig")
    kept = int(g.in_graph.sum())
    print(f"IOI, 2 layers x 2 heads trained {t:.0f} s: logit diff clean {g.metadata['clean_metric']:.2f}, corrupted "
          f"{g.metadata['corrupted_metric']:.2f}; EAP-IG circuit {kept} of {g.n_edges} edges, faithfulness "
          f"{g.faithfulness:.3f}, area {g.curve.area:.3f}; top edges {g.circuit_edges()[:5]}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    defaults = {"eap": ("mid", 8, 64, 5), "tl": ("small", 4, 32, 3), "exact": ("mid", 8, 64, 3),
                "memory": ("mid", 8, 64, 1), "_mem": ("mid", 8, 64, 1), "all": ("mid", 8, 64, 3),
                "tasks": ("mid", 8, 64, 1)}
    for name, (preset, batch, pos, repeats) in defaults.items():
        s = sub.add_parser(name)
        if name == "_mem":
            s.add_argument("which")
        s.add_argument("--preset", default=preset)
        s.add_argument("--batch", type=int, default=batch)
        s.add_argument("--pos", type=int, default=pos)
        s.add_argument("--repeats", type=int, default=repeats)
        s.add_argument("--ig-steps", type=int, default=5)
        s.add_argument("--edges", type=int, default=100)
        s.add_argument("--run", default="runs/default")
        s.add_argument("--threads", type=int, default=1,
                       help="torch threads (1: other jobs on a 2-core box make OpenMP spin-waits erratic)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if a.what != "_mem":
        print(f"# {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
              f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
              f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {_load()}")
    if a.what == "all":
        for name, fn in (("eap", bench_eap), ("tl", bench_tl), ("exact", bench_exact), ("memory", bench_memory)):
            preset, batch, pos, repeats = defaults[name]
            fn(argparse.Namespace(**{**vars(a), "preset": preset, "batch": batch, "pos": pos, "repeats": repeats}))
        return
    {"eap": bench_eap, "tl": bench_tl, "exact": bench_exact, "memory": bench_memory, "_mem": _mem,
     "tasks": bench_tasks}[a.what](a)


if __name__ == "__main__":
    main()
