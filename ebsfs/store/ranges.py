"""Byte ranges over a block reader: what a file read turns into."""

from __future__ import annotations

import trio

from ebsfs.exgroups import first_error
from ebsfs.store.base import BlockReader
from ebsfs.types import BLOCK_SIZE, ZERO_BLOCK, BlockIndex


async def read_range(
    reader: BlockReader, offset: int, length: int, size: int
) -> bytes | memoryview:
    """Bytes ``[offset, offset+length)`` of a file of ``size`` bytes (short at its end).

    A range over several blocks reads them concurrently; holes are zeros. A range within one
    block is a view of the cached block, not a copy (pyfuse3 takes any buffer).
    """
    end = min(offset + length, size)
    if offset >= end:
        return b""
    first, last = offset // BLOCK_SIZE, (end - 1) // BLOCK_SIZE
    blocks: dict[int, bytes | None] = {}
    if first == last:
        blocks[first] = await reader.read_block(BlockIndex(first))
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
    return parts[0] if len(parts) == 1 else b"".join(parts)
