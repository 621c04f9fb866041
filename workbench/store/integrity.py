"""Is a store file what its counts say? Checks made before a file is trusted.

A cleanly closed file passes HDF5's own checks (its end-of-file address matches its
length). A file whose writer died (SIGKILL, disk full, power cut) does not, and
HDF5's SWMR reader, the only kind of open HDF5 allows on it, skips the length check
and retries every metadata checksum failure for many minutes. So before any such
file is opened, this module looks at it through ``SnapshotView``: a read-only view
with the superblock's "open for writing" flags cleared in memory, read by a plain
(non-SWMR) HDF5 open that fails at once on damaged metadata instead of retrying.
Through it, it checks that every chunk the row count covers lies inside the real
file (a truncated file would otherwise read zeros), and, where asked, that the
bytes of each commit still match the CRC-32C the writer stored with it.
"""
from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import h5py
import numpy as np

from workbench.errors import DamagedFileError, InputError, MissingFileError

from . import format as fmt
from .lock import writer_alive
from .recovery import clear_status_flags, read_superblock, superblock_with_flags_cleared


@dataclass
class FileState:
    """What the first bytes and the lock file say about a store file."""

    path: Path
    size: int            # bytes on disk
    eoa: int             # end of the space HDF5 allocated, from the superblock (0: unknown)
    left_open: bool      # the superblock's "open for writing" flags are set
    live: bool           # a writer holds the file's lock right now

    @property
    def clean(self) -> bool:
        """Closed by its writer, whole: a plain HDF5 open checks the rest itself."""
        return not self.left_open and self.size >= self.eoa


def examine(path: Union[str, Path]) -> FileState:
    """The state of ``path``; one-line errors for a missing path, a folder, a non-HDF5 file or a bad superblock."""
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"no such file: {path}")
    if path.is_dir():
        raise InputError(f"{path} is a folder; pass the .h5 file")
    try:
        sb = read_superblock(path)
    except ValueError:
        raise DamagedFileError(f"{path} is not an HDF5 file (no HDF5 signature at its start); "
                               "pass a file written by `workbench cache` or a training run") from None
    if not sb["checksum_ok"]:
        raise DamagedFileError(f"{path} is damaged: its HDF5 superblock fails its checksum, so nothing in it "
                               "can be trusted; delete it and write it again")
    return FileState(path, os.path.getsize(path), int(sb.get("eoa", 0)), bool(sb["flags"]), writer_alive(path))


class SnapshotView(io.RawIOBase):
    """``path`` as HDF5 would see it had its writer closed it: flags cleared, zeros past the end.

    Read-only and in memory only: the file itself is not changed. Only for a file no
    writer has open (the bytes must not move under the view).
    """

    def __init__(self, path: Path, eoa: int) -> None:
        super().__init__()
        self._f = open(path, "rb")
        self.real_size = os.fstat(self._f.fileno()).st_size
        self._head = superblock_with_flags_cleared(path)
        self._size = max(self.real_size, eoa)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buf) -> int:
        start = self._pos
        n = max(0, min(len(buf), self._size - start))
        self._f.seek(start)
        got = self._f.readinto(memoryview(buf)[:n])
        buf[got:n] = bytes(n - got)                       # past the real end: zeros, as after a kill
        if start < len(self._head):                       # the superblock, flags cleared
            k = min(len(self._head) - start, n)
            buf[:k] = self._head[start:start + k]
        self._pos += n
        return n

    def close(self) -> None:
        self._f.close()
        super().close()


def check_left_open(state: FileState, checksums: bool) -> int:
    """Check a file whose writer died; returns its count of complete rows (or steps).

    Every chunk the count covers must lie inside the file; with ``checksums`` each
    commit's bytes must match its stored CRC-32C. Raises ``DamagedFileError`` otherwise.
    """
    path = state.path
    cut = f", and truncated: {state.size:,} of its {state.eoa:,} bytes are there" if state.size < state.eoa else ""
    view = SnapshotView(path, state.eoa)
    try:
        with h5py.File(view, "r") as f:
            if f.attrs.get(fmt.A_FORMAT) != fmt.FORMAT_NAME:   # left open by a writer: damaged, or not ours
                raise DamagedFileError(f"{path} does not read as a workbench activation store (its format "
                                       f"attribute is {f.attrs.get(fmt.A_FORMAT)!r}{cut}): it is damaged or "
                                       "another program's file; delete it and write it again")
            return _check_open_file(f, path, view.real_size, checksums)
    except (OSError, RuntimeError, KeyError, ValueError) as e:
        if isinstance(e, (DamagedFileError, InputError)):
            raise
        raise DamagedFileError(f"{path} is damaged ({_h5_reason(e)}{cut}); it cannot be read or resumed: "
                               "delete it and write it again") from None
    finally:
        view.close()


