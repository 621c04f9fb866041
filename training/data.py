"""Token streams and batches: tokenizer, tokenized splits, memmaps, synthetic rows, per-step batches.

Every batch is a pure function of ``(seed, step)``: the rows of step ``s`` are
drawn from a generator seeded with ``[seed, s]``. So the "data position" a
checkpoint must restore is just the step, a resumed run sees exactly the
batches the uninterrupted run would have seen, and under DDP each rank takes
its slice of the same global batch (the loss then equals a single-process run
with the same global batch).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from workbench.errors import DamagedFileError, InputError, MissingFileError
from workbench.model import Tokenizer
from workbench.analysis.tasks import repeated_random_tokens

from .config import DataSection
from .corpus import MEMMAP_SUFFIXES, Corpus, load_corpus
from .files import write_atomically

SPECIAL = "<|endoftext|>"


@dataclass
class TokenData:
    """Train and validation token streams (1-D arrays; memmaps for pre-tokenized corpora)."""
    train: np.ndarray
    val: np.ndarray
    vocab_size: int
    eot: int                      # id separating documents (also the synthetic rows' BOS)
    tokenizer: Optional[Tokenizer] = None
    pretokenized: bool = False    # memmapped user files: never copied into a run's cache

    def describe(self) -> str:
        return f"{len(self.train):,} train / {len(self.val):,} val tokens, vocab {self.vocab_size}"


def _ids_dtype(vocab: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab <= 65535 else np.int32)


def tokenize(corpus: Corpus, tok: Tokenizer, eot: int) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate each split's documents, each followed by ``eot``; ``[n_tokens]`` arrays."""
    dtype = _ids_dtype(tok.vocab_size)
    out = []
    for split in ("train", "val"):
        texts = corpus.texts(split)
        encs = tok.tok.encode_batch(texts, add_special_tokens=False)  # parallel in Rust
        parts = [np.asarray(e.ids + [eot], dtype=dtype) for e in encs]
        out.append(np.concatenate(parts) if parts else np.zeros(0, dtype))
    return out[0], out[1]


def load_memmap(path: Path, memmap_dtype: str) -> np.ndarray:
    """A 1-D token-id array on disk, mapped not read: ``.npy`` (its own dtype) or raw ``.bin``."""
    if path.suffix == ".npy":
        arr = np.load(path, mmap_mode="r")
    else:
        arr = np.memmap(path, dtype=np.dtype(memmap_dtype), mode="r")
    if arr.ndim != 1:
        raise InputError(f"{path} has shape {arr.shape}; pre-tokenized data must be one flat array of ids")
    return arr


def build_data(cfg: DataSection, run_dir: Optional[Path] = None,
               log: Optional[Callable[[str], None]] = None) -> TokenData:
    """Tokenizer and token streams for a config; cached in ``run_dir`` so a resume re-reads nothing.

    With ``run_dir``, a tokenizer and token cache already there are used, and what
    is built is cached there (each file written atomically). With memmap sources
    the validation split is the last ``val_fraction`` of the tokens (a
    pre-tokenized stream has no document names to split by). ``log`` is told
    what is happening (reading, training the tokenizer, tokenizing).
    """
    say = log or (lambda _msg: None)
    sources = list(cfg.sources)
    mem = [s for s in sources if Path(s).suffix in MEMMAP_SUFFIXES]
    if mem and len(mem) != len(sources):
        raise InputError("data.sources mixes pre-tokenized (.bin/.npy) and text sources; use one kind")
    tok: Optional[Tokenizer] = None
    tok_file = run_dir / "tokenizer.json" if run_dir else None
    if tok_file is not None and tok_file.is_file():
        tok = _load_tokenizer(tok_file, "delete it to train the tokenizer again")
    elif cfg.tokenizer:
        tok = _load_tokenizer(Path(cfg.tokenizer), "fix data.tokenizer")
    if mem:
        return _memmap_data(cfg, mem, tok)
    cache = (run_dir / "data") if run_dir else None
    if cache is not None and tok is not None and (cache / "train.npy").is_file():
        return TokenData(_load_cached(cache / "train.npy"), _load_cached(cache / "val.npy"),
                         tok.vocab_size, _eot(tok), tok)
    cap = f" (up to {cfg.max_corpus_bytes / 1e6:.1f} MB)" if cfg.max_corpus_bytes else ""
    say(f"reading the corpus: {', '.join(map(str, sources))}{cap}")
    corpus = load_corpus(sources, cfg.val_fraction, cfg.jsonl_field, cfg.max_corpus_bytes)
    if tok is None:
        say(f"training a {cfg.vocab_size}-token byte-level BPE on {corpus.n_bytes() / 1e6:.1f} MB "
            f"({len(corpus.train)} documents)")
        tok = Tokenizer.train_bpe(corpus.texts("train"), vocab_size=cfg.vocab_size, special=SPECIAL)
    say("tokenizing")
    eot = _eot(tok)
    train, val = tokenize(corpus, tok, eot)
    data = TokenData(train, val, tok.vocab_size, eot, tok)
    if run_dir is not None:
        cache_data(data, run_dir)
    return data


