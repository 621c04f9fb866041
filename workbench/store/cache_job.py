"""The job behind ``workbench cache``: run a model over an input and stream chosen activations to a store.

A notebook calls it too::

    from workbench.store import cache_activations
    result = cache_activations("./phi-2", "docs.txt", ["blocks.*.hook_resid_post"], "acts.h5", seq_len=64)

or, to see the plan before the work starts (what the command prints)::

    job = CacheJob("./phi-2", "docs.txt", ["blocks.*.hook_resid_post"], "acts.h5")
    job.plan          # rows, hooks and shapes, estimated size, rows already there on --resume
    job.run()

Everything cheap is checked before the model loads, and the writer lock on the output is
taken first of all, so a second run on the same output stops at once naming the first.
"""
from __future__ import annotations

import datetime
import hashlib
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch

from workbench.errors import DiskFullError, FileConflictError, InputError, MissingFileError
from workbench.model import PhiModel

from . import format as fmt
from .capture import Capture
from .inputs import META_COLUMNS, RowSource
from .inspect import human_bytes
from .lock import WriterLock
from .reader import ActivationStore, Recording
from .writer import StoreWriter

MODEL_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


@dataclass
class CachePlan:
    """What the job will do, known before it starts (the command prints it)."""

    model_source: str
    model: Any                      # the loaded PhiModel
    device: str
    source: RowSource               # the input, cut into rows
    total_rows: int
    names: list[str]                # hooks in model order
    shapes: dict[str, tuple]        # row shape of each hook
    switched_on: list[str]          # split-input switches turned on for the capture forwards
    dtype: str                      # stored dtype
    estimate_bytes: int             # the finished file
    done_rows: int = 0              # already in the file (--resume)
    warnings: list[str] = field(default_factory=list)


@dataclass
class CacheResult:
    rows: int                       # rows in the file now
    rows_this_run: int
    seconds: float
    bytes_written: int
    file_bytes: int
    writer_cpu_seconds: float = 0.0  # the writer thread's CPU time (beside the forward passes)


