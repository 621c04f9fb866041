"""Tokenizer: a thin wrapper on a ``tokenizers.Tokenizer`` (e.g. phi-2's ``tokenizer.json``).

BOS handling is explicit: Phi-2 adds no BOS by default, so neither do we;
``prepend_bos=True`` prepends ``bos_token_id``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional, Union

import torch

from workbench.errors import DamagedFileError, MissingFileError


class Tokenizer:
    def __init__(self, tok, bos_token_id: Optional[int] = None, pad_token_id: Optional[int] = None) -> None:
        self.tok = tok
        self.bos_token_id = bos_token_id
        self.pad_token_id = pad_token_id if pad_token_id is not None else (bos_token_id or 0)

    @classmethod
    def from_file(cls, path: Union[str, Path], bos_token_id: Optional[int] = None) -> "Tokenizer":
        from tokenizers import Tokenizer as HFTokenizer
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise MissingFileError(f"no tokenizer.json at {path}")
        try:
            tok = HFTokenizer.from_file(str(path))
        except Exception as e:   # tokenizers raises a bare Exception for a cut-short or garbage file
            raise DamagedFileError(f"{path} is not a readable tokenizer.json ({str(e).strip()[:200]}); "
                                   "the file is damaged or cut short: save or download it again") from None
        if bos_token_id is None:
            bos_token_id = tok.token_to_id("<|endoftext|>")
        return cls(tok, bos_token_id=bos_token_id)

    @classmethod
    def train_bpe(cls, texts: Iterable[str], vocab_size: int, special: str = "<|endoftext|>") -> "Tokenizer":
        """Train a byte-level BPE on ``texts`` (GPT-2/Phi style); ``special`` gets id 0."""
        from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, trainers
        tok = HFTokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[special],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=False)
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok, bos_token_id=tok.token_to_id(special))

    def save(self, path: Union[str, Path]) -> None:
        """Write ``tokenizer.json`` (``path`` may be a folder)."""
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        self.tok.save(str(path))

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def to_tokens(self, text: Union[str, list[str]], prepend_bos: bool = False) -> torch.Tensor:
        """``[batch, pos]`` int64 ids; several texts are right-padded with ``pad_token_id``."""
        texts = [text] if isinstance(text, str) else list(text)
        ids = [self.encode(t) for t in texts]
        if prepend_bos:
            if self.bos_token_id is None:
                raise ValueError("prepend_bos=True but this tokenizer has no BOS token")
            ids = [[self.bos_token_id] + x for x in ids]
        width = max(len(x) for x in ids)
        out = torch.full((len(ids), width), self.pad_token_id, dtype=torch.long)
        for i, x in enumerate(ids):
            out[i, : len(x)] = torch.tensor(x, dtype=torch.long)
        return out

    def to_str_tokens(self, input, prepend_bos: bool = False) -> list:
        """The text of each token: a list for one sequence, a list of lists for a batch."""
        if isinstance(input, str):
            input = self.to_tokens(input, prepend_bos=prepend_bos)[0]
        if isinstance(input, torch.Tensor):
            if input.ndim == 2:
                return [self.to_str_tokens(row) for row in input]
            input = input.tolist()
        if input and isinstance(input[0], (list, tuple)):
            return [self.to_str_tokens(list(row)) for row in input]
        return [self.tok.decode([int(i)], skip_special_tokens=False) for i in input]

    def to_string(self, tokens) -> Union[str, list[str]]:
        """Decode ``[pos]`` ids to a string, or ``[batch, pos]`` to a list of strings."""
        if isinstance(tokens, torch.Tensor):
            tokens = tokens.tolist()
        if tokens and isinstance(tokens[0], list):
            return [self.to_string(t) for t in tokens]
        return self.tok.decode([int(t) for t in tokens], skip_special_tokens=False)
