"""Inputs for ``workbench cache``: text lines, JSONL, or token ids in ``.npy``, cut into rows.

A row is ``seq_len`` token ids. Documents are either *packed* (concatenated,
each followed by the end-of-text token, and cut into full rows; the last
partial row is dropped) or *truncated* (one row per document: its first
``seq_len`` tokens, right-padded when shorter; ``n_tokens`` says how many are
real). Rows come out in a fixed order, so a resumed run can skip exactly the
rows already stored. Each row carries metadata: ``source`` (the 1-based line
of the document it starts in; the row index for a 2-D ``.npy``) and
``n_tokens``.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np

from workbench.errors import InputError, MissingFileError

META_COLUMNS = {"source": "int64", "n_tokens": "int32"}
_ENCODE_BATCH = 256   # documents per tokenizer call (the Rust tokenizer parallelises a batch)


def input_kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return "npy"
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    return "text"


class RowSource:
    """The rows of one input file, in order.

    Args:
        path: a ``.txt`` (one document per line), ``.jsonl`` (one object per line,
            text in ``text_field``) or ``.npy`` (integer token ids: ``[rows, width]`` or a 1-D stream).
        seq_len: tokens per row; ``None`` takes a 2-D ``.npy``'s width.
        tokenizer: a ``workbench.model.Tokenizer`` (text and JSONL only).
        pack: pack documents into full rows (True) or truncate/pad each to one row (False).
        max_rows: stop after this many rows.
        d_vocab: the model's vocabulary size; ids outside ``[0, d_vocab)`` are an error.
    """

    def __init__(self, path: Path, seq_len: Optional[int], tokenizer: Any = None, pack: bool = True,
                 text_field: str = "text", max_rows: Optional[int] = None, d_vocab: Optional[int] = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise MissingFileError(f"input file not found: {self.path}")
        if self.path.stat().st_size == 0:
            raise InputError(f"input file {self.path} is empty")
        self.kind = input_kind(self.path)
        self.pack, self.text_field, self.max_rows, self.d_vocab = pack, text_field, max_rows, d_vocab
        self.tokenizer = tokenizer
        if self.kind == "npy":
            self.array = np.load(self.path, mmap_mode="r", allow_pickle=False)
            if not np.issubdtype(self.array.dtype, np.integer):
                raise InputError(f"{self.path} holds {self.array.dtype} values; a .npy input must hold integer token ids")
            if self.array.ndim not in (1, 2) or self.array.size == 0:
                raise InputError(f"{self.path} has shape {list(self.array.shape)}; expected [rows, seq_len] "
                                 "or a 1-D token stream")
            if seq_len is None:
                seq_len = self.array.shape[1] if self.array.ndim == 2 else 128
        else:
            if tokenizer is None:
                raise InputError("this checkpoint has no tokenizer.json, so text input cannot be tokenized; "
                                 "pass pre-tokenized ids as a .npy file")
            seq_len = 128 if seq_len is None else seq_len
        if seq_len < 1:
            raise InputError(f"--seq-len must be at least 1, got {seq_len}")
        self.seq_len = int(seq_len)
        eos = getattr(tokenizer, "bos_token_id", None) if tokenizer is not None else None
        self.sep_id = eos   # Phi's <|endoftext|> is both BOS and EOS
        self.pad_id = getattr(tokenizer, "pad_token_id", 0) if tokenizer is not None else 0

    # -- documents -------------------------------------------------------------------------
    def _documents(self) -> Iterator[tuple[int, list[int]]]:
        """``(1-based line, token ids)`` per non-empty document."""
        if self.kind == "npy":
            a = self.array
            if a.ndim == 1:
                yield 1, a
            else:
                for i in range(a.shape[0]):
                    yield i, a[i]
            return
        batch: list[tuple[int, str]] = []
        with open(self.path, encoding="utf-8", errors="replace") as f:
            for lineno, line in enumerate(f, 1):
                text = self._text(line, lineno)
                if text:
                    batch.append((lineno, text))
                if len(batch) == _ENCODE_BATCH:
                    yield from self._encode(batch)
                    batch = []
        yield from self._encode(batch)

    def _text(self, line: str, lineno: int) -> str:
        if self.kind == "text":
            return line.rstrip("\n")
        if not line.strip():
            return ""
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{self.path} line {lineno} is not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict) or self.text_field not in obj:
            fields = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
            raise InputError(f"{self.path} line {lineno} has no {self.text_field!r} field (it has {fields}); "
                             "pass --text-field NAME")
        return str(obj[self.text_field])

    def _encode(self, batch: list[tuple[int, str]]) -> Iterator[tuple[int, list[int]]]:
        if not batch:
            return
        encs = self.tokenizer.tok.encode_batch([t for _, t in batch], add_special_tokens=False)
        for (lineno, _), enc in zip(batch, encs):
            yield lineno, enc.ids

    # -- rows ----------------------------------------------------------------------------------
    def rows(self) -> Iterator[tuple[np.ndarray, int, int]]:
        """``(ids [seq_len] int64, source, n_tokens)`` per row, at most ``max_rows``."""
        n = 0
        if self.max_rows is not None and self.max_rows <= 0:
            return
        if self.kind == "npy" and self.array.ndim == 2 and self.array.shape[1] == self.seq_len:
            gen = ((np.asarray(r, dtype=np.int64), i, self.seq_len) for i, r in self._documents())
        elif self.pack:
            gen = self._packed()
        else:
            gen = self._truncated()
        for row in gen:
            self._check_vocab(row[0], n)
            yield row
            n += 1
            if self.max_rows is not None and n >= self.max_rows:
                return

    def _packed(self) -> Iterator[tuple[np.ndarray, int, int]]:
        buf = np.empty(self.seq_len, dtype=np.int64)
        fill, start_line = 0, None
        for lineno, ids in self._documents():
            ids = np.asarray(ids, dtype=np.int64)
            if self.sep_id is not None and self.kind != "npy":
                ids = np.append(ids, self.sep_id)
            at = 0
            while at < len(ids):
                if fill == 0:
                    start_line = lineno
                take = min(self.seq_len - fill, len(ids) - at)
                buf[fill:fill + take] = ids[at:at + take]
                fill += take
                at += take
                if fill == self.seq_len:
                    yield buf.copy(), start_line, self.seq_len
                    fill = 0

    def _truncated(self) -> Iterator[tuple[np.ndarray, int, int]]:
        for lineno, ids in self._documents():
            ids = np.asarray(ids, dtype=np.int64)[: self.seq_len]
            if len(ids) == 0:
                continue
            row = np.full(self.seq_len, self.pad_id, dtype=np.int64)
            row[: len(ids)] = ids
            yield row, lineno, len(ids)

    def _check_vocab(self, row: np.ndarray, index: int) -> None:
        if self.d_vocab is None:
            return
        bad = (row < 0) | (row >= self.d_vocab)
        if bad.any():
            tok = int(row[np.argmax(bad)])
            raise InputError(f"token id {tok} in row {index} of {self.path} is outside the model's vocabulary "
                             f"[0, {self.d_vocab}); was the input tokenized with another tokenizer?")

    def batches(self, batch_size: int, skip: int = 0) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
        """``(tokens [b, seq_len] int64, {"source": [b], "n_tokens": [b]})``, after skipping ``skip`` rows."""
        rows, src, ntok = [], [], []
        for i, (ids, source, n) in enumerate(self.rows()):
            if i < skip:
                continue
            rows.append(ids)
            src.append(source)
            ntok.append(n)
            if len(rows) == batch_size:
                yield np.stack(rows), {"source": np.array(src), "n_tokens": np.array(ntok)}
                rows, src, ntok = [], [], []
        if rows:
            yield np.stack(rows), {"source": np.array(src), "n_tokens": np.array(ntok)}

    def count(self) -> int:
        """Rows this input yields (a full pass: it also checks every line and token id)."""
        return sum(1 for _ in self.rows())

    def fingerprint(self) -> dict:
        """What identifies this input for ``--resume``: the file's bytes and how they become rows."""
        h = hashlib.sha256()
        with open(self.path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return {"path": str(self.path.resolve()), "sha256": h.hexdigest(), "kind": self.kind,
                "seq_len": self.seq_len, "pack": self.pack,
                "text_field": self.text_field if self.kind == "jsonl" else None}