class CacheJob:
    """``workbench cache`` as an object: the constructor checks and plans, ``run()`` does the work.

    Args (as the command's options): ``model`` a checkpoint folder, hub id, run folder or a loaded
    ``PhiModel``; ``input`` a text/code/JSONL/.npy file or a folder; ``hooks`` names or globs;
    ``out`` the .h5 file; ``resume`` continue ``out``; ``overwrite`` replace it (atomically, once the
    new file is valid). ``queue_mb``: memory for batches waiting to be written; ``flush_seconds``: at
    most this long between commits (what a SIGKILL can lose besides the queue); ``durable``: fsync
    before each commit (the count then survives a power cut too).
    """

    def __init__(self, model: Union[str, Path, PhiModel], input: Union[str, Path],
                 hooks: Union[str, Sequence[str]], out: Union[str, Path], *, batch_size: int = 8,
                 seq_len: Optional[int] = None, max_rows: Optional[int] = None, dtype: str = "float16",
                 compression: str = "none", device: str = "cpu", model_dtype: str = "float32", pack: bool = True,
                 documents: Optional[str] = None, text_field: str = "text", resume: bool = False,
                 overwrite: bool = False, flush_seconds: float = 1.0, queue_mb: int = 256, durable: bool = True,
                 command: Optional[list[str]] = None) -> None:
        self.out = Path(out)
        self.durable = durable
        self.batch_size, self.resume, self.overwrite = batch_size, resume, overwrite
        self.flush_seconds, self.queue_mb = flush_seconds, queue_mb
        self.compression = _check_options(self.out, batch_size, max_rows, compression, resume, overwrite,
                                          flush_seconds, queue_mb)
        store_dtype, run_dtype = _dtype_option(dtype, "--dtype", fmt.DTYPES), _dtype_option(
            model_dtype, "--model-dtype", MODEL_DTYPES)
        _check_device(device)
        if not Path(input).exists():
            raise MissingFileError(f"input not found: {input}")
        self.lock = WriterLock(self.out)        # first: a second run on OUT stops here
        try:
            self._check_out()
            self.plan = self._plan(model, Path(input), hooks, seq_len, max_rows, store_dtype, run_dtype, device,
                                   pack, documents, text_field)
            self.attrs = self._attrs(command, model_dtype, max_rows)
            if resume:
                self.plan.done_rows = _check_resume(self.out, self.attrs, self._spec())
                self.attrs["resumed"] = self.attrs.pop("created")   # keep the original creation time
            row_bytes = self.plan.source.seq_len * 4 + sum(int(np.prod(s)) for s in self.plan.shapes.values()) \
                * fmt.itemsize(store_dtype)
            check_disk(self.out, self.plan.estimate_bytes - row_bytes * self.plan.done_rows,
                       replacing=overwrite and self.out.exists())
        except BaseException:
            self.lock.release()
            raise
        self.rows_saved = self.plan.done_rows

    # -- planning --------------------------------------------------------------------------------
    def _check_out(self) -> None:
        out = self.out
        if out.exists() and not (self.resume or self.overwrite):
            raise FileConflictError(f"{out} already exists; pass --resume to complete it or --overwrite to replace it")
        if self.resume and not out.exists():
            raise MissingFileError(f"--resume: {out} does not exist, so there is nothing to resume")

    def _plan(self, model: Any, input: Path, hooks: Any, seq_len: Optional[int], max_rows: Optional[int],
              store_dtype: str, run_dtype: torch.dtype, device: str, pack: bool, documents: Optional[str],
              text_field: str) -> CachePlan:
        phi = model if isinstance(model, PhiModel) else load_model(model, run_dtype, device)
        capture = Capture(phi, hooks)       # unknown names: UnknownHookError with the closest ones
        source = RowSource(input, seq_len, tokenizer=phi.tokenizer, pack=pack, text_field=text_field,
                           max_rows=max_rows, d_vocab=phi.cfg.d_vocab, documents=documents, n_ctx=phi.cfg.n_ctx)
        if source.seq_len > phi.cfg.n_ctx:
            raise InputError(f"--seq-len {source.seq_len} exceeds the model's context of {phi.cfg.n_ctx} tokens")
        total = source.count()
        if total == 0:
            raise InputError(f"{input} yields no rows of {source.seq_len} tokens; "
                             "use a smaller --seq-len, --truncate, or a longer input")
        shapes = capture.shapes(source.seq_len)
        self.capture = capture
        source_name = str(model) if not isinstance(model, PhiModel) else (phi.cfg.name or "a PhiModel in memory")
        return CachePlan(source_name, phi, device, source, total, capture.names, shapes, capture.switched_on,
                         store_dtype, estimate_bytes(total, source.seq_len, shapes, store_dtype),
                         warnings=list(source.warnings))

    def _spec(self) -> dict:
        return {n: (self.plan.shapes[n], self.plan.dtype) for n in self.plan.names}

    def _attrs(self, command: Optional[list[str]], model_dtype: str, max_rows: Optional[int]) -> dict:
        p = self.plan
        tok = p.model.tokenizer
        return {
            "model_source": p.model_source, "model_config": p.model.cfg.to_dict(),
            "model_weights": weights_digest(p.model), "tokenizer": tok.tok.to_str() if tok is not None else "",
            "input": p.source.fingerprint(),
            "command": command if command is not None else ["workbench", *sys.argv[1:]],
            "arguments": {"batch_size": self.batch_size, "seq_len": p.source.seq_len, "max_rows": max_rows,
                          "dtype": p.dtype, "compression": self.compression or "none", "device": p.device,
                          "model_dtype": model_dtype, "pack": p.source.pack, "documents": p.source.documents,
                          "text_field": p.source.text_field, "switched_on": p.switched_on},
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }

    # -- running ---------------------------------------------------------------------------------
    def run(self, on_batch: Optional[Callable[[int], None]] = None) -> CacheResult:
        """Cache every remaining row. On Ctrl-C / SIGTERM the in-flight write finishes, the file is
        closed (``rows_saved`` says how many rows it holds) and the interrupt goes on up."""
        p = self.plan
        if p.done_rows >= p.total_rows:
            self.lock.release()
            return CacheResult(p.done_rows, 0, 0.0, 0, self.out.stat().st_size)
        writer = StoreWriter(self.out, self._spec(), seq_len=p.source.seq_len, attrs=self.attrs,
                             compression=self.compression, mode="a" if self.resume else ("w" if self.overwrite else "w-"),
                             meta=META_COLUMNS, max_queue_bytes=self.queue_mb << 20,
                             flush_seconds=self.flush_seconds, durable=self.durable, lock=self.lock)
        self.writer = writer
        t0 = time.monotonic()
        try:
            self.capture.run(p.source.batches(self.batch_size, skip=p.done_rows), writer, on_batch=on_batch)
        finally:
            try:
                writer.close()              # what was queued still lands; the file stays complete and resumable
            finally:
                self.rows_saved = writer.committed
        dt = time.monotonic() - t0
        return CacheResult(writer.committed, writer.committed - p.done_rows, dt, writer.bytes_written,
                           self.out.stat().st_size, writer.thread_cpu_seconds)

    def close(self) -> None:
        """Release the output's lock without running (``run`` releases it itself)."""
        self.lock.release()


