"""The interactive circuit graph: one self-contained HTML page (SVG + a little JavaScript, no network).

``circuit_graph(graph)`` draws a circuit found by ``workbench.analysis.circuits``: nodes by layer
(input at the bottom, logits at the top, heads left to right with the MLP beside them), edges
coloured by the sign of their score and as wide as ``|score|``, q/k/v edges dashed differently and
entering the head at different points. A slider keeps the top n edges (pruned to paths from input
to logits) and shows the faithfulness of that circuit when the curve holds it; hovering gives an
edge's score and exact-patching effect; clicking a node highlights the paths through it. Given
several graphs (one per training step) it adds a step slider, beside the head-score curve.

Why hand-written SVG and not a graph library: the layout is fixed by the architecture (a layer
per row), so no force layout or graph-drawing engine is needed, and a page of ~300 lines of
script has nothing to vendor, license or keep offline. The script is
``workbench/viz/static/circuit_graph.js`` (styles in ``circuit_graph.css``), inlined into the page.
"""
from __future__ import annotations

import math
import uuid
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from .html import Figure, script_json, to_numpy
from .plots import _table_to_array

STATIC = Path(__file__).parent / "static"


@lru_cache(maxsize=None)
def _asset(name: str) -> str:
    text = (STATIC / name).read_text(encoding="utf-8")
    return text.replace("</script", "<\\/script").replace("</style", "<\\/style")


def _graph_dict(g: Any) -> dict:
    if hasattr(g, "to_dict"):
        g = g.to_dict()
    if not isinstance(g, Mapping) or g.get("format") != "workbench.circuit":
        raise TypeError("circuit_graph takes a workbench.analysis.circuits.Graph (or its to_dict() / to_json() "
                        f"form), got {type(g).__name__}")
    return dict(g)


def _num(v: Optional[float]) -> Optional[float]:
    return None if v is None or not math.isfinite(float(v)) else round(float(v), 6)


def _payload_graph(d: dict) -> dict:
    meta = d.get("metadata") or {}
    chosen = [k for k, e in enumerate(d["edges"]) if e.get("in_graph")]
    requested = meta.get("requested_edges")        # top-n size of the chosen circuit, if it is one
    return {"label": f"step {meta['step']}" if meta.get("step") is not None else "", "step": meta.get("step"),
            "scores": [_num(e["score"]) or 0.0 for e in d["edges"]], "exact": [_num(e.get("exact")) for e in d["edges"]],
            "chosen": chosen, "chosen_n": requested, "curve": d.get("curve"), "faithfulness": d.get("faithfulness"),
            "meta": {k: meta.get(k) for k in ("method", "steps", "task", "clean_metric", "corrupted_metric", "chosen_by")}}


def _head_curve(head_scores: Any, top: int = 3) -> Optional[dict]:
    """``{"steps", "series", "label"}`` from ``(steps, scores[n_steps, n_layers, n_heads])`` or a
    ``scores_across_steps`` table (columns step, layer, head_index, induction)."""
    if head_scores is None:
        return None
    label = "induction score"
    if hasattr(head_scores, "columns"):
        steps, arr, _ = _table_to_array(head_scores, "induction")
    else:
        steps, arr = head_scores
        arr = to_numpy(arr, "head_scores")
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim != 3 or arr.shape[0] != len(steps):
        raise ValueError(f"head_scores must be (steps, [n_steps, n_layers, n_heads]), got {len(steps)} steps and "
                         f"shape {tuple(arr.shape)}")
    flat = arr.reshape(len(steps), -1)
    n_heads = arr.shape[2]
    series = {"best head": [round(float(v), 4) for v in flat.max(1)]}
    for idx in np.argsort(-flat[-1])[:top]:
        series[f"L{idx // n_heads}H{idx % n_heads}"] = [round(float(v), 4) for v in flat[:, idx]]
    return {"steps": [int(s) for s in steps], "series": series, "label": label}


class CircuitGraph(Figure):
    """An interactive circuit graph (see ``circuit_graph``); ``.data`` is what the page draws."""

    def __init__(self, data: dict, height: Optional[int] = None) -> None:
        self.data = data
        self.id = "wb-circuit-" + uuid.uuid4().hex[:12]
        self.height = height

    def fragment(self) -> str:
        return (f"<style>{_asset('circuit_graph.css')}</style>\n"
                f'<div id="{self.id}" class="wb-circuit">[circuit graph: it draws when its script runs; in Jupyter, '
                "run the cell or trust the notebook]</div>\n"
                f'<script type="application/json" id="{self.id}-data">{script_json(self.data)}</script>\n'
                f"<script>\n{_asset('circuit_graph.js')}\n</script>\n"
                "<script>\n(function () {\n"
                f'  var root = document.getElementById("{self.id}");\n'
                f'  var data = JSON.parse(document.getElementById("{self.id}-data").textContent);\n'
                "  window.WorkbenchCircuitGraph.render(root, data);\n})();\n</script>\n")

    def __repr__(self) -> str:
        return (f"CircuitGraph({len(self.data['nodes'])} nodes, {len(self.data['edges'])} edges, "
                f"{len(self.data['graphs'])} graph(s))")


def circuit_graph(graph: Union[Any, Sequence[Any]], head_scores: Any = None, title: Optional[str] = None,
                  initial: int = -1) -> CircuitGraph:
    """The interactive view of a circuit, or of one circuit per training step.

    Args:
        graph: a ``workbench.analysis.circuits.Graph`` (or its ``to_dict()``), or a list of them for
            the same model shape (e.g. ``circuits_across_steps``): the page then has a step slider.
        head_scores: for several steps, the head-score curve drawn beside them: ``(steps,
            scores[n_steps, n_layers, n_heads])`` or a ``workbench.analysis.heads.scores_across_steps`` table.
        title: shown above the graph (default: the task and method).
        initial: which graph to show first (default the last).
    Returns:
        a figure with ``_repr_html_`` (Jupyter) and ``save(path)`` (a standalone page).
    """
    graphs = [_graph_dict(g) for g in (graph if isinstance(graph, (list, tuple)) else [graph])]
    if not graphs:
        raise ValueError("circuit_graph needs at least one graph")
    shape = {(g["n_layers"], g["n_heads"]) for g in graphs}
    if len(shape) > 1:
        raise ValueError(f"the graphs come from models of different shapes {sorted(shape)}; draw them separately")
    first = graphs[0]
    names = [n["name"] for n in first["nodes"]]
    index = {n: i for i, n in enumerate(names)}
    edges = [[index[e["source"]], index[e["target"]], e.get("input") or ""] for e in first["edges"]]
    for g in graphs[1:]:
        if [e["name"] for e in g["edges"]] != [e["name"] for e in first["edges"]]:
            raise ValueError("the graphs list their edges differently; were they made by the same workbench version?")
    if title is None:
        meta = first.get("metadata") or {}
        task = (meta.get("task") or {}).get("name", "")
        method = (meta.get("method") or "").upper()
        title = f"{task} circuit ({method})".strip() if task or method else "circuit"
    data = {"title": title, "n_layers": first["n_layers"], "n_heads": first["n_heads"],
            "nodes": [{"name": n["name"], "layer": n["layer"], "kind": n["kind"]} for n in first["nodes"]],
            "edges": edges, "graphs": [_payload_graph(g) for g in graphs],
            "head_curve": _head_curve(head_scores) if len(graphs) > 1 or head_scores is not None else None,
            "initial": initial % len(graphs)}
    return CircuitGraph(data)
