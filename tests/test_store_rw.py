"""StoreWriter + ActivationStore: round trips, bounded memory, recordings, errors."""
from __future__ import annotations

import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from workbench.errors import DamagedFileError, DiskFullError
from workbench.store import (ActivationSource, ActivationStore, CacheStore, Recording, RecordingWriter, StepSource,
                             StoreWriter)

RESID, PATTERN = "blocks.0.hook_resid_post", "blocks.1.attn.hook_pattern"


def _data(n=37, pos=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 500, (n, pos), generator=g),
            {RESID: torch.randn(n, pos, 16, generator=g).bfloat16(),
             PATTERN: torch.rand(n, 2, pos, pos, generator=g).half()})


def _write(path, toks, acts, batch=5, **kw):
    hooks = {h: (tuple(t.shape[1:]), t.dtype) for h, t in acts.items()}
    with StoreWriter(path, hooks, seq_len=toks.shape[1], **kw) as w:
        for i in range(0, len(toks), batch):
            w.append(toks[i:i + batch], {h: t[i:i + batch] for h, t in acts.items()})
    return w


def test_round_trip_every_reader_path(tmp_path):
    toks, acts = _data()
    _write(tmp_path / "a.h5", toks, acts, attrs={"model_config": {"d_model": 16}, "model_source": "tiny"})
    with ActivationStore.open(tmp_path / "a.h5") as s:
        assert len(s) == 37 and s.seq_len == 8
        assert s.hooks == {RESID: ((8, 16), torch.bfloat16), PATTERN: ((2, 8, 8), torch.float16)}
        assert s.attrs["model_config"] == {"d_model": 16} and s.attrs["model_source"] == "tiny"
        assert s.attrs["hooks"][RESID]["stored_dtype"] == "uint16"
        t = s.tokens[:]
        assert t.dtype == torch.long and torch.equal(t, toks)
        got = s[RESID][:]
        assert got.dtype == torch.bfloat16 and torch.equal(got.view(torch.int16), acts[RESID].view(torch.int16))
        assert torch.equal(s[PATTERN][3:9], acts[PATTERN][3:9])
        assert torch.equal(s[PATTERN][[7, 2, 2, -1]], acts[PATTERN][[7, 2, 2, -1]])
        assert torch.equal(s[RESID][5, -1], acts[RESID][5, -1])
        assert torch.equal(s[PATTERN][::4], acts[PATTERN][::4])
        with pytest.raises(IndexError):
            s[RESID][37]
        batches = list(s.iter_batches([RESID], batch_size=16))
        assert [b[0].shape[0] for b in batches] == [16, 16, 5]
        assert torch.equal(torch.cat([b[1][RESID] for b in batches]), acts[RESID])
        cache = s.to_cache(slice(2, 6))
        assert set(cache) == {RESID, PATTERN} and torch.equal(cache[PATTERN], acts[PATTERN][2:6])
        assert torch.equal(cache["pattern", 1], acts[PATTERN][2:6])    # TL shorthand keys work
        with pytest.raises(KeyError, match="closest valid names"):
            s["blocks.0.hook_resid_pst"]


def test_probe_dataset_random_access_and_dataloader(tmp_path):
    toks, acts = _data()
    _write(tmp_path / "a.h5", toks, acts)
    labels = torch.arange(37) % 3
    with ActivationStore.open(tmp_path / "a.h5") as s:
        ds = s.probe_dataset(RESID, labels, pos=-1, rows=[30, 4, 11])
        assert len(ds) == 3 and ds.cache_bytes == 0   # uncompressed: read rows directly, no chunk cache
        x, y = ds[1]
        assert x.dtype == torch.float32 and torch.equal(x, acts[RESID][4, -1].float()) and y == labels[4]
        X, Y = ds.load()
        assert torch.equal(X, acts[RESID][[30, 4, 11], -1].float()) and torch.equal(Y, labels[[30, 4, 11]])
        loader = torch.utils.data.DataLoader(s.probe_dataset(RESID, labels), batch_size=8, shuffle=True,
                                             generator=torch.Generator().manual_seed(0))
        seen = torch.cat([b[1] for b in loader])
        assert sorted(seen.tolist()) == sorted(labels.tolist())
        with pytest.raises(ValueError, match="labels has 5 entries"):
            s.probe_dataset(RESID, torch.zeros(5))


