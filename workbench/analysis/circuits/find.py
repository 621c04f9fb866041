"""``find_circuit``: scores, exact checks, the faithfulness curve and the chosen circuit, in one call.

1. Score every edge: EAP (one clean forward + backward, one corrupted forward), EAP-IG
   (``steps`` forward + backward passes) or exact patching of every edge.
2. Check the ``check`` best edges by exact patching (``Graph.exact``).
3. The faithfulness curve: the pruned top-n circuit for every n when the graph is small
   (``dense_limit`` edges), else for MIB's fractions plus log-spaced sizes; all in batched passes.
4. Choose the circuit: ``n_edges`` (top-n or greedy), a score ``threshold``, or by default the
   smallest circuit on the curve whose faithfulness reaches ``target``; prune; measure it.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch

from workbench.errors import InputError

from .eap import check_method, scores_from_runs
from .evaluate import MIB_FRACTIONS, curve_sizes, exact_edge_effects, faithfulness, faithfulness_curve, make_baseline
from .graph import Graph, Layout
from .intervene import Baseline
from .runs import capture, check_tokens

Progress = Callable[[str, int, int], None]   # (stage, done, total)


def default_curve_sizes(n_edges: int, dense_limit: int = 400, points: int = 40) -> list[int]:
    """Every size up to ``dense_limit`` edges; beyond, MIB's sizes plus ``points`` log-spaced ones."""
    if n_edges <= dense_limit:
        return list(range(n_edges + 1))
    logs = {int(round(math.exp(i / (points - 1) * math.log(n_edges)))) for i in range(points)}
    return sorted(set(curve_sizes(n_edges, MIB_FRACTIONS)) | logs | {0, n_edges})


class _Stages:
    """Counts work units across stages for one progress callback."""

    def __init__(self, callback: Optional[Progress], total: int) -> None:
        self.callback, self.total, self.done = callback, total, 0

    def step(self, stage: str, n: int = 1) -> None:
        self.done += n
        if self.callback is not None:
            self.callback(stage, self.done, self.total)


def find_circuit(model, task, method: str = "eap", steps: int = 5, n_edges: Optional[int] = None,
                 threshold: Optional[float] = None, selection: str = "top_n", target: float = 0.8,
                 check: int = 20, curve: bool = True, sizes: Optional[Sequence[int]] = None,
                 ablation: str = "corrupted", reference: Optional[torch.Tensor] = None,
                 progress: Optional[Progress] = None) -> Graph:
    """The circuit of ``task`` (a ``workbench.analysis.tasks.CircuitTask``) in ``model``.

    Args:
        method: ``"eap"``, ``"eap-ig"`` (``steps`` integration steps) or ``"exact"`` (every edge patched).
        n_edges / threshold / target: how the circuit is chosen (see the module docstring).
        selection: ``"top_n"`` or ``"greedy"`` (grown from the logits) for ``n_edges`` and the curve.
        check: how many of the best edges get an exact patching effect (``graph.exact``).
        curve: compute the faithfulness curve (needed for ``target``); ``sizes`` overrides its points.
        ablation: edges outside the circuit carry the ``"corrupted"`` run's values or a ``"mean"``
            over ``reference`` tokens.
        progress: ``progress(stage, done, total)`` as work completes.
    """
    check_method(method, steps)
    clean_t, corr_t, metric = task.clean_tokens, task.corrupted_tokens, task.metric
    check_tokens(clean_t, corr_t)
    if n_edges is None and threshold is None and not curve:
        raise InputError("give n_edges or threshold, or compute the curve so the circuit can be chosen by target")
    cfg = model.cfg
    total_edges = int(Layout(cfg.n_layers, cfg.n_heads).valid.sum())
    sizes = sorted(set(sizes)) if sizes is not None else default_curve_sizes(total_edges)
    passes = (steps if method == "eap-ig" else 1) * cfg.n_layers if method != "exact" else total_edges
    stages = _Stages(progress, passes + (check if method != "exact" else 0) + (len(sizes) + 1 if curve else 0) + 2)

    with torch.no_grad():
        corrupted = capture(model, corr_t, metric)
    if method == "exact":
        clean = capture(model, clean_t, metric)
        graph = Graph(cfg.n_layers, cfg.n_heads, metadata={"method": "exact", "steps": None,
                                                            "clean_metric": clean.metric,
                                                            "corrupted_metric": corrupted.metric})
    else:
        clean = capture(model, clean_t, metric, grad=True)
        graph, _ = scores_from_runs(model, clean_t, clean, corrupted, metric, method, steps,
                                    lambda: stages.step("scoring edges"))
    base = make_baseline(model, clean_t, corr_t, metric, ablation, reference, clean=clean, corrupted=corrupted)
    _exact_effects(model, clean_t, corr_t, metric, graph, method, check, _noising(base, corrupted), stages)
    if curve:
        faithfulness_curve(model, clean_t, corr_t, metric, graph, sizes=sizes, selection=selection,
                           baseline=base, progress=lambda n: stages.step("faithfulness curve", n))
    _choose(graph, n_edges, threshold, selection, target)
    graph.faithfulness = faithfulness(model, clean_t, corr_t, metric, graph, baseline=base)
    stages.step("done", stages.total - stages.done)
    graph.metadata.update({"task": task.metadata(), "selection": selection, "ablation": ablation,
                           "model": {"n_layers": cfg.n_layers, "n_heads": cfg.n_heads, "d_model": cfg.d_model,
                                     "name": getattr(cfg, "name", None)}})
    return graph


