"""A 2-layer Phi that does one IOI template, trained here in seconds: circuits to try without phi-2.

The model learns "Then, A and B went to the PLACE. S gave a OBJECT to" -> the name that is not S,
from fresh prompts each batch; its tokenizer is a BPE trained on the template's sentences, so every
name is one token. ``tests/test_circuits_ioi.py`` checks that ``find_circuit`` on it is faithful and
``bench/bench_circuits.py`` times it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from workbench.analysis.tasks import IOI_TEMPLATES, NAMES, OBJECTS, PLACES, ioi_prompts
from workbench.model import PhiConfig, PhiModel, Tokenizer

TEMPLATE = IOI_TEMPLATES[:1]   # the one template the toy model learns (pass as ioi_task(..., templates=TEMPLATE))


def ioi_tokenizer() -> Tokenizer:
    """A BPE (1,200 ids) trained on every filling of ``TEMPLATE``: each name, place and object is one token."""
    texts = [TEMPLATE[0].format(A=n, B=n, S=n, PLACE=p, OBJECT=o) + " " + n
             for n in NAMES for p in PLACES for o in OBJECTS[:2]]
    return Tokenizer.train_bpe(texts, vocab_size=1200)


def train_ioi_model(steps: int = 300, d_model: int = 32, n_heads: int = 2, seed: int = 0,
                    batch: int = 32) -> tuple[PhiModel, Tokenizer]:
    """``(model, tokenizer)``: a 2-layer model trained for ``steps`` batches on the answer token of IOI prompts.

    ~300 steps of 32 prompts take seconds on a CPU; the model is returned in eval mode.
    """
    tok = ioi_tokenizer()
    torch.manual_seed(seed)
    cfg = PhiConfig(d_model=d_model, n_layers=2, n_heads=n_heads, d_mlp=4 * d_model, d_vocab=tok.vocab_size,
                    n_ctx=64, partial_rotary_factor=1.0)
    model = PhiModel(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    for step in range(steps):
        ds = ioi_prompts(tok, batch, seed=1000 + step, templates=TEMPLATE)
        logits = model(ds.clean_tokens)[:, -1]
        loss = F.cross_entropy(logits, ds.answer_tokens[:, 0])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), tok
