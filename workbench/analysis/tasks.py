"""Task generators: the datasets the analyses, notebooks and trainer use.

* ``repeated_random_tokens``: random sequences repeated, to find induction heads.
* ``ioi_prompts``: IOI-style name templates with clean/corrupted pairs.
* ``python_probe_set``: labelled probing sets from Python source (string/comment/
  identifier, bracket depth), per token of a given tokenizer.

All generators are deterministic given ``seed``.
"""
from __future__ import annotations

import io
import json
import keyword
import sysconfig
import tokenize
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from workbench.analysis.metrics import make_logit_diff_metric
from workbench.errors import InputError, MissingFileError


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


# -- Clean/corrupted tasks for patching and circuits ----------------------------------------------
@dataclass
class CircuitTask:
    """Paired clean and corrupted prompts with a metric: what patching and circuit discovery run on.

    ``clean_tokens``/``corrupted_tokens`` ``[n, pos]`` (paired row by row, one length);
    ``metric(logits [n, pos, d_vocab]) -> scalar``, higher on the clean run; ``metric_name`` says
    what it is; ``str_tokens`` is the first clean prompt as strings (for figures); ``params`` the
    generator's settings (JSON-ready).
    """

    name: str
    clean_tokens: torch.Tensor
    corrupted_tokens: torch.Tensor
    metric: Callable[[torch.Tensor], torch.Tensor]
    metric_name: str
    description: str
    str_tokens: Optional[list[str]] = None
    params: dict = field(default_factory=dict)

    def metadata(self) -> dict:
        """JSON-ready description (stored with a circuit)."""
        return {"name": self.name, "description": self.description, "metric": self.metric_name,
                "n_prompts": int(self.clean_tokens.shape[0]), "n_positions": int(self.clean_tokens.shape[1]),
                "prompt": self.str_tokens or [str(t) for t in self.clean_tokens[0].tolist()],
                "params": self.params}


def next_token_logprob_metric(tokens: torch.Tensor, positions: Sequence[int]) -> Callable[[torch.Tensor], torch.Tensor]:
    """``metric(logits)``: mean over rows and ``positions`` of log p(the token that follows in ``tokens``)."""
    pos = torch.as_tensor(list(positions), dtype=torch.long)
    targets = tokens[:, pos + 1]                                          # [n, len(positions)]

    def metric(logits: torch.Tensor) -> torch.Tensor:
        logp = logits[:, pos.to(logits.device)].float().log_softmax(-1)   # [n, len(positions), d_vocab]
        return logp.gather(-1, targets.to(logits.device)[..., None]).mean()
    return metric


def induction_task(n_prompts: int = 16, period: int = 16, n_repeats: int = 2, vocab_size: int = 64,
                   bos_token_id: Optional[int] = None, seed: int = 1, tokenizer=None) -> CircuitTask:
    """Repeated random sequences; the corrupted prompt changes every repeat but the last.

    Clean ``[BOS] A A``: in the last repeat an induction head predicts each next token by finding
    its earlier occurrence. Corrupted ``[BOS] A' A``: ``A'`` is drawn from tokens not in ``A`` (when
    the alphabet allows), so the last repeat has nothing to copy from. Tokens lie in
    ``[0, vocab_size)`` (without ``bos_token_id``). Metric: the mean log-probability of the correct
    next token at the positions of the last repeat that an induction head can predict
    (``period - 1`` per row), in nats.
    """
    if n_repeats < 2:
        raise InputError(f"induction needs n_repeats >= 2 (something to repeat), got {n_repeats}")
    clean = repeated_random_tokens(n_prompts, period, n_repeats, vocab_size, seed=seed, bos_token_id=bos_token_id)
    offset = 0 if bos_token_id is None else 1
    block = clean[:, offset:offset + period]
    g = torch.Generator().manual_seed(seed + 104729)
    corrupted = clean.clone()
    for i in range(n_prompts):
        other = torch.tensor([t for t in range(vocab_size) if t != bos_token_id and t not in set(block[i].tolist())])
        if len(other) == 0:
            raise InputError(f"vocab_size {vocab_size} leaves no token outside a block of {period}; "
                             "use a larger alphabet or a shorter period")
        pick = torch.randperm(len(other), generator=g)[:period] if len(other) >= period else \
            torch.randint(len(other), (period,), generator=g)
        corrupted[i, offset:offset + (n_repeats - 1) * period] = other[pick].repeat(n_repeats - 1)
    last = offset + (n_repeats - 1) * period
    str_tokens = None
    if tokenizer is not None:
        str_tokens = tokenizer.to_str_tokens(clean[0]) if hasattr(tokenizer, "to_str_tokens") else None
    return CircuitTask("induction", clean, corrupted, next_token_logprob_metric(clean, range(last, last + period - 1)),
                       "mean log-prob of the correct next token in the last repeat (nats)",
                       f"{n_prompts} repeated random sequences of period {period} over tokens < {vocab_size}; "
                       "corrupted: every repeat but the last replaced by other tokens",
                       str_tokens, {"period": period, "n_repeats": n_repeats, "vocab_size": vocab_size,
                                    "bos_token_id": bos_token_id, "seed": seed})


