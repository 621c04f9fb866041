"""Sampling with a key/value cache."""
from __future__ import annotations

from typing import Optional, Union

import torch

from .kv_cache import KVCache


@torch.no_grad()
def generate(model, input: Union[str, torch.Tensor], max_new_tokens: int = 20, temperature: float = 1.0,
             top_k: Optional[int] = None, use_kv_cache: bool = True, stop_at_eos: bool = False,
             seed: Optional[int] = None) -> Union[str, list[str], torch.Tensor]:
    """Extend ``input`` (ids ``[batch, pos]`` or text) by up to ``max_new_tokens`` tokens.

    ``temperature=0`` picks the most likely token (greedy). With the KV cache
    each step runs only the new token; without it the whole sequence is
    recomputed, which is slower and gives the same tokens. Returns ids
    ``[batch, pos + new]``, or text if text was given.
    """
    as_text = isinstance(input, (str, list))
    tokens = model.to_tokens(input) if as_text else input
    if tokens.ndim == 1:
        tokens = tokens[None]
    tokens = tokens.to(model.device)
    if tokens.shape[1] + max_new_tokens > model.cfg.n_ctx:
        raise ValueError(f"prompt ({tokens.shape[1]}) + max_new_tokens ({max_new_tokens}) exceeds "
                         f"the context length n_ctx={model.cfg.n_ctx}")
    gen = torch.Generator(device=tokens.device).manual_seed(seed) if seed is not None else None
    cache = KVCache(model.cfg.n_layers) if use_kv_cache else None
    finished = torch.zeros(tokens.shape[0], dtype=torch.bool, device=tokens.device)
    step_input = tokens
    for _ in range(max_new_tokens):
        logits = model(step_input if use_kv_cache else tokens, kv_cache=cache)[:, -1].float()  # [batch, d_vocab]
        nxt = _pick(logits, temperature, top_k, gen)                                        # [batch]
        if stop_at_eos and model.cfg.eos_token_id is not None:
            nxt = torch.where(finished, torch.full_like(nxt, model.cfg.eos_token_id), nxt)
            finished |= nxt == model.cfg.eos_token_id
        tokens = torch.cat((tokens, nxt[:, None]), dim=1)
        step_input = nxt[:, None]
        if stop_at_eos and bool(finished.all()):
            break
    if as_text:
        text = model.to_string(tokens)
        return text[0] if isinstance(input, str) else text
    return tokens


def _pick(logits: torch.Tensor, temperature: float, top_k: Optional[int],
          gen: Optional[torch.Generator]) -> torch.Tensor:
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k is not None:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=gen)[:, 0]
