"""A one-screen, human-readable description of a store file (``workbench inspect``)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Union

import numpy as np

from . import format as fmt
from .reader import ActivationStore, Recording

MODEL_KEYS = ("n_layers", "d_model", "n_heads", "d_mlp", "d_vocab", "n_ctx")


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n} B"


def plural(n: int, word: str) -> str:
    """``"1 hook"``, ``"2 hooks"``, ``"1,024 rows"``."""
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def describe(path: Union[str, Path], verify: bool = False) -> str:
    """Model, hooks (shapes, dtypes, chunks), complete rows, size on disk, format version, provenance.

    ``verify``: also read every complete entry and check it against its stored checksum.
    """
    path = Path(path)
    with ActivationStore.open(path) as s:
        a = s.attrs
        lines = [f"{path}  ({human_bytes(s.nbytes_on_disk())} on disk)",
                 f"  format       {fmt.FORMAT_NAME} v{s.format_version}, written by workbench "
                 f"{a.get(fmt.A_PACKAGE, '?')}"]
        if isinstance(s, Recording):
            steps = s.steps
            span = f"{steps[0]}..{steps[-1]}" if steps else "none yet"
            lines.append(f"  recording    {plural(len(steps), 'step')} ({span}) x {plural(s.n_rows, 'probe row')} "
                         f"x {s.seq_len} tokens")
        else:
            lines.append(f"  rows         {len(s):,} complete x {s.seq_len} tokens = {len(s) * s.seq_len:,} tokens")
        state = s.state()
        if state is not None:
            lines.append(f"  state        {state}: only its complete entries are read; "
                         + ("" if state == "being written" else "finish it with the same command and --resume"))
        lines += _model_lines(a) + _task_lines(a)
        lines += _hook_lines(s)
        if s.meta_columns:
            lines.append(f"  row metadata {', '.join(s.meta_columns)}")
        lines += _origin_lines(a)
        if verify:
            n = s.verify()
            unit = "steps" if isinstance(s, Recording) else "rows"
            lines.append(f"  verified     {n:,} {unit} match their checksums" if n or not len(s) else
                         "  verified     nothing: this file has no checksums (written before they existed)")
    return "\n".join(lines)


def _model_lines(a: dict) -> list[str]:
    cfg = a.get("model_config")
    where = a.get("model_source") or (f"training run {a['run_name']!r}" if a.get("run_name") else None)
    if isinstance(cfg, dict):
        shape = ", ".join(f"{k}={cfg[k]}" for k in MODEL_KEYS if k in cfg)
        line = [f"  model        {where or 'unnamed'}  ({shape})"]
    else:
        line = [f"  model        {where}"] if where else []
    tok = a.get("tokenizer")
    if isinstance(tok, str) and tok:
        try:
            vocab = len(json.loads(tok).get("model", {}).get("vocab", {}))
            line.append(f"  tokenizer    tokenizer.json stored ({vocab:,} tokens)")
        except ValueError:
            line.append("  tokenizer    stored (unreadable JSON)")
    return line


def _task_lines(a: dict) -> list[str]:
    """A training recording's probe task: what ``detect_heads`` and the induction curve score against."""
    if not a.get("probe_period"):
        return []
    rep, val = int(a.get("probe_repeated_rows", 0) or 0), int(a.get("probe_val_rows", 0) or 0)
    vocab = a.get("probe_vocab_size")
    task = (f"{plural(rep, 'row')} of a random block of {a['probe_period']} tokens repeated "
            f"{a.get('probe_repeats', 2)} times (offset {a.get('probe_offset', 1)}"
            + (f", ids < {vocab:,}" if isinstance(vocab, int) else "") + ")")
    return [f"  probe task   {task}" + (f" + {plural(val, 'validation row')}" if val else "")]


def _hook_lines(s) -> list[str]:
    lines = [f"  hooks        {len(s.hooks)}"]
    width = max(len(n) for n in s.hooks)
    entries = s.n_rows * (max(1, s.n_steps) if s.is_recording else 1)
    for name, (shape, dname) in s.hook_specs.items():
        ds = s.f[fmt.HOOKS_GROUP][name]
        stored = fmt.DTYPES[dname][1].name
        per_row = int(np.prod(shape)) * fmt.itemsize(dname)
        comp = f", {ds.compression}" if ds.compression else ""
        lines.append(f"    {name:<{width}}  [{', '.join(map(str, shape))}] {dname}"
                     f"{' (as ' + stored + ')' if stored != dname else ''}  "
                     f"{human_bytes(per_row * entries)}  chunks {list(ds.chunks)}{comp}")
    return lines


def _origin_lines(a: dict) -> list[str]:
    lines = []
    inp = a.get("input")
    if isinstance(inp, dict):
        how = "packed" if inp.get("packed", inp.get("pack")) else ("rows as they are" if inp.get("kind") == "npy"
                                                                    else "truncated")
        docs = {"lines": ", one document per line", "file": ", whole files"}.get(inp.get("documents"), "")
        lines.append(f"  input        {inp.get('path')} ({inp.get('kind')}{docs}, {how}, sha256 "
                     f"{str(inp.get('sha256', ''))[:12]})")
    if "created" in a:
        lines.append(f"  created      {a['created']}" + (f", resumed {a['resumed']}" if "resumed" in a else ""))
    cmd = a.get("command")
    if isinstance(cmd, list):
        lines.append(f"  command      {' '.join(cmd)}")
    joined = a.get("joined_from")
    if joined:
        lines.append(f"  joined from  {joined}")
    return lines