def test_meta_columns_and_labels_by_name(tmp_path):
    toks, acts = _data(n=10)
    hooks = {RESID: ((8, 16), torch.bfloat16)}
    with StoreWriter(tmp_path / "m.h5", hooks, seq_len=8, meta={"label": "int64"}) as w:
        w.append(toks, {RESID: acts[RESID]}, meta={"label": np.arange(10) % 2})
        with pytest.raises(ValueError, match="meta must have exactly"):
            w.append(toks, {RESID: acts[RESID]})
    with ActivationStore.open(tmp_path / "m.h5") as s:
        assert s.meta("label").tolist() == [0, 1] * 5
        ds = s.probe_dataset(RESID, "label", pos=0)
        assert ds[3][1] == 1


def test_bad_appends_are_refused(tmp_path):
    toks, acts = _data(n=4)
    hooks = {h: (tuple(t.shape[1:]), t.dtype) for h, t in acts.items()}
    with StoreWriter(tmp_path / "a.h5", hooks, seq_len=8) as w:
        with pytest.raises(ValueError, match=r"expected shape \[4, 8, 16\]"):
            w.append(toks, {RESID: acts[RESID][:, :, :4], PATTERN: acts[PATTERN]})
        with pytest.raises(ValueError, match="missing"):
            w.append(toks, {RESID: acts[RESID]})
        with pytest.raises(ValueError, match=r"tokens must be \[rows, 8\]"):
            w.append(toks[:, :3], acts)
        w.append(toks, acts)
    assert len(ActivationStore.open(tmp_path / "a.h5")) == 4
    with pytest.raises(FileExistsError):
        StoreWriter(tmp_path / "a.h5", hooks, seq_len=8, mode="w-")


def test_queue_memory_stays_bounded(tmp_path, monkeypatch):
    """A slow disk makes append wait: the queue never holds more than max_queue_bytes (+1 batch)."""
    toks, acts = _data(n=64)
    hooks = {h: (tuple(t.shape[1:]), t.dtype) for h, t in acts.items()}
    batch_bytes = 4 * 8 * 4 + sum(t[:4].numel() * t.element_size() for t in acts.values())
    peak = []
    real_write = StoreWriter._write

    def slow_write(self, item):
        peak.append(self._queued_bytes)
        time.sleep(0.005)
        real_write(self, item)

    monkeypatch.setattr(StoreWriter, "_write", slow_write)
    with StoreWriter(tmp_path / "a.h5", hooks, seq_len=8, max_queue_bytes=3 * batch_bytes) as w:
        for i in range(0, 64, 4):
            w.append(toks[i:i + 4], {h: t[i:i + 4] for h, t in acts.items()})
    assert len(peak) == 16 and max(peak) <= 3 * batch_bytes
    with ActivationStore.open(tmp_path / "a.h5") as s:
        assert torch.equal(s[PATTERN][:], acts[PATTERN])


def test_writer_errors_reach_the_caller(tmp_path, monkeypatch):
    """A failed write stops the writer; append/close raise it; the count stays at what was committed."""
    toks, acts = _data(n=8)
    hooks = {h: (tuple(t.shape[1:]), t.dtype) for h, t in acts.items()}
    real = StoreWriter._write
    calls = []

    def broken_second_write(self, batch):
        calls.append(batch.end)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real(self, batch)

    monkeypatch.setattr(StoreWriter, "_write", broken_second_write)
    w = StoreWriter(tmp_path / "a.h5", hooks, seq_len=8, flush_seconds=0)
    w.append(toks[:4], {h: t[:4] for h, t in acts.items()})
    w.append(toks[4:], {h: t[4:] for h, t in acts.items()})
    with pytest.raises(DiskFullError, match=r"is full: 4 rows are saved in it; free space and run the same "
                                            r"command with --resume") as e:
        w.close()
    assert "No space left" in str(e.value.__cause__)
    with ActivationStore.open(tmp_path / "a.h5") as s:
        assert len(s) == 4 and torch.equal(s[PATTERN][:], acts[PATTERN][:4])
    monkeypatch.setattr(StoreWriter, "_write", lambda self, batch: (_ for _ in ()).throw(ValueError("a bug")))
    w = StoreWriter(tmp_path / "b.h5", hooks, seq_len=8)
    w.append(toks[:4], {h: t[:4] for h, t in acts.items()})
    with pytest.raises(RuntimeError, match="writing .*b.h5 failed: a bug"):   # not a user error: a bug
        w.close()


