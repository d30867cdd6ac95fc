"""The one interface of the block stack: ``BlockReader`` (docs/architecture.md, the read path).

Every layer subclasses it over the layer below and knows nothing of the layers above. Blocks
are ``BLOCK_SIZE`` bytes; ``None`` is a hole, which reads as zeros. Layers run on the mount's
trio thread (code between two ``await``s is atomic); blocking work goes to worker threads.
A layer overrides only what it knows better; the defaults here keep every capability callable
on every layer, so nothing probes a layer for one.
"""

from __future__ import annotations

from typing import Protocol

import trio

from ebsfs.core.blocks import BlockIndex
from ebsfs.core.exgroups import first_error


class BlockReader(Protocol):
    """A snapshot's blocks, for reading. Layers subclass it to take its defaults."""

    async def read_block(self, index: BlockIndex) -> bytes | None:
        """The block's ``BLOCK_SIZE`` bytes, or None when it is a hole (reads as zeros)."""
        ...

    async def read_verified(self, index: BlockIndex) -> tuple[bytes | None, bytes | None]:
        """The block and the raw SHA256 digest it was verified against.

        The digest is None when this layer did not verify the block (the default) or for a
        hole; a layer that keeps blocks (the disk cache) then hashes them itself."""
        return await self.read_block(index), None

    def cached(self, index: BlockIndex) -> bool:
        """Whether a read of ``index`` now needs no new fetch: the block is held or already
        being fetched. False when this layer cannot tell (the default)."""
        return False

    async def read_blocks(self, first: BlockIndex, count: int) -> list[bytes | None]:
        """Blocks ``first .. first+count-1``, fetched concurrently; the first error raised.

        When every block but the first needs no new fetch (``cached``: read-ahead is on it),
        they are awaited in turn: no waiting is lost and no task is spawned."""
        indexes = [BlockIndex(first + k) for k in range(count)]
        if all(self.cached(i) for i in indexes[1:]):
            return [await self.read_block(i) for i in indexes]
        out: list[bytes | None] = [None] * count

        async def one(k: int) -> None:
            out[k] = await self.read_block(indexes[k])

        try:
            async with trio.open_nursery() as nursery:
                for k in range(count):
                    nursery.start_soon(one, k)
        except BaseExceptionGroup as group:
            raise first_error(group) from None
        return out

    def stats(self) -> dict[str, int]:
        """This layer's counters, merged into ``ebsfs stats`` (none by default)."""
        return {}