def run_induction_params(run_dir) -> dict:
    """``period``, ``n_repeats``, ``vocab_size`` and ``bos_token_id`` of a training run's induction probes.

    Read from the recording's attributes (``probe_period``, ``probe_repeats``, ``probe_offset``,
    ``probe_vocab_size``, else the training config's ``data.synthetic_vocab_size`` capped at the
    model's vocabulary) and its stored probe tokens (the BOS is their first column).
    """
    # Imported here, not at the top: the store (h5py) adds ~0.4 s to `import workbench.analysis.tasks` (measured
    # with python -X importtime), which the prompt generators above do not need.
    from workbench.store import ActivationStore
    path = Path(run_dir) / "activations.h5"
    if not path.is_file():
        raise InputError(f"{run_dir} has no recording (activations.h5), so its induction probes are unknown; "
                         "pass the task's settings instead: induction_task(period=..., vocab_size=...)")
    with ActivationStore.open(path) as store:
        a = store.attrs
        if not a.get("probe_period") or not a.get("probe_repeated_rows"):
            raise InputError(f"{path} holds no repeated-sequence probes (probe_period / probe_repeated_rows); "
                             "pass the task's settings instead")
        offset = int(a.get("probe_offset", 0) or 0)
        bos = int(store.tokens[0:1][0, 0]) if offset else None
        d_vocab = int((a.get("model_config") or {}).get("d_vocab", 0)) or None
        vocab = a.get("probe_vocab_size") or ((a.get("train_config") or {}).get("data") or {}).get(
            "synthetic_vocab_size") or d_vocab
    if vocab is None:
        raise InputError(f"{path} records neither probe_vocab_size nor the model's vocabulary size")
    vocab = min(int(vocab), d_vocab) if d_vocab else int(vocab)
    return {"period": int(a["probe_period"]), "n_repeats": int(a.get("probe_repeats", 2)),
            "vocab_size": vocab, "bos_token_id": bos}


def ioi_task(tokenizer, n_prompts: int = 16, seed: int = 0, corruption: str = "abc", **kwargs) -> CircuitTask:
    """IOI name pairs (``ioi_prompts``) with the logit difference (indirect object - subject) at the last position."""
    ds = ioi_prompts(tokenizer, n_prompts, seed=seed, corruption=corruption, **kwargs)
    toks = tokenizer.to_str_tokens(ds.clean_tokens[0]) if hasattr(tokenizer, "to_str_tokens") else None
    return CircuitTask("ioi", ds.clean_tokens, ds.corrupted_tokens, make_logit_diff_metric(ds.answer_tokens),
                       "logit difference, indirect object minus subject, at the last position",
                       f"{n_prompts} IOI prompts ({corruption} corruption)", toks,
                       {"seed": seed, "corruption": corruption})