def cache_data(data: TokenData, run_dir: Path, replace: bool = False) -> None:
    """Write ``RUN/tokenizer.json`` and the token cache ``RUN/data/{train,val}.npy``, each atomically.

    Files already there are kept unless ``replace``. ``train.npy`` is written last: its
    presence means the cache is complete. Memmapped (pre-tokenized) data is not copied.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    if data.tokenizer is not None and (replace or not (run_dir / "tokenizer.json").is_file()):
        write_atomically(run_dir / "tokenizer.json", lambda p: data.tokenizer.tok.save(str(p)))
    if data.pretokenized:
        return
    cache = run_dir / "data"
    if (cache / "train.npy").is_file() and not replace:
        return
    cache.mkdir(parents=True, exist_ok=True)
    for name in ("val", "train"):
        arr = np.asarray(getattr(data, name))
        write_atomically(cache / f"{name}.npy", lambda p, a=arr: _save_npy(p, a))


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with open(path, "wb") as fh:   # a file object: np.save would add ".npy" to a temporary name
        np.save(fh, arr)


def _load_tokenizer(path: Path, fix: str) -> Tokenizer:
    if not path.is_file():
        raise MissingFileError(f"no tokenizer file at {path}; {fix}")
    try:
        return Tokenizer.from_file(path)
    except Exception as e:  # noqa: BLE001 (the tokenizers library raises plain Exception)
        raise DamagedFileError(f"{path} is not a readable tokenizer.json ({str(e)[:120]}); {fix}") from None


def _load_cached(path: Path) -> np.ndarray:
    try:
        arr = np.load(path, mmap_mode="r")
    except (ValueError, OSError, EOFError) as e:
        raise DamagedFileError(f"the token cache {path} is damaged ({e}); delete {path.parent} and "
                               "it is rebuilt from the corpus") from None
    if arr.ndim != 1:
        raise DamagedFileError(f"the token cache {path} has shape {arr.shape}; delete {path.parent} and "
                               "it is rebuilt from the corpus")
    return arr


def _memmap_data(cfg: DataSection, mem: list[str], tok: Optional[Tokenizer]) -> TokenData:
    for m in mem:
        if not Path(m).is_file():
            raise MissingFileError(f"pre-tokenized file {m} does not exist")
    arrays = [load_memmap(Path(m), cfg.memmap_dtype) for m in mem]
    stream = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
    cut = int(len(stream) * (1 - cfg.val_fraction))
    vocab = tok.vocab_size if tok else cfg.vocab_size
    eot = tok.bos_token_id if tok and tok.bos_token_id is not None else 0
    return TokenData(stream[:cut], stream[cut:], vocab, eot, tok, pretokenized=True)


def _eot(tok: Tokenizer) -> int:
    eot = tok.tok.token_to_id(SPECIAL)
    return int(eot if eot is not None else (tok.bos_token_id or 0))


class Batches:
    """The global batch of each step, and each rank's micro-batches of it.

    A global batch is ``[batch_size, seq_len + 1]`` token ids (inputs and the
    shifted targets in one row); ``synthetic_fraction`` of its rows are
    repeated random-token sequences (``workbench.analysis.tasks.repeated_random_tokens``),
    the rest windows of the training stream, in a random order.
    """

    def __init__(self, data: TokenData, cfg: DataSection, seed: int) -> None:
        self.data, self.cfg, self.seed = data, cfg, seed
        self.width = cfg.seq_len + 1
        self.synthetic_vocab = synthetic_vocab(cfg, data.vocab_size)
        if len(data.train) <= self.width:
            raise InputError(f"the training split has {len(data.train)} tokens, fewer than seq_len + 1 = "
                             f"{self.width}; add data or lower data.seq_len")

    def global_batch(self, step: int) -> torch.Tensor:
        """``[batch_size, seq_len + 1]`` LongTensor for optimizer step ``step``."""
        c = self.cfg
        rng = np.random.Generator(np.random.PCG64([self.seed, step]))
        n_syn = int(round(c.batch_size * c.synthetic_fraction))
        n_text = c.batch_size - n_syn
        starts = rng.integers(0, len(self.data.train) - self.width, size=n_text)
        rows = [torch.from_numpy(np.asarray(self.data.train[s:s + self.width], dtype=np.int64)) for s in starts]
        for i in range(n_syn):
            period = int(rng.integers(c.synthetic_period_min, c.synthetic_period_max + 1))
            reps = -(-(self.width - 1) // period)  # enough repeats to fill the row after its BOS
            row = repeated_random_tokens(1, period, n_repeats=reps, vocab_size=self.synthetic_vocab,
                                         seed=int(rng.integers(2**31)), bos_token_id=self.data.eot)[0]
            rows.append(row[: self.width])
        batch = torch.stack(rows) if rows else torch.zeros(0, self.width, dtype=torch.long)
        return batch[torch.from_numpy(rng.permutation(c.batch_size))]

    def micro_batches(self, step: int, rank: int, world: int, micro: int) -> list[torch.Tensor]:
        """This rank's micro-batches of step ``step``: ``accum`` tensors ``[micro, seq_len + 1]``.

        Rank ``r`` takes rows ``[r * per_rank, (r + 1) * per_rank)`` of the global batch.
        """
        per_rank = self.cfg.batch_size // world
        mine = self.global_batch(step)[rank * per_rank:(rank + 1) * per_rank]
        return list(mine.split(micro))

    def val_batches(self, n_batches: int, micro: int) -> list[torch.Tensor]:
        """Fixed validation windows, evenly spaced through the validation stream (text only)."""
        val = self.data.val
        n_rows = n_batches * micro
        if len(val) <= self.width:
            return []
        starts = np.linspace(0, len(val) - self.width - 1, n_rows).astype(np.int64)
        rows = torch.stack([torch.from_numpy(np.asarray(val[s:s + self.width], dtype=np.int64)) for s in starts])
        return list(rows.split(micro))


def synthetic_vocab(cfg: DataSection, vocab_size: int) -> int:
    """Token ids of synthetic rows (and of the recording's repeated probe rows) lie in ``[0, this)``.

    A smaller range than the whole vocabulary makes the copying an induction
    head does learnable sooner in a small model (fewer tokens to tell apart).
    """
    return min(cfg.synthetic_vocab_size, vocab_size) if cfg.synthetic_vocab_size else vocab_size


def plan_batch(cfg: DataSection, world: int) -> tuple[int, int]:
    """``(micro_batch_size, grad_accum)`` per process so that ``world * accum * micro == batch_size``."""
    if cfg.batch_size % world:
        raise InputError(f"data.batch_size {cfg.batch_size} does not split evenly over {world} processes")
    per_rank = cfg.batch_size // world
    micro = cfg.micro_batch_size or per_rank
    if per_rank % micro:
        raise InputError(f"data.micro_batch_size {micro} does not divide the {per_rank} sequences each of the "
                         f"{world} processes handles per step (data.batch_size {cfg.batch_size})")
    return micro, per_rank // micro
