"""Exact checks of edge scores: the metric when one edge is patched, and circuit faithfulness.

* ``exact_edge_effects``: for each chosen edge, the metric of the clean run in which only that
  edge carries the corrupted value of its writer, minus the clean metric. This is the quantity
  EAP estimates to first order (same sign and units as ``Graph.scores``).
* ``faithfulness``: the clean run with every edge *outside* the circuit carrying its replacement
  value (the corrupted run's, or a mean over a reference set), normalised so that 0 is the run
  with every edge replaced (for ``ablation="corrupted"`` that is exactly the corrupted run) and 1
  the clean run.
* ``faithfulness_curve``: faithfulness of the top-n circuits for a range of n, with MIB's areas.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import torch

from workbench.errors import InputError

from ..metrics import Metric
from .graph import FaithfulnessCurve, Graph, Layout
from .intervene import Baseline, replaced_metrics
from .runs import Capture, capture, check_tokens

# MIB's circuit sizes, as fractions of all edges (the faithfulness curve's default points).
MIB_FRACTIONS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
ABLATIONS = ("corrupted", "mean")


def make_baseline(model, clean_tokens: torch.Tensor, corrupted_tokens: torch.Tensor, metric: Metric,
                  ablation: str = "corrupted", reference: Optional[torch.Tensor] = None,
                  clean: Optional[Capture] = None, corrupted: Optional[Capture] = None) -> Baseline:
    """The clean run and each writer's replacement value, computed once and shared by the checks.

    ``ablation="mean"`` replaces a writer by its mean output over ``reference`` ``[n, pos]`` token
    rows (default: the corrupted tokens), position by position.
    """
    check_tokens(clean_tokens, corrupted_tokens)
    if ablation not in ABLATIONS:
        raise InputError(f"unknown ablation {ablation!r}; choose one of {', '.join(ABLATIONS)}")
    with torch.no_grad():
        clean = clean if clean is not None else capture(model, clean_tokens, metric)
        if ablation == "corrupted":
            corrupted = corrupted if corrupted is not None else capture(model, corrupted_tokens)
            replacement = corrupted.writers
        else:
            ref = corrupted_tokens if reference is None else reference
            if not isinstance(ref, torch.Tensor) or ref.ndim != 2 or ref.shape[1] != clean_tokens.shape[1]:
                raise InputError(f"reference tokens for mean ablation must be [rows, {clean_tokens.shape[1]}] "
                                 f"(the clean prompts' length), got {list(getattr(ref, 'shape', []))}")
            replacement = capture(model, ref).writers.mean(1, keepdim=True)
    return Baseline(clean_tokens.to(model.device), clean, replacement, metric)


def edge_pairs(graph_or_layout: Union[Graph, Layout], edges: Sequence) -> list[tuple[int, int]]:
    """``(writer, reader)`` of each edge given by name (``"a0.h1->a1.h0<k>"``) or as a pair."""
    lay = graph_or_layout.layout if isinstance(graph_or_layout, Graph) else graph_or_layout
    out = []
    for e in edges:
        w, r = lay.parse_edge(e) if isinstance(e, str) else (int(e[0]), int(e[1]))
        if not (0 <= w < lay.n_writers and 0 <= r < lay.n_readers and lay.valid[w, r]):
            raise InputError(f"({w}, {r}) is not an edge of this graph")
        out.append((w, r))
    return out


def exact_edge_effects(model, clean_tokens: torch.Tensor, corrupted_tokens: torch.Tensor, metric: Metric,
                       edges: Sequence, baseline: Optional[Baseline] = None,
                       progress: Optional[Callable[[int], None]] = None) -> torch.Tensor:
    """``[len(edges)]``: metric with only that edge carrying its corrupted value, minus the clean metric.

    ``edges``: names (``"a0.h1->a1.h0<k>"``) or ``(writer, reader)`` pairs. Batched: the edges into
    one layer run together from that layer (see ``intervene``).
    """
    lay = Layout(model.cfg.n_layers, model.cfg.n_heads)
    pairs = edge_pairs(lay, edges)
    base = baseline or make_baseline(model, clean_tokens, corrupted_tokens, metric)
    replace = torch.zeros(len(pairs), lay.n_writers, lay.n_readers, dtype=torch.bool)
    for i, (w, r) in enumerate(pairs):
        replace[i, w, r] = True
    return replaced_metrics(model, base, replace, progress) - base.clean.metric


def _normalise(values: torch.Tensor, clean: float, empty: float) -> list[float]:
    span = clean - empty
    if abs(span) < 1e-12:
        raise InputError(f"the clean run and the run with every edge ablated give the same metric ({clean:.4g}): "
                         "faithfulness is undefined; pick a corruption that changes the metric")
    return [(float(v) - empty) / span for v in values]


def faithfulness(model, clean_tokens: torch.Tensor, corrupted_tokens: torch.Tensor, metric: Metric,
                 circuit: Union[Graph, torch.Tensor], ablation: str = "corrupted",
                 reference: Optional[torch.Tensor] = None, baseline: Optional[Baseline] = None) -> float:
    """Normalised metric with the circuit's edges clean and every other edge ablated (0: all ablated, 1: clean).

    ``circuit``: a ``Graph`` (its ``in_graph`` edges) or a ``[n_writers, n_readers]`` bool mask.
    """
    keep = circuit.in_graph if isinstance(circuit, Graph) else circuit
    return faithfulness_of_masks(model, clean_tokens, corrupted_tokens, metric, keep[None], ablation,
                                 reference, baseline)[0]


def faithfulness_of_masks(model, clean_tokens, corrupted_tokens, metric: Metric, keep: torch.Tensor,
                          ablation: str = "corrupted", reference: Optional[torch.Tensor] = None,
                          baseline: Optional[Baseline] = None,
                          progress: Optional[Callable[[int], None]] = None) -> list[float]:
    """Faithfulness of several circuits ``keep`` ``[circuits, n_writers, n_readers]`` in one batched pass."""
    lay = Layout(model.cfg.n_layers, model.cfg.n_heads)
    if keep.ndim != 3 or tuple(keep.shape[1:]) != (lay.n_writers, lay.n_readers):
        raise InputError(f"circuit masks must be [circuits, {lay.n_writers}, {lay.n_readers}], got {list(keep.shape)}")
    base = baseline or make_baseline(model, clean_tokens, corrupted_tokens, metric, ablation, reference)
    everything = lay.valid[None].clone()
    values = replaced_metrics(model, base, torch.cat([everything, lay.valid & ~keep.bool()]), progress)
    return _normalise(values[1:], base.clean.metric, float(values[0]))


def curve_sizes(n_edges: int, fractions: Sequence[float] = MIB_FRACTIONS) -> list[int]:
    """Edges kept at each fraction, as MIB counts them (``int(fraction * n_edges)``)."""
    if not fractions or any(not (0 <= f <= 1) for f in fractions) or list(fractions) != sorted(fractions):
        raise InputError(f"fractions must rise from 0 to 1, got {list(fractions)}")
    return [int(f * n_edges) for f in fractions]


def faithfulness_curve(model, clean_tokens: torch.Tensor, corrupted_tokens: torch.Tensor, metric: Metric,
                       graph: Graph, fractions: Optional[Sequence[float]] = None,
                       sizes: Optional[Sequence[int]] = None, selection: str = "top_n", absolute: bool = True,
                       ablation: str = "corrupted", reference: Optional[torch.Tensor] = None,
                       baseline: Optional[Baseline] = None,
                       progress: Optional[Callable[[int], None]] = None) -> FaithfulnessCurve:
    """Faithfulness of the pruned top-n (or greedy) circuits of ``graph`` for growing n.

    The sizes are ``int(f * n_edges)`` for ``fractions`` (default MIB's 0.1% ... 100%), or the edge
    counts ``sizes``; every circuit runs in one batched pass. Also stored as ``graph.curve``.
    """
    n = graph.n_edges
    if sizes is not None:
        sizes = sorted({int(s) for s in sizes})
        if not sizes or sizes[0] < 0 or sizes[-1] > n:
            raise InputError(f"sizes must lie in 0..{n} (the graph's edges), got {sizes[:3]}...{sizes[-1:]}")
        fractions = [s / n for s in sizes]
    else:
        fractions = list(fractions or MIB_FRACTIONS)
        sizes = curve_sizes(n, fractions)
    masks = torch.stack([graph.select(selection, s, absolute, prune=True) for s in sizes])
    values = faithfulness_of_masks(model, clean_tokens, corrupted_tokens, metric, masks, ablation, reference,
                                   baseline, progress)
    graph.curve = FaithfulnessCurve(fractions, [int(m.sum()) for m in masks], values, list(sizes))
    return graph.curve