def jsonl_task(path, tokenizer=None) -> CircuitTask:
    """A task from a JSONL file, one pair per line: ``{"clean": ..., "corrupted": ..., "answer": ..., "wrong": ...}``.

    ``clean``/``corrupted`` are text (needs ``tokenizer``) or lists of token ids; every pair must
    have one token length. ``answer``/``wrong`` are single tokens (text or an id); the metric is the
    mean logit difference ``answer - wrong`` at the last position.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"no task file at {path}")
    clean, corrupted, answers = [], [], []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            pair = [_task_ids(row[k], tokenizer, f"{path}:{n} {k}") for k in ("clean", "corrupted")]
            ans = [_task_ids(row[k], tokenizer, f"{path}:{n} {k}") for k in ("answer", "wrong")]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise InputError(f"{path}:{n} is not a task line {{\"clean\", \"corrupted\", \"answer\", \"wrong\"}} "
                             f"({type(e).__name__}: {e})") from e
        if len(pair[0]) != len(pair[1]) or (clean and len(pair[0]) != len(clean[0])):
            want = len(clean[0]) if clean else len(pair[0])
            raise InputError(f"{path}:{n}: clean and corrupted token lengths differ ({len(pair[0])} and "
                             f"{len(pair[1])}; earlier lines have {want}): every prompt needs the same number of "
                             "tokens, since edges compare the runs position by position")
        if len(ans[0]) != 1 or len(ans[1]) != 1:
            raise InputError(f"{path}:{n}: answer and wrong must be one token each, got {len(ans[0])} and {len(ans[1])}")
        clean.append(pair[0])
        corrupted.append(pair[1])
        answers.append([ans[0][0], ans[1][0]])
    if not clean:
        raise InputError(f"{path} holds no task lines")
    c = torch.tensor(clean)
    toks = tokenizer.to_str_tokens(c[0]) if tokenizer is not None and hasattr(tokenizer, "to_str_tokens") else None
    return CircuitTask(path.stem, c, torch.tensor(corrupted), make_logit_diff_metric(torch.tensor(answers)),
                       "logit difference, answer minus wrong, at the last position", f"{len(clean)} pairs from {path.name}",
                       toks, {"file": path.name})


def _task_ids(value, tokenizer, where: str) -> list[int]:
    if isinstance(value, list) and all(isinstance(v, int) for v in value):
        return value
    if isinstance(value, int):
        return [value]
    if isinstance(value, str):
        if tokenizer is None:
            raise InputError(f"{where} is text but the model has no tokenizer; give token ids instead")
        return _encode(tokenizer, value)
    raise TypeError(f"{where} must be text or token ids, got {type(value).__name__}")


def circuit_task(spec: str, model, run_dir=None, n_prompts: int = 16, seed: int = 1,
                 period: Optional[int] = None, vocab_size: Optional[int] = None) -> CircuitTask:
    """The task named by ``spec``: ``"induction"``, ``"ioi"`` or a ``.jsonl`` file (see ``jsonl_task``).

    Induction takes its settings from the training run ``run_dir`` (its recording's probes) unless
    ``period``/``vocab_size`` are given; without a run it defaults to period 16 over the whole
    vocabulary (without the BOS). IOI needs the model's tokenizer.
    """
    tokenizer = getattr(model, "tokenizer", None)
    if spec == "induction":
        params = run_induction_params(run_dir) if run_dir is not None and period is None and vocab_size is None else {}
        if not params:
            bos = getattr(model.cfg, "bos_token_id", None)
            params = {"period": period or 16, "n_repeats": 2, "vocab_size": vocab_size or model.cfg.d_vocab,
                      "bos_token_id": bos if bos is not None and bos < (vocab_size or model.cfg.d_vocab) else None}
        return induction_task(n_prompts=n_prompts, seed=seed, tokenizer=tokenizer, **params)
    if spec == "ioi":
        if tokenizer is None:
            raise InputError("--task ioi needs the model's tokenizer (tokenizer.json in the checkpoint folder)")
        try:
            return ioi_task(tokenizer, n_prompts=n_prompts, seed=seed)
        except ValueError as e:
            raise InputError(f"cannot build IOI prompts with this model's tokenizer: {e}") from e
    if spec.endswith(".jsonl") or Path(spec).is_file():
        return jsonl_task(spec, tokenizer)
    raise InputError(f"unknown task {spec!r}: use induction, ioi, or a .jsonl file of clean/corrupted pairs")
