"""Inputs for ``workbench cache``: text, code, JSONL, token ids in ``.npy``, or a folder, cut into rows.

What a document is:

- a ``.txt`` file (or any file of unknown kind): one document per line (``--documents lines``);
- a code or prose file (``.py``, ``.md``, ``.c``, ...): the whole file is one document, newlines
  kept (``--documents file``); either mode can be asked for explicitly;
- a ``.jsonl`` file: one document per line, its text in ``text_field``;
- a folder: every code, prose or ``.txt`` file in it (recursively, in path order), each one document;
- a ``.npy`` file: integer token ids, ``[rows, width]`` (rows as they are) or a 1-D stream.

Documents are either *packed* (concatenated, each followed by the end-of-text token, and
cut into full rows; the last partial row is dropped) or *truncated* (one row per
document: its first ``seq_len`` tokens, right-padded when shorter; ``n_tokens`` says how
many are real). Rows come out in a fixed order, so a resumed run can skip exactly the
rows already stored. Each row carries metadata: ``source`` (where the document it starts
in comes from: its 1-based line for line-per-document inputs, its 1-based number for
whole-file documents, the row index for a 2-D ``.npy``) and ``n_tokens``.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np

from workbench.errors import InputError, MissingFileError

META_COLUMNS = {"source": "int64", "n_tokens": "int32"}
DEFAULT_SEQ_LEN = 128
WHOLE_FILE_SUFFIXES = {".py", ".pyi", ".c", ".h", ".cc", ".cpp", ".hpp", ".cu", ".js", ".ts", ".java", ".go",
                       ".rs", ".rb", ".sh", ".md", ".rst", ".tex", ".html", ".css", ".toml", ".yaml", ".yml"}
FOLDER_SUFFIXES = WHOLE_FILE_SUFFIXES | {".txt"}
_ENCODE_BATCH = 256   # documents per tokenizer call (the Rust tokenizer parallelises a batch)
_SNIFF_BYTES = 1 << 16


def input_kind(path: Path) -> str:
    """"folder", "npy", "jsonl" or "text"."""
    if path.is_dir():
        return "folder"
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return "npy"
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    return "text"


def jsonl_texts(path: Path, field: str, field_hint: str) -> Iterator[tuple[int, str]]:
    """``(1-based line, text)`` of every non-blank line of a JSONL file; the one JSONL reader.

    Every error names the file and line; ``field_hint`` says how to pick another field
    (e.g. "pass --text-field NAME").
    """
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path} line {lineno} is not valid JSON ({e.msg}, column {e.colno})") from None
            if not isinstance(obj, dict) or field not in obj:
                has = f"it has {sorted(obj)}" if isinstance(obj, dict) else f"it is a {type(obj).__name__}"
                raise InputError(f"{path} line {lineno} has no {field!r} field ({has}); {field_hint}")
            yield lineno, str(obj[field])


def check_text_file(path: Path) -> None:
    """Refuse a binary file given as text: NUL bytes in its first 64 KiB (git's test)."""
    with open(path, "rb") as f:
        head = f.read(_SNIFF_BYTES)
    if b"\x00" in head:
        raise InputError(f"{path} looks binary (it contains NUL bytes), not text; pass a text, code, JSONL "
                         "or .npy file")


def looks_like_code(path: Path) -> Optional[float]:
    """The share of indented lines among the first 2,000 non-blank ones, when it is code-like (>= 20%)."""
    lines = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.strip():
                lines.append(line)
            if len(lines) == 2000:
                break
    if len(lines) < 10:
        return None
    share = sum(ln[0] in " \t" for ln in lines) / len(lines)
    return share if share >= 0.2 else None


class RowSource:
    """The rows of one input, in order.

    Args:
        path: a file or a folder (see the module docstring for what each kind holds).
        seq_len: tokens per row; ``None``: a 2-D ``.npy``'s width, else 128, but never more than ``n_ctx``.
        tokenizer: a ``workbench.model.Tokenizer`` (text, code, JSONL and folders).
        pack: pack documents into full rows (True) or truncate/pad each to one row (False).
        documents: "lines" or "file" for a text file (default: by its suffix, see the module docstring).
        max_rows: stop after this many rows.
        d_vocab: the model's vocabulary size; ids outside ``[0, d_vocab)`` are an error.
        n_ctx: the model's context; the default ``seq_len`` does not exceed it.
    """

    def __init__(self, path: Path, seq_len: Optional[int], tokenizer: Any = None, pack: bool = True,
                 text_field: str = "text", max_rows: Optional[int] = None, d_vocab: Optional[int] = None,
                 documents: Optional[str] = None, n_ctx: Optional[int] = None) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise MissingFileError(f"input not found: {self.path}")
        self.kind = input_kind(self.path)
        self.pack, self.text_field, self.max_rows, self.d_vocab = pack, text_field, max_rows, d_vocab
        self.tokenizer = tokenizer
        self.warnings: list[str] = []
        self.documents = self._documents_mode(documents)
        self.files = self._input_files()
        if self.kind == "npy":
            self.array = self._load_npy()
            width = self.array.shape[1] if self.array.ndim == 2 else None
        else:
            if tokenizer is None:
                raise InputError("this checkpoint has no tokenizer.json, so text input cannot be tokenized; "
                                 "pass pre-tokenized ids as a .npy file")
            width = None
        if seq_len is None:
            seq_len = width or (min(DEFAULT_SEQ_LEN, n_ctx) if n_ctx else DEFAULT_SEQ_LEN)
        if seq_len < 1:
            raise InputError(f"--seq-len must be at least 1, got {seq_len}")
        self.seq_len = int(seq_len)
        self.sep_id = getattr(tokenizer, "bos_token_id", None) if tokenizer is not None else None  # <|endoftext|>
        self.pad_id = getattr(tokenizer, "pad_token_id", 0) if tokenizer is not None else 0

    # -- what the input is ------------------------------------------------------------------
    def _documents_mode(self, documents: Optional[str]) -> Optional[str]:
        if documents not in (None, "lines", "file"):
            raise InputError(f"--documents must be 'lines' or 'file', got {documents!r}")
        if self.kind in ("npy", "jsonl"):
            if documents is not None:
                raise InputError(f"--documents applies to text inputs; {self.path} is {self.kind}")
            return None
        if self.kind == "folder":
            if documents == "lines":
                raise InputError(f"{self.path} is a folder: each of its files is one document; "
                                 "--documents lines needs a single text file")
            return "file"
        if documents is not None:
            return documents
        return "file" if self.path.suffix.lower() in WHOLE_FILE_SUFFIXES else "lines"

    def _input_files(self) -> list[Path]:
        if self.kind == "folder":
            files = sorted(p for p in self.path.rglob("*") if p.is_file() and p.suffix.lower() in FOLDER_SUFFIXES)
            if not files:
                raise InputError(f"folder {self.path} holds no text or code files "
                                 f"({', '.join(sorted(FOLDER_SUFFIXES))})")
        else:
            files = [self.path]
        for p in files:
            if p.stat().st_size == 0 and self.kind != "folder":
                raise InputError(f"input file {p} is empty")
            if self.kind != "npy":
                check_text_file(p)
        if self.kind == "text" and self.documents == "lines":
            share = looks_like_code(self.path)
            if share is not None:
                self.warnings.append(f"{self.path}: {share:.0%} of its lines are indented, as in code, but each "
                                     "line is cached as its own document (newlines dropped); pass --documents "
                                     "file to keep the file whole")
        return files

    def _load_npy(self) -> np.ndarray:
        try:
            a = np.load(self.path, mmap_mode="r", allow_pickle=False)
        except ValueError as e:
            raise InputError(f"{self.path} is not a readable .npy array ({e})") from None
        if not np.issubdtype(a.dtype, np.integer):
            raise InputError(f"{self.path} holds {a.dtype} values; a .npy input must hold integer token ids")
        if a.ndim not in (1, 2) or a.size == 0:
            raise InputError(f"{self.path} has shape {list(a.shape)}; expected [rows, seq_len] or a 1-D token stream")
        if self.d_vocab is not None:
            _check_ids(a, self.d_vocab, self.path)
        return a

    @property
    def packed(self) -> bool:
        """Whether rows are cut from a stream of documents (a 2-D ``.npy`` of the row width is taken as is)."""
        return not (self.kind == "npy" and self.array.ndim == 2 and self.array.shape[1] == self.seq_len) \
            and self.pack

    def describe(self) -> str:
        """How documents become rows, in a few words ("one document per line, packed", ...)."""
        if self.kind == "npy":
            if self.array.ndim == 2 and self.array.shape[1] == self.seq_len:
                return "token ids, one row each"
            return f"token ids, {'packed' if self.pack else 'truncated'}"
        what = {"lines": "one document per line", "file": "each file one document"}[self.documents] \
            if self.kind != "jsonl" else f"one document per line, field {self.text_field!r}"
        if self.kind == "folder":
            what = f"{len(self.files):,} files, each one document"
        return f"{what}, {'packed' if self.pack else 'truncated'}"

    # -- documents ---------------------------------------------------------------------------
    def _texts(self) -> Iterator[tuple[int, str]]:
        """``(source, text)`` of every non-empty document."""
        if self.kind == "jsonl":
            yield from jsonl_texts(self.path, self.text_field, "pass --text-field NAME")
        elif self.documents == "file":
            for i, p in enumerate(self.files, 1):
                text = p.read_text(encoding="utf-8", errors="replace")
                if text.strip():
                    yield i, text
        else:
            with open(self.path, encoding="utf-8", errors="replace") as f:
                for lineno, line in enumerate(f, 1):
                    text = line.rstrip("\n")
                    if text:
                        yield lineno, text

    def _documents(self) -> Iterator[tuple[int, Any]]:
        """``(source, token ids)`` per non-empty document."""
        if self.kind == "npy":
            a = self.array
            if a.ndim == 1:
                yield 1, a
            else:
                yield from enumerate(a)
            return
        batch: list[tuple[int, str]] = []
        for item in self._texts():
            batch.append(item)
            if len(batch) == _ENCODE_BATCH:
                yield from self._encode(batch)
                batch = []
        yield from self._encode(batch)

    def _encode(self, batch: list[tuple[int, str]]) -> Iterator[tuple[int, list[int]]]:
        if not batch:
            return
        encs = self.tokenizer.tok.encode_batch([t for _, t in batch], add_special_tokens=False)
        for (source, _), enc in zip(batch, encs):
            yield source, enc.ids

    # -- rows ----------------------------------------------------------------------------------
    def rows(self) -> Iterator[tuple[np.ndarray, int, int]]:
        """``(ids [seq_len] int64, source, n_tokens)`` per row, at most ``max_rows``."""
        if self.max_rows is not None and self.max_rows <= 0:
            return
        if self.kind == "npy" and self.array.ndim == 2 and self.array.shape[1] == self.seq_len:
            gen = ((np.asarray(r, dtype=np.int64), i, self.seq_len) for i, r in self._documents())
        elif self.pack:
            gen = self._packed()
        else:
            gen = self._truncated()
        for n, row in enumerate(gen, 1):
            self._check_vocab(row[0], n - 1)
            yield row
            if self.max_rows is not None and n >= self.max_rows:
                return

    def _packed(self) -> Iterator[tuple[np.ndarray, int, int]]:
        buf = np.empty(self.seq_len, dtype=np.int64)
        fill, start = 0, None
        for source, ids in self._documents():
            ids = np.asarray(ids, dtype=np.int64)
            if self.sep_id is not None and self.kind != "npy":
                ids = np.append(ids, self.sep_id)
            at = 0
            while at < len(ids):
                if fill == 0:
                    start = source
                take = min(self.seq_len - fill, len(ids) - at)
                buf[fill:fill + take] = ids[at:at + take]
                fill += take
                at += take
                if fill == self.seq_len:
                    yield buf.copy(), start, self.seq_len
                    fill = 0

    def _truncated(self) -> Iterator[tuple[np.ndarray, int, int]]:
        for source, ids in self._documents():
            ids = np.asarray(ids, dtype=np.int64)[: self.seq_len]
            if len(ids) == 0:
                continue
            row = np.full(self.seq_len, self.pad_id, dtype=np.int64)
            row[: len(ids)] = ids
            yield row, source, len(ids)

    def _check_vocab(self, row: np.ndarray, index: int) -> None:
        if self.d_vocab is None or self.kind == "npy":   # a .npy is checked whole when opened
            return
        bad = (row < 0) | (row >= self.d_vocab)
        if bad.any():
            tok = int(row[np.argmax(bad)])
            raise InputError(f"token id {tok} in row {index} of {self.path} is outside the model's vocabulary "
                             f"[0, {self.d_vocab}): the checkpoint's tokenizer.json does not match the model")

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
        """What identifies this input for ``--resume``: its bytes (every file's, with its name) and how they
        become rows."""
        h = hashlib.sha256()
        for p in self.files:
            if self.kind == "folder":
                h.update(p.relative_to(self.path).as_posix().encode() + b"\0")
            with open(p, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
        return {"path": str(self.path.resolve()), "sha256": h.hexdigest(), "kind": self.kind,
                "seq_len": self.seq_len, "pack": self.pack, "packed": self.packed, "documents": self.documents,
                "text_field": self.text_field if self.kind == "jsonl" else None}


def _check_ids(a: np.ndarray, d_vocab: int, path: Path) -> None:
    """Every id of ``a`` in ``[0, d_vocab)``, compared in the array's own dtype (a uint64 id stays positive)."""
    flat = a.reshape(-1)
    step = 1 << 24
    for i in range(0, flat.shape[0], step):
        block = flat[i:i + step]
        lo, hi = block.min(), block.max()
        if lo < 0 or hi >= d_vocab:
            bad = lo if lo < 0 else hi
            at = i + int(np.argmax(block == bad))
            row = f"row {at // a.shape[1]}" if a.ndim == 2 else f"position {at}"
            raise InputError(f"token id {int(bad)} at {row} of {path} is outside the model's vocabulary "
                             f"[0, {d_vocab}); was the input tokenized with another tokenizer?")
