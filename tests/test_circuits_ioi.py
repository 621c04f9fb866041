"""IOI name pairs on a small model trained here (seconds, ``workbench.analysis.toy_ioi``): find_circuit gives a
faithful circuit. The circuit is checked on prompts it was not trained on, with the "abc"
corruption (all three names replaced), and must reach faithfulness 0.8 with its strongest edge
a layer-1 head writing to the logits (the head that moves the answer name), confirmed by exact patching.
"""
from __future__ import annotations

import pytest

from workbench.analysis.circuits import find_circuit
from workbench.analysis.tasks import ioi_task
from workbench.analysis.toy_ioi import TEMPLATE, train_ioi_model


@pytest.fixture(scope="module")
def trained():
    return train_ioi_model()


def test_ioi_circuit_on_a_trained_model_is_faithful(trained):
    model, tok = trained
    task = ioi_task(tok, 16, seed=7, templates=TEMPLATE)
    graph = find_circuit(model, task, method="eap-ig")
    assert graph.metadata["clean_metric"] > 2.0 > graph.metadata["corrupted_metric"]
    assert graph.faithfulness >= 0.8
    assert int(graph.in_graph.sum()) < graph.n_edges
    w, r = graph.ranked()[0]
    name = graph.layout.edge_name(w, r)
    assert name.startswith("a1.") and name.endswith("->logits"), name
    assert float(graph.exact[w, r]) < -1.0 and name in graph.circuit_edges()
