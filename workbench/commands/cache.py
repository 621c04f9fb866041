"""``workbench cache``: run a model over a dataset and stream chosen activations to an HDF5 store."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from workbench.errors import DiskFullError, FileConflictError, InputError, MissingFileError


def register(app: typer.Typer) -> None:
    @app.command(no_args_is_help=True)
    def cache(
        model: str = typer.Argument(..., help="HF-format checkpoint folder, hub id, or training run folder."),
        input: Path = typer.Option(..., "--input", "-i", help="Text (one document per line), JSONL, or .npy token ids."),
        hooks: List[str] = typer.Option(..., "--hooks", "-k",
                                        help="Hook name or glob, e.g. 'blocks.*.hook_resid_post'. Repeatable."),
        out: Path = typer.Option(..., "--out", "-o", help="The .h5 file to write."),
        batch_size: int = typer.Option(8, help="Rows per forward pass."),
        seq_len: Optional[int] = typer.Option(None, help="Tokens per row (default 128; for a 2-D .npy, its width)."),
        max_rows: Optional[int] = typer.Option(None, help="Stop after this many rows."),
        dtype: str = typer.Option("float16", help="Stored dtype: float16, bfloat16 (bit-exact) or float32."),
        compression: str = typer.Option("none", help="none (default), gzip or lzf: activations barely compress."),
        device: str = typer.Option("cpu", help="cpu, cuda, cuda:1, mps ..."),
        model_dtype: str = typer.Option("float32", help="Dtype the model runs in: float32, bfloat16, float16."),
        pack: bool = typer.Option(True, "--pack/--truncate",
                                  help="Pack documents into full rows, or one truncated/padded row per document."),
        text_field: str = typer.Option("text", help="JSONL field that holds the text."),
        resume: bool = typer.Option(False, "--resume", help="Continue an interrupted OUT (same model, hooks, input)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing OUT."),
        flush_seconds: float = typer.Option(1.0, help="At most this long between flushes: what a crash can lose."),
        queue_mb: int = typer.Option(256, help="Memory (MB) for batches waiting to be written."),
    ) -> None:
        """Cache activations of MODEL on INPUT to an HDF5 file, resumably, in bounded memory.

        Example: workbench cache ./phi-2 -i docs.txt -k 'blocks.*.hook_resid_post' -o acts.h5
        """
        run_cache(model=model, input=input, hooks=hooks, out=out, batch_size=batch_size, seq_len=seq_len,
                  max_rows=max_rows, dtype=dtype, compression=compression, device=device,
                  model_dtype=model_dtype, pack=pack, text_field=text_field, resume=resume,
                  overwrite=overwrite, flush_seconds=flush_seconds, queue_mb=queue_mb)


def run_cache(model: str, input: Path, hooks: List[str], out: Path, batch_size: int = 8,
              seq_len: Optional[int] = None, max_rows: Optional[int] = None, dtype: str = "float16",
              compression: str = "none", device: str = "cpu", model_dtype: str = "float32", pack: bool = True,
              text_field: str = "text", resume: bool = False, overwrite: bool = False,
              flush_seconds: float = 1.0, queue_mb: int = 256) -> None:
    """The body of ``workbench cache`` (also called by bench/bench_store.py)."""
    out = Path(out)
    # Cheap checks first: nothing is loaded, and an existing OUT is never touched, until they pass.
    if resume and overwrite:
        raise InputError("pass --resume or --overwrite, not both")
    if out.exists() and not (resume or overwrite):
        raise FileConflictError(f"{out} already exists; pass --resume to complete it or --overwrite to replace it")
    if resume and not out.exists():
        raise MissingFileError(f"--resume: {out} does not exist, so there is nothing to resume")
    if out.exists() and out.is_dir():
        raise InputError(f"--out {out} is a folder; pass a file name such as {out / 'acts.h5'}")
    if not Path(input).is_file():
        raise MissingFileError(f"input file not found: {input}")
    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}")
    comp = None if compression.lower() in ("none", "") else compression.lower()
    if comp not in (None, "gzip", "lzf"):
        raise InputError(f"--compression must be none, gzip or lzf, got {compression!r}")

    import datetime
    import time

    import torch

    from workbench import PhiModel, __version__
    from workbench.store import format as fmt
    from workbench.store.capture import Progress, hook_shapes, run_model, weights_digest
    from workbench.store.inputs import META_COLUMNS, RowSource
    from workbench.store.inspect import human_bytes
    from workbench.store.writer import StoreWriter

    store_dtype = fmt.dtype_name(dtype)
    run_dtype = fmt.DTYPES[fmt.dtype_name(model_dtype)][0]
    phi = PhiModel.from_pretrained(model, dtype=run_dtype, device=device)
    names = phi.resolve_hooks(list(hooks))   # unknown -> UnknownHookError with the closest names
    source = RowSource(Path(input), seq_len, tokenizer=phi.tokenizer, pack=pack, text_field=text_field,
                       max_rows=max_rows, d_vocab=phi.cfg.d_vocab)
    if source.seq_len > phi.cfg.n_ctx:
        raise InputError(f"--seq-len {source.seq_len} exceeds the model's context of {phi.cfg.n_ctx} tokens")
    total = source.count()
    if total == 0:
        raise InputError(f"{input} yields no rows of {source.seq_len} tokens; "
                         "use a smaller --seq-len, --truncate, or a longer input")
    shapes = hook_shapes(phi, names, source.seq_len)
    spec = {n: (shapes[n], store_dtype) for n in names}
    row_bytes = source.seq_len * 4 + sum(int(torch.Size(s).numel()) for s in shapes.values()) * \
        fmt.DTYPES[store_dtype][1].itemsize
    attrs = {
        "model_source": str(model), "model_config": phi.cfg.to_dict(), "model_weights": weights_digest(phi),
        "tokenizer": phi.tokenizer.tok.to_str() if phi.tokenizer is not None else "",
        "input": source.fingerprint(), "command": ["workbench", *sys.argv[1:]] if sys.argv else [],
        "arguments": {"batch_size": batch_size, "seq_len": source.seq_len, "max_rows": max_rows,
                      "dtype": store_dtype, "compression": comp or "none", "device": device,
                      "model_dtype": model_dtype, "pack": pack, "text_field": text_field},
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }

    done = 0
    if resume:
        done = _check_resume(out, attrs, spec)
        attrs["resumed"] = attrs.pop("created")   # keep the original creation time
    estimate = _estimate_bytes(total, source.seq_len, shapes, store_dtype)
    typer.echo(f"model   {model} ({phi.cfg.n_layers} layers, d_model {phi.cfg.d_model}) on {device}")
    typer.echo(f"input   {input}: {total:,} rows x {source.seq_len} tokens ({'packed' if pack else 'truncated'})")
    typer.echo(f"hooks   {len(names)}: " + ", ".join(f"{n} {list(shapes[n])}" for n in names[:6])
               + (f" ... (+{len(names) - 6})" if len(names) > 6 else ""))
    typer.echo(f"output  {out}: about {human_bytes(estimate)} as {store_dtype}"
               + (f"; {done:,} rows already there, resuming" if resume else ""))
    _check_disk(out, estimate - row_bytes * done, replacing=overwrite and out.exists())
    if done >= total:
        typer.echo(f"{out} already holds all {total:,} rows; nothing to do")
        return

    writer = StoreWriter(out, spec, seq_len=source.seq_len, attrs=attrs, compression=comp,
                         mode="a" if resume else "w", meta=META_COLUMNS, max_queue_bytes=queue_mb << 20,
                         flush_seconds=flush_seconds)
    progress = Progress(total, done, source.seq_len, writer)
    t0 = time.monotonic()
    try:
        run_model(phi, source.batches(batch_size, skip=done), names, writer, on_batch=progress)
        writer.close()
    except KeyboardInterrupt:
        progress.close()
        writer.close()   # what was queued still lands; the file stays complete and resumable
        typer.echo(f"\ninterrupted: {writer.n_rows:,} of {total:,} rows saved in {out}; "
                   f"run the same command with --resume to finish", err=True)
        raise
    finally:
        progress.close()
        writer.close()
    dt = time.monotonic() - t0
    rows_now = total - done
    size = out.stat().st_size
    typer.echo(f"\ndone: {total:,} rows ({total * source.seq_len:,} tokens) of {len(names)} hooks in {out}")
    typer.echo(f"  this run   {rows_now:,} rows in {dt:.1f} s: {rows_now * source.seq_len / dt:,.0f} tokens/s, "
               f"{writer.bytes_written / 1e6 / dt:,.1f} MB/s written")
    typer.echo(f"  on disk    {human_bytes(size)} ({store_dtype}{', ' + comp if comp else ''})")
    typer.echo(f"  read it    ActivationStore.open({str(out)!r})[{names[0]!r}][0:{min(8, total)}]")
    typer.echo(f"  describe   workbench inspect {out}")


def _estimate_bytes(rows: int, seq_len: int, shapes: dict, dtype: str) -> int:
    """File size: every dataset rounded up to whole chunks (HDF5 allocates chunks whole), plus metadata."""
    import math

    import numpy as np

    from workbench.store import format as fmt
    from workbench.store.inputs import META_COLUMNS
    parts = [((seq_len,), 4)] + [((), np.dtype(d).itemsize) for d in META_COLUMNS.values()]
    parts += [(tuple(s), fmt.DTYPES[dtype][1].itemsize) for s in shapes.values()]
    total = 1 << 16
    for shape, itemsize in parts:
        chunk = fmt.chunk_shape(shape, itemsize)
        total += math.ceil(rows / chunk[0]) * int(np.prod(chunk)) * itemsize
    return total


def _check_resume(out: Path, attrs: dict, spec: dict) -> int:
    """Rows already in ``out``; refuses, saying what differs, unless model, hooks and input match."""
    from workbench.store import ActivationStore
    with ActivationStore.open(out) as s:
        if s.is_recording:
            raise InputError(f"--resume: {out} is a training recording, not a cache file")
        old = s.attrs
        problems = []
        def cfg(c: dict) -> dict:   # the name is just how the model was referred to
            return {k: v for k, v in (c or {}).items() if k != "name"}
        if cfg(old.get("model_config")) != cfg(attrs["model_config"]) or old.get("model_weights") != attrs["model_weights"]:
            problems.append(f"the model differs (file: {old.get('model_source')}, weights {old.get('model_weights')}; "
                            f"now: {attrs['model_source']}, weights {attrs['model_weights']})")
        want_hooks = {n: (list(s_), d) for n, (s_, d) in spec.items()}
        have_hooks = {n: (list(s_), d) for n, (s_, d) in s.hook_specs.items()}
        if have_hooks != want_hooks:
            problems.append(f"the hooks differ (file: {sorted(have_hooks)} as "
                            f"{sorted({d for _, d in have_hooks.values()})}; now: {sorted(want_hooks)} as "
                            f"{sorted({d for _, d in want_hooks.values()})})")
        old_in, new_in = old.get("input") or {}, attrs["input"]
        keys = ("sha256", "kind", "seq_len", "pack", "text_field")
        diff = [k for k in keys if old_in.get(k) != new_in.get(k)]
        if diff:
            problems.append("the input differs (" + ", ".join(
                f"{k}: file {str(old_in.get(k))[:16]}, now {str(new_in.get(k))[:16]}" for k in diff) + ")")
        if problems:
            raise InputError(f"--resume refused for {out}: " + "; ".join(problems)
                             + ". Use the original command, or --overwrite to start again.")
        return len(s)


def _check_disk(out: Path, need: int, replacing: bool) -> None:
    import shutil

    from workbench.store.inspect import human_bytes
    folder = out.resolve().parent
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free + (out.stat().st_size if replacing else 0)
    if need * 1.02 + (16 << 20) > free:
        raise DiskFullError(f"not enough disk space in {folder}: the file needs about {human_bytes(need)} "
                      f"but only {human_bytes(free)} is free; use --max-rows, fewer --hooks, or --dtype float16")
