"""Byte ranges over a block reader: what a file read turns into."""

from __future__ import annotations

import sys

from ebsfs.core.blocks import BLOCK_SIZE, ZERO_BLOCK, BlockIndex
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


def block_spans(offset: int, length: int, size: int) -> list[tuple[int, int, int]]:
    """The blocks bytes ``[offset, offset+length)`` of a file of ``size`` bytes touch, each as
    ``(index, start, end)`` within the block, in order; none past the file's end."""
    end = min(offset + length, size)
    if offset >= end:
        return []
    first, last = offset // BLOCK_SIZE, (end - 1) // BLOCK_SIZE
    return [
        (
            i,
            offset - i * BLOCK_SIZE if i == first else 0,
            end - i * BLOCK_SIZE if i == last else BLOCK_SIZE,
        )
        for i in range(first, last + 1)
    ]


async def read_range(
    reader: BlockReader, offset: int, length: int, size: int
) -> bytes | memoryview:
    """Bytes ``[offset, offset+length)`` of a file of ``size`` bytes (short at its end).

    The reader fetches the range's blocks (``read_blocks``: concurrently where that helps);
    holes are zeros. A range within one block is a view of the cached block, not a copy
    (pyfuse3 takes any buffer); a longer one is joined into a reused reply buffer.
    """
    spans = block_spans(offset, length, size)
    if not spans:
        return b""
    blocks = await reader.read_blocks(BlockIndex(spans[0][0]), len(spans))
    parts: list[bytes | memoryview] = []
    for (_, lo, hi), data in zip(spans, blocks, strict=True):
        block = data or ZERO_BLOCK
        parts.append(block if (lo, hi) == (0, BLOCK_SIZE) else memoryview(block)[lo:hi])
    if len(parts) == 1:
        return parts[0]
    return _REPLIES.join(parts, min(offset + length, size) - offset)
