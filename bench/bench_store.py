"""Benchmarks of the activation store (run by hand; results in docs/bench-store.md).

    python bench/bench_store.py all --dir /tmp/bench-store        # everything (~15 min on 2 cores)
    python bench/bench_store.py e2e|write|threads|flush|read|chunks|rss --dir ...   # one part

* e2e:     ``CacheJob.run()`` (the job behind `workbench cache`: forward + hooks + StoreWriter, the file closed)
           vs the same forward passes with the same hooks and nothing stored; ABBA rounds, medians. Goal >= 0.95x.
* write:   StoreWriter MB/s (append -> close -> fsync), with ``copy=False`` (what capture and recording use)
           and ``copy=True``, vs ``dd ... conv=fdatasync`` on the same disk, interleaved. Goal >= 0.8x dd.
* threads: `workbench cache` tokens/s with 1, 2 and torch's default number of threads, tiny and mid models,
           each run in its own process, interleaved.
* flush:   what a bounded SIGKILL loss costs: caching with --flush-seconds 1 (default), 0 (commit after every
           batch) and without the fsync before each commit.
* read:    random-row reads through the probe Dataset (page cache dropped for the file first).
* chunks:  random single-row reads from 64-row vs 1,024-row chunks (why chunks are ~64 rows).
* rss:     peak RSS of `workbench cache` writing files 1x and 8x the size of a 64 MB write queue.
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

from workbench import PhiConfig, PhiModel
from workbench.store import ActivationStore, CacheJob, StoreWriter
from workbench.store.capture import Capture
from workbench.store.inputs import RowSource
from workbench.threads import default_threads

E2E_HOOKS = {"resid_post (4 hooks)": ["blocks.*.hook_resid_post"],
             "resid+mlp_post+pattern (12 hooks)": ["blocks.*.hook_resid_post", "blocks.*.mlp.hook_post",
                                                    "blocks.*.attn.hook_pattern"]}


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


def summary(samples: dict[str, list[float]], work: float, unit: str = "tok/s") -> dict:
    """Rate of the median sample of each variant, and each variant's ratio to the first one."""
    first = statistics.median(next(iter(samples.values())))
    return {k: {unit: round(work / statistics.median(v)), "ratio_to_first": round(first / statistics.median(v), 3),
                "seconds": [round(x, 3) for x in v]} for k, v in samples.items()}


# -- e2e ----------------------------------------------------------------------------------------
def bench_e2e(d: Path, reps: int = 3, rows: int = 256, seq_len: int = 128, batch: int = 8,
              preset: str = "small") -> dict:
    """The job end to end (B) vs forward passes with the same hooks storing nothing (A), in ABBA order.

    Wall time is the figure a user sees; CPU time (all threads of this process) shows what the store
    costs when the machine has no free core for its writer thread (a busy shared machine).
    """
    ckpt = make_checkpoint(d / f"ckpt-{preset}", preset)
    ids = make_ids(d / "e2e_ids.npy", rows, seq_len, 4096)
    model = PhiModel.from_pretrained(ckpt)
    results = {}
    for label, patterns in E2E_HOOKS.items():
        capture = Capture(model, patterns)
        src = RowSource(ids, seq_len, d_vocab=model.cfg.d_vocab)
        capture.run(list(src.batches(batch))[:2])           # warm-up
        wall: dict[str, list[float]] = {"forward only": [], "CacheJob.run": []}
        cpu: dict[str, list[float]] = {"forward only": [], "CacheJob.run": []}
        mb, writer_cpu = 0.0, []
        for _ in range(reps):
            for kind in ("forward only", "CacheJob.run", "CacheJob.run", "forward only"):
                job = None if kind == "forward only" else CacheJob(
                    model, ids, patterns, d / "e2e.h5", batch_size=batch, seq_len=seq_len, overwrite=True)
                t, c = time.perf_counter(), time.process_time()
                if job is None:
                    capture.run(src.batches(batch))        # the same row source the job reads
                else:
                    res = job.run()
                    mb = res.bytes_written / 1e6
                    writer_cpu.append(res.writer_cpu_seconds)
                wall[kind].append(time.perf_counter() - t)
                cpu[kind].append(time.process_time() - c)
        results[label] = {"wall": summary(wall, rows * seq_len), "cpu": summary(cpu, rows * seq_len),
                          "MB_written": round(mb, 1), "writer_thread_cpu_s_median": round(statistics.median(writer_cpu), 3)}
    return results