def _check_open_file(f: h5py.File, path: Path, real_size: int, checksums: bool) -> int:
    mode = str(f.attrs[fmt.A_MODE])
    count = int(f.attrs[fmt.count_attr(mode)])
    names = fmt.counted_datasets(f)
    fixed = [fmt.TOKENS] if mode == "steps" else []
    whole = fixed + ([fmt.CHECKSUMS] if fmt.CHECKSUMS in f else [])   # written before the count, every commit
    need = max([_bytes_needed(f[n], count) for n in names] + [_bytes_needed(f[n], None) for n in whole] + [0])
    if need > real_size:
        what = "steps" if mode == "steps" else "rows"
        raise DamagedFileError(f"{path} is truncated: it holds {real_size:,} bytes but its {count:,} complete "
                               f"{what} need {need:,}; delete it and write it again")
    if checksums:
        verify_checksums(f, path, count, names, fixed)
    return count


def _bytes_needed(ds: h5py.Dataset, count: Optional[int]) -> int:
    """End offset of the last byte of ``ds`` that rows ``[0, count)`` (None: all) live in; 0 if none."""
    if count == 0 or ds.size == 0:
        return 0
    if ds.chunks is None:                                   # contiguous: one block
        offset = ds.id.get_offset()
        if offset is None:
            raise DamagedFileError(f"{ds.file.filename}: {ds.name} was never written")
        return int(offset) + ds.id.get_storage_size()
    rows = ds.shape[0] if count is None else count
    ends: list[int] = []
    starts: set[int] = set()

    def visit(info) -> None:
        if info.chunk_offset[0] < rows:
            ends.append(info.byte_offset + info.size)
            starts.add(info.chunk_offset)

    ds.id.chunk_iter(visit)
    per_row_block = int(np.prod([-(-d // c) for d, c in zip(ds.shape[1:], ds.chunks[1:])], dtype=np.int64))
    expected = -(-rows // ds.chunks[0]) * per_row_block
    if len(starts) < expected:      # a missing chunk would read as zeros
        raise DamagedFileError(f"{ds.file.filename}: {len(starts)} of the {expected} chunks of {ds.name} that hold "
                               f"its {rows:,} complete rows are missing; delete it and write it again")
    return max(ends)


def verify_checksums(f: h5py.File, path: Path, count: int, names: list[str], fixed: list[str]) -> None:
    """Every commit's bytes against the CRC-32C stored with it (files without checksums: nothing to check)."""
    if fmt.CHECKSUMS not in f:
        return
    table = f[fmt.CHECKSUMS][:]
    start = 0
    for end, crc in table:
        end, crc = int(end), int(crc)
        if end > count:
            break
        if crc != fmt.UNCHECKED:
            parts = {n: _crc_rows(f[n], start, end) for n in names}
            if start == 0:
                parts.update({n: _crc_rows(f[n], None, None) for n in fixed})
            if fmt.combine_checksums(parts) != crc:
                raise DamagedFileError(f"{path} is damaged: entries {start:,} to {end - 1:,} do not match the "
                                       "checksum written with them; delete it and write it again")
        start = end


def _crc_rows(ds: h5py.Dataset, start: Optional[int], end: Optional[int]) -> int:
    start, end = (0, ds.shape[0]) if start is None else (start, end)
    row_bytes = max(1, int(np.prod(ds.shape[1:], dtype=np.int64)) * ds.dtype.itemsize)
    step = max(1, (64 << 20) // row_bytes)                 # read at most ~64 MB at a time
    crc = 0
    for i in range(start, end, step):
        crc = fmt.checksum(np.ascontiguousarray(ds[i:min(end, i + step)]), crc)
    return crc


def prepare_resume(path: Union[str, Path]) -> None:
    """Make a file whose writer died openable for appending, after checking it (lengths and checksums).

    Only then is the file changed: padded to its allocated length (the missing tail
    held nothing the count covers) and marked closed, as ``h5clear -s`` does.
    """
    state = examine(path)   # the caller holds the writer lock: no one else writes it
    if state.clean:
        return
    check_left_open(state, checksums=True)
    if state.size < state.eoa:
        os.truncate(state.path, state.eoa)
    clear_status_flags(state.path)


def _h5_reason(e: BaseException) -> str:
    text = str(e)
    m = re.search(r"\(([^()]*)\)\s*$", text)
    return (m.group(1) if m else text.splitlines()[0] if text else type(e).__name__)[:120]
