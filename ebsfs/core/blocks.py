"""Names and constants shared by the client, the block stack and the local server."""

from typing import NewType

#: Every EBS direct API block is exactly this many bytes (512 KiB).
BLOCK_SIZE = 524288
#: Blocks in one GiB of volume.
BLOCKS_PER_GIB = (1 << 30) // BLOCK_SIZE
#: The largest volume EBS snapshots describe, in GiB (64 TiB).
MAX_VOLUME_GIB = 65536
#: The largest size a snapshot file can have, in bytes.
MAX_VOLUME_BYTES = MAX_VOLUME_GIB << 30
#: A block of zeros, shared so that nobody allocates one per hole.
ZERO_BLOCK = bytes(BLOCK_SIZE)

SnapshotId = NewType("SnapshotId", str)
BlockIndex = NewType("BlockIndex", int)
BlockToken = NewType("BlockToken", str)
