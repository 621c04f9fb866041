"""EAP edge scores agree with TransformerLens 4.3's attribution patching on its bridge over the same weights.

Conventions. TransformerLens scores ``(a_clean[u] - a_corrupt[u]) . d metric / d input_v`` at the
*corrupt* run (denoising); we score ``(a_corrupted[u] - a_clean[u]) . d metric / d input_v`` at the
*clean* run (noising, as EAP and EAP-IG do). Passing their corrupt prompts as our clean ones and
their clean prompts as our corrupted ones makes the two the same number. TransformerLens keys edges
by position and averages prompts; we sum positions and take a batch-mean metric (so prompts are
averaged too): summing their positions gives ours.

Which edges: on Phi's bridge TransformerLens's ``attribution_patch(..., granularity="edge")``
refuses to run, because the parallel block's MLP reads ``ln1`` directly and the bridge's
``hook_mlp_in`` never fires (checked below). So edges into MLPs exist only here; every other edge
(into each head's q, k, v and into the logits, from the embedding, every head and every MLP) is
compared, with TransformerLens's own enumeration (``enumerate_edges``, which drops same-layer
head -> MLP edges for parallel blocks as we do) and scoring (``_edge_effects``).
"""
from __future__ import annotations

import pytest
import torch

from workbench.analysis.circuits import edge_attribution
from workbench.model import PhiModel

ap = pytest.importorskip("transformer_lens.tools.analysis.attribution_patching")

CLEAN = torch.randint(0, 512, (3, 8), generator=torch.Generator().manual_seed(31))
CORRUPT = torch.randint(0, 512, (3, 8), generator=torch.Generator().manual_seed(32))
A, B = 17, 101


def metric_one(logits):          # TransformerLens calls its metric on one prompt at a time
    return logits[0, -1, A] - logits[0, -1, B]


def metric_mean(logits):         # ours: the batch mean of the same quantity
    return (logits[:, -1, A] - logits[:, -1, B]).mean()


@pytest.fixture(scope="module")
def models(tiny_checkpoint):
    ours = PhiModel.from_pretrained(tiny_checkpoint).eval()
    return ours, ours.to_transformer_lens()


def our_name(writer, reader) -> str:
    src = {"embed": lambda n: "input", "attn_head_out": lambda n: f"a{n.layer}.h{n.head}",
           "mlp_out": lambda n: f"m{n.layer}"}[writer.kind](writer)
    dst = "logits" if reader.kind == "logits" else f"a{reader.layer}.h{reader.head}<{reader.kind[0]}>"
    return f"{src}->{dst}"


def tl_scores(bridge) -> dict[str, float]:
    """TransformerLens's per-position edge scores for every edge not into an MLP, summed over positions."""
    n_layers = bridge.cfg.n_layers
    names = [n for n in ap._edge_hook_names(n_layers) if not n.endswith("hook_mlp_in")]
    out: dict[str, float] = {}
    bridge.set_use_attn_result(True)
    bridge.set_use_split_qkv_input(True)
    try:
        for i in range(CLEAN.shape[0]):
            clean = ap.cache_activation_and_gradient(bridge, CLEAN[i:i + 1], metric_one, names, compute_gradient=False)
            corrupt = ap.cache_activation_and_gradient(bridge, CORRUPT[i:i + 1], metric_one, names)
            for layer in range(n_layers):   # enumerate_edges insists on hook_mlp_in, which never fires on Phi
                corrupt.activations[f"blocks.{layer}.hook_mlp_in"] = torch.zeros(1)
            edges = [e for e in ap.enumerate_edges(bridge, corrupt) if e[1].kind != "mlp_in"]
            for (w, r), s in ap._edge_effects(clean, corrupt, edges).items():
                key = our_name(w, r)
                out[key] = out.get(key, 0.0) + s / CLEAN.shape[0]
    finally:
        bridge.set_use_attn_result(False)
        bridge.set_use_split_qkv_input(False)
    return out


def test_transformer_lens_refuses_edge_attribution_on_phi(models):
    _, bridge = models
    with pytest.raises(ValueError, match="hook_mlp_in"):
        ap.attribution_patch(bridge, CLEAN, CORRUPT, metric_one, ap.EdgeAttributionConfig(granularity="edge"))


def test_eap_scores_equal_transformer_lens_attribution_patching(models):
    ours, bridge = models
    theirs = tl_scores(bridge)
    graph = edge_attribution(ours, CORRUPT, CLEAN, metric_mean)        # their corrupt = our clean
    into_mlp = [e.name for e in graph.edges() if e.target.startswith("m")]
    assert sorted(theirs) == sorted(e.name for e in graph.edges() if e.name not in into_mlp)
    assert len(theirs) == graph.n_edges - len(into_mlp) > 20
    ref = torch.tensor([theirs[n] for n in sorted(theirs)])
    got = torch.tensor([graph.score(n) for n in sorted(theirs)])
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)
    assert float(ref.abs().max()) > 1e-2
