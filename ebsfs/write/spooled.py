"""A block wholly in a spool's data file, and storing one (docs/architecture.md, the write
path): the upload process reads and hashes it itself; the mount's threads do otherwise."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ebsfs.core import checksum
from ebsfs.core.blocks import BLOCK_SIZE, ZERO_BLOCK
from ebsfs.core.errors import EbsfsError

#: Makes a block's bytes in the worker thread of its PutSnapshotBlock; None: nothing to store.
BlockLoader = Callable[[], bytes | None]


@dataclass(frozen=True)
class SpooledBlock:
    """A whole block written to a spool's data file at ``offset`` of ``path``.
    ``skip_if_zero``: an all-zero block is not stored (it reads as zeros anyway)."""

    path: str
    offset: int
    skip_if_zero: bool


#: What the write-back layer hands the sink for one block.
BlockSource = bytes | SpooledBlock | BlockLoader


class PutBlock(Protocol):
    """PutSnapshotBlock of bytes (``ebsfs.aws.api.Api.put_block``)."""

    def put_block(
        self, snapshot_id: str, index: int, data: bytes | memoryview, checksum_b64: str
    ) -> None: ...


class BlockPuts(PutBlock, Protocol):
    """PutSnapshotBlock of bytes, or of a block in a spool file read by whoever stores it."""

    def put_spooled_block(
        self, snapshot_id: str, index: int, path: str, offset: int, skip_if_zero: bool
    ) -> bytes | None:
        """Store the block at ``offset`` of ``path``: its raw SHA256 digest, or None (nothing
        stored) if it is all zeros and ``skip_if_zero``. By default read in this thread."""
        return put_file_block(self, snapshot_id, index, path, offset, skip_if_zero)


class ThreadPuts(BlockPuts):
    """An ``Api``'s puts in the calling (worker) thread, spooled blocks read there too."""

    def __init__(self, api: PutBlock) -> None:
        self.api = api

    def put_block(
        self, snapshot_id: str, index: int, data: bytes | memoryview, checksum_b64: str
    ) -> None:
        self.api.put_block(snapshot_id, index, data, checksum_b64)


def put_file_block(
    api: PutBlock,
    snapshot_id: str,
    index: int,
    path: str,
    offset: int,
    skip_if_zero: bool,
    buffer: bytearray | None = None,
) -> bytes | None:
    """Read the block at ``offset`` of ``path`` (into ``buffer`` if given), hash it and store
    it with ``api``: its raw digest, or None (nothing stored) if it is all zeros and
    ``skip_if_zero``."""
    data = bytearray(BLOCK_SIZE) if buffer is None else buffer
    view = memoryview(data)[:BLOCK_SIZE]
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            got = os.preadv(fd, [view], offset)
        finally:
            os.close(fd)
    except OSError as exc:
        # Not transient: the draft's spool went away (removed) or cannot be read.
        raise EbsfsError(f"cannot read block {index} from {path}: {exc.strerror}") from None
    if got < BLOCK_SIZE:  # bytes of a slot never written read as zeros
        view[got:] = bytes(BLOCK_SIZE - got)
    if skip_if_zero and view == ZERO_BLOCK:
        return None
    digest = checksum.digest(view)
    api.put_block(snapshot_id, index, view, checksum.b64(digest))
    return digest
