"""How many blocks each completed snapshot holds, so that ``du`` (``st_blocks``) tells the
truth about a sparse snapshot: counted in the background, one snapshot at a time, the full
size reported until then. See docs/architecture.md and docs/usage.md.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import trio
from cachetools import LRUCache

from ebsfs.aws.runner import Calls
from ebsfs.core.errors import ApiError, EbsfsError
from ebsfs.read.remote import BlockApi

log = logging.getLogger(__name__)

#: Snapshots waiting to be counted; more are left for a later stat.
QUEUE = 64
#: After a failed count, that snapshot is not tried again for this long (seconds).
RETRY_AFTER = 60.0


class BlockCounts:
    """Blocks held per snapshot id, counted in the background."""

    def __init__(
        self,
        api: BlockApi,
        calls: Calls,
        nursery: trio.Nursery,
        counted: Callable[[str], None] = lambda snapshot_id: None,
    ) -> None:
        self.api = api
        self.calls = calls
        self.counted = counted
        self._counts: LRUCache[str, int] = LRUCache(maxsize=65536)
        self._failed: LRUCache[str, float] = LRUCache(maxsize=4096)
        self._queued: set[str] = set()
        self._send, receive = trio.open_memory_channel[str](QUEUE)
        nursery.start_soon(self._worker, receive)

    def get(self, snapshot_id: str) -> int | None:
        """The count if known; else None, and the snapshot is queued to be counted."""
        count = self._counts.get(snapshot_id)
        if count is not None or snapshot_id in self._queued:
            return count
        if time.monotonic() < self._failed.get(snapshot_id, 0.0):
            return None
        try:
            self._send.send_nowait(snapshot_id)
        except trio.WouldBlock:
            return None
        self._queued.add(snapshot_id)
        return None

    async def _worker(self, receive: trio.MemoryReceiveChannel[str]) -> None:
        async for snapshot_id in receive:
            try:
                self._counts[snapshot_id] = await self._count(snapshot_id)
            except EbsfsError as exc:
                log.info("%s: blocks not counted (%s); du shows its full size", snapshot_id, exc)
                self._failed[snapshot_id] = time.monotonic() + RETRY_AFTER
            else:
                self.counted(snapshot_id)
            finally:
                self._queued.discard(snapshot_id)

    async def _count(self, snapshot_id: str) -> int:
        # Indexes come in ascending order: one not above the last seen (a page listed again)
        # or a page token given before (a loop, even of empty pages) means no progress.
        total = 0
        last = -1
        token: str | None = None
        tokens: set[str] = set()
        while True:
            page = await self.calls.run(self.api.list_blocks, snapshot_id, 0, 10000, token)
            for index, _ in page.blocks:
                if index <= last:
                    raise ApiError(
                        f"ListSnapshotBlocks listed block {index} again (after block {last})"
                    )
                last = index
            total += len(page.blocks)
            if page.next_token in tokens:
                raise ApiError("ListSnapshotBlocks returned a page token it had given before")
            token = page.next_token
            if token:
                tokens.add(token)
            if not token:
                return total
