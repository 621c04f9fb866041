"""``workbench cache``: parse the options, print the plan, a progress bar and the summary.

The work itself is ``workbench.store.CacheJob`` (callable from a notebook too).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import List, Optional

import typer

# No long unbreakable words in option help: rich cuts them off with an ellipsis in its narrow column.
HOOKS_HELP = ("Hook name, TransformerLens shorthand (resid_post3) or glob (as in the example above). "
              "Repeatable. List them with `workbench hooks MODEL`.")
INPUT_HELP = ("A .txt file (one document per line), a code or prose file (.py, .md, ...: the whole file is "
              "one document, newlines kept), a folder of such files (each one document), JSONL "
              "(--text-field), or .npy token ids.")


def register(app: typer.Typer) -> None:
    @app.command(no_args_is_help=True)
    def cache(
        model: str = typer.Argument(..., help="HF-format checkpoint folder, hub id, or training run folder."),
        input: Path = typer.Option(..., "--input", "-i", help=INPUT_HELP),
        hooks: List[str] = typer.Option(..., "--hooks", "-k", help=HOOKS_HELP),
        out: Path = typer.Option(..., "--out", "-o", help="The .h5 file to write."),
        batch_size: int = typer.Option(8, help="Rows per forward pass."),
        seq_len: Optional[int] = typer.Option(None, help="Tokens per row (default: 128, or the model's context "
                                                          "if smaller; for a 2-D .npy, its width)."),
        max_rows: Optional[int] = typer.Option(None, help="Stop after this many rows."),
        dtype: str = typer.Option("float16", help="Stored dtype: float16, bfloat16 (bit-exact) or float32."),
        compression: str = typer.Option("none", help="none (default), gzip or lzf: activations barely compress."),
        device: str = typer.Option("cpu", help="cpu, cuda, cuda:1, mps ..."),
        model_dtype: str = typer.Option("float32", help="Dtype the model runs in: float32, bfloat16, float16."),
        pack: bool = typer.Option(True, "--pack/--truncate",
                                  help="Pack documents into full rows, or one truncated/padded row per document."),
        documents: Optional[str] = typer.Option(None, help="For a text file: 'lines' (one document per line) or "
                                                "'file' (the whole file, newlines kept). Default: lines for .txt, "
                                                "file for code and prose."),
        text_field: str = typer.Option("text", help="JSONL field that holds the text."),
        resume: bool = typer.Option(False, "--resume", help="Continue an interrupted OUT (same model, hooks, input)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing OUT (once the new one is valid)."),
        flush_seconds: float = typer.Option(1.0, help="At most this long between commits. A kill loses the rows "
                                                      "not yet committed: the write queue plus this long of writing."),
        queue_mb: int = typer.Option(256, help="Memory (MB) for batches waiting to be written."),
        threads: Optional[int] = typer.Option(None, help="torch threads (default: one per core, less one for "
                                                         "the writer; at least 1)."),
    ) -> None:
        """Cache activations of MODEL on INPUT to an HDF5 file, resumably, in bounded memory.

        Example: workbench cache ./phi-2 -i docs.txt -k 'blocks.*.hook_resid_post' -o acts.h5
        """
        from workbench.hooks.names import UnknownHookError
        from workbench.store import CacheJob
        from workbench.threads import use_threads

        n_threads = use_threads(threads)
        try:
            job = CacheJob(model, input, hooks, out, batch_size=batch_size, seq_len=seq_len, max_rows=max_rows,
                           dtype=dtype, compression=compression, device=device, model_dtype=model_dtype,
                           pack=pack, documents=documents, text_field=text_field, resume=resume,
                           overwrite=overwrite, flush_seconds=flush_seconds, queue_mb=queue_mb,
                           command=["workbench", *sys.argv[1:]])
        except UnknownHookError as e:
            from workbench.errors import InputError
            raise InputError(f"no hook point named {e.name!r}; closest valid names: "
                             f"{', '.join(e.suggestions) or '(none close)'}. List them all with "
                             f"`workbench hooks {model}`") from None
        _print_plan(job, n_threads)
        _run(job)


def run_cache(model: str, input: Path, hooks: List[str], out: Path, **options) -> None:
    """Deprecated: the body of ``workbench cache`` is now ``workbench.store.CacheJob``; this prints as
    the command does. Goes in the next release."""
    import warnings

    from workbench.store import CacheJob
    from workbench.threads import use_threads
    warnings.warn("workbench.commands.cache.run_cache is now workbench.store.CacheJob / cache_activations; "
                  "run_cache goes in the next release", FutureWarning, stacklevel=2)
    n_threads = use_threads(options.pop("threads", None))
    job = CacheJob(model, input, hooks, out, **options)
    _print_plan(job, n_threads)
    _run(job)


def _print_plan(job, n_threads: int) -> None:
    from workbench.store.inspect import human_bytes, plural
    p = job.plan
    cfg = p.model.cfg
    typer.echo(f"model   {p.model_source} ({cfg.n_layers} layers, d_model {cfg.d_model}) on {p.device}, "
               f"{plural(n_threads, 'thread')}")
    typer.echo(f"input   {p.source.path}: {p.total_rows:,} rows x {p.source.seq_len} tokens ({p.source.describe()})")
    for w in p.warnings:
        typer.echo(f"warning {w}", err=True)
    shown = ", ".join(f"{n} {list(p.shapes[n])}" for n in p.names[:6])
    typer.echo(f"hooks   {len(p.names)}: {shown}" + (f" ... (+{len(p.names) - 6})" if len(p.names) > 6 else ""))
    if p.switched_on:
        typer.echo(f"        switched on for these forwards: {', '.join(f'model.{s}(True)' for s in p.switched_on)}")
    typer.echo(f"output  {job.out}: about {human_bytes(p.estimate_bytes)} as {p.dtype}"
               + (f"; {p.done_rows:,} rows already there, resuming" if job.resume else ""))


def _run(job) -> None:
    from workbench.signals import deferred_signals
    from workbench.store.inspect import human_bytes, plural
    p = job.plan
    if p.done_rows >= p.total_rows:
        job.close()
        typer.echo(f"{job.out} already holds all {p.total_rows:,} rows; nothing to do")
        return
    progress = Progress(p.total_rows, p.done_rows, p.source.seq_len, job)
    try:
        result = job.run(on_batch=progress)
    except KeyboardInterrupt:
        with deferred_signals(deliver=False):      # a second Ctrl-C must not cut this line
            progress.close()
            typer.echo(f"\ninterrupted: {job.rows_saved:,} of {p.total_rows:,} rows saved in {job.out}; "
                       "run the same command with --resume to finish", err=True)
        raise
    finally:
        progress.close()
    dt = max(result.seconds, 1e-9)
    typer.echo(f"\ndone: {p.total_rows:,} rows ({p.total_rows * p.source.seq_len:,} tokens) of "
               f"{plural(len(p.names), 'hook')} in {job.out}")
    typer.echo(f"  this run   {result.rows_this_run:,} rows in {dt:.1f} s: "
               f"{result.rows_this_run * p.source.seq_len / dt:,.0f} tokens/s, "
               f"{result.bytes_written / 1e6 / dt:,.1f} MB/s written")
    typer.echo(f"  on disk    {human_bytes(result.file_bytes)} ({p.dtype}"
               f"{', ' + job.compression if job.compression else ''})")
    typer.echo(f"  read it    ActivationStore.open({str(job.out)!r})[{p.names[0]!r}][0:{min(8, p.total_rows)}]")
    typer.echo(f"  describe   workbench inspect {job.out}")


class Progress:
    """A tqdm bar with rows, tokens/s and the writer's MB/s."""

    def __init__(self, total: int, initial: int, seq_len: int, job) -> None:
        from tqdm import tqdm
        self.bar = tqdm(total=total, initial=initial, unit="row", dynamic_ncols=True, smoothing=0.1)
        self.seq_len, self.job, self.t0, self.rows = seq_len, job, time.monotonic(), 0

    def __call__(self, n: int) -> None:
        self.rows += n
        dt = max(time.monotonic() - self.t0, 1e-9)
        writer = getattr(self.job, "writer", None)
        mb = writer.bytes_written / 1e6 / dt if writer is not None else 0.0
        self.bar.set_postfix_str(f"{self.rows * self.seq_len / dt:,.0f} tok/s, {mb:,.1f} MB/s", refresh=False)
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()
