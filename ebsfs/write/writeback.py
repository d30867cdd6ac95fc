"""The write-back layer of a pending snapshot: spooled writes become stored 512 KiB blocks.

Per block a version bumped by every write and the version last stored; an uploader task stores
dirty blocks through a ``BlockSink`` (when, in what order, which are skipped, back-pressure and
the page cache: docs/architecture.md, the write path, "WriteBack").
"""

from __future__ import annotations

import logging
import math
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import trio

from ebsfs.core import checksum
from ebsfs.core.blocks import BLOCK_SIZE, ZERO_BLOCK, BlockIndex
from ebsfs.core.errors import EbsfsError, NotFoundError
from ebsfs.read.base import BlockReader
from ebsfs.write.sink import BlockSink
from ebsfs.write.spool import FULL, Spool
from ebsfs.write.spooled import BlockSource, SpooledBlock

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WriteTuning:
    """Knobs of the write-back layer (``--dirty-limit``, ``--writeback-delay``...)."""

    dirty_limit: int = 128 << 20
    delay: float = 0.5
    rewrite_factor: float = 4.0
    max_uploads: int = 32
    retry_pause: float = 2.0
    sync_every: int = 32 << 20


@dataclass
class _Failure:
    at: float
    retry_at: float
    error: EbsfsError


