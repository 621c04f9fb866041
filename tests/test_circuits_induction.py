"""A 2-layer model trained here (seconds) forms an induction circuit, and find_circuit finds it.

Training data: rows ``[BOS, A, A, A, ...]`` with a random block ``A`` whose period varies by row
(3..8), so no fixed-offset head can predict the repeats and the model must learn induction:
a previous-token head in layer 0 whose output the layer-1 induction head reads through its key
(K-composition). The heads are identified independently by their attention patterns
(``workbench.analysis.heads``); the circuit must contain the edge between them into the key.
"""
from __future__ import annotations

import pytest
import torch

from workbench.analysis.circuits import find_circuit
from workbench.analysis.heads import detect_heads
from workbench.model import PhiConfig, PhiModel
from workbench.analysis.tasks import induction_task, repeated_random_tokens

ALPHABET, LENGTH = 24, 24


def training_batch(step: int, rows: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(step)
    out = []
    for i in range(rows):
        period = int(torch.randint(3, 9, (1,), generator=g))
        row = repeated_random_tokens(1, period, -(-LENGTH // period), vocab_size=ALPHABET, seed=step * 1000 + i,
                                     bos_token_id=ALPHABET)
        out.append(row[0, :LENGTH + 1])
    return torch.stack(out)


@pytest.fixture(scope="module")
def trained() -> PhiModel:
    torch.manual_seed(0)
    cfg = PhiConfig(d_model=32, n_layers=2, n_heads=2, d_mlp=128, d_vocab=ALPHABET + 1, n_ctx=64,
                    partial_rotary_factor=1.0)
    model = PhiModel(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    for step in range(350):
        loss = model(training_batch(step), return_type="loss")
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def task():
    return induction_task(n_prompts=16, period=6, n_repeats=2, vocab_size=ALPHABET, bos_token_id=ALPHABET,
                          seed=12345)


def k_composition_edge(model, task) -> str:
    heads = detect_heads(model, task.clean_tokens, period=6, offset=1)
    prev = heads[heads.layer == 0].sort_values("previous_token").iloc[-1]
    ind = heads[heads.layer == 1].sort_values("induction").iloc[-1]
    assert prev.previous_token > 0.5 and ind.induction > 0.5, heads   # the model did learn induction
    return f"a0.h{int(prev['head_index'])}->a1.h{int(ind['head_index'])}<k>"


@pytest.mark.parametrize("method", ["eap-ig", "eap"])
def test_trained_model_circuit_has_k_composition_and_is_faithful(trained, task, method):
    edge = k_composition_edge(trained, task)
    graph = find_circuit(trained, task, method=method)
    assert graph.metadata["clean_metric"] - graph.metadata["corrupted_metric"] > 2.0
    top = [graph.layout.edge_name(w, r) for w, r in graph.ranked()[:8]]
    assert edge in top, (edge, top)
    assert edge in graph.circuit_edges()
    assert graph.faithfulness >= 0.8
    assert int(graph.in_graph.sum()) <= 0.3 * graph.n_edges                 # a small part of the graph
    w, r = graph.layout.parse_edge(edge)
    assert float(graph.exact[w, r]) < -0.5          # corrupting that key edge alone costs the metric


def test_faithfulness_curve_rises_to_one(trained, task):
    graph = find_circuit(trained, task, method="eap-ig", check=0)
    c = graph.curve
    assert c.requested == list(range(graph.n_edges + 1))           # small graph: every size
    assert c.values[0] == pytest.approx(0.0, abs=1e-6) and c.values[-1] == pytest.approx(1.0, abs=1e-6)
    assert 0.5 < c.area <= 1.2
    assert c.area_from_one < 0.5
