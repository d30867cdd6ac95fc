"""The one interface of the block stack.

Every layer (remote, cache, read-ahead, write-back, spool) implements it on top of the layer
below it and knows nothing of the layers above. Blocks are always ``BLOCK_SIZE`` bytes;
``None`` stands for a block the snapshot does not hold, which reads as zeros.

Concurrency contract: layers run on the trio thread of the mount, so code between two
``await`` points is atomic; blocking work (network, disk, hashing of many blocks) goes to a
worker thread (``remote.Calls.run`` or ``trio.to_thread.run_sync``) under the mount's
CapacityLimiter.

Optional: a layer that can tell whether a block is cached or already being fetched offers
``cached(index) -> bool`` (the cache does, read-ahead passes it on); ``ranges.read_range``
uses it to wait for such blocks in turn instead of starting a task for each. A layer that
verifies blocks against a digest offers ``async read_verified(index) -> (block, digest)``
(the remote layer: ``(None, None)`` for a hole); the disk cache keeps that digest instead
of hashing the block again. Both are found with ``getattr``, so layers without them work.
"""

from typing import Protocol

from ebsfs.core.blocks import BlockIndex


class BlockReader(Protocol):
    """A snapshot's blocks, for reading."""

    async def read_block(self, index: BlockIndex) -> bytes | None:
        """The block's ``BLOCK_SIZE`` bytes, or None when it is a hole (reads as zeros)."""
        ...

    def stats(self) -> dict[str, int]:
        """This layer's counters, merged into ``ebsfs stats``."""
        ...