class WriteBack:
    """Spooled writes of one draft, stored block by block once a sink is attached."""

    def __init__(
        self,
        spool: Spool,
        parent: BlockReader | None,
        *,
        encrypted: bool = False,
        tuning: WriteTuning | None = None,
        counters: Counter[str] | None = None,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self.spool = spool
        self.parent = parent
        self.encrypted = encrypted
        self.tuning = tuning or WriteTuning()
        self.counters: Counter[str] = counters if counters is not None else Counter()
        self.clock = clock
        self.sink: BlockSink | None = None
        self._version: dict[int, int] = {}
        self._stored_version: dict[int, int] = {}
        self._dirty: OrderedDict[int, float] = OrderedDict()
        #: Bytes written since the spool's data file was last flushed (or a flush started).
        self._unsynced = 0
        #: Where the last write ended: a write starting there continues a sequential stream.
        self._stream_end: int | None = None
        #: Blocks last written whole by a sequential stream (``dd``), not stored since.
        self._streamed: set[int] = set()
        #: Spool slots of streamed blocks stored since the last background flush began: once
        #: the next flush has written them, their page-cache pages are dropped (see
        #: ``Spool.sync_data``). Blocks written otherwise (a filesystem's) are often read
        #: again and keep their pages.
        self._forget: list[int] = []
        self._sync_wanted = trio.Event()
        self._inflight: set[int] = set()
        self._failed: dict[int, _Failure] = {}
        self._fatal: EbsfsError | None = None
        self._urgent = 0
        self._sleep_until: float | None = None
        self._wake = trio.Event()
        self._changed = trio.Event()
        self._slots = trio.Semaphore(self.tuning.max_uploads)
        for index in sorted(spool.dirty):
            self._version[index] = 1
            self._dirty[index] = -math.inf

    # ---- state -------------------------------------------------------------------------------

    @property
    def dirty_blocks(self) -> int:
        """Blocks written since they were last stored."""
        return len(self._dirty)

    @property
    def stored_blocks(self) -> int:
        """Distinct indexes stored to this snapshot."""
        return len(self.spool.stored)

    @property
    def fatal(self) -> EbsfsError | None:
        """The error that stopped uploads for good (the snapshot is gone), if any."""
        return self._fatal

    def stats(self) -> dict[str, int]:
        out = dict(self.counters)
        out["dirty_blocks"] = len(self._dirty)
        out["uploads_in_flight"] = len(self._inflight)
        return out

    def attach(self, sink: BlockSink) -> None:
        """Start storing to ``sink`` (the snapshot was started)."""
        self.sink = sink
        self._fatal = None
        self._poke()

    def restart(self) -> None:
        """The snapshot is started again from scratch: every written block is dirty again."""
        self.sink = None
        self._fatal = None
        self._failed.clear()
        self.spool.reset_stored()
        self._stored_version.clear()
        now = self.clock()
        for index in sorted(self.spool.coverage):
            self._version[index] = self._version.get(index, 0) + 1
            self._dirty[index] = now
            self._dirty.move_to_end(index)

    def summary(self) -> tuple[int, str]:
        """ChangedBlocksCount and the LINEAR aggregate for CompleteSnapshot (all stored)."""
        if self._dirty or self._inflight:
            raise RuntimeError("summary with blocks still dirty")
        stored = self.spool.stored
        return len(stored), checksum.linear_aggregate(stored[i] for i in sorted(stored))

    def _poke(self) -> None:
        self._wake.set()
        self._wake = trio.Event()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    # ---- reading and writing ----------------------------------------------------------------

    async def read_block(self, index: BlockIndex) -> bytes | None:
        """What was written, over the parent's block, over zeros; None if all of it is a hole."""
        base = None
        if self.parent is not None and not self.spool.is_full(index):
            base = await self.parent.read_block(index)
        return await self._compose(index, base)

    async def _compose(self, index: int, base: bytes | None) -> bytes | None:
        # pread of 512 KiB is slow enough to stall every FUSE request if done inline.
        cov = self.spool.coverage.get(index)
        if cov is None:
            return base
        slot = self.spool.slots[index]
        return await trio.to_thread.run_sync(self.spool.compose, slot, cov, base)

    async def write(self, offset: int, data: bytes) -> None:
        """Keep ``data`` at ``offset`` (in the spool before returning); may wait for uploads."""
        while (
            self.sink is not None
            and self._fatal is None
            and len(self._dirty) * BLOCK_SIZE >= self.tuning.dirty_limit
        ):
            self.counters["write_waits"] += 1
            changed = self._changed
            self._poke()
            await changed.wait()
        now = self.clock()
        wake = False
        end = offset + len(data)
        streaming = offset == self._stream_end
        self._stream_end = end
        for index in self.spool.write(offset, data):
            self._version[index] = self._version.get(index, 0) + 1
            self._dirty.pop(index, None)
            self._dirty[index] = now
            self._streamed.discard(index)
            if self.spool.is_full(index):
                wake = True
                if streaming and (index + 1) * BLOCK_SIZE <= end:
                    # Completed by a stream that moved on: due at once, not after the delay.
                    self._dirty[index] = -math.inf
                    self._streamed.add(index)
        self._unsynced += len(data)
        if self._unsynced >= self.tuning.sync_every:
            self._sync_wanted.set()
        if wake and self.sink is not None and self._sleep_until is None:
            self._poke()

    async def flush(self) -> None:
        """Return once everything written before the call is stored (and the spool synced)."""
        self._unsynced = 0
        self.spool.commit_records()
        await trio.to_thread.run_sync(self.spool.sync)
        targets = {i: self._version[i] for i in self._dirty}
        if not targets:
            return
        if self.sink is None:
            raise RuntimeError("flush before the snapshot was started")
        started = self.clock()
        self._urgent += 1
        self._poke()
        try:
            remaining = targets
            while True:
                if self._fatal is not None:
                    raise self._fatal
                remaining = {
                    i: v for i, v in remaining.items() if self._stored_version.get(i, 0) < v
                }
                if not remaining:
                    return
                for i in remaining:
                    failure = self._failed.get(i)
                    if failure is not None and failure.at >= started:
                        raise failure.error
                changed = self._changed
                await changed.wait()
        finally:
            self._urgent -= 1

    # ---- uploading ---------------------------------------------------------------------------

    async def run(self) -> None:
        """The uploader; runs until cancelled (start it in the mount's nursery)."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._sync_in_background)
            while True:
                wake = self._wake
                await self._slots.acquire()
                index, wait = self._pick()
                if index is None:
                    self._slots.release()
                    self._sleep_until = None if wait is None else self.clock() + wait
                    with trio.move_on_after(math.inf if wait is None else wait):
                        await wake.wait()
                    self._sleep_until = None
                    continue
                self._inflight.add(index)
                nursery.start_soon(self._upload, index)

    async def _sync_in_background(self) -> None:
        # Without this the page cache holds every byte written until the first fsync, which
        # then writes them all to the disk at once while it waits.
        while True:
            await self._sync_wanted.wait()
            self._sync_wanted = trio.Event()
            self._unsynced = 0
            forget, self._forget = self._forget, []
            try:
                await trio.to_thread.run_sync(self.spool.sync_data, forget)
            except OSError as exc:  # the spool was closed under us (sealed, removed)
                log.debug("background flush of %s: %s", self.spool.directory, exc)

    def _pick(self) -> tuple[int | None, float | None]:
        if self.sink is None or self._fatal is not None:
            return None, None
        t = self.tuning
        now = self.clock()
        urgent = self._urgent > 0 or len(self._dirty) * BLOCK_SIZE >= t.dirty_limit
        next_due = math.inf
        for index, modified in self._dirty.items():
            if index in self._inflight:
                continue
            failure = self._failed.get(index)
            if failure is not None and now < failure.retry_at:
                next_due = min(next_due, failure.retry_at)
                continue
            if urgent:
                return index, None
            if self.spool.is_full(index):
                delay = t.delay * (t.rewrite_factor if index in self.spool.stored else 1.0)
                due = modified + delay
                if due <= now:
                    return index, None
                next_due = min(next_due, due)
        return None, (None if next_due == math.inf else max(0.0, next_due - now))

    async def _upload(self, index: int) -> None:
        try:
            sink = self.sink
            if sink is None:  # restarted between the pick and now
                return
            base = None
            if self.parent is not None:
                # Also for a full block: one the parent holds identically is not stored again.
                base = await self.parent.read_block(BlockIndex(index))
            # The version is taken before the bytes are read: a write landing while they are
            # read (or stored) bumps it, so the block stays dirty and is stored again.
            version = self._version[index]
            digest = await sink.put(index, self._loader(index, base))
            if digest is None:
                kind = "zero" if base is None else "unchanged"
                self.counters[f"{kind}_blocks_skipped"] += 1
                self._done(index, version, None)
                return
            if self.sink is sink:
                self._done(index, version, digest)
        except (EbsfsError, OSError) as exc:
            error = exc if isinstance(exc, EbsfsError) else EbsfsError(
                f"spool {self.spool.directory}: {exc}")
            now = self.clock()
            self._failed[index] = _Failure(now, now + self.tuning.retry_pause, error)
            self.counters["store_failures"] += 1
            log.warning("storing block %d failed: %s", index, error)
            if isinstance(exc, NotFoundError | OSError):
                # The snapshot is gone (deleted, timed out, or in error), or the spool cannot
                # be read: stop, keep the spool.
                self._fatal = error
        except Exception as exc:  # a bug must not end the uploader, nor the mount with it
            log.exception("storing block %d failed unexpectedly", index)
            now = self.clock()
            self._failed[index] = _Failure(now, now + self.tuning.retry_pause, EbsfsError(
                f"block {index}: {type(exc).__name__}: {exc}"))
        finally:
            self._inflight.discard(index)
            self._slots.release()
            self._notify()
            self._poke()

    def _loader(self, index: int, base: bytes | None) -> BlockSource:
        """What the worker thread of the put reads the block's bytes from (None: skip it)."""
        spool = self.spool
        cov = spool.coverage.get(index)
        slot = spool.slots.get(index)
        # What the snapshot reads at this index if nothing is stored there; once something
        # was stored, the block must be stored whatever it holds (AWS keeps the earlier data).
        inherited = base if base is not None else None if self.encrypted else ZERO_BLOCK
        skippable = index not in spool.stored and inherited is not None

        def load() -> bytes | None:
            # Runs in a worker thread: only the file, and values taken above (``cov`` is
            # never changed in place).
            if cov is None or slot is None:
                data = base or ZERO_BLOCK
            else:
                data = spool.compose(slot, cov, base)
            return None if skippable and data == inherited else data

        if cov is FULL and slot is not None and (base is None or not skippable):
            # Wholly in the spool (nothing of ``base`` shows through, and an all-zero block is
            # the only one to skip): whoever stores it reads it from the file itself.
            return SpooledBlock(str(spool.data_path), slot * BLOCK_SIZE, skippable)
        return load

    def _done(self, index: int, version: int, digest: bytes | None) -> None:
        current = self._version.get(index) == version
        if digest is not None:
            self.spool.mark_stored(index, digest, current)
        elif current:
            self.spool.dirty.discard(index)
        self._stored_version[index] = version
        self._failed.pop(index, None)
        if current:
            self._dirty.pop(index, None)
            if index in self._streamed:
                self._streamed.discard(index)
                self._forget.append(self.spool.slots[index])
