"""IOI name pairs on a small model trained here (seconds): find_circuit gives a faithful circuit.

The model learns one IOI template ("Then, A and B went to the PLACE. S gave a OBJECT to" -> the name
that is not S) from 300 batches; its tokenizer is a BPE trained on the template's sentences, so every
name is one token. The circuit is checked on prompts it was not trained on, with the "abc"
corruption (all three names replaced), and must reach faithfulness 0.8 with its strongest edge
a layer-1 head writing to the logits (the head that moves the answer name), confirmed by exact patching.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from workbench.analysis.circuits import find_circuit
from workbench.model import PhiConfig, PhiModel, Tokenizer
from workbench.tasks import IOI_TEMPLATES, NAMES, OBJECTS, PLACES, ioi_prompts, ioi_task

TEMPLATE = IOI_TEMPLATES[:1]


def ioi_tokenizer() -> Tokenizer:
    texts = [TEMPLATE[0].format(A=n, B=n, S=n, PLACE=p, OBJECT=o) + " " + n
             for n in NAMES for p in PLACES for o in OBJECTS[:2]]
    return Tokenizer.train_bpe(texts, vocab_size=1200)


def train_ioi_model(steps: int = 300, d_model: int = 32, n_heads: int = 2, seed: int = 0):
    """``(model, tokenizer)``: a 2-layer model trained on the answer token of fresh IOI prompts."""
    tok = ioi_tokenizer()
    torch.manual_seed(seed)
    cfg = PhiConfig(d_model=d_model, n_layers=2, n_heads=n_heads, d_mlp=4 * d_model, d_vocab=tok.vocab_size,
                    n_ctx=64, partial_rotary_factor=1.0)
    model = PhiModel(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    for step in range(steps):
        ds = ioi_prompts(tok, 32, seed=1000 + step, templates=TEMPLATE)
        logits = model(ds.clean_tokens)[:, -1]
        loss = F.cross_entropy(logits, ds.answer_tokens[:, 0])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), tok


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
