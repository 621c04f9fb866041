"""The HTML report of a training run (``workbench report RUN`` writes it to ``RUN/report.html``).

One self-contained page: the loss curve, every head's induction score over the recorded steps,
the attention of the strongest induction head at the last recorded step, and the induction
circuit found at the run's checkpoints (a step slider; it opens at the last step). Each part is
left out, with a line saying why, when the run lacks what it needs (a recording, checkpoints).
"""
from __future__ import annotations

import html
from pathlib import Path
from typing import Callable, Optional, Union

from workbench import viz
from workbench.analysis.circuits import circuits_across_steps, list_checkpoints
from workbench.analysis.heads import scores_across_steps
from workbench.store import ActivationStore
from workbench.viz.html import Figure


class Note(Figure):
    """A heading and a line of text between the figures."""

    def __init__(self, heading: str, text: str = "") -> None:
        self.heading, self.text = heading, text

    def fragment(self) -> str:
        body = f'<p style="color: #444; max-width: 60em;">{html.escape(self.text)}</p>' if self.text else ""
        return f"<h2 style=\"margin: 22px 0 4px; font-size: 18px;\">{html.escape(self.heading)}</h2>{body}\n"


def _induction_table(run_dir: Path):
    """``scores_across_steps`` of the run's recording, or ``(None, why)``."""
    rec = run_dir / "activations.h5"
    if not rec.is_file():
        return None, "the run has no recording (activations.h5)"
    with ActivationStore.open(rec) as store:
        if not store.attrs.get("probe_period"):
            return None, "the recording holds no repeated-sequence probes"
        try:
            return scores_across_steps(store), ""
        except (ValueError, KeyError) as e:
            return None, f"the recording cannot be scored: {e}"


def _strongest_head_attention(run_dir: Path, table) -> Figure:
    """``attention_heads`` of the head with the highest induction score at the last recorded step."""
    last = table[table.step == table.step.max()]
    best = last.sort_values("induction").iloc[-1]
    layer, head, step = int(best.layer), int(best["head_index"]), int(best.step)
    with ActivationStore.open(run_dir / "activations.h5") as store:
        pattern, toks = viz.layer_pattern(store, layer, row=0, step=step)
    return viz.attention_heads(pattern[head:head + 1], toks, head_names=[f"L{layer}H{head} (step {step})"])


def build_report(run_dir: Union[str, Path], circuit_steps: int = 8, method: str = "eap-ig",
                 on_step: Optional[Callable[[int, int, int], None]] = None) -> viz.Page:
    """The report page of ``run_dir``; ``circuit_steps`` checkpoints (spread over the run) get a circuit."""
    run_dir = Path(run_dir)
    parts: list[Figure] = [Note(f"Training run {run_dir.name}", str(run_dir.resolve()))]
    parts += [Note("Loss"), viz.metrics_chart(run_dir, keys=("loss", "val_loss"), title="training and validation loss")]
    table, why = _induction_table(run_dir)
    parts.append(Note("Induction score of every head", why))
    if table is not None:
        parts += [viz.head_scores_chart(table, log_x=True),
                  Note("The strongest induction head", "its attention on the first probe row at the last recorded "
                       "step: each token attends to the token after its previous occurrence"),
                  _strongest_head_attention(run_dir, table)]
    saved = list_checkpoints(run_dir)
    if table is None or not saved:
        parts.append(Note("Induction circuit", "needs the recording's probes and model checkpoints"
                          if table is None else "the run kept no model checkpoints"))
        return viz.Page(*parts, title=f"report: {run_dir.name}")
    graphs = circuits_across_steps(run_dir, "induction", max_steps=circuit_steps, method=method, on_step=on_step)
    last = graphs[-1]
    parts += [Note("Induction circuit", f"{method.upper()} edge scores on the run's own induction task, at "
                   f"{len(graphs)} checkpoints; the page opens at the last step ({last.metadata['step']}): "
                   f"{int(last.in_graph.sum())} of {last.n_edges} edges, faithfulness {last.faithfulness:.3f}. "
                   "Move the step slider to watch the circuit form."),
              viz.circuit_graph(graphs, head_scores=table)]
    return viz.Page(*parts, title=f"report: {run_dir.name}")
