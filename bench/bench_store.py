"""Benchmarks of the activation store (run by hand; results in docs/bench-store.md).

    python bench/bench_store.py all --dir /tmp/bench-store      # everything (~10 min on 2 cores)
    python bench/bench_store.py e2e|write|read|chunks|rss ...   # one part

* e2e:    the caching loop of `workbench cache` (forward + hooks + StoreWriter) vs the same forward
          passes with the same hooks and no store; interleaved repeats, medians. Goal >= 0.9x.
* write:  StoreWriter MB/s (append -> close -> fsync) vs `dd ... conv=fdatasync` on the same disk. Goal >= 50%.
* read:   random-row reads through the probe Dataset, page cache dropped for the file first
          (posix_fadvise DONTNEED), with the chunk cache it picks vs HDF5's default 8 MiB one.
* chunks: random single-row reads from 64-row vs 1,024-row chunks (why chunks are ~64 rows).
* rss:    peak RSS of `workbench cache` writing files 1x and 8x the size of a 64 MB write queue.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workbench import PhiConfig, PhiModel  # noqa: E402
from workbench.store import ActivationStore, StoreWriter  # noqa: E402
from workbench.store.capture import run_model  # noqa: E402
from workbench.store.inputs import META_COLUMNS, RowSource  # noqa: E402


def make_checkpoint(folder: Path, preset: str = "small") -> Path:
    if not (folder / "config.json").is_file():
        torch.manual_seed(0)
        PhiModel(PhiConfig.from_name(preset)).save_pretrained(folder)
    return folder


def make_ids(path: Path, rows: int, seq_len: int, vocab: int) -> Path:
    np.save(path, np.random.default_rng(0).integers(0, vocab, size=(rows, seq_len)))
    return path


def drop_page_cache(path: Path) -> None:
    """Evict the file from the OS page cache (no root needed), so reads come from the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


# -- e2e ----------------------------------------------------------------------------------------
def bench_e2e(d: Path, reps: int = 3, rows: int = 64, seq_len: int = 128, batch: int = 8,
              preset: str = "small") -> dict:
    """Wall and CPU time of the loop, forward-only (A) vs caching (B), in ABBA order, medians of ratios."""
    ckpt = make_checkpoint(d / f"ckpt-{preset}", preset)
    ids = make_ids(d / "e2e_ids.npy", rows, seq_len, 4096)
    model = PhiModel.from_pretrained(ckpt)
    results = {}
    for label, patterns in [("resid_post (4 hooks)", ["blocks.*.hook_resid_post"]),
                            ("resid+mlp_post+pattern (12 hooks)",
                             ["blocks.*.hook_resid_post", "blocks.*.mlp.hook_post", "blocks.*.attn.hook_pattern"])]:
        names = model.resolve_hooks(patterns)
        src = RowSource(ids, seq_len, d_vocab=model.cfg.d_vocab)
        batches = list(src.batches(batch))          # tokenised up front: time only the loop
        spec = {n: (s, "float16") for n, s in _shapes(model, names, seq_len).items()}
        run_model(model, batches[:2], names, None)   # warm-up
        times: dict[str, list] = {"fwd": [], "cache": []}
        mb = 0.0

        busy = {"append": 0.0, "write": 0.0, "batches": 0}

        class TimedWriter(StoreWriter):
            """Adds up the time the caller spends in append() and the writer thread in _write()."""

            def append(self, *a, **k):
                t0 = time.perf_counter()
                super().append(*a, **k)
                busy["append"] += time.perf_counter() - t0
                busy["batches"] += 1

            def _write(self, item):
                t0 = time.perf_counter()
                super()._write(item)
                busy["write"] += time.perf_counter() - t0

        def once(kind: str) -> None:
            nonlocal mb
            w = TimedWriter(d / "e2e.h5", spec, seq_len=seq_len, meta=META_COLUMNS) if kind == "cache" else None
            t, c = time.perf_counter(), time.process_time()
            run_model(model, batches, names, w)
            if w is not None:
                w.close()
                mb = w.bytes_written / 1e6
            times[kind].append((time.perf_counter() - t, time.process_time() - c))

        for _ in range(reps):   # A B B A: load from other jobs and order effects hit both alike
            for kind in ("fwd", "cache", "cache", "fwd"):
                once(kind)
        tok = rows * seq_len
        fw, cw = [t[0] for t in times["fwd"]], [t[0] for t in times["cache"]]
        fc, cc = [t[1] for t in times["fwd"]], [t[1] for t in times["cache"]]
        results[label] = {
            "forward_only_tok_s": round(tok / statistics.median(fw)), "cache_tok_s": round(tok / statistics.median(cw)),
            "wall_ratio_of_medians": round(statistics.median(fw) / statistics.median(cw), 3),
            "cpu_ratio_of_medians": round(statistics.median(fc) / statistics.median(cc), 3),
            "wall_s": {"fwd": [round(x, 2) for x in fw], "cache": [round(x, 2) for x in cw]},
            "MB_written": round(mb, 1), "cache_MB_s": round(mb / statistics.median(cw), 1),
            # the store's own cost per batch: append() blocks the model; _write() runs beside it
            "fwd_ms_per_batch_median": round(1e3 * statistics.median(fw) / len(batches), 1),
            "append_ms_per_batch": round(1e3 * busy["append"] / busy["batches"], 2),
            "writer_thread_ms_per_batch": round(1e3 * busy["write"] / busy["batches"], 2)}
    return results


