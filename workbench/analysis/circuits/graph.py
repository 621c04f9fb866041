"""The computational graph of a Phi model at the level of heads and MLPs, with a score per edge.

Nodes, bottom to top: ``input`` (the token embedding), ``a{L}.h{H}`` (head H of layer L),
``m{L}`` (the MLP of layer L), ``logits``. Every node but ``logits`` *writes* to the residual
stream; every node but ``input`` *reads* it. A head reads it three times, through its query,
key and value inputs, so it is three readers (``a1.h0<q>``, ``a1.h0<k>``, ``a1.h0<v>``); an MLP
and the logits read it once. An edge joins a writer to every reader above it:
``a0.h3->a1.h1<k>``, ``input->m0``, ``m1->logits``.

Phi's block is parallel (``resid_post = resid_pre + attn(ln1(x)) + mlp(ln1(x))``): the heads
and the MLP of layer L both read ``resid_pre`` of layer L, so ``m{L}`` reads the writers of
layers below L and not ``a{L}.*``. In one rule: ``writer -> reader`` exists when the writer's
layer is below the reader's (``input`` is layer -1, ``logits`` layer ``n_layers``).

Storage is dense: ``scores`` is ``[n_writers, n_readers]`` with NaN where no edge exists, so
scoring all edges is a few matrix products and selecting a circuit is a sort. Writers are
numbered like nodes (``input``, ``a0.h0`` ... ``a0.h{H-1}``, ``m0``, ``a1.h0`` ...); readers
layer by layer: the q inputs of every head, then k, then v, then the MLP; ``logits`` last.
"""
from __future__ import annotations

import json
import math
import operator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch

from workbench.errors import DamagedFileError, InputError

FORMAT = "workbench.circuit"
FORMAT_VERSION = 1
INPUTS = ("q", "k", "v")


@dataclass(frozen=True)
class Edge:
    """One edge: ``name`` is ``"{source}->{target}"`` plus ``"<q>"``/``"<k>"``/``"<v>"`` into a head."""

    name: str
    source: str
    target: str
    input: Optional[str]   # "q", "k", "v" into a head, None into an MLP or the logits
    writer: int            # row of Graph.scores
    reader: int            # column of Graph.scores