# -- write ----------------------------------------------------------------------------------------
def bench_write(d: Path, reps: int = 5, total_mb: int = 1024) -> dict:
    """Rounds of dd, StoreWriter(copy=False), StoreWriter(copy=True), dd; each store run against its round's dd."""
    row = (128, 2560)   # one phi-2 resid_post row at 128 tokens, fp16: 640 KiB
    batch = 16
    x = torch.randn(batch, *row).half()
    toks = torch.zeros(batch, row[0], dtype=torch.long)
    n_batches = total_mb * (1 << 20) // (x.numel() * 2)

    def store(copy: bool) -> float:
        out = d / "write.h5"
        t = time.perf_counter()
        with StoreWriter(out, {"blocks.0.hook_resid_post": (row, torch.float16)}, seq_len=row[0]) as w:
            for _ in range(n_batches):
                w.append(toks, {"blocks.0.hook_resid_post": x}, copy=copy)
        fd = os.open(out, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
        mb_s = os.path.getsize(out) / 1e6 / (time.perf_counter() - t)
        out.unlink()
        return mb_s

    def dd() -> float:
        t = time.perf_counter()
        subprocess.run(["dd", "if=/dev/zero", f"of={d / 'dd.bin'}", "bs=1M", f"count={total_mb}", "conv=fdatasync"],
                       check=True, capture_output=True)
        mb_s = total_mb * (1 << 20) / 1e6 / (time.perf_counter() - t)
        (d / "dd.bin").unlink()
        return mb_s

    runs: dict[str, list[float]] = {"dd": [], "copy=False": [], "copy=True": []}
    ratios: dict[str, list[float]] = {"copy=False": [], "copy=True": []}
    for _ in range(reps):
        before, no_copy, with_copy, after = dd(), store(False), store(True), dd()
        runs["dd"] += [before, after]
        runs["copy=False"].append(no_copy)
        runs["copy=True"].append(with_copy)
        for k, v in (("copy=False", no_copy), ("copy=True", with_copy)):
            ratios[k].append(v / ((before + after) / 2))
    return {"MB_s": {k: [round(v) for v in vs] for k, vs in runs.items()},
            "median_MB_s": {k: round(statistics.median(vs)) for k, vs in runs.items()},
            "ratio_to_dd_median_of_rounds": {k: round(statistics.median(v), 3) for k, v in ratios.items()}}


# -- threads -------------------------------------------------------------------------------------------
_THREADS_CHILD = """
import sys, time, torch
n = sys.argv[1]
if n != "torch":
    torch.set_num_threads(int(n))
from workbench.store import CacheJob
job = CacheJob(sys.argv[2], sys.argv[3], ["blocks.*.hook_resid_post"], sys.argv[4], overwrite=True, batch_size=8)
t = time.perf_counter()
r = job.run()
print(r.rows_this_run * job.plan.source.seq_len / (time.perf_counter() - t), torch.get_num_threads())
"""


def bench_threads(d: Path, reps: int = 3) -> dict:
    """`workbench cache`'s job with 1, 2 and torch's default threads, each in a fresh process, interleaved."""
    out = {"default_threads()": default_threads()}
    for preset, rows in (("tiny", 256), ("mid", 32)):
        ckpt = make_checkpoint(d / f"ckpt-{preset}", preset)
        ids = make_ids(d / f"threads_{preset}.npy", rows, 128, 512)
        toks: dict[str, list[float]] = {"1": [], "2": [], "torch": []}
        for _ in range(reps):
            for n in ("1", "2", "torch", "torch", "2", "1"):
                p = subprocess.run([sys.executable, "-c", _THREADS_CHILD, n, str(ckpt), str(ids), str(d / "t.h5")],
                                   check=True, capture_output=True, text=True)
                rate, used = p.stdout.split()
                toks[n].append(float(rate))
                if n == "torch":
                    out["torch_default_threads"] = int(used)
        out[preset] = {f"{k} thread(s)": {"tok_s_median": round(statistics.median(v)),
                                          "samples": [round(x) for x in v]} for k, v in toks.items()}
    return out


# -- flush -------------------------------------------------------------------------------------------
def bench_flush(d: Path, reps: int = 3, rows: int = 256, seq_len: int = 128, preset: str = "small") -> dict:
    """Cost of commit frequency: --flush-seconds 1 (default), 0 (every batch), and 1 without fsync."""
    ckpt = make_checkpoint(d / f"ckpt-{preset}", preset)
    ids = make_ids(d / "flush_ids.npy", rows, seq_len, 4096)
    model = PhiModel.from_pretrained(ckpt)
    variants = {"flush 1 s, fsync": dict(flush_seconds=1.0), "flush every batch, fsync": dict(flush_seconds=0.0),
                "flush 1 s, no fsync": dict(flush_seconds=1.0, durable=False)}
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(reps):
        for name in [*variants, *reversed(variants)]:
            job = CacheJob(model, ids, ["blocks.*.hook_resid_post"], d / "flush.h5", seq_len=seq_len,
                           overwrite=True, **variants[name])
            t = time.perf_counter()
            job.run()
            times[name].append(time.perf_counter() - t)
    return summary(times, rows * seq_len)


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
        for workers in (0, 4):   # what probe training does: a shuffled DataLoader, batched reads
            ds = s.probe_dataset("h", labels, pos=-1)
            loader = torch.utils.data.DataLoader(ds, batch_size=64, shuffle=True, num_workers=workers)
            drop_page_cache(path)
            t = time.perf_counter()
            n = sum(len(b[1]) for b in loader)
            res[f"DataLoader shuffle, batch 64, {workers} workers, one position, from disk"] = {
                "rows_s": round(n / (time.perf_counter() - t), 1)}
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
    """Each `workbench cache` run reports its own peak RSS (ru_maxrss at exit); activations ~2 MB a row."""
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
    ap.add_argument("what", choices=["all", "e2e", "write", "threads", "flush", "read", "chunks", "rss"])
    ap.add_argument("--dir", type=Path, default=None, help="Scratch folder on the disk to measure.")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads in this process (default: the workbench's policy, workbench.threads)")
    ap.add_argument("--preset", default="small",
                    help="e2e/flush: model preset (small is Python-overhead-bound; mid is compute-bound)")
    ap.add_argument("--reps", type=int, default=3, help="rounds (e2e, threads, flush)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads or default_threads())
    d = args.dir or Path(tempfile.mkdtemp(prefix="bench-store-"))
    d.mkdir(parents=True, exist_ok=True)
    parts = ["rss", "e2e", "write", "threads", "flush", "read", "chunks"] if args.what == "all" else [args.what]
    out = {"machine": f"{os.cpu_count()} CPUs ({torch.get_num_threads()} torch threads), load average "
                      f"{os.getloadavg()[0]:.1f}, torch {torch.__version__}, h5py {h5py.__version__} "
                      f"(HDF5 {h5py.version.hdf5_version})",
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    for p in parts:
        if p in ("e2e", "flush"):
            out[p] = globals()[f"bench_{p}"](d, reps=args.reps, preset=args.preset)
        elif p == "threads":
            out[p] = bench_threads(d, reps=args.reps)
        else:
            out[p] = globals()[f"bench_{p}"](d)
        print(json.dumps({p: out[p]}, indent=1), flush=True)
    out["load_average_after"] = round(os.getloadavg()[0], 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
