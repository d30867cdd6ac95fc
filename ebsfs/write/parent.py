"""A draft's parent snapshot, read through the mount's read stacks (docs/architecture.md,
the write path): write-back completes partial blocks from it and skips unchanged ones."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from ebsfs.core.blocks import BlockIndex
from ebsfs.read.base import BlockReader


class ParentStacks(Protocol):
    """What the write path needs of the mount's read stacks (``ebsfs.read.stack.ReadStacks``)."""

    def get(self, snapshot_id: str, volume_gib: int) -> BlockReader: ...


#: Builds the reader of a completed parent snapshot: ``(snapshot_id, volume_gib)``.
ParentReaderFactory = Callable[[str, int], BlockReader]


class ParentBlocks(BlockReader):
    """A parent's blocks, its stack looked up at each read (the stacks are an LRU: holding
    one stack object could outlive its eviction)."""

    def __init__(self, stacks: ParentStacks, snapshot_id: str, volume_gib: int) -> None:
        self.stacks = stacks
        self.snapshot_id = snapshot_id
        self.volume_gib = volume_gib

    async def read_block(self, index: BlockIndex) -> bytes | None:
        return await self.stacks.get(self.snapshot_id, self.volume_gib).read_block(index)

    def stats(self) -> dict[str, int]:
        return {}  # the parent's stack counts its own reads


def parent_readers(stacks: ParentStacks) -> ParentReaderFactory:
    """The factory a draft uses to read its parent through ``stacks``."""

    def reader(snapshot_id: str, volume_gib: int) -> BlockReader:
        return ParentBlocks(stacks, snapshot_id, volume_gib)

    return reader
