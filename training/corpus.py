"""Text corpora: the embedded standard-library corpus and user text/JSONL files, split by document.

The embedded default corpus is the source of the Python standard library of
the running interpreter (``sysconfig.get_paths()["stdlib"]``): real code,
present offline on every machine. Documents are assigned to train or
validation by a hash of their name, so the split is deterministic, does not
depend on the order files are listed in, and never cuts a file in two.
"""
from __future__ import annotations

import sysconfig
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from workbench.errors import InputError, MissingFileError
from workbench.store.inputs import jsonl_texts

TEXT_SUFFIXES = {".txt", ".md", ".py", ".rst", ".c", ".h", ".js", ".json", ".toml", ".html", ".tex", ".csv"}
MEMMAP_SUFFIXES = {".bin", ".npy"}


@dataclass
class Corpus:
    """Documents as ``(name, text)`` pairs, split into train and validation."""
    train: list[tuple[str, str]] = field(default_factory=list)
    val: list[tuple[str, str]] = field(default_factory=list)

    def texts(self, split: str = "train") -> list[str]:
        return [t for _, t in getattr(self, split)]

    def n_bytes(self) -> int:
        return sum(len(t) for _, t in self.train + self.val)


def is_val(name: str, val_fraction: float) -> bool:
    """Deterministic per-document split: a CRC32 of the name, not a random draw."""
    return (zlib.crc32(name.encode()) % 10_000) < val_fraction * 10_000


def stdlib_files() -> list[tuple[str, Path]]:
    """``(relative name, path)`` of every ``.py`` file of the running interpreter's standard library.

    Third-party packages (``site-packages``) are left out: the corpus is the
    same for everyone with the same Python version.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise MissingFileError(f"the standard library folder {root} does not exist; "
                                "give data.sources explicitly in the config")
    files = [p for p in root.rglob("*.py") if "site-packages" not in p.parts and "dist-packages" not in p.parts]
    return sorted((p.relative_to(root).as_posix(), p) for p in files)


# A text with more undecodable bytes than this share is not text (a few stray bytes in a large
# file are common and are replaced; a NUL byte never is).
MAX_BAD_BYTES = 0.01


def read_text_file(path: Path) -> str:
    """The UTF-8 text of ``path``; binary content (NUL bytes, or > 1% invalid UTF-8) is an ``InputError``."""
    raw = path.read_bytes()
    nul = raw.find(b"\x00")
    if nul >= 0:
        raise InputError(f"data source {path} is binary, not text (a NUL byte at offset {nul:,}); remove it "
                         "from data.sources, or give token ids as a .bin/.npy file")
    text = raw.decode("utf-8", errors="replace")
    bad = text.count("\ufffd") - raw.decode("utf-8", errors="ignore").count("\ufffd")
    if bad > MAX_BAD_BYTES * max(1, len(raw)):
        raise InputError(f"data source {path} is not UTF-8 text ({bad:,} of {len(raw):,} bytes do not "
                         "decode); convert it to UTF-8 or remove it from data.sources")
    return text


def _read(path: Path) -> Callable[[], str]:
    return lambda: read_text_file(path)


def _documents_of(source: str, jsonl_field: str) -> Iterator[tuple[str, Callable[[], str]]]:
    """Every document of one source as ``(name, read)``: ``stdlib``, a text file, a JSONL file
    (one document per line) or a folder. Files are read only when ``read()`` is called."""
    if source == "stdlib":
        for name, path in stdlib_files():
            yield f"stdlib/{name}", _read(path)
        return
    path = Path(source).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file()
                       and (p.suffix in TEXT_SUFFIXES or p.suffix == ".jsonl"))
        if not files:
            raise MissingFileError(f"folder {path} holds no text or .jsonl files")
        for f in files:
            yield from _documents_of(str(f), jsonl_field)
        return
    if not path.is_file():
        raise MissingFileError(f"data source {source!r} is neither 'stdlib' nor an existing file or folder")
    if path.suffix == ".jsonl":
        for lineno, text in jsonl_texts(path, jsonl_field, "set data.jsonl_field to the field that holds the text"):
            yield f"{path}:{lineno - 1}", (lambda text=text: text)
        return
    yield str(path), _read(path)


def _sample_order(name: str) -> int:
    # A fixed pseudo-random order, so a byte cap takes a spread of the corpus, not its first folders.
    return zlib.crc32(b"order:" + name.encode())


def load_corpus(sources: list[str], val_fraction: float, jsonl_field: str = "text",
                max_bytes: int = 0) -> Corpus:
    """Read text sources (not memmaps) into a train/validation split by document.

    ``max_bytes`` (0: no cap) keeps documents in a fixed hash order until the
    cap; the choice is the same on every run and machine with the same files.
    """
    found = [d for s in sources for d in _documents_of(s, jsonl_field)]
    if max_bytes:
        # Read documents in the fixed hash order only until the cap: a small corpus reads few files.
        found.sort(key=lambda d: _sample_order(d[0]))
        docs, total = [], 0
        for name, read in found:
            if total >= max_bytes:
                break
            text = read()
            docs.append((name, text))
            total += len(text)
        docs.sort()
    else:
        docs = [(name, read()) for name, read in found]
    corpus = Corpus()
    for name, text in docs:
        (corpus.val if is_val(name, val_fraction) else corpus.train).append((name, text))
    if not corpus.train:
        raise InputError(f"no training documents in {sources}: every document went to validation "
                         "or the sources are empty")
    if not corpus.val:  # a tiny corpus: hold out its last document so validation is never empty
        if len(corpus.train) < 2:
            raise InputError(f"{sources} holds a single document; give at least two so one can be "
                             "held out for validation (or split the file)")
        corpus.val.append(corpus.train.pop())
    return corpus
