"""The store format's building blocks: dtype encoding, chunk shapes, superblock repair."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from workbench.store import format as fmt
from workbench.store.recovery import clear_status_flags, lookup3, read_superblock


@pytest.mark.parametrize("name", ["float32", "float16", "bfloat16"])
def test_dtype_round_trip_is_bit_exact(name):
    dtype = fmt.DTYPES[name][0]
    t = (torch.randn(3, 5, 7) * 1e3).to(dtype)
    t.view(-1)[:3] = torch.tensor([float("inf"), float("-inf"), float("nan")], dtype=dtype)
    a = fmt.to_stored(t, name)
    assert a.dtype == fmt.DTYPES[name][1]
    back = fmt.from_stored(a, name)
    assert back.dtype == dtype
    bits = torch.int32 if name == "float32" else torch.int16
    assert torch.equal(back.view(bits), t.view(bits))


def test_dtype_names_and_bad_dtype():
    assert fmt.dtype_name(torch.bfloat16) == "bfloat16"
    assert fmt.dtype_name("fp16") == "float16"
    with pytest.raises(ValueError, match="float16"):
        fmt.dtype_name(torch.int8)


def test_chunks_are_whole_rows_of_bounded_size():
    c = fmt.chunk_shape((128, 2560), 2)       # phi-2 resid, 640 KiB a row
    assert c == (6, 128, 2560)                # as many rows as fit in 4 MiB
    c = fmt.chunk_shape((128, 160), 2)        # 40 KiB rows: the 64-row target
    assert c == (64, 128, 160)
    c = fmt.chunk_shape((16,), 4)             # tiny rows: grow to ~1 MiB
    assert c[0] * 16 * 4 >= 1 << 20 or c[0] == 4096
    c = fmt.chunk_shape((32, 2048, 2048), 2)  # a phi-2 hook_pattern row is 256 MiB: split inside the row
    assert c[0] == 1 and np.prod(c) * 2 <= fmt.CHUNK_MAX_BYTES


def test_lookup3_matches_the_checksum_hdf5_wrote(tmp_path):
    p = tmp_path / "x.h5"
    with h5py.File(p, "w", libver=("v110", "v110")) as f:
        f["x"] = np.arange(10)
    sb = read_superblock(p)
    assert sb["version"] == 3 and sb["flags"] == 0 and sb["checksum_ok"]
    assert lookup3(b"") == 0xDEADBEEF
    assert lookup3(b"Four score and seven years ago", 0) == 0x17770551   # lookup3.c's own test vector


def test_clear_status_flags_reopens_a_file_left_open(tmp_path):
    p = tmp_path / "x.h5"
    with h5py.File(p, "w", libver=("v110", "v110")) as f:
        f["x"] = np.arange(10)
    raw = bytearray(p.read_bytes())
    raw[11] = 5                                        # what a killed SWMR writer leaves
    end = 12 + 4 * raw[9]
    raw[end:end + 4] = lookup3(bytes(raw[:end])).to_bytes(4, "little")
    p.write_bytes(bytes(raw))
    with pytest.raises(OSError):
        h5py.File(p, "r")
    clear_status_flags(p)
    with h5py.File(p, "r") as f:
        assert f["x"][-1] == 9


def test_not_hdf5(tmp_path):
    p = tmp_path / "x.h5"
    p.write_text("hello")
    with pytest.raises(ValueError, match="not an HDF5 file"):
        read_superblock(p)


def test_serial_cast_and_private_copy_match_torch():
    x = torch.randn(3, 70000)[:, ::2]           # non-contiguous, more elements than one serial piece
    assert torch.equal(fmt.cast(x, torch.bfloat16).view(torch.int16), x.bfloat16().view(torch.int16))
    assert fmt.cast(x, torch.float32) is x
    c = fmt.private_copy(x)
    assert torch.equal(c, x) and c.data_ptr() != x.data_ptr() and c.is_contiguous()
    b = x.bfloat16()
    assert torch.equal(fmt.private_copy(b).view(torch.int16), b.view(torch.int16))
