"""Tokenizer: a thin wrapper on a ``tokenizers.Tokenizer`` (e.g. phi-2's ``tokenizer.json``).

BOS handling is explicit: Phi-2 adds no BOS by default, so neither do we;
``prepend_bos=True`` prepends ``bos_token_id``.

TransformerLens's utilities take a Hugging Face tokenizer (and type-check that they
do). ``Tokenizer.hf`` is the same tokenizer as a ``transformers.PreTrainedTokenizerFast``
that also has this class's methods; ``PhiModel.tokenizer`` hands it out once
TransformerLens has been imported. It is built on first use, so ``import workbench``
never pays for importing ``transformers`` (1.3-1.7 s here).
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Iterable, Optional, Union

import numpy as np
import torch

from workbench.errors import DamagedFileError, MissingFileError


class TokenizerMethods:
    """The workbench's token helpers, shared by ``Tokenizer`` and its Hugging Face twin.

    Needs ``tok`` (a ``tokenizers.Tokenizer``), ``encode``, ``bos_token_id`` and ``pad_token_id``.
    """

    def save(self, path: Union[str, Path]) -> None:
        """Write ``tokenizer.json`` (``path`` may be a folder)."""
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        self.tok.save(str(path))

    def to_tokens(self, text: Union[str, list[str]], prepend_bos: bool = False,
                  padding_side: Optional[str] = None) -> torch.Tensor:
        """``[batch, pos]`` int64 ids; several texts are padded with ``pad_token_id``
        on ``padding_side`` (default: the tokenizer's ``padding_side``, "right")."""
        padding_side = padding_side or getattr(self, "padding_side", "right")
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        texts = [text] if isinstance(text, str) else list(text)
        ids = [self.tok.encode(t, add_special_tokens=False).ids for t in texts]
        if prepend_bos:
            if self.bos_token_id is None:
                raise ValueError("prepend_bos=True but this tokenizer has no BOS token")
            ids = [[self.bos_token_id] + x for x in ids]
        width = max(len(x) for x in ids)
        out = torch.full((len(ids), width), self.pad_token_id, dtype=torch.long)
        for i, x in enumerate(ids):
            row = torch.tensor(x, dtype=torch.long)
            if padding_side == "left":
                out[i, width - len(x):] = row
            else:
                out[i, : len(x)] = row
        return out

    def to_str_tokens(self, input, prepend_bos: bool = False) -> list:
        """The text of each token: a list for one sequence, a list of lists for a batch."""
        if isinstance(input, str):
            input = self.to_tokens(input, prepend_bos=prepend_bos)[0]
        if isinstance(input, torch.Tensor):
            if input.ndim == 2:
                return [self.to_str_tokens(row) for row in input]
            input = input.reshape(-1).tolist()
        if input and isinstance(input[0], (list, tuple)):
            return [self.to_str_tokens(list(row)) for row in input]
        return [self.tok.decode([int(i)], skip_special_tokens=False) for i in input]

    def to_string(self, tokens) -> Union[str, list[str]]:
        """Decode ``[pos]`` ids (or one id) to a string, or ``[batch, pos]`` to a list of strings."""
        if isinstance(tokens, np.ndarray):
            tokens = torch.from_numpy(tokens)
        if isinstance(tokens, torch.Tensor):
            if tokens.ndim > 2:
                raise ValueError(f"to_string takes [pos] or [batch, pos] token ids, got shape {tuple(tokens.shape)}")
            tokens = tokens.tolist()
        if isinstance(tokens, int):
            tokens = [tokens]
        if tokens and isinstance(tokens[0], list):
            return [self.to_string(t) for t in tokens]
        return self.tok.decode([int(t) for t in tokens], skip_special_tokens=False)


class Tokenizer(TokenizerMethods):
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

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    # The parts of Hugging Face's tokenizer interface that TransformerLens's tools read.
    padding_side = "right"

    @property
    def bos_token(self) -> Optional[str]:
        return None if self.bos_token_id is None else self.tok.id_to_token(self.bos_token_id)

    eos_token_id = property(lambda self: self.bos_token_id, doc="phi-2 uses <|endoftext|> for both")
    eos_token = bos_token
    pad_token = property(lambda self: self.tok.id_to_token(self.pad_token_id))

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of ``text``. ``add_special_tokens`` applies the tokenizer file's post-processor
        (phi-2's adds nothing; a BOS is added only by ``to_tokens(prepend_bos=True)``)."""
        return self.tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids, skip_special_tokens: bool = False, **_: object) -> str:
        """Text of a sequence of ids (a list, a ``[pos]`` tensor or one id)."""
        if isinstance(ids, torch.Tensor):
            ids = ids.reshape(-1).tolist()
        elif isinstance(ids, int):
            ids = [ids]
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def batch_decode(self, sequences, skip_special_tokens: bool = False, **_: object) -> list[str]:
        return [self.decode(s, skip_special_tokens) for s in sequences]

    @functools.cached_property
    def hf(self):
        """This tokenizer as a ``transformers.PreTrainedTokenizerFast`` (with this class's methods too)."""
        special = {} if self.bos_token is None else {"bos_token": self.bos_token, "eos_token": self.eos_token,
                                                     "unk_token": self.bos_token}
        return _hf_class()(tokenizer_object=self.tok, pad_token=self.pad_token, **special)


@functools.lru_cache(maxsize=None)
def _hf_class() -> type:
    """``PreTrainedTokenizerFast`` plus ``TokenizerMethods`` (``tok`` is its backend tokenizer)."""
    from transformers import PreTrainedTokenizerFast
    return type("HFTokenizer", (TokenizerMethods, PreTrainedTokenizerFast),
                {"__module__": __name__, "tok": property(lambda self: self.backend_tokenizer),
                 "__doc__": "A Hugging Face fast tokenizer with the workbench's token helpers."})
