"""Block arithmetic, snapshot ids and xattr names, shared by every layer and the server."""

import re
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

#: A snapshot id as AWS writes them: ``snap-`` and 8 or 17 hex digits (both lengths exist).
SNAPSHOT_ID_RE = re.compile(r"^snap-[0-9a-f]{8,17}\Z")

#: Every extended attribute of ebsfs starts with this.
XATTR_PREFIX = "user.ebsfs."
#: Counters of the mount (JSON), on the mount's root; what ``ebsfs stats`` reads.
STATS_XATTR = XATTR_PREFIX + "stats"
#: The daemon's pid, on the mount's root; what ``ebsfs umount`` checks before it signals.
PID_XATTR = XATTR_PREFIX + "pid"
#: A snapshot file's id (by-name/ links, parts/, scratch files), for ``ebsfs diff``.
ID_XATTR = XATTR_PREFIX + "snapshot_id"
#: A scratch overlay's base, its kept draft and the bytes it holds.
XATTR_BASE = XATTR_PREFIX + "base"
XATTR_KEEP = XATTR_PREFIX + "keep"
XATTR_USED = XATTR_PREFIX + "scratch_bytes"

