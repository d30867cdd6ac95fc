"""The read-ahead layer: blocks ahead of a sequential reader are fetched before it asks.

It follows a few *streams* (readers moving forward). A stream's window, the blocks kept
fetched ahead of its reader, grows until it covers the fetch latency times the reader's rate
(both measured here), up to ``blocks`` (``--read-ahead``), and shrinks when the reader slows.
Streams dropped with prefetched blocks unread (random readers) make the next ones wait for
more forward steps before their first prefetch, and a stream whose reader asks for few of the
blocks it passes (the kernel serves the rest from its page cache: a second pass) stops
prefetching. docs/architecture.md, docs/operations.md.
"""

from __future__ import annotations

import logging
import math
from collections import Counter, deque
from dataclasses import dataclass

import trio

from ebsfs.core.blocks import BlockIndex
from ebsfs.core.errors import EbsfsError
from ebsfs.read.base import BlockReader

log = logging.getLogger(__name__)

_MAX_STREAMS = 4
#: Streams dropped lately, kept to be taken up again: more sequential readers than
#: _MAX_STREAMS at once (files copied in parallel) push each other out, and a reader whose
#: stream was dropped is still sequential when it reads on.
_MAX_DROPPED = 16
_NEAR = 2  # a read this many blocks past a stream's reach still continues it
#: The window is latency x rate x this: both vary from one sample to the next, and a
#: window short by one block makes the reader wait a whole latency.
_HEADROOM = 2.0
_RATE_SPAN = 4  # blocks a stream advances between two samples of its rate
_ALPHA = 0.25  # weight of a new sample in the moving averages of latency and rate
_MAX_CONFIRM = 8  # forward steps a stream may have to make before its first prefetch
#: A stream prefetches while (a moving average of) at least this share of the blocks it
#: passes reach this layer; below it, the kernel holds the others and prefetches are waste.
_DENSE = 0.25


def _continues(s: _Stream, index: int) -> bool:
    """Whether a read of ``index`` continues stream ``s``: within what was fetched for it, or
    a window behind (the kernel's own read-ahead sends a reader's requests at once, and they
    arrive out of order)."""
    return s.last - max(s.window, _NEAR) <= index <= max(s.last, s.ahead) + _NEAR


@dataclass
class _Stream:
    last: int
    ahead: int  # highest index handed to a prefetch (or found held below)
    at: float  # when the stream began: its rate is measured from there
    window: int = 0  # blocks kept fetched past ``last``; 0: not prefetching yet
    moves: int = 0  # forward steps so far
    used: int = 0  # prefetched blocks the reader went on to read
    mark: int = 0  # index where the current rate sample began (at ``at``)
    rate: float | None = None  # blocks per second, moving average
    seen: int = 0  # reads of the stream since ``mark``, out-of-order ones included
    density: float = 1.0  # share of the blocks passed that were read here, moving average