def _exact_effects(model, clean_t, corr_t, metric, graph: Graph, method: str, check: int, baseline,
                   stages: "_Stages") -> None:
    """Fill ``graph.exact`` by exact edge patching: every edge for ``"exact"`` (its scores too), else the top ``check``."""
    if method == "exact":
        edges = list(graph.edges())
        effects = exact_edge_effects(model, clean_t, corr_t, metric, [e.name for e in edges], baseline=baseline,
                                     progress=lambda n: stages.step("patching every edge", n))
        for e, v in zip(edges, effects.tolist()):
            graph.scores[e.writer, e.reader] = v
            graph.exact[e.writer, e.reader] = v
    elif check > 0:
        top = graph.ranked()[:check]
        effects = exact_edge_effects(model, clean_t, corr_t, metric, top, baseline=baseline,
                                     progress=lambda n: stages.step("exact patching of the top edges", n))
        for (w, r), v in zip(top, effects.tolist()):
            graph.exact[w, r] = v


def _noising(base, corrupted):
    """Exact edge effects always replace with the corrupted run (what EAP estimates), whatever the ablation."""
    return base if base.replacement is corrupted.writers else Baseline(base.clean_tokens, base.clean,
                                                                        corrupted.writers, base.metric)


def _choose(graph: Graph, n_edges: Optional[int], threshold: Optional[float], selection: str, target: float) -> None:
    if n_edges is not None:
        graph.set_circuit(graph.select(selection, n_edges), prune=True)
        graph.metadata["chosen_by"] = f"{selection} {n_edges} edges"
        graph.metadata["requested_edges"] = n_edges if selection == "top_n" else None
    elif threshold is not None:
        unpruned = graph.select("threshold", float(threshold))
        graph.set_circuit(unpruned, prune=True)
        graph.metadata["chosen_by"] = f"|score| >= {threshold}"
        graph.metadata["requested_edges"] = int(unpruned.sum())     # the same set as the top-n of this size
    else:
        c = graph.curve
        reach = [n for n, v in zip(c.requested, c.values) if v >= target]
        n = reach[0] if reach else c.requested[max(range(len(c.values)), key=lambda i: c.values[i])]
        graph.set_circuit(graph.select(selection, n), prune=True)
        graph.metadata["requested_edges"] = n if selection == "top_n" else None
        graph.metadata["chosen_by"] = (f"smallest {selection} circuit with faithfulness >= {target}" if reach else
                                       f"no circuit reached faithfulness {target}: the most faithful one")
        graph.metadata["target"] = target
