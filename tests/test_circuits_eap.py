"""EAP, EAP-IG and exact edge patching against independent computations on tiny random models.

The brute-force reference gives every edge its own scalar ``eps[u, v]``: with the split-input
hooks on, reader ``v``'s own copy of the residual gets ``eps[u, v] * (a_corrupted[u] - a_clean[u])``
added, and autograd's d metric / d eps at eps = 0 is each edge's linearised effect, computed
through the model's real per-reader LayerNorms (not our hand-written backward). Writer outputs
come from the model's own hooks (``hook_embed``, ``attn.hook_result``, ``hook_mlp_out``).
"""
from __future__ import annotations

import copy

import pytest
import torch

from workbench.analysis.circuits import Graph, edge_attribution, exact_edge_effects, faithfulness, Layout
from workbench.analysis.circuits.evaluate import faithfulness_of_masks
from workbench.analysis.circuits.intervene import split_inputs
from workbench.analysis.circuits.runs import capture, reader_gradients
from workbench.analysis.path_patching import path_patch
from workbench.model import PhiConfig, PhiModel
from workbench.model.random_weights import randomize_norms_and_biases


def random_model(n_layers: int = 3, n_heads: int = 2, d_model: int = 32, vocab: int = 48, seed: int = 0,
                 dtype=torch.float64) -> PhiModel:
    """A tiny model with randomised LayerNorms and biases (the defaults 1 and 0 would hide mistakes)."""
    torch.manual_seed(seed)
    cfg = PhiConfig(d_model=d_model, n_layers=n_layers, n_heads=n_heads, d_mlp=2 * d_model, d_vocab=vocab,
                    n_ctx=64, partial_rotary_factor=0.5, initializer_range=0.3)
    return randomize_norms_and_biases(PhiModel(cfg).to(dtype).eval(), bias_std=0.2, gain_std=0.2)