class ReadAhead(BlockReader):
    """``BlockReader`` that prefetches up to ``blocks`` blocks ahead of sequential readers."""

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
        #: Seconds a fetch below takes (moving average; None: none measured yet).
        self.latency: float | None = None
        #: Forward steps a new stream makes before its first prefetch.
        self.confirm = 1
        self._streams: list[_Stream] = []
        #: Streams dropped lately: whether dropping one doubled ``confirm``, what it wasted.
        self._dropped: deque[tuple[_Stream, bool, int]] = deque(maxlen=_MAX_DROPPED)

    def stats(self) -> dict[str, int]:
        return dict(self.counters)

    def cached(self, index: BlockIndex) -> bool:
        """Whether the layer below holds ``index`` or is fetching it."""
        return self.below.cached(index)

    async def read_block(self, index: BlockIndex) -> bytes | None:
        if self.blocks <= 0:
            return await self.below.read_block(index)
        self._observe(index)
        if self.below.cached(index):
            return await self.below.read_block(index)
        return await self._fetch(index)

    async def _fetch(self, index: BlockIndex) -> bytes | None:
        """A read that goes below: its time is a sample of the latency."""
        start = trio.current_time()
        data = await self.below.read_block(index)
        if data is None:
            return None  # a hole costs no request: no sample of what a fetch takes
        sample = trio.current_time() - start
        old = self.latency
        self.latency = sample if old is None else old + _ALPHA * (sample - old)
        self.counters["readahead_latency_ms"] = round(self.latency * 1000)
        return data

    def _observe(self, index: int) -> None:
        now = trio.current_time()
        s = self._stream_of(index, now)
        s.seen += 1
        if index <= s.last:
            return  # read again, or out of order: nothing new to fetch
        if s.ahead > s.last:
            s.used += min(index, s.ahead) - s.last
        s.last = index
        s.moves += 1
        self._measure_rate(s, now)
        if s.moves < self.confirm:
            return
        s.window = self._next_window(s)
        target = min(s.last + s.window, self.volume_blocks - 1)
        first = max(s.ahead + 1, s.last + 1)
        if first > target:
            return
        if s.ahead < s.last:  # starts prefetching, or again once its reader overtook it
            self.counters["readahead_streams"] += 1
        for j in range(first, target + 1):
            if not self.below.cached(BlockIndex(j)):
                self.nursery.start_soon(self._prefetch, BlockIndex(j))
                self.counters["readahead_blocks"] += 1
        s.ahead = target

    def _stream_of(self, index: int, now: float) -> _Stream:
        """The stream ``index`` continues (a new one if none), now the most recently used."""
        for pos, s in enumerate(self._streams):
            if _continues(s, index):
                del self._streams[pos]
                break
        else:
            s = self._taken_up(index) or _Stream(last=index, ahead=index, at=now, mark=index)
            if len(self._streams) >= _MAX_STREAMS:
                self._retire(self._streams.pop(0))
        self._streams.append(s)
        return s

    def _taken_up(self, index: int) -> _Stream | None:
        """A stream dropped lately that ``index`` continues: its reader was sequential after
        all, so what dropping it said of random readers is taken back."""
        for pos, (s, doubled, wasted) in enumerate(self._dropped):
            if _continues(s, index):
                del self._dropped[pos]
                if doubled:
                    self.confirm = max(self.confirm // 2, 1)
                self.counters["readahead_wasted"] -= wasted
                self.counters["readahead_confirm"] = self.confirm
                return s
        return None

    def _retire(self, s: _Stream) -> None:
        """A stream is dropped: what it fetched and nobody read says how random readers are."""
        wasted = max(s.ahead - s.last, 0)
        self.counters["readahead_wasted"] += wasted
        doubled = False
        if wasted > s.used:
            doubled = self.confirm < _MAX_CONFIRM
            self.confirm = min(self.confirm * 2, _MAX_CONFIRM)
        elif s.used:
            self.confirm = max(self.confirm // 2, 1)
        self.counters["readahead_confirm"] = self.confirm
        self._dropped.append((s, doubled, wasted))

    def _measure_rate(self, s: _Stream, now: float) -> None:
        span = s.last - s.mark
        if span < _RATE_SPAN:
            return
        elapsed = now - s.at
        if elapsed <= 0:
            return  # blocks that came at once (a burst of fetches ending): the span goes on
        # Averaged, not one sample: the kernel's requests arrive out of order, so a sample
        # that ends on a jump forward sees few of the blocks it passed; they come next.
        s.density += 0.5 * (min(s.seen / span, 1.0) - s.density)
        s.seen = 0
        sample = (s.last - s.mark) / elapsed
        s.rate = sample if s.rate is None else s.rate + _ALPHA * (sample - s.rate)
        self.counters["readahead_rate"] = round(s.rate)
        s.mark, s.at = s.last, now

    def _next_window(self, s: _Stream) -> int:
        """Twice the last window, or latency x rate once both are measured; within the cap."""
        least = min(2, self.blocks)
        if s.density < _DENSE:
            if s.window:
                self.counters["readahead_sparse"] += 1
            self.counters["readahead_window"] = 0
            return 0
        if not s.window:
            return least
        if self.latency is None or s.rate is None:
            window = s.window * 2
        else:
            need = math.ceil(self.latency * s.rate * _HEADROOM)
            # Grow by doubling at most (the measures lag), shrink by halving at most.
            window = min(s.window * 2, need) if need > s.window else max(s.window // 2, need)
        window = max(least, min(window, self.blocks))
        if window != s.window:
            self.counters["readahead_grown" if window > s.window else "readahead_shrunk"] += 1
        self.counters["readahead_window"] = window
        return window

    async def _prefetch(self, index: BlockIndex) -> None:
        try:
            await self._fetch(index)
        except EbsfsError as exc:
            self.counters["readahead_errors"] += 1
            log.debug("read-ahead of block %d failed (the read itself will retry): %s", index, exc)
        except Exception:  # a bug here must not end the mount's nursery
            self.counters["readahead_errors"] += 1
            log.exception("read-ahead of block %d failed unexpectedly", index)