def cache_activations(model: Union[str, Path, PhiModel], input: Union[str, Path], hooks: Union[str, Sequence[str]],
                      out: Union[str, Path], **options: Any) -> CacheResult:
    """``workbench cache`` from Python: plan, then run; options as ``CacheJob``'s."""
    return CacheJob(model, input, hooks, out, **options).run()


def load_model(source: Union[str, Path], dtype: torch.dtype, device: str) -> PhiModel:
    """``PhiModel.from_pretrained``: a checkpoint it cannot load raises a ``workbench.errors.UserError`` (one line)."""
    return PhiModel.from_pretrained(str(source), dtype=dtype, device=device)


# -- checks -------------------------------------------------------------------------------------
def _check_options(out: Path, batch_size: int, max_rows: Optional[int], compression: str, resume: bool,
                   overwrite: bool, flush_seconds: float, queue_mb: int) -> Optional[str]:
    """The options that need nothing loaded; returns the compression filter (None for none)."""
    if resume and overwrite:
        raise InputError("pass --resume or --overwrite, not both")
    if out.is_dir():
        raise InputError(f"--out {out} is a folder; pass a file name such as {out / 'acts.h5'}")
    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}")
    if max_rows is not None and max_rows < 1:
        raise InputError(f"--max-rows must be at least 1, got {max_rows}")
    if queue_mb < 1:
        raise InputError(f"--queue-mb must be at least 1 (MB of batches waiting to be written), got {queue_mb}")
    if not flush_seconds >= 0:
        raise InputError(f"--flush-seconds must be 0 (commit after every batch) or more, got {flush_seconds}")
    comp = None if compression.lower() in ("none", "") else compression.lower()
    if comp not in (None, "gzip", "lzf"):
        raise InputError(f"--compression must be none, gzip or lzf, got {compression!r}")
    return comp


def _dtype_option(value: str, option: str, table: dict) -> Any:
    key = value.replace("torch.", "")
    key = {"fp16": "float16", "half": "float16", "bf16": "bfloat16", "fp32": "float32", "float": "float32"}.get(
        key, key)
    if key not in table:
        names = sorted({k for k in table if not k.startswith(("fp", "bf16"))})
        raise InputError(f"{option} must be one of {', '.join(names)}; got {value!r}")
    return key if table is fmt.DTYPES else table[key]