def test_recording_mode_steps_and_resume(tmp_path):
    probe = torch.randint(0, 50, (6, 8))
    hooks = {RESID: ((8, 16), torch.float16)}
    path = tmp_path / "rec.h5"
    with RecordingWriter(path, hooks, seq_len=8, probe_tokens=probe, attrs={"run": "r1"}) as w:
        for step in (0, 10, 20):
            w.append_step(step, {RESID: torch.full((6, 8, 16), float(step))})
        with pytest.raises(ValueError, match="steps must increase"):
            w.append_step(20, {RESID: torch.zeros(6, 8, 16)})
    with RecordingWriter(path, hooks, seq_len=8, mode="a") as w:
        assert w.steps == [0, 10, 20]
        w.append_step(30, {RESID: torch.full((6, 8, 16), 30.0)}, copy=False)
    with ActivationStore.open(path) as s:
        assert isinstance(s, Recording) and isinstance(s, StepSource) and not isinstance(s, ActivationSource)
        # one meaning per type: a recording counts steps, and rec[hook] is [steps, rows, ...]
        assert s.steps == [0, 10, 20, 30] and len(s) == 4 and s.n_rows == 6 and torch.equal(s.tokens[:], probe)
        assert s[RESID][:].shape == (4, 6, 8, 16)
        assert torch.equal(s[RESID][1], torch.full((6, 8, 16), 10.0, dtype=torch.float16))
        v = s.at_step(20)
        assert isinstance(v, ActivationSource) and len(v) == 6 and v.attrs["run"] == "r1"
        assert v[RESID][:].shape == (6, 8, 16) and bool((v[RESID][2:4] == 20).all())
        assert torch.equal(v.to_cache(slice(0, 2))[RESID], torch.full((2, 8, 16), 20.0, dtype=torch.float16))
        x, y = v.probe_dataset(RESID, torch.arange(6), pos=-1)[5]
        assert bool((x == 20).all()) and y == 5
        assert [step.step for step in s.iter_steps()] == [0, 10, 20, 30]
        with pytest.raises(KeyError, match="nearest recorded steps"):
            s.at_step(15)
        with pytest.raises(AttributeError, match=r"at_step\(step\).to_cache"):
            s.to_cache()
        assert s.verify() == 4
    # a training run resumed from its step-10 checkpoint records steps 20 and 30 again
    with RecordingWriter(path, hooks, seq_len=8, mode="a", drop_steps_after=10) as w:
        assert w.steps == [0, 10]
        w.append_step(20, {RESID: torch.full((6, 8, 16), -20.0)})
    with ActivationStore.open(path) as s:
        assert s.steps == [0, 10, 20] and bool((s.at_step(20)[RESID][:] == -20).all())
        assert s.verify() == 3


def test_store_writer_steps_true_still_works_with_a_warning(tmp_path):
    with pytest.warns(FutureWarning, match="RecordingWriter"):
        w = StoreWriter(tmp_path / "r.h5", {RESID: ((8, 16), torch.float16)}, seq_len=8, steps=True,
                        probe_tokens=torch.zeros(2, 8, dtype=torch.long))
    assert isinstance(w, RecordingWriter)
    w.append_step(3, {RESID: torch.ones(2, 8, 16)})
    w.close()
    assert ActivationStore.open(tmp_path / "r.h5").steps == [3]


def test_cache_file_type_and_interfaces(tmp_path):
    toks, acts = _data(n=9)
    _write(tmp_path / "a.h5", toks, acts)
    s = ActivationStore.open(tmp_path / "a.h5")
    assert type(s) is CacheStore and type(ActivationStore(tmp_path / "a.h5")) is CacheStore
    assert isinstance(s, ActivationStore) and isinstance(s, ActivationSource) and not isinstance(s, StepSource)
    assert len(s) == 9 and s[RESID][:].shape == (9, 8, 16) and not s.is_recording
    with pytest.raises(AttributeError, match="cache file, not a training recording"):
        s.at_step(0)
    from workbench.analysis.probe_data import TensorSource
    assert isinstance(TensorSource(toks, {RESID: acts[RESID]}), ActivationSource)


