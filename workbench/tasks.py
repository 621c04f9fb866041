"""Task generators: the datasets the analyses, notebooks and trainer use.

* ``repeated_random_tokens``: random sequences repeated, to find induction heads.
* ``ioi_prompts``: IOI-style name templates with clean/corrupted pairs.
* ``python_probe_set``: labelled probing sets from Python source (string/comment/
  identifier, bracket depth), per token of a given tokenizer.

All generators are deterministic given ``seed``.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch


def repeated_random_tokens(n_seqs: int, period: int, n_repeats: int = 2, vocab_size: Optional[int] = None,
                           seed: int = 0, bos_token_id: Optional[int] = None,
                           exclude: Sequence[int] = ()) -> torch.Tensor:
    """Random token sequences, each a block of ``period`` tokens repeated ``n_repeats`` times.

    Within a block the tokens are distinct (when the vocabulary allows), so every
    token in a later repeat has exactly one earlier occurrence per repeat and the
    induction target ``k = q - period + 1`` is unambiguous. ``bos_token_id`` (and
    ``exclude``) never appear inside the blocks.

    Returns:
        LongTensor ``[n_seqs, (1 if bos) + period * n_repeats]``; with a BOS it is column 0.
    """
    if vocab_size is None:
        raise ValueError("repeated_random_tokens needs vocab_size=... (e.g. model.cfg.d_vocab)")
    if n_seqs < 1 or period < 1 or n_repeats < 1:
        raise ValueError(f"n_seqs, period and n_repeats must be >= 1, got {n_seqs}, {period}, {n_repeats}")
    banned = set(int(t) for t in exclude) | ({int(bos_token_id)} if bos_token_id is not None else set())
    allowed = torch.tensor([t for t in range(vocab_size) if t not in banned], dtype=torch.long)
    if len(allowed) == 0:
        raise ValueError("no tokens left to draw from: vocab_size is too small for the excluded ids")
    g = torch.Generator().manual_seed(seed)
    if period <= len(allowed):  # distinct tokens within a block: sample without replacement per row
        idx = torch.stack([torch.randperm(len(allowed), generator=g)[:period] for _ in range(n_seqs)])
    else:
        idx = torch.randint(len(allowed), (n_seqs, period), generator=g)
    block = allowed[idx]                                       # [n_seqs, period]
    seqs = block.repeat(1, n_repeats)                          # [n_seqs, period * n_repeats]
    if bos_token_id is not None:
        seqs = torch.cat([torch.full((n_seqs, 1), int(bos_token_id), dtype=torch.long), seqs], dim=1)
    return seqs