def _check_device(device: str) -> None:
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise InputError(f"--device {device!r} is not a device: use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"--device {device}: torch {torch.__version__} sees no CUDA GPU on this machine; "
                             "use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"--device {device}: MPS is not available on this machine; use --device cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise InputError(f"--device {device!r}: use cpu, cuda, cuda:N or mps")


def check_disk(out: Path, need: int, replacing: bool) -> None:
    """Refuse a run whose output cannot fit (5% and 256 KiB of margin over the estimate) or cannot be written."""
    folder = out.resolve().parent
    folder.mkdir(parents=True, exist_ok=True)
    st = os.statvfs(folder)
    if st.f_flag & os.ST_RDONLY:
        raise DiskFullError(f"cannot write {out}: {folder} is on a read-only filesystem")
    if not os.access(folder, os.W_OK):
        raise InputError(f"cannot write {out}: {folder} is not writable by this user")
    free = shutil.disk_usage(folder).free + (out.stat().st_size if replacing else 0)
    if need + need // 20 + (256 << 10) > free:
        raise DiskFullError(f"not enough disk space in {folder}: the file needs about {human_bytes(need)} "
                            f"but only {human_bytes(free)} is free; use --max-rows, fewer --hooks, or --dtype float16")


def _check_resume(out: Path, attrs: dict, spec: dict) -> int:
    """Rows already in ``out``; refuses, saying what differs, unless model, hooks and input match."""
    with ActivationStore.open(out) as s:
        if isinstance(s, Recording):
            raise InputError(f"--resume: {out} is a training recording, not a cache file")
        old = s.attrs
        problems = []

        def cfg(c: dict) -> dict:   # the name is just how the model was referred to
            return {k: v for k, v in (c or {}).items() if k != "name"}
        if cfg(old.get("model_config")) != cfg(attrs["model_config"]) or old.get("model_weights") != attrs["model_weights"]:
            problems.append(f"the model differs (file: {old.get('model_source')}, weights {old.get('model_weights')}; "
                            f"now: {attrs['model_source']}, weights {attrs['model_weights']})")
        want = {n: (list(sh), d) for n, (sh, d) in spec.items()}
        have = {n: (list(sh), d) for n, (sh, d) in s.hook_specs.items()}
        if have != want:
            problems.append(f"the hooks differ (file: {sorted(have)} as {sorted({d for _, d in have.values()})}; "
                            f"now: {sorted(want)} as {sorted({d for _, d in want.values()})})")
        old_in, new_in = old.get("input") or {}, attrs["input"]
        keys = [k for k in ("sha256", "kind", "seq_len", "pack", "text_field", "documents")
                if k in old_in or k != "documents"]       # files from before --documents: lines only
        diff = [k for k in keys if old_in.get(k) != new_in.get(k)]
        if diff:
            problems.append("the input differs (" + ", ".join(
                f"{k}: file {str(old_in.get(k))[:16]}, now {str(new_in.get(k))[:16]}" for k in diff) + ")")
        if problems:
            raise InputError(f"--resume refused for {out}: " + "; ".join(problems)
                             + ". Use the original command, or --overwrite to start again.")
        return len(s)


# -- sizes ----------------------------------------------------------------------------------------
def estimate_bytes(rows: int, seq_len: int, shapes: dict, dtype: str) -> int:
    """File size: every dataset rounded up to whole chunks (HDF5 allocates chunks whole), plus metadata."""
    parts = [((seq_len,), 4)] + [((), np.dtype(d).itemsize) for d in META_COLUMNS.values()]
    parts += [(tuple(s), fmt.itemsize(dtype)) for s in shapes.values()]
    total = 1 << 16
    for shape, itemsize in parts:
        chunk = fmt.chunk_shape(shape, itemsize)
        total += math.ceil(rows / chunk[0]) * int(np.prod(chunk)) * itemsize
    return total


def weights_digest(model: torch.nn.Module) -> str:
    """A cheap fingerprint of the weights: sha256 over each parameter's name, shape and first 4096 values."""
    h = hashlib.sha256()
    for name, p in model.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(p.shape)).encode())
        h.update(p.detach().reshape(-1)[:4096].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]