def task(model, batch: int = 3, pos: int = 7, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    v = model.cfg.d_vocab
    clean = torch.randint(0, v, (batch, pos), generator=g)
    corrupted = torch.randint(0, v, (batch, pos), generator=g)
    targets = torch.randint(0, v, (batch, pos), generator=g)

    def metric(logits):   # mean log-prob of fixed targets at every position: gradients reach every edge
        return logits.log_softmax(-1).gather(-1, targets[..., None]).mean()
    return clean, corrupted, metric


def writer_outputs(model, tokens, embed=None):
    """``[n_writers, batch, pos, d_model]`` from the model's own hooks."""
    names = ["hook_embed"] + [f"blocks.{i}.{h}" for i in range(model.cfg.n_layers)
                              for h in ("attn.hook_result", "hook_mlp_out")]
    hooks = [] if embed is None else [("hook_embed", lambda t, hook: embed)]
    with torch.no_grad(), model.hooks(hooks):
        _, cache = model.run_with_cache(tokens, names_filter=names)
    out = [cache["hook_embed"][None]]
    for i in range(model.cfg.n_layers):
        out += [cache[f"blocks.{i}.attn.hook_result"].movedim(2, 0), cache[f"blocks.{i}.hook_mlp_out"][None]]
    return torch.cat(out)


def brute_force_scores(model, clean, corrupted, metric, embed=None) -> torch.Tensor:
    """``[n_writers, n_readers]``: d metric / d eps[u, v] at eps = 0, one eps per edge, by autograd."""
    lay = Layout(model.cfg.n_layers, model.cfg.n_heads)
    deltas = writer_outputs(model, corrupted) - writer_outputs(model, clean)
    eps = torch.zeros(lay.n_writers, lay.n_readers, dtype=deltas.dtype, requires_grad=True)
    h = lay.n_heads

    def nudge(cols: slice, per_head: bool):
        def hook(t, hook):
            layer = int(hook.name.split(".")[1]) if hook.name.startswith("blocks.") else lay.n_layers
            if cols.start == lay.logits_reader:
                layer = lay.n_layers
            w = lay.writers_below(layer)
            add = torch.einsum("wr,wbpd->bprd", eps[:w, cols], deltas[:w])
            return t + (add if per_head else add[..., 0, :])
        return hook

    hooks = []
    for layer in range(lay.n_layers):
        r0 = layer * lay.per_layer_readers
        for j, name in enumerate(("hook_q_input", "hook_k_input", "hook_v_input")):
            hooks.append((f"blocks.{layer}.{name}", nudge(slice(r0 + j * h, r0 + (j + 1) * h), True)))
        hooks.append((f"blocks.{layer}.hook_mlp_in", nudge(slice(r0 + 3 * h, r0 + 3 * h + 1), False)))
    hooks.append((f"blocks.{lay.n_layers - 1}.hook_resid_post",
                  nudge(slice(lay.logits_reader, lay.logits_reader + 1), False)))
    if embed is not None:
        hooks.append(("hook_embed", lambda t, hook: embed))
    with split_inputs(model), model.hooks(hooks):
        value = metric(model(clean))
    (grad,) = torch.autograd.grad(value, eps)
    return torch.where(lay.valid, grad, torch.full_like(grad, float("nan"))).float()


@pytest.fixture(scope="module")
def model():
    return random_model()


def test_reader_gradients_equal_autograd_through_the_split_hooks(model):
    clean, _, metric = task(model)
    cap = capture(model, clean, metric, grad=True)
    seen = {}

    def keep(t, hook):
        seen[hook.name] = t
    names = [f"blocks.{i}.{h}" for i in range(model.cfg.n_layers)
             for h in ("hook_q_input", "hook_k_input", "hook_v_input", "hook_mlp_in")]
    with split_inputs(model), model.hooks([(n, keep) for n in names]):
        value = metric(model(clean))
    grads = dict(zip(names, torch.autograd.grad(value, [seen[n] for n in names])))
    for i in range(model.cfg.n_layers):
        ours = reader_gradients(model, cap, i)                                      # [3h + 1, b, p, d]
        ref = torch.cat([grads[f"blocks.{i}.hook_{x}_input"].movedim(2, 0) for x in "qkv"]
                        + [grads[f"blocks.{i}.hook_mlp_in"][None]])
        torch.testing.assert_close(ours, ref, atol=1e-12, rtol=1e-9)


def test_eap_equals_brute_force_per_edge_linearisation(model):
    clean, corrupted, metric = task(model)
    graph = edge_attribution(model, clean, corrupted, metric)
    ref = brute_force_scores(model, clean, corrupted, metric)
    assert graph.n_edges == int(torch.isfinite(ref).sum()) == 94     # 3 layers x 2 heads
    assert torch.equal(torch.isfinite(graph.scores), torch.isfinite(ref))
    torch.testing.assert_close(graph.scores, ref, atol=1e-5, rtol=0, equal_nan=True)
    assert float(ref[torch.isfinite(ref)].abs().max()) > 1e-2          # not trivially zero


def test_eap_ig_with_one_step_equals_eap(model):
    clean, corrupted, metric = task(model)
    eap = edge_attribution(model, clean, corrupted, metric, method="eap")
    ig1 = edge_attribution(model, clean, corrupted, metric, method="eap-ig", steps=1)
    torch.testing.assert_close(ig1.scores, eap.scores, atol=0, rtol=0, equal_nan=True)


def test_eap_ig_averages_the_brute_force_gradient_along_the_input_path(model):
    clean, corrupted, metric = task(model)
    steps = 3
    ig = edge_attribution(model, clean, corrupted, metric, method="eap-ig", steps=steps)
    e_clean, e_corr = writer_outputs(model, clean)[0], writer_outputs(model, corrupted)[0]
    ref = sum(brute_force_scores(model, clean, corrupted, metric, embed=e_corr + k / steps * (e_clean - e_corr))
              for k in range(1, steps + 1)) / steps
    torch.testing.assert_close(ig.scores, ref, atol=1e-5, rtol=0, equal_nan=True)
    eap = edge_attribution(model, clean, corrupted, metric)
    assert not torch.allclose(ig.scores.nan_to_num(), eap.scores.nan_to_num(), atol=1e-4)


@pytest.mark.parametrize("edge, senders, receivers, which", [
    ("a0.h1->a2.h0<k>", (0, 1), [(2, 0)], "k"),
    ("a1.h0->a2.h1<q>", (1, 0), [(2, 1)], "q"),
    ("a0.h0->a1.h1<v>", (0, 0), [(1, 1)], "v"),
    ("a1.h1->logits", (1, 1), "final", "q"),
])
def test_exact_edge_patching_equals_path_patching_of_that_edge(model, edge, senders, receivers, which):
    # Path patching runs the corrupted input with clean senders; exact edge patching runs the clean
    # input with one corrupted edge. Swapping the two inputs makes them the same intervention, and
    # freeze_mlps=True restricts path patching to the direct path, which is what an edge is.
    clean, corrupted, metric = task(model)
    base_tokens, source_tokens = corrupted, clean
    with torch.no_grad():
        _, source_cache = model.run_with_cache(source_tokens)
        base_metric = float(metric(model(base_tokens)))
    want = path_patch(model, base_tokens, source_cache, metric, senders=senders, receivers=receivers,
                      receiver_input=which, freeze_mlps=True)
    got = exact_edge_effects(model, base_tokens, source_tokens, metric, [edge])[0] + base_metric
    assert abs(float(got) - float(want)) < 1e-6                      # path_patch returns float32
    assert abs(float(want) - base_metric) > 1e-4                       # the edge does something


def test_exact_effects_batch_many_edges_like_one_at_a_time(model):
    clean, corrupted, metric = task(model)
    graph = edge_attribution(model, clean, corrupted, metric)
    names = [e.name for e in graph.edges()][::7]
    together = exact_edge_effects(model, clean, corrupted, metric, names)
    alone = torch.stack([exact_edge_effects(model, clean, corrupted, metric, [n])[0] for n in names])
    torch.testing.assert_close(together, alone, atol=1e-10, rtol=0)
    # EAP is their first-order estimate: on a tiny random model they agree in sign more often than not.
    est = torch.tensor([graph.score(n) for n in names], dtype=torch.float64)
    assert float(torch.corrcoef(torch.stack([est, together]))[0, 1]) > 0.5


def test_faithfulness_is_zero_with_no_edges_one_with_all(model):
    clean, corrupted, metric = task(model)
    graph = edge_attribution(model, clean, corrupted, metric)
    lay = graph.layout
    none_, all_ = torch.zeros_like(lay.valid), lay.valid.clone()
    f = faithfulness_of_masks(model, clean, corrupted, metric, torch.stack([none_, all_]))
    assert f == pytest.approx([0.0, 1.0], abs=1e-9)
    # With every edge carrying its corrupted value the run IS the corrupted run.
    from workbench.analysis.circuits.evaluate import make_baseline
    from workbench.analysis.circuits.intervene import replaced_metrics
    base = make_baseline(model, clean, corrupted, metric)
    everything = replaced_metrics(model, base, lay.valid[None])[0]
    with torch.no_grad():
        assert float(everything) == pytest.approx(float(metric(model(corrupted))), abs=1e-9)


def test_faithfulness_with_one_edge_ablated_is_the_exact_effect(model):
    clean, corrupted, metric = task(model)
    graph = edge_attribution(model, clean, corrupted, metric)
    name = graph.circuit_edges() or [graph.layout.edge_name(*graph.ranked()[0])]
    w, r = graph.layout.parse_edge(name[0])
    keep = graph.layout.valid.clone()
    keep[w, r] = False
    with torch.no_grad():
        m_clean, m_corr = float(metric(model(clean))), float(metric(model(corrupted)))
    effect = float(exact_edge_effects(model, clean, corrupted, metric, [name[0]])[0])
    f = faithfulness(model, clean, corrupted, metric, keep)
    assert f == pytest.approx((m_clean + effect - m_corr) / (m_clean - m_corr), abs=1e-9)


def test_mean_ablation_uses_the_reference_mean(model):
    clean, corrupted, metric = task(model)
    lay = Layout(model.cfg.n_layers, model.cfg.n_heads)
    f = faithfulness_of_masks(model, clean, corrupted, metric, torch.stack([lay.valid]), ablation="mean",
                              reference=corrupted)
    assert f == pytest.approx([1.0], abs=1e-9)
    empty = faithfulness(model, clean, corrupted, metric, torch.zeros_like(lay.valid), ablation="mean")
    assert empty == pytest.approx(0.0, abs=1e-9)


def test_float32_model_scores_match_float64(model):
    clean, corrupted, metric = task(model)
    small = copy.deepcopy(model).float()
    ref = edge_attribution(model, clean, corrupted, metric).scores
    got = edge_attribution(small, clean, corrupted, metric).scores
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-3, equal_nan=True)
    assert isinstance(Graph.from_json(edge_attribution(small, clean, corrupted, metric).to_json()), Graph)


def test_find_circuit_with_mean_ablation_and_greedy_selection(model):
    from workbench.analysis.circuits import find_circuit
    from workbench.analysis.tasks import CircuitTask
    clean, corrupted, metric = task(model)
    t = CircuitTask("random", clean, corrupted, metric, "mean log-prob of fixed targets", "random prompts")
    g = find_circuit(model, t, method="eap", selection="greedy", ablation="mean", check=3, n_edges=12)
    assert g.curve.values[0] == pytest.approx(0.0, abs=1e-9) and g.curve.values[-1] == pytest.approx(1.0, abs=1e-9)
    assert 0 < int(g.in_graph.sum()) <= 12 and g.metadata["ablation"] == "mean"
    assert int(torch.isfinite(g.exact).sum()) == 3
    mask = g.in_graph.clone()
    assert g.faithfulness == pytest.approx(faithfulness(model, clean, corrupted, metric, mask, ablation="mean"), abs=1e-9)
