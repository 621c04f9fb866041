"""The on-disk format of an activation store (version 1; see docs/activation-store.md).

Everything a writer and a reader must agree on lives here: attribute names,
dataset paths, how each torch dtype is stored, and how chunk shapes are chosen.
"""
from __future__ import annotations

import json
from typing import Any, Mapping

import crc32c
import numpy as np
import torch

FORMAT_NAME = "workbench-activations"
FORMAT_VERSION = 1

TOKENS = "tokens"          # [rows, pos] int32 token ids
HOOKS_GROUP = "hooks"      # hooks/<hook name>: [rows, *row_shape] (cache) or [steps, rows, *row_shape]
META_GROUP = "meta"        # meta/<name>: [rows] per-row metadata (source line, label, ...)
STEPS = "steps"            # [steps] int64 training steps (recording files only)
CHECKSUMS = "checksums"    # [commits, 2] int64: (row or step count after the commit, CRC-32C of its bytes)
UNCHECKED = -1             # a checksum entry for rows written before the file had checksums

# Root attributes the format itself owns; anything else is the user's (``attrs=``).
A_FORMAT, A_VERSION, A_PACKAGE = "format", "format_version", "workbench_version"
A_MODE, A_SEQ_LEN, A_HOOKS = "mode", "seq_len", "hooks"
A_ROWS, A_STEPS = "n_rows", "n_steps"          # complete rows / complete recorded steps
A_JSON_KEYS = "json_attrs"                     # names of user attributes stored as JSON text
RESERVED = {A_FORMAT, A_VERSION, A_PACKAGE, A_MODE, A_SEQ_LEN, A_HOOKS, A_ROWS, A_STEPS, A_JSON_KEYS}

# Stored representation of each activation dtype. bf16 has no HDF5 type: its
# bits go in as uint16 and the dataset's ``dtype`` attribute says "bfloat16".
DTYPES: dict[str, tuple[torch.dtype, np.dtype]] = {
    "float32": (torch.float32, np.dtype("<f4")),
    "float16": (torch.float16, np.dtype("<f2")),
    "bfloat16": (torch.bfloat16, np.dtype("<u2")),
}

# Chunks of about this many bytes: big enough for fast appends and sequential
# reads, small enough that a random row read does not drag in megabytes it
# does not need (bench/bench_store.py measures the trade-off).
CHUNK_TARGET_ROWS = 64
CHUNK_MAX_BYTES = 4 << 20
CHUNK_MIN_BYTES = 1 << 20


def itemsize(name: str) -> int:
    """Bytes per stored value of a format dtype name ("float32" -> 4)."""
    return DTYPES[name][1].itemsize


def count_attr(mode: str) -> str:
    """The attribute that counts complete entries along the first axis: rows (cache) or steps (recording)."""
    return A_STEPS if mode == "steps" else A_ROWS


def counted_datasets(f: Any) -> list[str]:
    """Paths of the datasets whose first axis the count attribute covers, in checksum order.

    Cache files: tokens, every hook, every meta column (rows). Recordings: steps and every hook (steps).
    """
    names = [f"{HOOKS_GROUP}/{h}" for h in f[HOOKS_GROUP]]
    if f.attrs[A_MODE] == "steps":
        names.append(STEPS)
    else:
        names.append(TOKENS)
        names += [f"{META_GROUP}/{m}" for m in f.get(META_GROUP, {})]
    return sorted(names)


def checksum(data: Any, crc: int = 0) -> int:
    """CRC-32C of ``data``'s bytes, continuing ``crc`` (``checksum(b, checksum(a)) == checksum(a + b)``).

    Hardware CRC-32C (the ``crc32c`` package, SSE4.2 / ARMv8): ~5 GB/s on a busy 2-core VM where
    zlib's CRC-32 managed ~1.2 GB/s and cost the writer a third of its speed; it releases the GIL.
    """
    return crc32c.crc32c(data, crc)


def combine_checksums(parts: Mapping[str, int]) -> int:
    """One CRC-32C for a commit from each dataset's CRC-32C of its committed bytes, in name order."""
    return checksum(b"".join(int(parts[n]).to_bytes(4, "little") for n in sorted(parts)))


