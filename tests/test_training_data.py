"""Data: stdlib corpus split by file, text/JSONL/memmap sources, deterministic mixed batches."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from workbench.training.config import DataSection
from workbench.training.corpus import is_val, load_corpus, stdlib_files
from workbench.training.data import Batches, TokenData, build_data, load_memmap, plan_batch


def test_stdlib_corpus_is_split_by_file_and_deterministic():
    files = stdlib_files()
    assert len(files) > 100 and all(name.endswith(".py") for name, _ in files)
    a = load_corpus(["stdlib"], val_fraction=0.1, max_bytes=300_000)
    b = load_corpus(["stdlib"], val_fraction=0.1, max_bytes=300_000)
    assert [n for n, _ in a.train] == [n for n, _ in b.train] and a.val == b.val
    train_names, val_names = {n for n, _ in a.train}, {n for n, _ in a.val}
    assert train_names and val_names and not train_names & val_names
    assert all(is_val(n, 0.1) for n in val_names)
    assert 300_000 <= a.n_bytes() < 300_000 + max(len(t) for _, t in a.train + a.val)


def test_text_and_jsonl_sources(tmp_path):
    (tmp_path / "a.txt").write_text("alpha beta gamma\n" * 50)
    (tmp_path / "b.txt").write_text("delta epsilon\n" * 50)
    jl = tmp_path / "c.jsonl"
    jl.write_text("\n".join(json.dumps({"body": f"doc {i} " * 20}) for i in range(40)))
    c = load_corpus([str(tmp_path / "a.txt"), str(tmp_path / "b.txt"), str(jl)], 0.2, jsonl_field="body")
    assert len(c.train) + len(c.val) == 42 and c.val
    with pytest.raises(ValueError, match="no 'text' field"):
        load_corpus([str(jl)], 0.2)
    with pytest.raises(FileNotFoundError, match="neither 'stdlib' nor"):
        load_corpus([str(tmp_path / "nope.txt")], 0.2)


def test_build_data_trains_a_bpe_and_caches_tokens(tmp_path):
    cfg = DataSection(max_corpus_bytes=100_000, vocab_size=300, seq_len=16)
    d = build_data(cfg, tmp_path)
    assert d.tokenizer is not None and d.vocab_size == 300
    assert int(d.train.max()) < 300 and len(d.val) > 0
    assert (tmp_path / "data" / "train.npy").is_file()
    d.tokenizer.save(tmp_path / "tokenizer.json")
    again = build_data(cfg, tmp_path)  # from the cache, with the saved tokenizer
    np.testing.assert_array_equal(np.asarray(again.train), np.asarray(d.train))


@pytest.mark.parametrize("suffix", [".bin", ".npy"])
def test_memmap_sources(tmp_path, suffix):
    ids = np.arange(10_000, dtype=np.uint16) % 500
    path = tmp_path / f"toks{suffix}"
    np.save(path, ids) if suffix == ".npy" else ids.tofile(path)
    arr = load_memmap(path, "uint16")
    assert isinstance(arr, np.memmap) or isinstance(getattr(arr, "base", None), np.memmap)
    d = build_data(DataSection(sources=[str(path)], vocab_size=500, val_fraction=0.1), None)
    assert len(d.train) == 9000 and len(d.val) == 1000 and d.vocab_size == 500
    np.testing.assert_array_equal(np.asarray(d.val), ids[9000:])


def _data(n=5000, vocab=100):
    return TokenData(np.arange(n, dtype=np.uint16) % (vocab - 1) + 1, np.arange(500, dtype=np.uint16) % 50 + 1,
                     vocab, eot=0)


def test_batches_are_a_function_of_step_and_mix_synthetic_rows():
    cfg = DataSection(seq_len=32, batch_size=8, synthetic_fraction=0.5, synthetic_period_min=4,
                      synthetic_period_max=8)
    b = Batches(_data(), cfg, seed=1)
    x = b.global_batch(3)
    assert x.shape == (8, 33) and x.dtype == torch.long
    torch.testing.assert_close(x, Batches(_data(), cfg, seed=1).global_batch(3))
    assert not torch.equal(x, b.global_batch(4))
    synthetic = x[x[:, 0] == 0]                       # repeated rows start with the eot/BOS id
    assert len(synthetic) == 4
    for row in synthetic:
        body = row[1:]
        period = next(p for p in range(4, 9) if torch.equal(body[p:], body[:-p]))
        assert 4 <= period <= 8
    text = x[x[:, 0] != 0]                            # text rows are windows of the arange stream
    assert ((text[:, 1:] - text[:, :-1]) % 99 == 1).all()


def test_micro_batches_partition_the_global_batch():
    cfg = DataSection(seq_len=16, batch_size=8, micro_batch_size=2)
    b = Batches(_data(), cfg, seed=0)
    micro, accum = plan_batch(cfg, world=2)
    assert (micro, accum) == (2, 2)
    parts = [m for r in range(2) for m in b.micro_batches(5, r, 2, micro)]
    torch.testing.assert_close(torch.cat(parts), b.global_batch(5))
    with pytest.raises(ValueError, match="does not split evenly"):
        plan_batch(DataSection(batch_size=6), world=4)
    with pytest.raises(ValueError, match="micro_batch_size 3"):
        plan_batch(DataSection(batch_size=8, micro_batch_size=3), world=1)


def test_synthetic_vocab_limits_the_repeated_rows_tokens():
    cfg = DataSection(seq_len=32, batch_size=8, synthetic_fraction=1.0, synthetic_vocab_size=20,
                      synthetic_period_min=4, synthetic_period_max=8)
    x = Batches(_data(), cfg, seed=2).global_batch(0)
    assert (x[:, 0] == 0).all() and int(x[:, 1:].max()) < 20 and int(x[:, 1:].min()) >= 1
