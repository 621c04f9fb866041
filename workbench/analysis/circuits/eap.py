"""Edge attribution patching: EAP and EAP-IG scores for every edge of the graph at once.

EAP (Syed et al. 2023) scores edge ``u -> v`` with the first-order change of the metric when
that edge alone carries its corrupted value into the clean run:

    score(u -> v) = sum over batch and positions of (a_corrupted[u] - a_clean[u]) . d metric / d input_v

where ``input_v`` is reader ``v``'s own copy of the residual stream (before its LayerNorm) in the
clean run. It needs one clean forward + backward and one corrupted forward. The writer
differences ``[n_writers, batch, pos, d_model]`` and each layer's reader gradients
``[n_readers, batch, pos, d_model]`` meet in one matrix product per layer.

EAP-IG (Hanna et al. 2024) replaces the clean-run gradient by its average along the straight
line from the corrupted to the clean input embedding, at ``alpha = k / steps`` for
``k = 1 .. steps`` (the right Riemann sum, so ``steps=1`` is the clean point and EAP-IG equals EAP).
Each step is one forward + backward; the ``alpha = 1`` step is the clean run EAP needs anyway.

The metric is a function of the logits returning a scalar (for a batch, its mean over prompts:
the scores are then sums over prompts of per-prompt scores divided by the batch size).
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from workbench.errors import InputError

from ..metrics import Metric
from .graph import Graph
from .runs import Capture, add_edge_scores, capture, check_tokens

METHODS = ("eap", "eap-ig", "exact")


def check_method(method: str, steps: int) -> None:
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if not isinstance(steps, int) or steps < 1:
        raise InputError(f"steps must be a whole number >= 1 (EAP-IG's integration steps), got {steps!r}")


def edge_attribution(model, clean_tokens: torch.Tensor, corrupted_tokens: torch.Tensor, metric: Metric,
                     method: str = "eap", steps: int = 5, metadata: Optional[dict[str, Any]] = None,
                     progress: Optional[Callable[[], None]] = None) -> Graph:
    """EAP (``method="eap"``) or EAP-IG (``"eap-ig"``, ``steps`` integration steps) scores of every edge.

    Args:
        clean_tokens, corrupted_tokens: ``[batch, pos]`` token ids, paired row by row.
        metric: logits ``[batch, pos, d_vocab]`` -> scalar (e.g. mean logit difference).
        progress: called once per layer of each backward pass (for a progress bar).
    Returns:
        a ``Graph`` whose ``scores`` hold the estimates (units of the metric) and whose metadata
        records the method and the clean and corrupted metric values.
    """
    if method not in ("eap", "eap-ig"):
        check_method(method, steps)
        raise InputError("edge_attribution computes 'eap' or 'eap-ig'; for exact effects use exact_edge_effects")
    check_method(method, steps)
    check_tokens(clean_tokens, corrupted_tokens)
    with torch.no_grad():
        corrupted = capture(model, corrupted_tokens, metric)
    clean = capture(model, clean_tokens, metric, grad=True)
    graph, _ = scores_from_runs(model, clean_tokens, clean, corrupted, metric, method, steps, progress)
    graph.metadata.update(metadata or {})
    return graph


def scores_from_runs(model, clean_tokens: torch.Tensor, clean: Capture, corrupted: Capture, metric: Metric,
                     method: str, steps: int, progress: Optional[Callable[[], None]] = None
                     ) -> tuple[Graph, torch.Tensor]:
    """Scores from a clean capture with gradients and a corrupted capture; returns ``(graph, deltas)``.

    ``deltas`` ``[n_writers, batch, pos, d_model]`` = corrupted minus clean writer outputs.
    """
    cfg = model.cfg
    graph = Graph(cfg.n_layers, cfg.n_heads)
    scores = torch.zeros_like(graph.scores)
    deltas = corrupted.writers - clean.writers
    n_steps = steps if method == "eap-ig" else 1
    add_edge_scores(model, scores, deltas, clean, 1.0 / n_steps, progress)
    clean.grads = None                                        # free the clean run's gradients
    for k in range(1, n_steps):
        alpha = k / n_steps
        embed = corrupted.writers[0] + alpha * (clean.writers[0] - corrupted.writers[0])
        step = capture(model, clean_tokens, metric, grad=True, embed=embed, writers=False)
        add_edge_scores(model, scores, deltas, step, 1.0 / n_steps, progress)
        del step                                               # one step's gradients alive at a time
    graph.scores = torch.where(graph.layout.valid, scores, graph.scores)
    graph.metadata.update({"method": method, "steps": n_steps if method == "eap-ig" else None,
                           "clean_metric": clean.metric, "corrupted_metric": corrupted.metric})
    return graph, deltas