def _shapes(model, names, seq_len):
    from workbench.store.capture import hook_shapes
    return hook_shapes(model, names, seq_len)


# -- write ----------------------------------------------------------------------------------------
def bench_write(d: Path, reps: int = 5, total_mb: int = 1024) -> dict:
    row = (128, 2560)   # one phi-2 resid_post row at 128 tokens, fp16: 640 KiB
    batch = 16
    x = torch.randn(batch, *row).half()
    toks = torch.zeros(batch, row[0], dtype=torch.long)
    n_batches = total_mb * (1 << 20) // (x.numel() * 2)
    store_s, dd_s = [], []
    for _ in range(reps):
        out = d / "write.h5"
        t = time.perf_counter()
        with StoreWriter(out, {"blocks.0.hook_resid_post": (row, torch.float16)}, seq_len=row[0]) as w:
            for _ in range(n_batches):
                w.append(toks, {"blocks.0.hook_resid_post": x})
        fd = os.open(out, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
        store_s.append(time.perf_counter() - t)
        mb = os.path.getsize(out) / 1e6
        out.unlink()
        t = time.perf_counter()
        subprocess.run(["dd", "if=/dev/zero", f"of={d / 'dd.bin'}", "bs=1M", f"count={total_mb}",
                        "conv=fdatasync"], check=True, capture_output=True)
        dd_s.append(time.perf_counter() - t)
        (d / "dd.bin").unlink()
    dd_mb = total_mb * (1 << 20) / 1e6
    return {"store_MB_s": [round(mb / s, 1) for s in store_s], "dd_MB_s": [round(dd_mb / s, 1) for s in dd_s],
            "ratio_median": statistics.median((mb / s) / (dd_mb / t) for s, t in zip(store_s, dd_s)),
            "file_MB": round(mb, 1)}


# -- read ------------------------------------------------------------------------------------------
def bench_read(d: Path, n_reads: int = 400) -> dict:
    """Random rows through probe_dataset: from disk (page cache dropped) and from the page cache."""
    path = d / "read.h5"
    row = (128, 2560)
    if not path.exists():
        x = torch.randn(16, *row).half()
        with StoreWriter(path, {"h": (row, torch.float16)}, seq_len=row[0]) as w:
            for _ in range(1600 // 16):
                w.append(torch.zeros(16, row[0], dtype=torch.long), {"h": x})
    res = {}
    rng = np.random.default_rng(0)
    with ActivationStore.open(path) as s:
        labels = torch.zeros(len(s))
        for pos_label, pos in [("whole row (640 KiB)", None), ("one position (5 KiB)", -1)]:
            for cache_label, cache in [("probe_dataset's cache (none)", None), ("HDF5 default 8 MiB cache", 8 << 20)]:
                for where in ("disk", "page cache"):
                    ds = s.probe_dataset("h", labels, pos=pos, cache_bytes=cache)
                    idx = rng.integers(0, len(ds), n_reads)
                    if where == "disk":
                        drop_page_cache(path)
                    else:
                        ds.load()   # warm the page cache with the whole file's rows
                    t = time.perf_counter()
                    nbytes = sum(ds[int(i)][0].numel() * 2 for i in idx)
                    dt = time.perf_counter() - t
                    res[f"{pos_label}, {cache_label}, from {where}"] = {
                        "rows_s": round(n_reads / dt, 1), "useful_MB_s": round(nbytes / 1e6 / dt, 1)}
        # what probe training does: a shuffled DataLoader with workers, batched reads (__getitems__)
        for workers in (0, 4):
            ds = s.probe_dataset("h", labels, pos=-1)
            loader = torch.utils.data.DataLoader(ds, batch_size=64, shuffle=True, num_workers=workers)
            drop_page_cache(path)
            t = time.perf_counter()
            n = sum(len(b[1]) for b in loader)
            dt = time.perf_counter() - t
            res[f"DataLoader shuffle, batch 64, {workers} workers, one position, from disk"] = {
                "rows_s": round(n / dt, 1)}
    return res


def bench_chunks(d: Path, n_reads: int = 2000) -> dict:
    """Random single-row reads, rows of 16 KiB, from 64-row (1 MiB) vs 1,024-row (16 MiB) chunks."""
    rows, row = 16384, (32, 256)
    data = np.random.default_rng(0).standard_normal((1024, *row)).astype(np.float16)
    res = {}
    for chunk_rows in (64, 1024):
        path = d / f"chunks{chunk_rows}.h5"
        with h5py.File(path, "w") as f:
            ds = f.create_dataset("x", (rows, *row), dtype="f2", chunks=(chunk_rows, *row))
            for i in range(0, rows, 1024):
                ds[i:i + 1024] = data
        idx = np.random.default_rng(1).integers(0, rows, n_reads)
        for cache in (8 << 20, 0):
            drop_page_cache(path)
            with h5py.File(path, "r", rdcc_nbytes=cache) as f:
                ds = f["x"]
                t = time.perf_counter()
                for i in idx:
                    ds[int(i)]
                dt = time.perf_counter() - t
            res[f"{chunk_rows}-row chunks, cache {cache >> 20} MiB"] = {"rows_s": round(n_reads / dt, 1)}
    return res


# -- rss ---------------------------------------------------------------------------------------------
def bench_rss(d: Path) -> dict:
    """Each run reports its own peak RSS (ru_maxrss at exit); the activations are ~2 MB a row."""
    ckpt = make_checkpoint(d / "ckpt-small")
    child = ("import atexit, resource, sys; atexit.register(lambda: print('PEAK_KB', "
             "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)); "
             "from workbench.cli import main; sys.argv[0] = 'workbench'; main()")
    res = {}
    for label, rows in [("1x queue", 32), ("8x queue", 256)]:
        ids = make_ids(d / f"rss_ids_{rows}.npy", rows, 256, 4096)
        out = d / f"rss_{rows}.h5"
        cmd = [sys.executable, "-c", child, "cache", str(ckpt), "-i", str(ids), "-k", "blocks.*.attn.hook_pattern",
               "-o", str(out), "--overwrite", "--queue-mb", "64", "--batch-size", "8"]
        t = time.perf_counter()
        p = subprocess.run(cmd, check=True, capture_output=True, text=True)
        dt = time.perf_counter() - t
        peak_kb = int(p.stderr.rsplit("PEAK_KB", 1)[1].split()[0])
        res[label] = {"file_MB": round(os.path.getsize(out) / 1e6, 1), "peak_rss_MB": round(peak_kb / 1024, 1),
                      "seconds": round(dt, 1)}
        out.unlink()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["all", "e2e", "write", "read", "chunks", "rss"])
    ap.add_argument("--dir", type=Path, default=None, help="Scratch folder on the disk to measure.")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads (1 = what DataLoader workers use; on an oversubscribed "
                         "machine torch's thread pool can make a 300K-element cast take 35 ms instead of 0.03 ms)")
    ap.add_argument("--preset", default="small",
                    help="e2e only: model preset (small is Python-overhead-bound; mid is compute-bound)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    d = args.dir or Path(tempfile.mkdtemp(prefix="bench-store-"))
    d.mkdir(parents=True, exist_ok=True)
    parts = ["rss", "e2e", "write", "read", "chunks"] if args.what == "all" else [args.what]
    out = {"machine": f"{os.cpu_count()} CPUs ({torch.get_num_threads()} torch threads), torch {torch.__version__}, h5py {h5py.__version__} "
                      f"(HDF5 {h5py.version.hdf5_version})",
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    for p in parts:
        out[p] = bench_e2e(d, preset=args.preset) if p == "e2e" else globals()[f"bench_{p}"](d)
        print(json.dumps({p: out[p]}, indent=1), flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