def dtype_name(dtype: torch.dtype | str) -> str:
    """The format's name for a dtype ("float16", "bfloat16", "float32")."""
    if isinstance(dtype, str):
        name = dtype.replace("torch.", "")
        name = {"fp16": "float16", "half": "float16", "bf16": "bfloat16", "fp32": "float32",
                "float": "float32"}.get(name, name)
    else:
        name = str(dtype).replace("torch.", "")
    if name not in DTYPES:
        raise ValueError(f"activations can be stored as {', '.join(DTYPES)}; got {dtype}")
    return name


_SERIAL_ELEMENTS = 32768   # below ATen's parallel grain size: each piece runs in the calling thread


def cast(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t.to(dtype)`` on CPU in pieces too small for torch's intra-op thread pool.

    The store casts in ``append`` (beside a model that may be using the pool from another
    thread) and in data loading; one big ``.to()`` there can queue on the thread pool and
    stall (measured on a busy 2-core machine: 35 ms instead of 0.03 ms for a 300K-element cast).
    """
    if t.dtype == dtype:
        return t
    src = t.reshape(-1)   # a view when contiguous; a non-contiguous tensor is gathered once here
    out = torch.empty(src.shape, dtype=dtype)
    for i in range(0, src.numel(), _SERIAL_ELEMENTS):
        out[i:i + _SERIAL_ELEMENTS].copy_(src[i:i + _SERIAL_ELEMENTS])
    return out.view(t.shape)


def private_copy(t: torch.Tensor) -> torch.Tensor:
    """A contiguous CPU copy made by numpy (one memcpy in this thread; no torch thread pool)."""
    if t.dtype == torch.bfloat16:
        return torch.from_numpy(np.array(t.view(torch.int16).numpy())).view(torch.bfloat16)
    return torch.from_numpy(np.array(t.numpy()))


def to_stored(t: torch.Tensor, name: str) -> np.ndarray:
    """A CPU tensor as the C-contiguous numpy array that goes to disk (bf16 -> its uint16 bits)."""
    t = cast(t, DTYPES[name][0])
    if name == "bfloat16":
        return np.ascontiguousarray(t.view(torch.int16).numpy().view(np.uint16))
    return np.ascontiguousarray(t.numpy())


def from_stored(a: np.ndarray, name: str) -> torch.Tensor:
    """The inverse of ``to_stored``: bit-exact for every dtype."""
    a = np.ascontiguousarray(a)
    if name == "bfloat16":
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def chunk_shape(row_shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    """Chunk for a dataset ``[rows, *row_shape]``: whole rows, 64 of them when they fit in 4 MiB.

    Small rows get more rows per chunk (up to 1 MiB) so appends stay cheap;
    rows larger than 4 MiB (e.g. ``hook_pattern`` at long contexts) are split
    along their leading axes.
    """
    row_bytes = max(1, int(np.prod(row_shape, dtype=np.int64)) * itemsize)
    rows = min(CHUNK_TARGET_ROWS, max(1, CHUNK_MAX_BYTES // row_bytes))
    if rows * row_bytes < CHUNK_MIN_BYTES:
        rows = max(rows, min(4096, CHUNK_MIN_BYTES // row_bytes))
    inner = list(row_shape)
    while rows == 1 and int(np.prod(inner, dtype=np.int64)) * itemsize > CHUNK_MAX_BYTES:
        axis = max(range(len(inner)), key=lambda i: inner[i])
        inner[axis] = (inner[axis] + 1) // 2
    return (rows, *inner)


def hooks_to_json(hooks: Mapping[str, tuple[tuple[int, ...], str]]) -> str:
    """``{name: {"shape": [...], "dtype": "bfloat16", "stored_dtype": "uint16"}}`` as JSON."""
    return json.dumps({n: {"shape": list(s), "dtype": d, "stored_dtype": DTYPES[d][1].name}
                       for n, (s, d) in hooks.items()})


def hooks_from_json(text: str) -> dict[str, tuple[tuple[int, ...], str]]:
    return {n: (tuple(v["shape"]), v["dtype"]) for n, v in json.loads(text).items()}


def encode_attr(value: Any) -> tuple[Any, bool]:
    """An attribute value HDF5 can store; dicts/lists/None become JSON text (second item True)."""
    if isinstance(value, (dict, list, tuple)) or value is None:
        return json.dumps(value), True
    if isinstance(value, (str, bool, int, float, np.integer, np.floating)):
        return value, False
    raise TypeError(f"attribute value of type {type(value).__name__} cannot be stored; "
                    "pass a str, number, bool, or a JSON-serialisable dict/list")
