"""The partitions of snapshots (tables kept) and drafts (read again at each lookup), read and
written through the owner's own read path, for ``MOUNTPOINT/parts/``.
See docs/architecture.md and docs/usage.md.
"""

from __future__ import annotations

from cachetools import LRUCache

from ebsfs.core.errors import FileTooLargeError, NotFoundError, ReadOnlyError
from ebsfs.fs.catalog import Catalog
from ebsfs.fs.partitions import Partition, label_links, read_partitions
from ebsfs.read.ranges import read_range
from ebsfs.read.stack import ReadStacks
from ebsfs.write.newdir import NewDirectory

DRAFT_PREFIX = "new/"


class PartitionTables:
    """Partition tables by owner, and reads of one partition."""

    def __init__(self, catalog: Catalog, stacks: ReadStacks, newdir: NewDirectory) -> None:
        self.catalog = catalog
        self.stacks = stacks
        self.newdir = newdir
        self._tables: LRUCache[str, list[Partition]] = LRUCache(maxsize=1024)

    def exists(self, owner: str) -> bool:
        """Whether ``owner`` names a completed snapshot or a draft right now."""
        if owner.startswith(DRAFT_PREFIX):
            return self.newdir.get(owner[len(DRAFT_PREFIX) :]) is not None
        return owner in self.catalog.snapshots

    def cached(self, owner: str) -> list[Partition] | None:
        """The table last read for ``owner`` (None: not read yet, or gone)."""
        return self._tables.get(owner) if self.exists(owner) else None

    async def table(self, owner: str) -> list[Partition]:
        """The partitions of ``owner``, read now (drafts) or once (completed snapshots)."""
        if not owner.startswith(DRAFT_PREFIX) and owner in self._tables:
            return self._tables[owner]
        size = self._size(owner)
        found = await read_partitions(lambda off, n: self.read_disk(owner, off, n), size)
        self._tables[owner] = found
        return found

    def partition(self, owner: str, number: int) -> Partition | None:
        """Partition ``number`` of the table last read for ``owner``."""
        return next((p for p in self.cached(owner) or () if p.number == number), None)

    def labels(self, owner: str) -> dict[str, int]:
        """GPT labels of the table last read for ``owner`` -> partition numbers."""
        return label_links(self.cached(owner) or [])

    async def read(
        self, owner: str, part: Partition, offset: int, length: int
    ) -> bytes | memoryview:
        """Bytes ``[offset, offset+length)`` of a partition (short at its end)."""
        length = min(length, part.size - offset)
        if length <= 0:
            return b""
        return await self.read_disk(owner, part.start + offset, length)

    async def write(self, owner: str, part: Partition, offset: int, data: bytes) -> int:
        """Write into a draft's partition; nothing may cross its end (EFBIG)."""
        draft = self.newdir.get(owner[len(DRAFT_PREFIX) :]) if owner.startswith(
            DRAFT_PREFIX
        ) else None
        if draft is None:
            raise ReadOnlyError(f"{owner}: only a draft's partitions can be written")
        if offset + len(data) > part.size:
            raise FileTooLargeError(
                f"{owner} partition {part.number}: a write up to byte {offset + len(data)} "
                f"passes its end ({part.size} bytes)"
            )
        return await draft.write(part.start + offset, data)

    async def resolve(self, snapshot_id: str, number: int | None) -> tuple[int, Partition | None]:
        """The size of a completed snapshot, or of its partition ``number``, and that
        partition (NotFoundError when there is no such snapshot or partition)."""
        info = await self.catalog.lookup(snapshot_id)
        if info is None:
            raise NotFoundError(f"{snapshot_id}: no such completed snapshot")
        if number is None:
            return info.volume_size << 30, None
        part = next((p for p in await self.table(snapshot_id) if p.number == number), None)
        if part is None:
            raise NotFoundError(f"{snapshot_id} has no partition {number}")
        return part.size, part

    def _size(self, owner: str) -> int:
        if owner.startswith(DRAFT_PREFIX):
            draft = self.newdir.get(owner[len(DRAFT_PREFIX) :])
            return draft.size() if draft is not None else 0
        info = self.catalog.snapshots.get(owner)
        return info.volume_size << 30 if info is not None else 0

    async def read_disk(self, owner: str, offset: int, length: int) -> bytes | memoryview:
        """Bytes of the owner's whole disk, through its own read path."""
        # Gone meanwhile (rm, a refresh): an error, never zeros, which a scratch overlay of it
        # would copy under its writes as if they were the disk's.
        if owner.startswith(DRAFT_PREFIX):
            draft = self.newdir.get(owner[len(DRAFT_PREFIX) :])
            if draft is None:
                raise NotFoundError(f"{owner} is gone")
            return await draft.read(offset, length)
        info = self.catalog.snapshots.get(owner)
        if info is None:
            raise NotFoundError(f"{owner} is gone")
        stack = self.stacks.get(info.snapshot_id, info.volume_size)
        return await read_range(stack, offset, length, info.volume_size << 30)
