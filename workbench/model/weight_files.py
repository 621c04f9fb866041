"""The weight files of an HF checkpoint: find them, check them, read one tensor into memory the caller owns.

Loading phi-2 must hold one copy of its weights, so each tensor is read
straight into the model's own (already allocated, final dtype and device)
tensor, or through a small reused staging buffer when its dtype or device
differs. The safetensors reader is written here by hand because no library
call does that: ``safetensors.safe_open`` maps the file (every page read stays
in the process's RSS until the whole file is unmapped: measured 1.5x the fp32
weights for a bf16 file) or, from 0.8 on, reads each tensor into a fresh
tensor of its stored dtype, and it does not expose the byte offsets needed to
read into a slice of ours (q, k and v land in one fused tensor). The format is
small and documented: 8 bytes little-endian header length, a JSON header
``{name: {dtype, shape, data_offsets: [begin, end]}}``, then the raw bytes,
little-endian, offsets relative to the end of the header.

Every file is checked before a byte of weights is read: a truncated or garbage
file raises ``DamagedFileError`` naming the file; a missing shard raises
``MissingFileError``.
"""
from __future__ import annotations

import json
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import torch

from workbench.errors import DamagedFileError, InputError, MissingFileError

# Safetensors dtype codes this loader converts from (floating point: Phi's weights).
ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
# Bytes per element of every code, so a file's offsets can be checked even for tensors we never read.
ST_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
               "U16": 2, "U32": 4, "U64": 8, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
MAX_HEADER_BYTES = 100_000_000   # the safetensors format's own limit
STAGING_BYTES = 16 << 20         # per reading thread: the most a conversion holds beyond the model itself
SINGLE_FILES = ("model.safetensors", "pytorch_model.bin")
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
# transformers' order of preference, so a folder holding several loads the same file in both.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def _damaged(path: Path, what: str) -> DamagedFileError:
    return DamagedFileError(f"{path} is damaged or incomplete ({what}); download or save the checkpoint again")


@dataclass(frozen=True)
class StoredTensor:
    """Where one tensor's bytes are: ``file`` from byte ``offset``; ``dtype`` is a safetensors code."""
    file: Path
    dtype: str
    shape: tuple[int, ...]
    offset: int


