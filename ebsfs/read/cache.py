"""The block cache layer: verified blocks in memory, an LRU bounded in bytes, single-flight.

One ``BlockCache`` serves every snapshot of a mount (``--cache-size``); ``CachedBlocks`` puts it
in front of one snapshot's lower layer, so N readers of a missing block cost one fetch. Holes
and failed fetches are not cached. docs/architecture.md, the read path.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable

import trio
from cachetools import LRUCache

from ebsfs.core.blocks import BlockIndex
from ebsfs.read.base import BlockReader


def _sizeof(value: bytes) -> int:
    return len(value)


class _CountingLRU(LRUCache[Hashable, bytes]):
    def __init__(self, maxsize: int, counters: Counter[str]) -> None:
        super().__init__(maxsize=maxsize, getsizeof=_sizeof)
        self._counters = counters

    def popitem(self) -> tuple[Hashable, bytes]:
        self._counters["cache_evictions"] += 1
        return super().popitem()


class BlockCache:
    """Verified blocks of any snapshot, least recently used dropped past ``max_bytes``."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.counters: Counter[str] = Counter()
        self._lru = _CountingLRU(max(max_bytes, 1), self.counters)

    def get(self, key: Hashable) -> bytes | None:
        return self._lru.get(key)

    def contains(self, key: Hashable) -> bool:
        return key in self._lru

    def put(self, key: Hashable, data: bytes) -> None:
        if len(data) > self.max_bytes:
            return  # a cache smaller than a block caches nothing
        self._lru[key] = data

    def stats(self) -> dict[str, int]:
        return {
            **self.counters,
            "cache_bytes": int(self._lru.currsize),
            "cache_max_bytes": self.max_bytes,
            "cache_blocks": len(self._lru),
        }


class _Flight:
    """One fetch in progress; waiters read its outcome once ``done`` is set."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.data: bytes | None = None
        self.error: BaseException | None = None


class CachedBlocks(BlockReader):
    """``BlockReader`` that serves one snapshot's blocks from a shared ``BlockCache``."""

    def __init__(self, below: BlockReader, cache: BlockCache, key: Hashable) -> None:
        self.below = below
        self.cache = cache
        self.key = key
        self._flights: dict[int, _Flight] = {}

    def cached(self, index: BlockIndex) -> bool:
        """Whether a read of ``index`` would be answered without going below."""
        return self.cache.contains((self.key, index)) or index in self._flights

    async def read_block(self, index: BlockIndex) -> bytes | None:
        while True:
            data = self.cache.get((self.key, index))
            if data is not None:
                self.cache.counters["cache_hits"] += 1
                return data
            flight = self._flights.get(index)
            if flight is None:
                break
            self.cache.counters["cache_joined"] += 1
            await flight.done.wait()
            if isinstance(flight.error, trio.Cancelled):
                continue  # the fetching reader gave up; that is no answer for us
            if flight.error is not None:
                raise flight.error
            return flight.data
        self.cache.counters["cache_misses"] += 1
        flight = self._flights[index] = _Flight()
        try:
            flight.data = await self.below.read_block(index)
        except BaseException as exc:
            flight.error = exc
            raise
        finally:
            del self._flights[index]
            flight.done.set()
        if flight.data is not None:
            self.cache.put((self.key, index), flight.data)
        return flight.data

    def stats(self) -> dict[str, int]:
        return self.cache.stats()
