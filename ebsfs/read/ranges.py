"""Byte ranges over a block reader: what a file read turns into."""

from __future__ import annotations

import sys

import trio

from ebsfs.core.blocks import BLOCK_SIZE, ZERO_BLOCK, BlockIndex
from ebsfs.core.exgroups import first_error
from ebsfs.read.base import BlockReader

#: Size of a pooled reply buffer: the kernel asks for at most 1 MiB per FUSE read, two blocks.
REPLY_BUFFER_SIZE = 2 * BLOCK_SIZE
_MAX_REPLY_BUFFERS = 4


class ReplyBuffers:
    """Reusable buffers for replies that join several blocks.

    A fresh 1 MiB buffer per reply costs page faults and, past malloc's mmap threshold, an
    mmap/munmap pair; the kernel copies a reply out as soon as the handler returns, so a few
    buffers serve every read. A buffer is handed out again only when nothing refers to it
    any more (no view of it is alive), so a caller that keeps a reply is never overwritten.
    """

    def __init__(self) -> None:
        self._free: list[bytearray] = []

    def join(self, parts: list[bytes | memoryview], length: int) -> bytes | memoryview:
        """``parts`` (``length`` bytes in all) as one contiguous buffer."""
        if length > REPLY_BUFFER_SIZE:
            return b"".join(parts)
        buf = self._unused()
        pos = 0
        for part in parts:
            end = pos + len(part)
            buf[pos:end] = part
            pos = end
        return memoryview(buf)[:length]

    def _unused(self) -> bytearray:
        for buf in self._free:
            # References: the list, the loop variable and getrefcount's argument. A view
            # handed out earlier and still alive holds one more.
            if sys.getrefcount(buf) <= 3:
                return buf
        buf = bytearray(REPLY_BUFFER_SIZE)
        if len(self._free) < _MAX_REPLY_BUFFERS:
            self._free.append(buf)
        return buf


_REPLIES = ReplyBuffers()


def _underway(reader: BlockReader, index: int) -> bool:
    # A layer that can tell (the cache) says whether the block is cached or being fetched.
    cached = getattr(reader, "cached", None)
    return cached is not None and bool(cached(BlockIndex(index)))


async def read_range(
    reader: BlockReader, offset: int, length: int, size: int
) -> bytes | memoryview:
    """Bytes ``[offset, offset+length)`` of a file of ``size`` bytes (short at its end).

    A range over several blocks reads them concurrently (one after the other when all but
    the first are cached or already being fetched: no waiting is lost, and no tasks are
    spawned); holes are zeros. A range within one block is a view of the cached block, not a
    copy (pyfuse3 takes any buffer); a longer one is joined into a reused reply buffer.
    """
    end = min(offset + length, size)
    if offset >= end:
        return b""
    first, last = offset // BLOCK_SIZE, (end - 1) // BLOCK_SIZE
    blocks: dict[int, bytes | None] = {}
    if first == last or all(_underway(reader, i) for i in range(first + 1, last + 1)):
        for i in range(first, last + 1):
            blocks[i] = await reader.read_block(BlockIndex(i))
    else:

        async def one(i: int) -> None:
            blocks[i] = await reader.read_block(BlockIndex(i))

        try:
            async with trio.open_nursery() as nursery:
                for i in range(first, last + 1):
                    nursery.start_soon(one, i)
        except BaseExceptionGroup as group:
            raise first_error(group) from None
    parts: list[bytes | memoryview] = []
    for i in range(first, last + 1):
        data = blocks[i] or ZERO_BLOCK
        lo = offset - i * BLOCK_SIZE if i == first else 0
        hi = end - i * BLOCK_SIZE if i == last else BLOCK_SIZE
        parts.append(memoryview(data)[lo:hi] if (lo, hi) != (0, BLOCK_SIZE) else data)
    return parts[0] if len(parts) == 1 else _REPLIES.join(parts, end - offset)
