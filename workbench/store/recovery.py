"""Reopening a store whose writer died (SIGKILL, power cut of the process, OOM kill).

The writer runs HDF5 in SWMR mode, whose ordered metadata writes keep the file
consistent at every moment, and sets "file consistency flags" in the
superblock while it is open. A writer that dies leaves them set, and HDF5 then
refuses any non-SWMR open ("file is already open for write; use h5clear").
``clear_status_flags`` does what Debian's ``h5clear -s`` does, in pure Python,
so ``--resume`` works on machines without hdf5-tools: zero the flags byte of
the version-2/3 superblock and recompute the superblock's Jenkins lookup3
checksum (the hash HDF5 uses for metadata checksums).
"""
from __future__ import annotations

from pathlib import Path
from typing import Union

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_M = 0xFFFFFFFF


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _M


def lookup3(data: bytes, initval: int = 0) -> int:
    """Bob Jenkins' lookup3 ``hashlittle`` (32-bit), as HDF5's ``H5_checksum_lookup3``."""
    n = len(data)
    a = b = c = (0xDEADBEEF + n + initval) & _M
    i = 0

    def word(j: int) -> int:
        return int.from_bytes(data[j:j + 4], "little")

    while n > 12:
        a, b, c = (a + word(i)) & _M, (b + word(i + 4)) & _M, (c + word(i + 8)) & _M
        a = (a - c) & _M; a ^= _rot(c, 4); c = (c + b) & _M    # noqa: E702 (the mix is clearer on one line each)
        b = (b - a) & _M; b ^= _rot(a, 6); a = (a + c) & _M    # noqa: E702
        c = (c - b) & _M; c ^= _rot(b, 8); b = (b + a) & _M    # noqa: E702
        a = (a - c) & _M; a ^= _rot(c, 16); c = (c + b) & _M   # noqa: E702
        b = (b - a) & _M; b ^= _rot(a, 19); a = (a + c) & _M   # noqa: E702
        c = (c - b) & _M; c ^= _rot(b, 4); b = (b + a) & _M    # noqa: E702
        n -= 12
        i += 12
    if n == 0:
        return c
    tail = data[i:i + n] + bytes(12 - n)   # the byte-wise switch of lookup3 == zero padding
    a = (a + int.from_bytes(tail[0:4], "little")) & _M
    b = (b + int.from_bytes(tail[4:8], "little")) & _M
    c = (c + int.from_bytes(tail[8:12], "little")) & _M
    c ^= b; c = (c - _rot(b, 14)) & _M     # noqa: E702
    a ^= c; a = (a - _rot(c, 11)) & _M     # noqa: E702
    b ^= a; b = (b - _rot(a, 25)) & _M     # noqa: E702
    c ^= b; c = (c - _rot(b, 16)) & _M     # noqa: E702
    a ^= c; a = (a - _rot(c, 4)) & _M      # noqa: E702
    b ^= a; b = (b - _rot(a, 14)) & _M     # noqa: E702
    c ^= b; c = (c - _rot(b, 24)) & _M     # noqa: E702
    return c


def read_superblock(path: Union[str, Path]) -> dict:
    """Version, flags and checksum status of the superblock at offset 0.

    Raises ``ValueError`` when the file does not start with the HDF5 signature.
    """
    with open(path, "rb") as f:
        head = f.read(64)
    if head[:8] != HDF5_SIGNATURE:
        raise ValueError(f"{path} is not an HDF5 file (it does not start with the HDF5 signature)")
    version = head[8]
    info = {"version": version, "flags": 0, "checksum_ok": True}
    if version >= 2:
        size_of_offsets = head[9]
        end = 12 + 4 * size_of_offsets
        info["flags"] = head[11]
        info["checksum_ok"] = int.from_bytes(head[end:end + 4], "little") == lookup3(head[:end])
        # "end of file address": really the end of the space HDF5 has allocated (EOA)
        info["eoa"] = info["eof"] = int.from_bytes(head[12 + 2 * size_of_offsets:12 + 3 * size_of_offsets],
                                                   "little")
    return info


def writer_left_open(path: Union[str, Path]) -> bool:
    """True while a writer has the file open, or after one died without closing it."""
    return read_superblock(path)["flags"] != 0


def superblock_with_flags_cleared(path: Union[str, Path]) -> bytes:
    """The superblock of ``path`` (version >= 2) with its flags zeroed and its checksum recomputed."""
    with open(path, "rb") as f:
        head = bytearray(f.read(64))
    if head[:8] != HDF5_SIGNATURE:
        raise ValueError(f"{path} is not an HDF5 file (it does not start with the HDF5 signature)")
    if head[8] < 2:
        return bytes(head[:8])   # older superblocks have no flags: nothing to change
    end = 12 + 4 * head[9]
    head[11] = 0
    head[end:end + 4] = lookup3(bytes(head[:end])).to_bytes(4, "little")
    return bytes(head[:end + 4])


def clear_status_flags(path: Union[str, Path]) -> None:
    """Mark the file closed, as ``h5clear -s`` does. Call only when no writer is running.

    It does not touch the rest of the file: a file shorter than its allocated length
    (HDF5 calls it "truncated") stays so; ``integrity.prepare_resume`` checks such a
    file before it pads it.
    """
    sb = read_superblock(path)
    if sb["version"] < 2 or sb["flags"] == 0:
        return
    if not sb["checksum_ok"]:
        raise ValueError(f"{path}: the HDF5 superblock checksum is wrong; the file is damaged")
    head = superblock_with_flags_cleared(path)
    with open(path, "r+b") as f:
        f.write(head)
