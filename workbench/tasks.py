"""Task generators: the datasets the analyses, notebooks and trainer use.

* ``repeated_random_tokens``: random sequences repeated, to find induction heads.
* ``ioi_prompts``: IOI-style name templates with clean/corrupted pairs.
* ``python_probe_set``: labelled probing sets from Python source (string/comment/
  identifier, bracket depth), per token of a given tokenizer.

All generators are deterministic given ``seed``.
"""
from __future__ import annotations

from dataclasses import dataclass
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


# -- IOI-style name templates -------------------------------------------------------------------
NAMES = ["John", "Mary", "Tom", "James", "Dan", "Sid", "Martin", "Amy", "Anna", "Paul", "Kate", "Mark",
         "Lisa", "Jack", "Sara", "Alex", "Ben", "Emma", "Max", "Rose", "Ryan", "Adam", "Eric", "Jane", "Luke",
         "Sam", "Tim", "Joe", "Ann", "Bob", "Carl", "Dave", "Ed", "Fred", "Greg", "Jim", "Ken", "Matt"]
IOI_TEMPLATES = [
    "Then, {A} and {B} went to the {PLACE}. {S} gave a {OBJECT} to",
    "When {A} and {B} got a {OBJECT} at the {PLACE}, {S} decided to give it to",
    "After {A} and {B} went to the {PLACE}, {S} gave a {OBJECT} to",
    "While {A} and {B} were working at the {PLACE}, {S} gave a {OBJECT} to",
    "Friends {A} and {B} found a {OBJECT} at the {PLACE}. {S} gave it to",
]
PLACES = ["store", "park", "school", "house", "office", "garden", "station", "market"]
OBJECTS = ["ring", "book", "drink", "key", "bag", "ball", "letter", "gift"]


def single_token_names(tokenizer, names: Sequence[str] = NAMES, prefix: str = " ") -> list[str]:
    """The names that are one token (with a leading space, as they appear mid-sentence)."""
    return [n for n in names if len(_encode(tokenizer, prefix + n)) == 1]


def _encode(tokenizer, text: str) -> list[int]:
    if hasattr(tokenizer, "encode") and hasattr(tokenizer, "tok"):       # workbench Tokenizer
        return tokenizer.encode(text)
    enc = tokenizer.encode(text, add_special_tokens=False)
    return list(enc.ids) if hasattr(enc, "ids") else list(enc)


@dataclass
class IOIDataset:
    """Clean/corrupted IOI prompt pairs of one token length.

    ``clean_tokens``/``corrupted_tokens`` ``[n, pos]``; ``answer_tokens`` ``[n, 2]``
    (indirect object = correct, subject = incorrect, for the clean prompt);
    ``clean_texts``/``corrupted_texts``; ``templates`` (index per prompt).
    """

    clean_tokens: torch.Tensor
    corrupted_tokens: torch.Tensor
    answer_tokens: torch.Tensor
    clean_texts: list[str]
    corrupted_texts: list[str]
    templates: list[int]


