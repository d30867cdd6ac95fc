"""The on-disk record format of segments (docs/server.md, "Storage"): a 4 KiB header page
naming the put and carrying a CRC32 of itself, then the 512 KiB block; and two helpers on
files (page alignment for O_DIRECT, bytes that are not holes)."""

import ctypes
import mmap
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from ebsfs.core.blocks import BLOCK_SIZE

#: A record: one header page, then the block.
HEADER_SIZE = 4096
RECORD_SIZE = HEADER_SIZE + BLOCK_SIZE
_MAGIC = b"EBSFSREC"
_VERSION = 1
# magic, version, sequence number, block index, SHA256, snapshot id (length, bytes).
_HEADER = struct.Struct("<8sBQQ32sB64s")
_CRC = struct.Struct("<I")


@dataclass(frozen=True)
class Record:
    """What a record header says about the put that wrote it."""

    snapshot_id: str
    index: int
    seq: int
    digest: bytes


def encode_header(record: Record) -> bytes:
    """The header bytes of a record (the rest of its page is zeros)."""
    return header_bytes(record.snapshot_id, record.index, record.seq, record.digest)


def header_bytes(snapshot_id: str, index: int, seq: int, digest: bytes) -> bytes:
    """``encode_header`` without building a Record (a put's path makes one per block)."""
    sid = snapshot_id.encode("ascii")
    if len(sid) > 64:
        raise ValueError(f"snapshot id too long for a record header: {snapshot_id}")
    fixed = _HEADER.pack(_MAGIC, _VERSION, seq, index, digest, len(sid), sid)
    return fixed + _CRC.pack(zlib.crc32(fixed))


def decode_header(page: bytes) -> Record | None:
    """The record a header page describes; None if it is not an intact header."""
    if len(page) < _HEADER.size + _CRC.size or page[:8] != _MAGIC:
        return None
    fixed = page[: _HEADER.size]
    (crc,) = _CRC.unpack_from(page, _HEADER.size)
    if zlib.crc32(fixed) != crc:
        return None
    _, version, seq, index, digest, length, sid = _HEADER.unpack(fixed)
    if version != _VERSION or length > 64:
        return None
    try:
        snapshot_id = sid[:length].decode("ascii")
    except UnicodeDecodeError:
        return None
    return Record(snapshot_id, index, seq, digest)


def page_aligned(view: memoryview) -> bool:
    """Whether ``view`` is a writable buffer starting on a page boundary (O_DIRECT's rule)."""
    if view.readonly or not view.c_contiguous or len(view) % mmap.PAGESIZE:
        return False
    if isinstance(view.obj, mmap.mmap) and view.nbytes == len(view.obj):
        return True  # all of a mapping, so it starts where the mapping does: on a page
    return ctypes.addressof(ctypes.c_char.from_buffer(view)) % mmap.PAGESIZE == 0


def data_bytes(path: Path) -> int:
    """Bytes of a file that are not holes (SEEK_DATA/SEEK_HOLE)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        total, pos, end = 0, 0, os.fstat(fd).st_size
        while pos < end:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole is left
                break
            pos = os.lseek(fd, start, os.SEEK_HOLE)
            total += pos - start
        return total
    finally:
        os.close(fd)
