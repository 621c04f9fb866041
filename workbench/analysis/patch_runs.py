"""The batched engine behind ``patching.py``: one corrupted run, then many patched variants per forward.

A patch at layer ``L`` leaves every layer below ``L`` as in the corrupted run, so the
corrupted run is made once (through the hooks' own caching hooks), its ``resid_pre`` kept,
and every patched run starts at layer ``L`` (``model(resid, start_at_layer=L)``). Positions
before the first one a variant patches are the corrupted run's too (causal attention), so
a chunk of variants starts there, with the corrupted keys and values of the earlier
positions as a KV cache. Patched variants are stacked along the batch dimension,
``[variant * batch, ...]``, and one hook writes a different slice into each variant via a
boolean mask, so a sweep is a few large forwards rather than hundreds of small ones.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from workbench.hooks import get_act_name
from workbench.model.kv_cache import KVCache

# The non-batch dims of each patchable activation, in hook order.
ACT_DIMS: dict[str, tuple[str, ...]] = {
    "resid_pre": ("pos", "d_model"), "resid_post": ("pos", "d_model"),
    "attn_out": ("pos", "d_model"), "mlp_out": ("pos", "d_model"),
    "q": ("pos", "head", "d_head"), "k": ("pos", "head", "d_head"), "v": ("pos", "head", "d_head"),
    "z": ("pos", "head", "d_head"), "result": ("pos", "head", "d_model"),
    "pattern": ("head", "dest_pos", "src_pos"), "attn_scores": ("head", "dest_pos", "src_pos"),
}
# TransformerLens's axis names -> our dim names
_AXIS = {"pos": "pos", "head": "head", "head_index": "head", "dest_pos": "dest_pos", "src_pos": "src_pos"}

Evaluate = Callable[[torch.Tensor], torch.Tensor]   # logits [batch, pos, vocab] -> [n_metrics, batch?]


def check_inputs(model, corrupted_tokens: torch.Tensor, clean_cache, activation_name: str,
                 layers: Optional[Sequence[int]] = None) -> dict[int, torch.Tensor]:
    """Validate a patching call; returns ``{layer: clean activation}`` on the model's device.

    Raises a clear error if the tokens are not ``[batch, pos]`` ids, if the clean cache
    lacks the activation, or if clean and corrupted inputs have different shapes.
    """
    if activation_name not in ACT_DIMS:
        raise ValueError(f"cannot patch {activation_name!r}; patchable activations: {sorted(ACT_DIMS)}")
    if not isinstance(corrupted_tokens, torch.Tensor) or corrupted_tokens.ndim != 2:
        raise ValueError("corrupted_tokens must be a LongTensor [batch, pos] of token ids, got "
                         f"{getattr(corrupted_tokens, 'shape', type(corrupted_tokens))}")
    b, p = corrupted_tokens.shape
    layers = range(model.cfg.n_layers) if layers is None else layers
    out = {}
    for layer in layers:
        name = get_act_name(activation_name, layer)
        if name not in clean_cache:
            raise KeyError(f"the clean cache has no {name!r}: cache it with "
                           f"model.run_with_cache(clean_tokens, names_filter=lambda n: n.endswith("
                           f"'hook_{activation_name}')) or with no names_filter")
        act = clean_cache[name]
        want = (b, model.cfg.n_heads, p, p) if ACT_DIMS[activation_name][0] == "head" else (b, p)
        if tuple(act.shape[:len(want)]) != want:
            raise ValueError(f"clean and corrupted inputs differ in shape: clean {name} is "
                             f"{tuple(act.shape)} but corrupted_tokens is {tuple(corrupted_tokens.shape)}; "
                             "patching needs the same batch size and sequence length (pad or trim the prompts)")
        out[layer] = act.to(model.device)
    return out


@torch.no_grad()
def corrupted_run(model, tokens: torch.Tensor, keys: bool = True) -> dict:
    """One forward keeping what patched runs restart from: ``resid_pre`` of every layer, (``keys``)
    every layer's rotated keys and values ``[batch, head, pos, d_head]``, and the ``logits``.

    The activations are taken with the model's own caching hooks (``get_caching_hooks``).
    """
    n = model.cfg.n_layers
    names = [f"blocks.{i}.hook_resid_pre" for i in range(n)]
    if keys:
        names += [f"blocks.{i}.attn.hook_{x}" for i in range(n) for x in ("rot_k", "v")]
    cache, fwd, _ = model.get_caching_hooks(names)
    with model.hooks(fwd):
        logits = model(tokens.to(model.device))
    out = {"resid_pre": [cache[f"blocks.{i}.hook_resid_pre"] for i in range(n)], "logits": logits}
    if keys:
        out["k"] = {i: cache[f"blocks.{i}.attn.hook_rot_k"].transpose(1, 2) for i in range(n)}
        out["v"] = {i: cache[f"blocks.{i}.attn.hook_v"].transpose(1, 2) for i in range(n)}
    return out


def batch_tokens(model, max_batch_tokens: Optional[int]) -> int:
    """Tokens in one patched forward: ``max_batch_tokens``, or ~1 GiB of fp32 logits and at most 8192."""
    return max_batch_tokens or min(8192, 2 ** 28 // model.cfg.d_vocab)


def auto_chunk(model, batch: int, pos: int, max_batch_tokens: Optional[int]) -> int:
    """How many variants of ``[batch, pos]`` go in one forward: bounded by tokens and by logits memory."""
    return max(1, batch_tokens(model, max_batch_tokens) // max(1, batch * pos))


def row_masks(rows: torch.Tensor, patched_dims: Sequence[int], act_shape: Sequence[int]) -> torch.Tensor:
    """Boolean masks ``[n_rows, *act_shape]`` (size 1 on dims a row does not index) of what each row patches.

    ``rows`` ``[n_rows, k]`` holds index values; column ``j`` indexes activation dim
    ``patched_dims[j]`` (dims counted without the batch dim).
    """
    n = rows.shape[0]
    mask = torch.ones((n,) + (1,) * len(act_shape), dtype=torch.bool)
    for j, d in enumerate(patched_dims):
        size = act_shape[d]
        onehot = rows[:, j, None] == torch.arange(size)[None, :]       # [n_rows, size]
        shape = [n] + [1] * len(act_shape)
        shape[d + 1] = size
        mask = mask & onehot.view(shape)
    return mask


def first_positions(rows: torch.Tensor, patched_dims: Sequence[int], query_dim: int) -> torch.Tensor:
    """``[n_rows]``: the first query position each row patches (0 when it patches every position)."""
    if query_dim in patched_dims:
        return rows[:, list(patched_dims).index(query_dim)].long()
    return torch.zeros(rows.shape[0], dtype=torch.long)


def plan_chunks(starts: torch.Tensor, batch: int, pos: int, max_tokens: int,
                min_tokens: Optional[int] = None) -> list[tuple[int, list[int]]]:
    """Group variants (sorted by first position) into forwards of at most ``max_tokens`` tokens.

    Each chunk computes positions ``start:`` for all its variants, so variants with a later first
    position waste work in a chunk that starts earlier: a new chunk begins at each new first
    position once the current one holds ``min_tokens`` (default ``max_tokens // 8``), enough
    tokens for efficient matmuls. Returns ``[(start position, [variant ids])]``.
    """
    min_tokens = max_tokens // 8 if min_tokens is None else min_tokens
    order = torch.argsort(starts, stable=True).tolist()
    chunks: list[tuple[int, list[int]]] = []
    for v in order:
        s = int(starts[v])
        if chunks:
            c_start, ids = chunks[-1]
            size = len(ids) * batch * (pos - c_start)
            fits = (len(ids) + 1) * batch * (pos - c_start) <= max_tokens
            if fits and (s == c_start or size < min_tokens):
                ids.append(v)
                continue
        chunks.append((s, [v]))
    return chunks


def masked_patch_hook(clean: torch.Tensor, masks: torch.Tensor) -> Callable:
    """A hook that writes ``clean`` ``[batch, *shape]`` where each stacked variant's mask ``[c, *shape]`` is True."""
    def hook(act: torch.Tensor, hook) -> torch.Tensor:
        c = masks.shape[0]
        v = act.view(c, -1, *act.shape[1:])                             # [c, batch, *shape]
        return torch.where(masks[:, None].to(act.device), clean[None].to(act.dtype), v).view(act.shape)
    return hook


def from_position(t: torch.Tensor, query_dim: int, start: int) -> torch.Tensor:
    """Slice the query-position dim (counted without the batch dim) of an activation or mask to ``start:``."""
    d = query_dim + 1
    if start == 0 or t.shape[d] == 1:
        return t
    return t.narrow(d, start, t.shape[d] - start)


@torch.no_grad()
def run_chunk(model, corr: dict, layer: int, start: int, c: int, hooks: list, evaluate: Evaluate) -> torch.Tensor:
    """Run ``c`` stacked patched copies of the corrupted batch from ``layer`` and position ``start``.

    Positions before ``start`` come from the corrupted run (its keys/values as a KV cache, its
    logits); returns ``evaluate`` of each copy's full ``[batch, pos, d_vocab]`` logits, stacked:
    ``[c, n_metrics, batch?]``.
    """
    x = corr["resid_pre"][layer][:, start:]
    b = x.shape[0]
    kv = None
    if start > 0:
        run = range(layer, model.cfg.n_layers)    # the layers below are not run: no entries for them
        kv = KVCache.from_prefix(model.cfg.n_layers,
                                 {i: corr["k"][i][:, :, :start].repeat(c, 1, 1, 1) for i in run},
                                 {i: corr["v"][i][:, :, :start].repeat(c, 1, 1, 1) for i in run})
    with model.hooks(hooks):
        logits = model(x.repeat(c, 1, 1), start_at_layer=layer, kv_cache=kv)   # [c * batch, pos - start, vocab]
    out = []
    for i in range(c):
        part = logits[i * b:(i + 1) * b]
        if start > 0:
            part = torch.cat([corr["logits"][:, :start], part], dim=1)
        out.append(evaluate(part))
    return torch.stack(out)


def batched_sweep(model, tokens: torch.Tensor, clean: dict[int, torch.Tensor], activation_name: str,
                  rows: torch.Tensor, patched_dims: Sequence[int], evaluate: Evaluate,
                  max_batch_tokens: Optional[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Evaluate every patch of ``rows`` ``[n_rows, 1 + k]`` (layer first): ``[n_rows, n_metrics, batch?]``,
    and the unpatched corrupted run's logits ``[batch, pos, d_vocab]``."""
    dims = ACT_DIMS[activation_name]
    query_dim = dims.index("pos" if "pos" in dims else "dest_pos")
    b, p = tokens.shape
    starts = first_positions(rows[:, 1:], patched_dims, query_dim)
    corr = corrupted_run(model, tokens, keys=bool((starts > 0).any()))
    results: list[Optional[torch.Tensor]] = [None] * rows.shape[0]
    for layer in rows[:, 0].unique().tolist():
        ids = (rows[:, 0] == layer).nonzero()[:, 0]
        name = get_act_name(activation_name, layer)
        act_shape = tuple(clean[layer].shape[1:])
        for start, chunk in plan_chunks(starts[ids], b, p, batch_tokens(model, max_batch_tokens)):
            members = ids[chunk]
            masks = from_position(row_masks(rows[members, 1:], patched_dims, act_shape), query_dim, start)
            hook = masked_patch_hook(from_position(clean[layer], query_dim, start), masks.to(model.device))
            values = run_chunk(model, corr, layer, start, len(chunk), [(name, hook)], evaluate)
            for i, v in zip(members.tolist(), values):
                results[i] = v
    return torch.stack(results), corr["logits"]  # type: ignore[arg-type]