def ioi_prompts(tokenizer, n_prompts: int, seed: int = 0, names: Optional[Sequence[str]] = None,
                templates: Sequence[str] = IOI_TEMPLATES, corruption: str = "abc",
                places: Sequence[str] = PLACES, objects: Sequence[str] = OBJECTS,
                prepend_bos: bool = False) -> IOIDataset:
    """IOI prompts ("Then, Mary and John went to the store. John gave a drink to" -> " Mary").

    Every name is a single token under ``tokenizer`` (others are dropped), and all prompts
    have the same token length (prompts of other lengths are redrawn), so clean and
    corrupted batches stack and patching lines up position by position.

    ``corruption``: ``"abc"`` replaces all three name slots with three other names (the
    answer is no longer in the prompt); ``"swap"`` makes the last name the indirect object
    (the correct and incorrect answers swap).
    """
    if corruption not in ("abc", "swap"):
        raise ValueError(f"corruption must be 'abc' or 'swap', got {corruption!r}")
    pool = single_token_names(tokenizer, names or NAMES)
    if len(pool) < 5:
        raise ValueError(f"only {len(pool)} of the names are single tokens under this tokenizer ({pool}); "
                         "pass names=[...] that are (check with single_token_names)")
    g = torch.Generator().manual_seed(seed)
    pick = lambda seq: seq[int(torch.randint(len(seq), (1,), generator=g))]
    bos = [tokenizer.bos_token_id] if prepend_bos else []
    clean, corrupt, answers, ct, xt, tids = [], [], [], [], [], []
    length = None
    for _ in range(50 * n_prompts):
        if len(clean) == n_prompts:
            break
        t = int(torch.randint(len(templates), (1,), generator=g))
        idx = torch.randperm(len(pool), generator=g)[:5].tolist()
        io, s, a2, b2, c2 = (pool[i] for i in idx)
        order = (io, s) if bool(torch.rand(1, generator=g) < 0.5) else (s, io)   # ABBA and BABA
        fill = dict(PLACE=pick(places), OBJECT=pick(objects))
        text = templates[t].format(A=order[0], B=order[1], S=s, **fill)
        if corruption == "abc":
            bad = templates[t].format(A=a2, B=b2, S=c2, **fill)
        else:
            bad = templates[t].format(A=order[0], B=order[1], S=io, **fill)
        ids, bad_ids = bos + _encode(tokenizer, text), bos + _encode(tokenizer, bad)
        length = len(ids) if length is None else length
        if len(ids) != length or len(bad_ids) != length:
            continue
        clean.append(ids)
        corrupt.append(bad_ids)
        answers.append([_encode(tokenizer, " " + io)[0], _encode(tokenizer, " " + s)[0]])
        ct.append(text)
        xt.append(bad)
        tids.append(t)
    if len(clean) < n_prompts:
        raise ValueError(f"could draw only {len(clean)} prompts of one token length; use fewer templates, "
                         "places or objects, or a tokenizer under which they are single tokens")
    return IOIDataset(torch.tensor(clean), torch.tensor(corrupt), torch.tensor(answers), ct, xt, tids)


# -- Probing sets from Python source -------------------------------------------------------------
CODE_CLASSES = ("code", "identifier", "string", "comment")   # token_class label values 0..3


def default_python_sources(n_files: int = 8) -> list[str]:
    """Source of a few standard-library modules: the code the default model is trained on."""
    import sysconfig
    from pathlib import Path
    root = Path(sysconfig.get_paths()["stdlib"])
    picks = ["textwrap.py", "shlex.py", "fnmatch.py", "colorsys.py", "bisect.py", "heapq.py", "glob.py",
             "string.py", "calendar.py", "difflib.py", "csv.py", "pprint.py"]
    texts = [(root / p).read_text(encoding="utf-8") for p in picks if (root / p).is_file()]
    if not texts:
        raise FileNotFoundError(f"no standard-library sources under {root}; pass sources=[...]")
    return texts[:n_files]


def char_labels(source: str) -> dict[str, list[int]]:
    """Per-character labels of Python ``source``: ``token_class`` (see ``CODE_CLASSES``) and
    ``bracket_depth`` (open ``([{`` enclosing the character; a bracket itself is at the outer depth).

    Uses the ``tokenize`` module, so brackets inside strings and comments do not count.
    Raises ``SyntaxError``-like ``ValueError`` for source that ``tokenize`` cannot read.
    """
    import io
    import keyword
    import tokenize
    lines = source.splitlines(keepends=True)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))
    cls = [0] * len(source)
    events = []                                   # (char offset, +1 after an opener / -1 at a closer)
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            a = starts[tok.start[0] - 1] + tok.start[1] if tok.start[0] - 1 < len(starts) else len(source)
            b = starts[tok.end[0] - 1] + tok.end[1] if tok.end[0] - 1 < len(starts) else len(source)
            kind = {tokenize.STRING: 2, tokenize.COMMENT: 3}.get(tok.type, 0)
            if tok.type == tokenize.NAME and not keyword.iskeyword(tok.string):
                kind = 1
            if tok.type in (getattr(tokenize, "FSTRING_START", -1), getattr(tokenize, "FSTRING_MIDDLE", -1),
                            getattr(tokenize, "FSTRING_END", -1)):
                kind = 2
            for i in range(a, min(b, len(source))):
                cls[i] = kind
            if tok.type == tokenize.OP and tok.string in "([{":
                events.append((b, 1))
            elif tok.type == tokenize.OP and tok.string in ")]}":
                events.append((a, -1))
    except (tokenize.TokenError, IndentationError, SyntaxError) as e:
        raise ValueError(f"cannot tokenize this Python source: {e}") from e
    depth, d, k = [0] * len(source), 0, 0
    events.sort()
    for i in range(len(source)):
        while k < len(events) and events[k][0] <= i:
            d = max(0, d + events[k][1])
            k += 1
        depth[i] = d
    return {"token_class": cls, "bracket_depth": depth}


