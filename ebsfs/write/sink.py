"""The bottom write layer: PutSnapshotBlock for one pending snapshot, with bounded retries.

botocore already retries throttling, 5xx answers and dropped connections (standard mode,
bounded); this layer adds its own bounded loop for what botocore leaves (ebs-direct-api.md §10):

* 404 SNAPSHOT_NOT_FOUND during the first ``not_found_grace`` seconds after StartSnapshot, which
  AWS can answer while a new snapshot is not yet writable (linear back-off, as coldsnap does);
* "Failed to read block data" (a body cut short on the way), which AWS calls retryable;
* throttling, 5xx and connection failures that outlived botocore's attempts or its retry quota;
* a checksum AWS computed differently (bytes damaged on the way): the same bytes are sent again.

Every call and every retry obeys the read path's bound (``remote.Health``, one per mount
limiter): a put fails with BackendUnavailableError once the endpoint has not answered for
``io_timeout`` seconds, and at once while it is known down; the block stays dirty in the
spool and is stored once the endpoint answers again.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import trio

from ebsfs.core import checksum
from ebsfs.core.blocks import BLOCK_SIZE
from ebsfs.core.errors import (
    RESEND,
    RETRY,
    BackendUnavailableError,
    EbsfsError,
    EndpointDownError,
    NotFoundError,
)
from ebsfs.read.remote import Calls
from ebsfs.write.spooled import BlockPuts, BlockSource, SpooledBlock

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


def transient(exc: EbsfsError) -> bool:
    """Whether another attempt of the same PutSnapshotBlock may succeed (not while the
    endpoint is known down: the call would fail at once again)."""
    if isinstance(exc, EndpointDownError):
        return False
    # One classification (ebsfs.core.errors.classify): throttling, quotas, 5xx, connection
    # failures, "Failed to read block data", and the put sent again after AWS's
    # WRITE_REQUEST_TIMEOUT or CONFLICTING_BLOCK_UPDATE.
    return exc.kind in (RETRY, RESEND)


async def retrying(
    call: Callable[..., Awaitable[T]], fn: Callable[..., T], *args: Any, attempts: int = 6
) -> T:
    """``await call(fn, *args)``, again after transient failures (idempotent calls only)."""
    for attempt in range(1, attempts + 1):
        try:
            return await call(fn, *args)
        except EbsfsError as exc:
            if not transient(exc) or attempt == attempts:
                raise
            log.info("%s: retrying after: %s", getattr(fn, "__name__", "call"), exc)
            await trio.sleep(min(5.0, 0.2 * 2 ** (attempt - 1)))
    raise AssertionError("unreachable")


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
        # The read path's runner (trio's thread cache under the same limiter): about half
        # the trio-side CPU of trio.to_thread.run_sync, which counts at one call per block.
        # Calls of one limiter share its Health: the mount's reads and writes judge the
        # endpoint by one clock, and a put fails with the reads once it is down.
        self._calls = Calls(limiter)
        self._calls.health.configure(api=api)
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

        def ended() -> None:
            done.set()
            if self._running.get(index) is done:
                del self._running[index]

        return await self._calls.run(self._put_sync, index, data, block, ended=ended)

    def _put_sync(self, index: int, data: BlockSource, block: list[bytes]) -> bool:
        # Loading and hashing in the same worker thread as the request: one thread hand-off
        # per block, and the trio thread (which answers every FUSE request) touches no bytes.
        # ``block`` keeps [bytes, digest] across attempts: a retry sends the same bytes.
        if isinstance(data, SpooledBlock):
            # Read, hashed and sent by the put API (in the upload process, or in this thread);
            # a retry reads the file again, and the digest is that of the bytes it stored.
            digest = self.api.put_spooled_block(
                self.snapshot_id, index, data.path, data.offset, data.skip_if_zero)
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
        t = self.tuning
        failures = 0
        not_found = 0
        block: list[bytes] = []
        while True:
            try:
                stored = await self._attempt(index, data, block)
            except NotFoundError as exc:
                not_found += 1
                if self.clock() - self.started_at > t.not_found_grace:
                    raise
                self.counters["put_retries"] += 1
                log.info(
                    "PutSnapshotBlock %s block %d: not found yet, retrying (%s)",
                    self.snapshot_id,
                    index,
                    exc,
                )
                await trio.sleep(t.not_found_step * not_found)
                continue
            except EbsfsError as exc:
                failures += 1
                pause = min(t.max_backoff, t.backoff * 2 ** (failures - 1))
                # The read path's bound: no retry once the endpoint has not answered for
                # io_timeout (the mount-wide clock), nor while it is known down.
                health = self._calls.health
                stalled = health.down or trio.current_time() + pause >= health.deadline()
                if not transient(exc) or failures >= t.transient_attempts or stalled:
                    self.counters["put_failures"] += 1
                    raise
                self.counters["put_retries"] += 1
                log.info(
                    "PutSnapshotBlock %s block %d: retrying after: %s", self.snapshot_id, index, exc
                )
                await trio.sleep(pause)
                continue
            if not stored:
                return None
            self.counters["puts"] += 1
            self.counters["bytes_put"] += len(block[0]) or BLOCK_SIZE
            return block[1]