@dataclass
class Layout:
    """Index arithmetic of the graph of a model with ``n_layers`` x ``n_heads`` (no tensors)."""

    n_layers: int
    n_heads: int

    @property
    def per_layer_writers(self) -> int:
        return self.n_heads + 1

    @property
    def per_layer_readers(self) -> int:
        return 3 * self.n_heads + 1

    @property
    def n_writers(self) -> int:
        return 1 + self.n_layers * self.per_layer_writers

    @property
    def n_readers(self) -> int:
        return self.n_layers * self.per_layer_readers + 1

    @property
    def n_nodes(self) -> int:
        return self.n_writers + 1

    def writers_below(self, layer: int) -> int:
        """How many writers lie below ``layer`` (``layer == n_layers``: all of them)."""
        return 1 + layer * self.per_layer_writers

    def head_writer(self, layer: int, head: int) -> int:
        return 1 + layer * self.per_layer_writers + head

    def mlp_writer(self, layer: int) -> int:
        return 1 + layer * self.per_layer_writers + self.n_heads

    def head_reader(self, layer: int, head: int, which: str) -> int:
        return layer * self.per_layer_readers + INPUTS.index(which) * self.n_heads + head

    def mlp_reader(self, layer: int) -> int:
        return layer * self.per_layer_readers + 3 * self.n_heads

    @property
    def logits_reader(self) -> int:
        return self.n_readers - 1

    @cached_property
    def node_names(self) -> list[str]:
        names = ["input"]
        for layer in range(self.n_layers):
            names += [f"a{layer}.h{h}" for h in range(self.n_heads)] + [f"m{layer}"]
        return names + ["logits"]

    @cached_property
    def node_layers(self) -> list[int]:
        """Layer of each node: -1 for ``input``, ``n_layers`` for ``logits``."""
        return [-1] + [i // self.per_layer_writers for i in range(self.n_writers - 1)] + [self.n_layers]

    @cached_property
    def reader_nodes(self) -> list[int]:
        """The node each reader belongs to (a head's q, k and v inputs share one node)."""
        out = []
        for layer in range(self.n_layers):
            out += [self.head_writer(layer, h) for h in range(self.n_heads)] * 3 + [self.mlp_writer(layer)]
        return out + [self.n_nodes - 1]

    @cached_property
    def reader_inputs(self) -> list[Optional[str]]:
        per_layer = [x for x in INPUTS for _ in range(self.n_heads)] + [None]
        return per_layer * self.n_layers + [None]

    @cached_property
    def reader_names(self) -> list[str]:
        return [self.node_names[n] + (f"<{i}>" if i else "") for n, i in zip(self.reader_nodes, self.reader_inputs)]

    @cached_property
    def valid(self) -> torch.Tensor:
        """``[n_writers, n_readers]`` bool: True where the edge exists (writer layer < reader layer)."""
        w = torch.tensor(self.node_layers[:-1])
        r = torch.tensor([self.node_layers[n] for n in self.reader_nodes])
        return w[:, None] < r[None, :]

    def edge_name(self, writer: int, reader: int) -> str:
        return f"{self.node_names[writer]}->{self.reader_names[reader]}"

    def parse_edge(self, name: str) -> tuple[int, int]:
        """``(writer, reader)`` of an edge name such as ``a0.h3->a1.h1<k>``; a clear error otherwise."""
        index = self._edge_index
        if name not in index:
            src = name.split("->")[0] if "->" in name else name
            hint = (f"edges out of {src!r} look like {self.edge_name(*self._first_out(src))!r}"
                    if src in self.node_names[:-1] and self._first_out(src) else
                    f"nodes are {self.node_names[0]}, {self.node_names[1]}, ..., {self.node_names[-1]}")
            raise InputError(f"no edge {name!r} in a {self.n_layers}-layer, {self.n_heads}-head graph "
                             f"(a writer feeds only readers in later layers; {hint})")
        return index[name]

    def _first_out(self, src: str) -> Optional[tuple[int, int]]:
        w = self.node_names.index(src)
        cols = self.valid[w].nonzero().flatten()
        return (w, int(cols[0])) if len(cols) else None

    @cached_property
    def _edge_index(self) -> dict[str, tuple[int, int]]:
        return {self.edge_name(int(w), int(r)): (int(w), int(r)) for w, r in self.valid.nonzero()}


@dataclass
class FaithfulnessCurve:
    """Faithfulness of circuits of growing size (MIB's circuit-localisation measure).

    ``fractions``: the nominal fraction of all edges each circuit was chosen with (MIB's
    0.1% ... 100%, or whatever was asked); ``sizes``: edges kept after pruning; ``values``:
    normalised faithfulness (0 = every edge ablated, 1 = the clean model). ``area`` is the area
    under the curve over ``fractions`` (MIB's CPR, trapezoids), ``area_from_one`` the area
    between the curve and 1 (MIB's CMD; 0 is best).
    """

    fractions: list[float]
    sizes: list[int]
    values: list[float]
    requested: list[int] = field(default_factory=list)   # edges asked for before pruning

    @property
    def area(self) -> float:
        return _trapezoid(self.fractions, self.values)

    @property
    def area_from_one(self) -> float:
        return _trapezoid(self.fractions, [abs(1.0 - v) for v in self.values])

    def at(self, n_edges: int) -> Optional[float]:
        """Faithfulness of the circuit asked for with ``n_edges`` edges (before pruning), if computed."""
        for n, v in zip(self.requested or self.sizes, self.values):
            if n == n_edges:
                return v
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"fractions": self.fractions, "sizes": self.sizes, "requested": self.requested,
                "values": [_finite(v) for v in self.values], "area": _finite(self.area),
                "area_from_one": _finite(self.area_from_one)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FaithfulnessCurve":
        return cls([float(x) for x in d["fractions"]], [int(x) for x in d["sizes"]],
                   [float("nan") if v is None else float(v) for v in d["values"]],
                   [int(x) for x in d.get("requested", [])])


def _trapezoid(x: Sequence[float], y: Sequence[float]) -> float:
    return float(sum((x[i + 1] - x[i]) * (y[i] + y[i + 1]) / 2 for i in range(len(x) - 1)))


def _finite(v: Optional[float]) -> Optional[float]:
    return None if v is None or not math.isfinite(v) else float(v)


class Graph:
    """Edge scores of one model on one task, and which edges form the circuit.

    Attributes:
        layout: the index arithmetic (``Layout``).
        scores: ``[n_writers, n_readers]`` float32, NaN where no edge exists: EAP / EAP-IG
            scores, ``(a_corrupted[u] - a_clean[u]) . d metric / d input_v`` summed over batch
            and positions (a first-order estimate of the metric change when the edge alone
            carries its corrupted value); with ``method="exact"``, the exact changes.
        exact: same shape; the exact change of the metric when that edge alone is patched
            (``exact_edge_effects``), NaN where not computed.
        in_graph: ``[n_writers, n_readers]`` bool, the chosen circuit.
        metadata: JSON-ready dict (task, metric, method, model, clean and corrupted metric ...).
        curve: a ``FaithfulnessCurve`` once computed; ``faithfulness``: of the chosen circuit.
    """

    def __init__(self, n_layers: int, n_heads: int, scores: Optional[torch.Tensor] = None,
                 metadata: Optional[dict[str, Any]] = None) -> None:
        self.layout = Layout(int(n_layers), int(n_heads))
        shape = (self.layout.n_writers, self.layout.n_readers)
        nan = torch.full(shape, float("nan"))
        if scores is None:
            scores = nan.clone()
        if tuple(scores.shape) != shape:
            raise InputError(f"scores must be [n_writers, n_readers] = {list(shape)}, got {list(scores.shape)}")
        self.scores = torch.where(self.layout.valid, scores.detach().float().cpu(), nan)
        self.exact = nan.clone()
        self.in_graph = torch.zeros(shape, dtype=torch.bool)
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.curve: Optional[FaithfulnessCurve] = None
        self.faithfulness: Optional[float] = None

    # -- names ---------------------------------------------------------------------------------
    @property
    def n_edges(self) -> int:
        return int(self.layout.valid.sum())

    @property
    def nodes(self) -> list[str]:
        return list(self.layout.node_names)

    def edges(self) -> list[Edge]:
        """Every edge, reader by reader (bottom to top), writers in node order."""
        lay = self.layout
        out = []
        for r in range(lay.n_readers):
            for w in range(lay.n_writers):
                if lay.valid[w, r]:
                    out.append(Edge(lay.edge_name(w, r), lay.node_names[w],
                                    lay.node_names[lay.reader_nodes[r]], lay.reader_inputs[r], w, r))
        return out

    def edge(self, name: str) -> Edge:
        w, r = self.layout.parse_edge(name)
        lay = self.layout
        return Edge(name, lay.node_names[w], lay.node_names[lay.reader_nodes[r]], lay.reader_inputs[r], w, r)

    def score(self, name: str) -> float:
        return float(self.scores[self.layout.parse_edge(name)])

    # -- choosing the circuit ------------------------------------------------------------------
    def ranked(self, absolute: bool = True) -> list[tuple[int, int]]:
        """Edges ``(writer, reader)`` from the highest score to the lowest (``|score|`` by default)."""
        s = self.scores.abs() if absolute else self.scores
        flat = torch.where(self.layout.valid, s, torch.tensor(float("-inf"))).flatten()
        flat = torch.nan_to_num(flat, nan=float("-inf"))
        order = torch.argsort(flat, descending=True, stable=True)[: self.n_edges]
        n_r = self.layout.n_readers
        return [(int(i) // n_r, int(i) % n_r) for i in order]

    def top_n(self, n: int, absolute: bool = True, prune: bool = True) -> "Graph":
        """Keep the ``n`` highest-scoring edges (then prune); returns ``self``."""
        return self.set_circuit(self.select("top_n", n, absolute), prune)

    def threshold(self, value: float, absolute: bool = True, prune: bool = True) -> "Graph":
        """Keep the edges whose score (``|score|`` by default) is at least ``value``; returns ``self``."""
        return self.set_circuit(self.select("threshold", value, absolute), prune)

    def greedy(self, n: int, absolute: bool = True, prune: bool = True) -> "Graph":
        """Grow the circuit from the logits: repeatedly add the best edge into a node already in it.

        Starts with ``logits``; each step takes the highest-scoring edge whose reader's node is in
        the circuit and adds that edge and its writer. ``n`` steps; returns ``self``.
        """
        return self.set_circuit(self.select("greedy", n, absolute), prune)

    def select(self, how: str, n: float, absolute: bool = True, prune: bool = False) -> torch.Tensor:
        """The ``[n_writers, n_readers]`` mask ``top_n`` / ``threshold`` / ``greedy`` would keep,
        without changing the graph."""
        if how == "threshold":
            s = self.scores.abs() if absolute else self.scores
            mask = self.layout.valid & (torch.nan_to_num(s, nan=float("-inf")) >= n)
        elif how in ("top_n", "greedy"):
            n = self._check_n(n)
            mask = self._top_mask(n, absolute) if how == "top_n" else self._greedy_mask(n, absolute)
        else:
            raise InputError(f"unknown selection {how!r}; choose top_n, threshold or greedy")
        return prune_edges(self.layout, mask) if prune else mask

    def _top_mask(self, n: int, absolute: bool) -> torch.Tensor:
        mask = torch.zeros_like(self.in_graph)
        for w, r in self.ranked(absolute)[:n]:
            mask[w, r] = True
        return mask

    def _greedy_mask(self, n: int, absolute: bool) -> torch.Tensor:
        lay = self.layout
        s = self.scores.abs() if absolute else self.scores
        s = torch.where(lay.valid, torch.nan_to_num(s, nan=float("-inf")), torch.tensor(float("-inf")))
        reader_node = torch.tensor(lay.reader_nodes)
        reached = torch.zeros(lay.n_nodes, dtype=torch.bool)
        reached[-1] = True
        mask = torch.zeros_like(self.in_graph)
        for _ in range(min(n, self.n_edges)):
            open_ = torch.where(reached[reader_node][None, :] & ~mask & lay.valid, s, torch.tensor(float("-inf")))
            w, r = divmod(int(open_.flatten().argmax()), lay.n_readers)
            if not lay.valid[w, r] or mask[w, r]:
                break
            mask[w, r] = True
            reached[w] = True
        return mask

    def _check_n(self, n: Any) -> int:
        try:
            value = operator.index(n)
        except TypeError:
            value = -1
        if value < 0:
            raise InputError(f"the number of edges must be a whole number >= 0, got {n!r}")
        return value

    def set_circuit(self, mask: torch.Tensor, prune: bool = True) -> "Graph":
        """Make the edges of ``mask`` ``[n_writers, n_readers]`` the circuit (pruned by default); returns ``self``."""
        self.in_graph = prune_edges(self.layout, mask) if prune else mask & self.layout.valid
        self.faithfulness = None
        return self

    def circuit_edges(self) -> list[str]:
        """Names of the edges in the circuit, highest ``|score|`` first."""
        return [self.layout.edge_name(w, r) for w, r in self.ranked() if self.in_graph[w, r]]

    def circuit_nodes(self) -> list[str]:
        """Nodes touched by a circuit edge, in node order."""
        lay = self.layout
        used = torch.zeros(lay.n_nodes, dtype=torch.bool)
        w, r = self.in_graph.nonzero(as_tuple=True)
        used[w] = True
        used[torch.tensor(lay.reader_nodes, dtype=torch.long)[r]] = True
        return [n for n, u in zip(lay.node_names, used.tolist()) if u]

    # -- JSON ----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form (schema in docs/circuits.md)."""
        lay = self.layout
        nodes = [{"name": n, "layer": l, "kind": _kind(n)} for n, l in zip(lay.node_names, lay.node_layers)]
        in_nodes = set(self.circuit_nodes())
        for n in nodes:
            n["in_graph"] = n["name"] in in_nodes
        edges = [{"name": e.name, "source": e.source, "target": e.target, "input": e.input,
                  "score": _finite(float(self.scores[e.writer, e.reader])),
                  "exact": _finite(float(self.exact[e.writer, e.reader])),
                  "in_graph": bool(self.in_graph[e.writer, e.reader])} for e in self.edges()]
        return {"format": FORMAT, "version": FORMAT_VERSION, "n_layers": lay.n_layers, "n_heads": lay.n_heads,
                "metadata": self.metadata, "nodes": nodes, "edges": edges,
                "faithfulness": _finite(self.faithfulness),
                "curve": self.curve.to_dict() if self.curve is not None else None}

    def to_json(self, path: Optional[Union[str, Path]] = None, indent: Optional[int] = None) -> str:
        """The graph as JSON text; also written to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=indent, allow_nan=False)
        if path is not None:
            Path(path).write_text(text + "\n", encoding="utf-8")
        return text

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Graph":
        if d.get("format") != FORMAT:
            raise DamagedFileError(f"not a workbench circuit (format {d.get('format')!r}, expected {FORMAT!r})")
        if int(d.get("version", 0)) > FORMAT_VERSION:
            raise DamagedFileError(f"circuit format version {d['version']} is newer than this workbench reads "
                                   f"({FORMAT_VERSION}); upgrade the workbench")
        g = cls(d["n_layers"], d["n_heads"], metadata=d.get("metadata") or {})
        for e in d["edges"]:
            w, r = g.layout.parse_edge(e["name"])
            g.scores[w, r] = float("nan") if e.get("score") is None else e["score"]
            g.exact[w, r] = float("nan") if e.get("exact") is None else e["exact"]
            g.in_graph[w, r] = bool(e.get("in_graph", False))
        g.faithfulness = d.get("faithfulness")
        g.curve = FaithfulnessCurve.from_dict(d["curve"]) if d.get("curve") else None
        return g

    @classmethod
    def from_json(cls, text_or_path: Union[str, Path]) -> "Graph":
        """A graph from JSON text or a ``.json`` file written by ``to_json``."""
        text = str(text_or_path)
        if isinstance(text_or_path, Path) or not text.lstrip().startswith("{"):
            path = Path(text_or_path)
            if not path.is_file():
                raise InputError(f"no circuit JSON at {path}")
            text = path.read_text(encoding="utf-8")
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise DamagedFileError(f"the circuit JSON does not parse ({e}); was the file cut short?") from e
        return cls.from_dict(d)

    def copy(self) -> "Graph":
        return Graph.from_dict(json.loads(json.dumps(self.to_dict())))

    def __repr__(self) -> str:
        kept = int(self.in_graph.sum())
        f = "" if self.faithfulness is None else f", faithfulness {self.faithfulness:.3f}"
        return (f"Graph({self.layout.n_layers} layers x {self.layout.n_heads} heads, {self.n_edges} edges, "
                f"{kept} in the circuit{f})")


def _kind(name: str) -> str:
    return {"i": "input", "l": "logits", "m": "mlp", "a": "head"}[name[0]]


def prune_edges(layout: Layout, mask: torch.Tensor) -> torch.Tensor:
    """Keep the edges of ``mask`` that lie on a path from ``input`` to ``logits`` within ``mask``.

    A node is reached from the input when any kept edge into it (through q, k, v or its only
    input) comes from a reached node; it reaches the logits when any kept edge out of it goes to
    a node that does. Writers are numbered bottom-up, so one pass each way settles both.
    """
    mask = mask & layout.valid
    reader_node = torch.tensor(layout.reader_nodes)
    n = layout.n_nodes
    forward = torch.zeros(n, dtype=torch.bool)
    forward[0] = True
    for node in range(1, n):          # nodes in layer order: every writer into `node` is settled
        cols = (reader_node == node).nonzero().flatten()
        forward[node] = bool((mask[:, cols] & forward[:-1, None]).any())
    backward = torch.zeros(n, dtype=torch.bool)
    backward[-1] = True
    for node in range(n - 2, -1, -1):
        backward[node] = bool((mask[node] & backward[reader_node]).any())
    return mask & forward[:-1, None] & backward[reader_node][None, :]

