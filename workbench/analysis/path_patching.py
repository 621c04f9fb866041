"""Path patching (Wang et al. 2022): the effect of sender heads on receivers *through a path*.

Orientation as ``patching.py`` (TransformerLens's): the base run is the corrupted input
and clean values are patched in. For a set of sender heads:

1. Run the corrupted input with the senders' outputs (``hook_z``) set to their clean
   values and every other head's output frozen at its corrupted value (MLPs are
   recomputed unless ``freeze_mlps``), so the senders' change reaches later layers only
   through the residual stream and MLPs, not through other heads.
2. Receivers: ``"final"`` (the residual stream read by the unembedding: step 1's logits
   give the metric) or heads' query/key/value inputs: their values in step 1 are
   recorded, then the corrupted run is repeated with only those receiver inputs
   replaced, and the metric read.

Batched like the activation-patching sweeps: every run starts at the first layer it
changes, and the variants of a sweep (one per sender) are stacked along the batch.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from .metrics import Metric, metric_value
from .patch_runs import auto_chunk, check_inputs

Head = tuple[int, int]


@torch.no_grad()
def _corrupted_run(model, tokens: torch.Tensor) -> dict:
    """One corrupted forward: resid_pre, z and mlp_out of every layer (the model's own caching hooks), and the logits."""
    n = model.cfg.n_layers
    kinds = {"z": "attn.hook_z", "mlp_out": "hook_mlp_out", "resid_pre": "hook_resid_pre"}
    cache, fwd, _ = model.get_caching_hooks([f"blocks.{i}.{h}" for i in range(n) for h in kinds.values()])
    with model.hooks(fwd):
        logits = model(tokens)
    out = {kind: {i: cache[f"blocks.{i}.{h}"] for i in range(n)} for kind, h in kinds.items()}
    out["logits"] = logits
    return out


def _check_heads(model, heads: Sequence[Head], what: str) -> None:
    for layer, head in heads:
        if not (0 <= layer < model.cfg.n_layers and 0 <= head < model.cfg.n_heads):
            raise ValueError(f"{what} head ({layer}, {head}) is outside the model's "
                             f"{model.cfg.n_layers} layers x {model.cfg.n_heads} heads")


@torch.no_grad()
def _run_path_variants(model, tokens, clean_z, corr, sender_sets: Sequence[Sequence[Head]],
                       receivers: Union[str, Sequence[Head]], receiver_input: str, freeze_mlps: bool,
                       metric: Metric, chunk: int) -> torch.Tensor:
    """Metric for each sender set (one patched variant each) -> ``[n_variants]``."""
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    b = tokens.shape[0]
    out = torch.empty(len(sender_sets))
    for start in range(0, len(sender_sets), chunk):
        sets = sender_sets[start:start + chunk]
        c = len(sets)
        send = torch.zeros(c, n_layers, n_heads, dtype=torch.bool)   # which heads each variant patches
        for v, heads in enumerate(sets):
            for layer, head in heads:
                send[v, layer, head] = True
        send = send.to(tokens.device)
        first = min(layer for heads in sets for layer, _ in heads)
        rep = tokens.repeat(c, 1)

        def z_hook(layer: int):
            def hook(act: torch.Tensor, hook) -> torch.Tensor:  # senders clean, everything else frozen corrupted
                m = send[:, layer][:, None, None, :, None]           # [c, 1, 1, head, 1]
                return torch.where(m, clean_z[layer][None], corr["z"][layer][None]).reshape(act.shape)
            return hook

        hooks = [(f"blocks.{i}.attn.hook_z", z_hook(i)) for i in range(first, n_layers)]
        if freeze_mlps:
            hooks += [(f"blocks.{i}.hook_mlp_out", lambda t, hook, i=i: corr["mlp_out"][i].repeat(c, 1, 1))
                      for i in range(first, n_layers)]
        x = corr["resid_pre"][first].repeat(c, 1, 1)
        if receivers == "final":
            with model.hooks(hooks):
                logits = model(x, start_at_layer=first, tokens=rep)
        else:
            # Step 1 up to the last receiver layer, recording the receivers' inputs.
            name = {"q": "attn.hook_q", "k": "attn.hook_k", "v": "attn.hook_v"}[receiver_input]
            recv_layers = sorted({layer for layer, _ in receivers})
            recorded = [f"blocks.{i}.{name}" for i in recv_layers if i >= first]
            seen_by_name, rec, _ = model.get_caching_hooks(recorded) if recorded else ({}, [], [])
            if rec:
                with model.hooks(hooks + rec):
                    model(x, start_at_layer=first, stop_at_layer=recv_layers[-1] + 1, tokens=rep)
            seen = {int(n.split(".")[1]): t for n, t in seen_by_name.items()}

            # Step 2: the corrupted run with only the receivers' inputs replaced.
            def recv_hook(layer: int):
                heads = [h for l2, h in receivers if l2 == layer]

                def hook(act: torch.Tensor, hook) -> torch.Tensor:
                    act = act.clone()
                    act[:, :, heads] = seen[layer][:, :, heads]
                    return act
                return hook

            lo = recv_layers[0]
            hooks2 = [(f"blocks.{i}.{name}", recv_hook(i)) for i in recv_layers if i in seen]
            with model.hooks(hooks2):
                logits = model(corr["resid_pre"][lo].repeat(c, 1, 1), start_at_layer=lo, tokens=rep)
        for v in range(c):
            out[start + v] = metric_value(metric, logits[v * b:(v + 1) * b]).float().cpu()
    return out


def _prepare(model, corrupted_tokens, clean_cache):
    clean_z = check_inputs(model, corrupted_tokens, clean_cache, "z")
    tokens = corrupted_tokens.to(model.device)
    return tokens, clean_z, _corrupted_run(model, tokens)


def _receivers(model, receivers, receiver_input: str):
    if isinstance(receivers, str):
        if receivers != "final":
            raise ValueError(f"receivers must be 'final' or a list of (layer, head), got {receivers!r}")
        return receivers
    receivers = [tuple(r) for r in receivers]
    if not receivers:
        raise ValueError("receivers is empty: give 'final' or at least one (layer, head)")
    _check_heads(model, receivers, "receiver")
    if receiver_input not in ("q", "k", "v"):
        raise ValueError(f"receiver_input must be 'q', 'k' or 'v', got {receiver_input!r}")
    return receivers


def path_patch(model, corrupted_tokens: torch.Tensor, clean_cache, patching_metric: Metric,
               senders: Union[Head, Sequence[Head]], receivers: Union[str, Sequence[Head]] = "final",
               receiver_input: str = "q", freeze_mlps: bool = False) -> torch.Tensor:
    """The metric after patching the path from ``senders`` (patched together) to ``receivers``: a scalar.

    Args:
        senders: a ``(layer, head)`` or a list of them.
        receivers: ``"final"`` or a list of ``(layer, head)`` whose ``receiver_input`` (q, k or v) is patched.
        freeze_mlps: also hold MLP outputs at their corrupted values (paths through MLPs excluded).
    """
    senders = [tuple(senders)] if isinstance(senders[0], int) else [tuple(s) for s in senders]
    _check_heads(model, senders, "sender")
    receivers = _receivers(model, receivers, receiver_input)
    tokens, clean_z, corr = _prepare(model, corrupted_tokens, clean_cache)
    return _run_path_variants(model, tokens, clean_z, corr, [senders], receivers, receiver_input,
                              freeze_mlps, patching_metric, 1)[0]


def get_path_patch_head_to_receivers(model, corrupted_tokens: torch.Tensor, clean_cache, patching_metric: Metric,
                                     receivers: Union[str, Sequence[Head]] = "final", receiver_input: str = "q",
                                     freeze_mlps: bool = False,
                                     max_batch_tokens: Optional[int] = None) -> torch.Tensor:
    """Path patching with every head as the sender in turn: ``[n_layers, n_heads]`` metric values.

    Senders in or after a receiver's layer have no path to it (their value is the corrupted metric).
    """
    receivers = _receivers(model, receivers, receiver_input)
    tokens, clean_z, corr = _prepare(model, corrupted_tokens, clean_cache)
    chunk = auto_chunk(model, *tokens.shape, max_batch_tokens)
    rows = []
    for layer in range(model.cfg.n_layers):
        sets = [[(layer, h)] for h in range(model.cfg.n_heads)]
        rows.append(_run_path_variants(model, tokens, clean_z, corr, sets, receivers, receiver_input,
                                       freeze_mlps, patching_metric, chunk))
    return torch.stack(rows)


def get_path_patch_head_to_final_resid(model, corrupted_tokens: torch.Tensor, clean_cache, patching_metric: Metric,
                                       freeze_mlps: bool = False, max_batch_tokens: Optional[int] = None
                                       ) -> torch.Tensor:
    """Each head's effect through the residual stream straight to the logits: ``[n_layers, n_heads]``."""
    return get_path_patch_head_to_receivers(model, corrupted_tokens, clean_cache, patching_metric, "final",
                                            freeze_mlps=freeze_mlps, max_batch_tokens=max_batch_tokens)


__all__ = ["get_path_patch_head_to_final_resid", "get_path_patch_head_to_receivers", "path_patch"]