def test_append_copy_false_hands_the_tensor_over(tmp_path):
    """copy=False keeps the caller's CPU tensor (no private copy); copy=True is safe against reuse."""
    toks, acts = _data(n=4)
    spec = {RESID: ((8, 16), torch.bfloat16)}
    for copy in (True, False):
        seen = []
        real = StoreWriter._write

        def spy(self, batch):
            seen.append(batch.parts[f"hooks/{RESID}"][0])
            real(self, batch)

        buf = acts[RESID].clone()
        w = StoreWriter(tmp_path / f"c{copy}.h5", spec, seq_len=8)
        w._write = spy.__get__(w)
        w.append(toks, {RESID: buf}, copy=copy)
        w.close()
        assert (seen[0].data_ptr() == buf.data_ptr()) is (not copy)
        assert torch.equal(ActivationStore.open(tmp_path / f"c{copy}.h5")[RESID][:].view(torch.int16),
                           acts[RESID].view(torch.int16))


def test_resume_refuses_different_hooks(tmp_path):
    toks, acts = _data(n=5)
    _write(tmp_path / "a.h5", toks, acts)
    with pytest.raises(ValueError, match="hooks differ"):
        StoreWriter(tmp_path / "a.h5", {RESID: ((8, 16), torch.float16)}, seq_len=8, mode="a")
    with pytest.raises(ValueError, match="seq_len"):
        StoreWriter(tmp_path / "a.h5", {RESID: ((8, 16), torch.bfloat16)}, seq_len=9, mode="a")


def test_non_hdf5_and_truncated_files_give_one_clear_error(tmp_path):
    bad = tmp_path / "notes.h5"
    bad.write_text("not hdf5 at all\n")
    with pytest.raises(ValueError, match="not an HDF5 file"):
        ActivationStore.open(bad)
    toks, acts = _data()
    _write(tmp_path / "a.h5", toks, acts)
    cut = tmp_path / "cut.h5"
    cut.write_bytes((tmp_path / "a.h5").read_bytes()[:3000])
    with pytest.raises(DamagedFileError, match="truncated: 3,000 of its .* bytes are there.*damaged"):
        ActivationStore.open(cut)
    with pytest.raises(FileNotFoundError):
        ActivationStore.open(tmp_path / "missing.h5")


_READER = """
import sys, torch
from workbench.store import ActivationStore
for line in sys.stdin:   # one read of the whole store per line we are sent
    with ActivationStore.open(sys.argv[1]) as s:
        print(len(s), float(s["{h}"][:].float().sum()), int(s.tokens[:].sum()), flush=True)
""".replace("{h}", RESID)