@dataclass
class ProbeSet:
    """Token rows and per-token labels: ``tokens`` ``[rows, seq_len]``, ``labels[name]`` ``[rows, seq_len]``
    (``token_class``, ``in_string``, ``in_comment``, ``is_identifier``, ``bracket_depth``)."""

    tokens: torch.Tensor
    labels: dict[str, torch.Tensor]
    classes: tuple[str, ...] = CODE_CLASSES


def python_probe_set(tokenizer, sources: Optional[Sequence[str]] = None, seq_len: int = 64,
                     max_rows: Optional[int] = None, prepend_bos: bool = False) -> ProbeSet:
    """A labelled probing set from Python code, for any tokenizer (e.g. a small BPE trained on code).

    Each BPE token takes the labels of its last non-space character. Each source is tokenized
    and cut into rows of ``seq_len`` tokens (the tail that does not fill a row is dropped).
    Labels: ``token_class`` in ``CODE_CLASSES`` (0 code/keyword/operator, 1 identifier, 2 string,
    3 comment), the binary ``in_string``/``in_comment``/``is_identifier``, and ``bracket_depth``.
    With ``prepend_bos`` every row starts with BOS, labelled -1 (ignored by the probes).
    """
    sources = default_python_sources() if sources is None else list(sources)
    body = seq_len - (1 if prepend_bos else 0)
    rows_t, rows_c, rows_d = [], [], []
    for src in sources:
        labels = char_labels(src)
        ids, offsets = _encode_offsets(tokenizer, src)
        cls, dep = [], []
        for a, b in offsets:
            j = b - 1
            while j > a and src[j].isspace():
                j -= 1
            j = min(max(j, 0), len(src) - 1)
            cls.append(labels["token_class"][j])
            dep.append(labels["bracket_depth"][j])
        for s in range(0, len(ids) - body + 1, body):
            rows_t.append(ids[s:s + body])
            rows_c.append(cls[s:s + body])
            rows_d.append(dep[s:s + body])
    if not rows_t:
        raise ValueError(f"the sources give fewer than {body} tokens: pass more code or a smaller seq_len")
    tokens, cls, dep = torch.tensor(rows_t), torch.tensor(rows_c), torch.tensor(rows_d)
    if prepend_bos:
        pad = lambda t, v: torch.cat([torch.full((t.shape[0], 1), v, dtype=t.dtype), t], dim=1)
        tokens, cls, dep = pad(tokens, int(tokenizer.bos_token_id)), pad(cls, -1), pad(dep, -1)
    if max_rows is not None:
        tokens, cls, dep = tokens[:max_rows], cls[:max_rows], dep[:max_rows]
    ignore = cls < 0
    binary = lambda c: torch.where(ignore, -1, (cls == c).long())
    return ProbeSet(tokens, {"token_class": cls, "in_string": binary(2), "in_comment": binary(3),
                             "is_identifier": binary(1), "bracket_depth": dep})


def _encode_offsets(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    tok = getattr(tokenizer, "tok", tokenizer)                # workbench Tokenizer or tokenizers.Tokenizer
    enc = tok.encode(text, add_special_tokens=False)
    return list(enc.ids), [tuple(o) for o in enc.offsets]