def read_safetensors_header(path: Path) -> dict[str, StoredTensor]:
    """Name -> location of every tensor in a safetensors file, checked against the file's size."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 2 or n > min(size - 8, MAX_HEADER_BYTES):
            raise _damaged(path, f"not a safetensors file: {size:,} bytes, header length field {n:,}")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _damaged(path, f"its header is not valid JSON: {e}") from None
    if not isinstance(header, dict):
        raise _damaged(path, "its header is not a JSON object")
    data_start = 8 + n
    found = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape = info["dtype"], tuple(int(x) for x in info["shape"])
            begin, end = (int(x) for x in info["data_offsets"])
        except (TypeError, KeyError, ValueError):
            raise _damaged(path, f"its header entry for {name} is malformed") from None
        itemsize = ST_ITEMSIZE.get(dtype)
        if begin < 0 or end < begin or (itemsize is not None and end - begin != math.prod(shape) * itemsize):
            raise _damaged(path, f"the byte range of {name} does not match its shape {list(shape)} and dtype {dtype}")
        if data_start + end > size:
            raise _damaged(path, f"cut short: {name} needs bytes up to {data_start + end:,} "
                                 f"but the file has {size:,}")
        found[name] = StoredTensor(path, dtype, shape, data_start + begin)
    return found


def weight_file_paths(folder: Path) -> list[Path]:
    """The weight files of a checkpoint folder: one file, or the shards its index names."""
    for name in WEIGHT_FILES:
        path = folder / name
        if not path.is_file():
            continue
        if name not in INDEX_FILES:
            return [path]
        try:
            weight_map = json.loads(path.read_text(encoding="utf-8"))["weight_map"]
            files = sorted(set(weight_map.values()))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise _damaged(path, f"not valid JSON: {e}") from None
        except (KeyError, TypeError, AttributeError):
            raise _damaged(path, "no weight_map object naming the shard of each tensor") from None
        missing = [f for f in files if not (folder / str(f)).is_file()]
        if missing:
            shown = ", ".join(map(str, missing[:4])) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
            raise MissingFileError(f"{path} names shard files that are not in {folder}: {shown}; "
                                   "download the missing shards or pass a folder that holds every shard")
        return [folder / str(f) for f in files]
    raise MissingFileError(f"no weights in {folder}: expected one of {', '.join(WEIGHT_FILES)}")


class WeightFiles:
    """The tensors of a checkpoint's weight files, read into tensors the caller allocated.

    Use as a context manager (it holds the files open). ``shapes`` maps every
    stored name to its shape; ``read_into(name, out)`` fills ``out``. Several
    threads may call ``read_into`` at once: each has its own file handles and
    its own staging buffer.
    """

    def __init__(self, folder: Union[str, Path]) -> None:
        self.folder = Path(folder)
        self.shapes: dict[str, tuple[int, ...]] = {}
        self._stored: dict[str, StoredTensor] = {}
        self._pickled: dict[str, torch.Tensor] = {}     # pytorch_model.bin (legacy): memory-mapped tensors
        self._local = threading.local()   # per thread: file handles and the staging buffer
        self._handles: list = []          # every handle any thread opened, to close them all
        for path in weight_file_paths(self.folder):
            if path.suffix == ".safetensors":
                self._stored.update(read_safetensors_header(path))
            else:
                self._pickled.update(_load_pickled(path))
        self.shapes = {k: v.shape for k, v in self._stored.items()}
        self.shapes.update({k: tuple(v.shape) for k, v in self._pickled.items()})

    def __enter__(self) -> "WeightFiles":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for f in self._handles:
            f.close()
        self._handles.clear()
        self._pickled.clear()
        self._local = threading.local()

    def read_into(self, name: str, out: torch.Tensor) -> None:
        """Copy stored tensor ``name`` into ``out`` (contiguous, same element count; any dtype and device)."""
        if name in self._pickled:
            out.copy_(self._pickled[name].reshape(out.shape))
            return
        st = self._stored[name]
        src_dtype = ST_DTYPES.get(st.dtype)
        if src_dtype is None:
            raise InputError(f"{st.file}: tensor {name} is stored as {st.dtype}; Phi weights load from "
                             f"{', '.join(ST_DTYPES)} only")
        flat = out.view(-1)
        if flat.numel() == 0:
            return
        if flat.device.type == "cpu" and flat.dtype == src_dtype:
            self._read_bytes(st, flat.view(torch.uint8).numpy(), 0)   # straight into the model's memory
            return
        # Another dtype or device: through a staging buffer of at most STAGING_BYTES, reused.
        itemsize = src_dtype.itemsize
        per_chunk = max(1, STAGING_BYTES // itemsize)
        for start in range(0, flat.numel(), per_chunk):
            count = min(per_chunk, flat.numel() - start)
            buf = self._staging_bytes(count * itemsize)
            self._read_bytes(st, buf.numpy(), start * itemsize)
            flat[start:start + count].copy_(buf.view(src_dtype))

    def _staging_bytes(self, nbytes: int) -> torch.Tensor:
        staging = getattr(self._local, "staging", None)
        if staging is None:   # one buffer per thread for the whole load, no larger than the largest tensor
            largest = max(math.prod(st.shape) * ST_ITEMSIZE.get(st.dtype, 1) for st in self._stored.values())
            staging = self._local.staging = torch.empty(max(min(largest, STAGING_BYTES), 8), dtype=torch.uint8)
        return staging[:nbytes]

    def _read_bytes(self, st: StoredTensor, into, skip: int) -> None:
        """Fill the writable buffer ``into`` from ``st``'s bytes starting ``skip`` bytes in."""
        handles = self._local.__dict__.setdefault("handles", {})
        f = handles.get(st.file)
        if f is None:
            f = handles[st.file] = open(st.file, "rb", buffering=0)
            self._handles.append(f)
        view = memoryview(into).cast("B")
        f.seek(st.offset + skip)
        done = 0
        while done < len(view):   # a read() returns at most ~2 GiB on Linux: loop
            n = f.readinto(view[done:])
            if not n:
                raise _damaged(st.file, "it ended while its tensors were read; was it cut short after loading began?")
            done += n


def _load_pickled(path: Path) -> dict[str, torch.Tensor]:
    """A ``pytorch_model.bin`` state dict, memory-mapped and weights-only (no code runs)."""
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:   # zip, pickle and EOF errors alike: the file is not a readable state dict
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise _damaged(path, f"not a readable PyTorch state dict: {type(e).__name__}: {first_line[:200]}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise _damaged(path, "it holds no dict of tensors")
    return state
