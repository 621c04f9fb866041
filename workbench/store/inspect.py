"""A one-screen, human-readable description of a store file (``workbench inspect``)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Union

import numpy as np

from . import format as fmt
from .reader import ActivationStore
from .recovery import writer_left_open


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n} B"


def describe(path: Union[str, Path]) -> str:
    """Model, hooks (shapes, dtypes, chunks), complete rows, size on disk, format version, provenance."""
    path = Path(path)
    live = writer_left_open(path) if path.is_file() and path.stat().st_size >= 64 else False
    with ActivationStore.open(path) as s:
        a = s.attrs
        lines = [f"{path}  ({human_bytes(s.nbytes_on_disk())} on disk)",
                 f"  format       {fmt.FORMAT_NAME} v{s.format_version}, written by workbench "
                 f"{a.get(fmt.A_PACKAGE, '?')}"]
        if s.is_recording:
            steps = s.steps
            span = f"{steps[0]}..{steps[-1]}" if steps else "none yet"
            lines.append(f"  recording    {len(steps)} steps ({span}) x {len(s)} probe rows x {s.seq_len} tokens")
        else:
            lines.append(f"  rows         {len(s):,} complete x {s.seq_len} tokens = {len(s) * s.seq_len:,} tokens")
        if live:
            lines.append("  state        a writer has it open, or was killed before closing it: "
                         "resume with `workbench cache ... --resume`")
        cfg = a.get("model_config")
        if isinstance(cfg, dict):
            keys = ("n_layers", "d_model", "n_heads", "d_mlp", "d_vocab", "n_ctx")
            lines.append(f"  model        {a.get('model_source', '?')}  ("
                         + ", ".join(f"{k}={cfg[k]}" for k in keys if k in cfg) + ")")
        elif "model_source" in a:
            lines.append(f"  model        {a['model_source']}")
        tok = a.get("tokenizer")
        if isinstance(tok, str) and tok:
            try:
                vocab = len(json.loads(tok).get("model", {}).get("vocab", {}))
                lines.append(f"  tokenizer    tokenizer.json stored ({vocab:,} tokens)")
            except ValueError:
                lines.append("  tokenizer    stored (unreadable JSON)")
        lines.append(f"  hooks        {len(s.hooks)}")
        width = max(len(n) for n in s.hooks)
        for name, (shape, dname) in s.hook_specs.items():
            ds = s.f[fmt.HOOKS_GROUP][name]
            stored = fmt.DTYPES[dname][1].name
            per_row = int(np.prod(shape)) * fmt.DTYPES[dname][1].itemsize
            rows = len(s) * (max(1, s.n_steps) if s.is_recording else 1)
            comp = f", {ds.compression}" if ds.compression else ""
            lines.append(f"    {name:<{width}}  [{', '.join(map(str, shape))}] {dname}"
                         f"{' (as ' + stored + ')' if stored != dname else ''}  "
                         f"{human_bytes(per_row * rows)}  chunks {list(ds.chunks)}{comp}")
        if s.meta_columns:
            lines.append(f"  row metadata {', '.join(s.meta_columns)}")
        inp = a.get("input")
        if isinstance(inp, dict):
            how = "packed" if inp.get("pack") else "truncated"
            lines.append(f"  input        {inp.get('path')} ({inp.get('kind')}, {how}, sha256 "
                         f"{str(inp.get('sha256', ''))[:12]})")
        if "created" in a:
            lines.append(f"  created      {a['created']}")
        cmd = a.get("command")
        if isinstance(cmd, list):
            lines.append(f"  command      {' '.join(cmd)}")
        joined = a.get("joined_from")
        if joined:
            lines.append(f"  joined from  {joined}")
    return "\n".join(lines)
