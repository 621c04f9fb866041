"""Does h5py hold the GIL while it writes? (by hand: `python bench/bench_h5py_gil.py`)

Counts iterations of a pure-Python loop for a few seconds, alone and while a
thread writes 5 MiB fp16 chunks to an HDF5 file, interleaved over several
rounds. If h5py released the GIL during H5Dwrite, the loop (on the other core)
would keep its speed; the ratio shows how much of the writer's time holds it.
This is why the store's writer thread cannot fully overlap a small model's
Python-heavy forward (docs/benchmarks.md).
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time

import h5py
import numpy as np


def spin(seconds: float) -> int:
    t, n = time.perf_counter(), 0
    while time.perf_counter() - t < seconds:
        n += 1
    return n


def writer(path: str, stop: threading.Event) -> None:
    rows = np.random.rand(64, 64, 640).astype(np.float16)  # one 5 MiB chunk
    with h5py.File(path, "w") as f:
        d = f.create_dataset("x", shape=(0, 64, 640), maxshape=(None, 64, 640), chunks=(64, 64, 640),
                             dtype=np.float16)
        n = 0
        while not stop.is_set():
            if n >= 64 * 100:
                n = 0
            if d.shape[0] < n + 64:
                d.resize(n + 64, axis=0)
            d[n:n + 64] = rows
            n += 64


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=2.0)
    args = ap.parse_args()
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "gil.h5")
        for _ in range(args.rounds):
            alone = spin(args.seconds)
            stop = threading.Event()
            th = threading.Thread(target=writer, args=(path, stop))
            th.start()
            time.sleep(0.2)
            beside = spin(args.seconds)
            stop.set()
            th.join()
            ratios.append(beside / alone)
            print(f"loop alone {alone:,}  beside an h5py writer {beside:,}  ratio {beside / alone:.2f}")
    print(f"median ratio {statistics.median(ratios):.2f} (1.00 = the writer never holds the GIL)")


if __name__ == "__main__":
    main()
