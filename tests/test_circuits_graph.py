"""The circuit graph's structure, circuit selection and pruning, and its JSON form."""
from __future__ import annotations

import json

import pytest
import torch

from workbench.analysis.circuits import FaithfulnessCurve, Graph, Layout, prune_edges
from workbench.errors import DamagedFileError, InputError


def scored(n_layers: int = 2, n_heads: int = 2, seed: int = 0) -> Graph:
    g = torch.Generator().manual_seed(seed)
    lay = Layout(n_layers, n_heads)
    return Graph(n_layers, n_heads, torch.randn(lay.n_writers, lay.n_readers, generator=g))


def test_nodes_and_edges_of_a_parallel_block_model():
    g = Graph(2, 2)
    assert g.nodes == ["input", "a0.h0", "a0.h1", "m0", "a1.h0", "a1.h1", "m1", "logits"]
    names = [e.name for e in g.edges()]
    # Readers of layer L (q, k, v of each head, the MLP) see the writers below L only: the MLP of
    # layer 0 reads the input alone, not a0.* (Phi's parallel block).
    assert [n for n in names if n.endswith("->m0")] == ["input->m0"]
    assert [n for n in names if n.endswith("->m1")] == ["input->m1", "a0.h0->m1", "a0.h1->m1", "m0->m1"]
    assert "a0.h1->a1.h0<k>" in names and "a1.h0->a1.h1<q>" not in names and "m1->logits" in names
    per_layer = 3 * 2 + 1
    assert g.n_edges == len(names) == per_layer * 1 + per_layer * 4 + 7 == 42
    e = g.edge("a0.h1->a1.h0<k>")
    assert (e.source, e.target, e.input) == ("a0.h1", "a1.h0", "k")


def test_unknown_edge_names_say_what_edges_look_like():
    g = Graph(2, 2)
    with pytest.raises(InputError, match="a writer feeds only readers in later layers"):
        g.edge("a1.h0->a0.h1<k>")
    with pytest.raises(InputError, match="nodes are input"):
        g.edge("nonsense")


def test_top_n_threshold_and_greedy_select_then_prune():
    g = scored()
    ranked = g.ranked()
    absval = [abs(float(g.scores[w, r])) for w, r in ranked]
    assert absval == sorted(absval, reverse=True) and len(ranked) == g.n_edges
    top = g.select("top_n", 10)
    assert int(top.sum()) == 10 and all(top[w, r] for w, r in ranked[:10])
    t = absval[9]
    assert torch.equal(g.select("threshold", t), top)
    greedy = g.select("greedy", 6)
    assert int(greedy.sum()) == 6
    # Greedy grows from the logits: every chosen edge's reader node is logits or the writer of a chosen edge.
    lay = g.layout
    chosen = greedy.nonzero().tolist()
    writers = {w for w, _ in chosen}
    for w, r in chosen:
        node = lay.reader_nodes[r]
        assert node == lay.n_nodes - 1 or node in writers
    g.top_n(10)
    assert torch.equal(g.in_graph, prune_edges(lay, top))
    assert set(g.circuit_edges()) <= {lay.edge_name(w, r) for w, r in ranked[:10]}


def test_pruning_keeps_exactly_the_edges_on_input_to_logits_paths():
    g = Graph(2, 2)
    lay = g.layout
    mask = torch.zeros(lay.n_writers, lay.n_readers, dtype=torch.bool)
    for name in ["input->a0.h0<v>", "a0.h0->a1.h1<k>", "a1.h1->logits",    # a path
                 "input->a1.h0<q>",                                        # a1.h0 reaches nothing
                 "a0.h1->logits"]:                                         # a0.h1 is never reached
        mask[lay.parse_edge(name)] = True
    kept = prune_edges(lay, mask)
    assert {lay.edge_name(w, r) for w, r in kept.nonzero().tolist()} == {
        "input->a0.h0<v>", "a0.h0->a1.h1<k>", "a1.h1->logits"}


def test_json_round_trip_keeps_scores_flags_curve_and_metadata(tmp_path):
    g = scored(n_layers=3, n_heads=2, seed=4)
    g.exact[g.layout.parse_edge("input->logits")] = -0.25
    g.top_n(12)
    g.faithfulness = 0.91
    g.curve = FaithfulnessCurve([0.0, 0.5, 1.0], [0, 3, 12], [0.0, 0.7, 1.0], [0, 6, 12])
    g.metadata = {"method": "eap", "task": {"name": "induction", "prompt": ["<s>", "a", "<b>"]}}
    back = Graph.from_json(g.to_json(tmp_path / "g.json"))
    assert torch.equal(back.in_graph, g.in_graph) and back.metadata == g.metadata
    torch.testing.assert_close(back.scores, g.scores, equal_nan=True)
    torch.testing.assert_close(back.exact, g.exact, equal_nan=True)
    assert back.curve.values == [0.0, 0.7, 1.0] and back.curve.area == pytest.approx(0.6)
    assert back.faithfulness == 0.91
    d = json.loads((tmp_path / "g.json").read_text())
    assert d["format"] == "workbench.circuit" and d["version"] == 1
    assert {"name", "source", "target", "input", "score", "exact", "in_graph"} == set(d["edges"][0])
    assert sum(n["in_graph"] for n in d["nodes"]) == len(g.circuit_nodes())


def test_damaged_json_is_a_clear_error(tmp_path):
    p = tmp_path / "cut.json"
    p.write_text(scored().to_json()[:200])
    with pytest.raises(DamagedFileError, match="does not parse"):
        Graph.from_json(p)
    with pytest.raises(DamagedFileError, match="not a workbench circuit"):
        Graph.from_json('{"format": "something else"}')


def test_curve_area_is_mibs_trapezoid():
    c = FaithfulnessCurve([0.001, 0.01, 0.1, 1.0], [1, 10, 100, 1000], [0.2, 0.5, 0.9, 1.0])
    want = 0.009 * 0.35 + 0.09 * 0.7 + 0.9 * 0.95
    assert c.area == pytest.approx(want)
    assert c.area_from_one == pytest.approx(0.009 * 0.65 + 0.09 * 0.3 + 0.9 * 0.05)
