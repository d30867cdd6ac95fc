"""The read-ahead layer: sequential reads trigger parallel fetches of the blocks that follow.

It watches the block indexes asked of it. A few readers may stream through one snapshot at
once, so it keeps a handful of *streams* (last index, how far ahead it has fetched); a read
within two blocks after a stream's last one continues it, anything else starts a new stream
in place of the least recently used. Once a stream has moved forward, the indexes past the
read are fetched in background tasks through the layer below
(which caches them and joins concurrent fetches), so the network works while the reader
consumes. The window starts at two blocks and doubles with every forward step up to
``blocks``, so a stray pair of nearby reads (a page the kernel dropped, a second pass mostly
served by the page cache) costs little. Errors of a read-ahead fetch are dropped: the real
read will fetch and report.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

import trio

from ebsfs.core.blocks import BlockIndex
from ebsfs.core.errors import EbsfsError
from ebsfs.read.base import BlockReader

log = logging.getLogger(__name__)

_MAX_STREAMS = 4
_NEAR = 2  # a read this many blocks after a stream's last one still continues it


@dataclass
class _Stream:
    last: int
    ahead: int  # highest index already handed to a background fetch
    moves: int = 0  # forward steps so far: the window doubles with each, up to the maximum


class ReadAhead(BlockReader):
    """``BlockReader`` that prefetches ``blocks`` blocks ahead of sequential readers."""

    def __init__(
        self,
        below: BlockReader,
        nursery: trio.Nursery,
        blocks: int,
        volume_blocks: int,
        counters: Counter[str] | None = None,
    ) -> None:
        self.below = below
        self.nursery = nursery
        self.blocks = blocks
        self.volume_blocks = volume_blocks
        self.counters: Counter[str] = counters if counters is not None else Counter()
        self._streams: list[_Stream] = []

    def stats(self) -> dict[str, int]:
        return dict(self.counters)

    def cached(self, index: BlockIndex) -> bool:
        """Whether the layer below holds ``index`` or is fetching it."""
        return self.below.cached(index)

    async def read_block(self, index: BlockIndex) -> bytes | None:
        if self.blocks > 0:
            self._observe(index)
        return await self.below.read_block(index)

    def _observe(self, index: int) -> None:
        for pos, s in enumerate(self._streams):
            if s.last - _NEAR <= index <= s.last + _NEAR:
                del self._streams[pos]
                break
        else:
            s = _Stream(last=index, ahead=index)
            if len(self._streams) >= _MAX_STREAMS:
                self._streams.pop(0)
        self._streams.append(s)  # most recently used last
        if index > s.last:
            s.moves += 1
        s.last = max(s.last, index)
        if not s.moves:
            return
        window = min(self.blocks, 1 << min(s.moves, 20))
        target = min(s.last + window, self.volume_blocks - 1)
        first = max(s.ahead + 1, s.last + 1)
        if first > target:
            return
        if first == s.last + 1 and s.ahead < s.last:
            self.counters["readahead_streams"] += 1
        for j in range(first, target + 1):
            self.nursery.start_soon(self._prefetch, BlockIndex(j))
        self.counters["readahead_blocks"] += target - first + 1
        s.ahead = target

    async def _prefetch(self, index: BlockIndex) -> None:
        try:
            await self.below.read_block(index)
        except EbsfsError as exc:
            self.counters["readahead_errors"] += 1
            log.debug("read-ahead of block %d failed (the read itself will retry): %s", index, exc)
        except Exception:  # a bug here must not end the mount's nursery
            self.counters["readahead_errors"] += 1
            log.exception("read-ahead of block %d failed unexpectedly", index)