def test_another_process_reads_while_the_writer_is_mid_way(tmp_path):
    toks, acts = _data(n=40)
    hooks = {h: (tuple(t.shape[1:]), t.dtype) for h, t in acts.items()}
    path = tmp_path / "live.h5"
    reader = subprocess.Popen([sys.executable, "-c", _READER, str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)

    def read():
        reader.stdin.write("go\n")
        reader.stdin.flush()
        n, act_sum, tok_sum = reader.stdout.readline().split()
        return int(n), float(act_sum), int(tok_sum)

    try:
        w = StoreWriter(path, hooks, seq_len=8, flush_seconds=0)
        w.append(toks[:10], {h: t[:10] for h, t in acts.items()})
        w.append(toks[10:25], {h: t[10:25] for h, t in acts.items()})
        w.flush()
        n, act_sum, tok_sum = read()           # the writer is open and mid-way
        assert n == 25 and tok_sum == int(toks[:25].sum())
        assert act_sum == pytest.approx(float(acts[RESID][:25].float().sum()), rel=1e-6)
        w.append(toks[25:], {h: t[25:] for h, t in acts.items()})
        w.close()
        assert read()[0] == 40
    finally:
        reader.stdin.close()
        reader.wait(timeout=60)


_KILLED_WRITER = """
import sys, torch
from workbench.store import StoreWriter
hooks = {"h": ((8, 32), torch.float16)}
with StoreWriter(sys.argv[1], hooks, seq_len=8, flush_seconds=0) as w:
    i = 0
    while True:   # rows whose values encode their index, until killed
        w.append(torch.full((4, 8), i % 1000), {"h": torch.arange(i, i + 4).half()[:, None, None].expand(4, 8, 32)})
        i += 4
"""


def test_sigkill_leaves_complete_rows_and_resume_continues(tmp_path):
    path = tmp_path / "killed.h5"
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(path)])
    try:
        deadline = time.monotonic() + 30
        n = 0
        while n < 200 and time.monotonic() < deadline:
            time.sleep(0.05)
            if path.exists():
                try:
                    with ActivationStore.open(path) as s:
                        n = len(s)
                except (ValueError, OSError):
                    pass   # the file is being created
    finally:
        proc.kill()
        proc.wait()
    assert n >= 200, "the writer never got going"
    with ActivationStore.open(path) as s:
        n = len(s)
        h = s["h"][:]
        assert n >= 200 and n % 4 == 0
        assert torch.equal(h[:, 0, 0], torch.arange(n).half())
    with StoreWriter(path, {"h": ((8, 32), torch.float16)}, seq_len=8, mode="a") as w:
        assert w.n_rows == n
        w.append(torch.zeros(4, 8, dtype=torch.long), {"h": torch.arange(n, n + 4).half()[:, None, None].expand(4, 8, 32)})
    with ActivationStore.open(path) as s:
        assert len(s) == n + 4 and torch.equal(s["h"][:, 0, 0], torch.arange(n + 4).half())
    if shutil.which("h5dump"):   # closed cleanly again: the standard tools read it
        out = subprocess.run(["h5dump", "-H", str(path)], capture_output=True, text=True)
        assert out.returncode == 0 and "hooks" in out.stdout


@pytest.mark.parametrize("flush_seconds", [0, 1000])
def test_whole_chunks_written_directly_keep_every_row(tmp_path, monkeypatch, flush_seconds):
    """Rows in 4-row chunks, appended in uneven batches, closed and resumed mid-chunk: every row intact."""
    from workbench.store import format as fmt
    monkeypatch.setattr(fmt, "CHUNK_TARGET_ROWS", 4)
    monkeypatch.setattr(fmt, "CHUNK_MIN_BYTES", 0)
    hooks = {"h": ((3, 5), torch.float32)}
    rows = torch.arange(60 * 15, dtype=torch.float32).reshape(60, 3, 5)
    path, at = tmp_path / "d.h5", 0
    direct = []
    for sizes, mode in [([3, 1, 6, 4, 2, 7], "w"), ([5, 9, 1, 8, 14], "a")]:   # 23 rows, then resumed: 60
        with StoreWriter(path, hooks, seq_len=2, mode=mode, flush_seconds=flush_seconds) as w:
            direct.append(list(w._direct))
            for n in sizes:
                w.append(torch.zeros(n, 2, dtype=torch.long), {"h": rows[at:at + n]}, copy=False)
                at += n
    assert direct == [["hooks/h"], ["hooks/h"]]          # the direct path was taken
    with ActivationStore.open(path) as s:
        assert s.f["hooks/h"].chunks == (4, 3, 5)
        assert torch.equal(s["h"][:], rows) and s.verify() == 60


@pytest.mark.parametrize("durable", [True, False])
def test_each_commit_syncs_the_data_before_the_count(tmp_path, monkeypatch, durable):
    from workbench.store import writer_core
    events = []
    real_fsync, real_flush = writer_core.os.fsync, writer_core.h5py.File.flush
    monkeypatch.setattr(writer_core.os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(writer_core.h5py.File, "flush", lambda self: (events.append("flush"), real_flush(self))[1])
    toks, acts = _data(n=6)
    w = StoreWriter(tmp_path / "s.h5", {RESID: ((8, 16), torch.bfloat16)}, seq_len=8, flush_seconds=0,
                    durable=durable)
    events.clear()
    w.append(toks[:3], {RESID: acts[RESID][:3]})
    w.flush()
    assert events[:3] == (["flush", "fsync", "flush"] if durable else ["flush", "flush"])[:3]
    w.close()
