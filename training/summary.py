"""What a run did: loss-curve summary and, from the recording, the induction score per recorded step."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

from workbench.analysis.heads import scores_across_steps
from workbench.analysis.probe_task import ProbeTask
from workbench.run_files import read_metrics
from workbench.store import ActivationStore


def induction_curve(path: Path) -> list[dict[str, Any]]:
    """``[{step, score, layer, head}]``: the best head's induction score at each recorded step.

    The scores are ``workbench.analysis.heads.scores_across_steps`` on the recording, with the
    run's own probe task (``ProbeTask.from_recording``: its period, offset and repeated rows).
    Returns ``[]`` when the recording holds no attention patterns or no repeated-sequence rows.
    """
    with ActivationStore.open(path) as store:
        task = ProbeTask.from_recording(store.attrs)
        has_patterns = any(n.endswith("attn.hook_pattern") for n in store.hooks)
        if task is None or not task.rows or not has_patterns or not store.steps:
            return []
        table = scores_across_steps(store, task=task)
    best = table.loc[table.groupby("step")["induction"].idxmax()]
    return [{"step": int(r.step), "score": round(float(r.induction), 4), "layer": int(r.layer),
             "head": int(r.head_index)} for r in best.itertuples()]


def loss_summary(run_dir: Path) -> dict[str, Any]:
    """First/last/min training loss and the last validation loss from ``metrics.jsonl``."""
    rows = read_metrics(Path(run_dir) / "metrics.jsonl")
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    if not train:
        return {}
    out = {"steps": train[-1][0], "first_loss": train[0][1], "last_loss": train[-1][1],
           "min_loss": min(v for _, v in train), "curve": _spaced(train, 8)}
    if val:
        out["val_loss"] = val[-1][1]
    tps = [r["tok_per_s"] for r in rows if "tok_per_s" in r]
    if tps:
        out["tok_per_s"] = sorted(tps)[len(tps) // 2]
    return out


def _spaced(points: list[tuple[int, float]], n: int) -> list[tuple[int, float]]:
    if len(points) <= n:
        return points
    idx = sorted({round(i * (len(points) - 1) / (n - 1)) for i in range(n)})
    return [points[i] for i in idx]


def format_report(run_dir: Path, summary: Optional[dict] = None) -> str:
    """The text ``workbench report`` (and the end of ``workbench train``) prints."""
    run_dir = Path(run_dir)
    lines = [f"run {run_dir}"]
    if summary:
        lines.append(f"  {summary['steps']} steps, {summary['tokens']:,} tokens, {summary['n_params']:,} params, "
                     f"{summary['elapsed_s']:.1f} s on {summary['device']} ({summary['tok_per_s']:,.0f} tok/s)")
    ls = loss_summary(run_dir)
    if ls:
        lines.append(f"  loss {ls['first_loss']:.3f} -> {ls['last_loss']:.3f} (min {ls['min_loss']:.3f})"
                     + (f", val {ls['val_loss']:.3f}" if "val_loss" in ls else ""))
        lines.append("  loss curve: " + ", ".join(f"{s}: {v:.3f}" for s, v in ls["curve"]))
    rec = run_dir / "activations.h5"
    if rec.exists():
        curve = induction_curve(rec)
        if curve:
            lines.append("  best head's induction score per recorded step (layer.head):")
            lines += [f"    step {c['step']:>6}: {c['score']:.3f}  {_bar(c['score'])} L{c['layer']}.H{c['head']}"
                      for c in curve]
        else:
            lines.append("  recording: no attention patterns of repeated sequences to score")
    return "\n".join(lines)


def _bar(x: float, width: int = 30) -> str:
    return "#" * max(0, min(width, int(round(x * width)))) if not math.isnan(x) else ""
