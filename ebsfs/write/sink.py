"""The bottom write layer: PutSnapshotBlock for one pending snapshot, through the mount's
runner (``ebsfs.aws.runner``) and retried by the one policy (``ebsfs.aws.retry``): the 404s of
a snapshot just started, throttling, 5xx, a body cut short, a put AWS asks to send again and a
checksum AWS computed differently (the same bytes sent again), all bounded by the mount's
``--io-timeout`` clock. docs/errors.md says how a put fails and what stays in the spool.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

import trio

from ebsfs.aws.retry import Attempts, RetryPolicy
from ebsfs.aws.runner import Calls
from ebsfs.aws.throttles import Heard
from ebsfs.aws.windows import WRITE, Lane
from ebsfs.core import checksum
from ebsfs.core.blocks import BLOCK_SIZE
from ebsfs.core.errors import GONE, BackendUnavailableError, EbsfsError
from ebsfs.write.spooled import BlockPuts, BlockSource, SpooledBlock

__all__ = [
    "BlockSink",
    "PutTuning",
    "RemoteWriter",
    "SpooledBlock",
]

log = logging.getLogger(__name__)

T = TypeVar("T")


class BlockSink(Protocol):
    """Where the write-back layer stores finished blocks."""

    async def put(self, index: int, data: BlockSource) -> bytes | None:
        """Store one full block; returns its raw SHA256 digest once AWS acknowledged it.

        ``data`` may be a loader, called once in the worker thread of the request (reading a
        block from the disk there costs the trio thread nothing), or a ``SpooledBlock`` the
        put API reads itself; if either answers None nothing is stored and None is returned."""
        ...


@dataclass(frozen=True)
class PutTuning:
    """Retry knobs; the defaults suit AWS."""

    transient_attempts: int = 8
    backoff: float = 0.2  # first pause; doubles, capped at max_backoff
    max_backoff: float = 5.0
    not_found_grace: float = 150.0  # coldsnap waits about this long for a new snapshot
    not_found_step: float = 2.0  # linear back-off step for those 404s

    def policy(self) -> RetryPolicy:
        """The retry policy of a block put: a number of attempts, the 404 grace."""
        return RetryPolicy(
            attempts=self.transient_attempts,
            backoff=self.backoff,
            max_backoff=self.max_backoff,
            not_found_grace=self.not_found_grace,
            not_found_step=self.not_found_step,
        )


class RemoteWriter:
    """``BlockSink`` over PutSnapshotBlock for ``snapshot_id``."""

    def __init__(
        self,
        api: BlockPuts,
        snapshot_id: str,
        limiter: trio.CapacityLimiter,
        *,
        started_at: float | None = None,
        counters: Counter[str] | None = None,
        tuning: PutTuning | None = None,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self.api = api
        self.snapshot_id = snapshot_id
        self.limiter = limiter
        # Calls of one limiter share its Health: the mount's reads and writes judge the
        # endpoint by one clock, and a put fails with the reads once it is down.
        self._calls = Calls(limiter)
        self._calls.health.configure(api=api)
        self._lane = Lane(snapshot_id, WRITE)
        self.clock = clock
        self.started_at = clock() if started_at is None else started_at
        self.counters: Counter[str] = counters if counters is not None else Counter()
        self.tuning = tuning or PutTuning()
        #: Index -> set when the worker of its latest attempt is done (see ``_attempt``).
        self._running: dict[int, trio.Event] = {}

    async def _attempt(self, index: int, data: BlockSource, block: list[bytes]) -> bool:
        """One attempt in a worker thread, never two of one index at once: an attempt
        abandoned at the io bound may still be on the wire, and older bytes stored after
        newer ones would lose the newer (their digest already counted as stored)."""
        earlier = self._running.get(index)
        if earlier is not None and not earlier.is_set():
            self.counters["put_waits"] += 1
            with trio.move_on_at(self._calls.health.deadline()):
                await earlier.wait()
            if not earlier.is_set():
                raise BackendUnavailableError(
                    f"PutSnapshotBlock {self.snapshot_id} block {index}: an earlier attempt, "
                    "abandoned at the io bound, has not ended"
                )
        done = self._running[index] = trio.Event()
        heard = Heard()

        def ended() -> None:
            # Throttled answers, botocore's retries and the upload process's included.
            self.counters["puts_throttled"] += heard.throttled
            done.set()
            if self._running.get(index) is done:
                del self._running[index]

        return await self._calls.run(
            self._put_sync, index, data, block, ended=ended, lane=self._lane, heard=heard
        )

    def _put_sync(self, index: int, data: BlockSource, block: list[bytes]) -> bool:
        # Loading and hashing in the same worker thread as the request: one thread hand-off
        # per block, and the trio thread (which answers every FUSE request) touches no bytes.
        # ``block`` keeps [bytes, digest] across attempts: a retry sends the same bytes.
        if isinstance(data, SpooledBlock):
            # Read, hashed and sent by the put API (in the upload process, or in this thread);
            # a retry reads the file again, and the digest is that of the bytes it stored.
            digest = self.api.put_spooled_block(
                self.snapshot_id, index, data.path, data.offset, data.skip_if_zero
            )
            if digest is None:
                return False
            block += (b"", digest)
            return True
        if not block:
            body = data if isinstance(data, bytes) else data()
            if body is None:
                return False
            block += (body, checksum.digest(body))
        self.api.put_block(self.snapshot_id, index, block[0], checksum.b64(block[1]))
        return True

    async def put(self, index: int, data: BlockSource) -> bytes | None:
        tries = Attempts(
            self.tuning.policy(),
            health=self._calls.health,
            age=lambda: self.clock() - self.started_at,
            progress=lambda: self._calls.windows.lane(self._lane).last_done,
        )
        block: list[bytes] = []
        while True:
            try:
                stored = await self._attempt(index, data, block)
            except EbsfsError as exc:
                again = tries.again(exc)
                gone = exc.kind == GONE
                if again is None:
                    if not gone:
                        self.counters["put_failures"] += 1
                    raise
                self.counters["put_retries"] += 1
                log.info(
                    "PutSnapshotBlock %s block %d: %s: %s",
                    self.snapshot_id,
                    index,
                    "not found yet, retrying" if gone else "retrying after",
                    exc,
                )
                await trio.sleep(again.pause)
                continue
            if not stored:
                return None
            self.counters["puts"] += 1
            self.counters["bytes_put"] += len(block[0]) or BLOCK_SIZE
            return block[1]
