"""The bottom read layer: a completed snapshot's blocks, fetched with GetSnapshotBlock.

Block tokens come from ListSnapshotBlocks in *windows* of block indexes fetched lazily around
what is read (``TokenWindows``: bounded memory whatever the volume size); an index a window
does not list is a hole, read as zeros with no request. Calls go through the mount's runner
(``ebsfs.aws.runner.Calls``) and are retried by the one policy (``ebsfs.aws.retry``): tokens
renewed, checksum mismatches fetched again, AWS's read lag after completion waited out.
docs/architecture.md and docs/errors.md say how reads fail and recover.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import trio

from ebsfs.aws.api import BlockPage
from ebsfs.aws.retry import Attempts, RetryPolicy
from ebsfs.aws.runner import Calls
from ebsfs.aws.windows import READ, Lane
from ebsfs.core.blocks import BlockIndex
from ebsfs.core.errors import (
    ApiError,
    BackendUnavailableError,
    ChecksumError,
    EbsfsError,
    EndpointDownError,
    InvalidTokenError,
    NotFoundError,
)
from ebsfs.read.base import BlockReader

log = logging.getLogger(__name__)

T = TypeVar("T")


class BlockApi(Protocol):
    """The part of ``ebsfs.aws.api.Api`` this layer uses (a fake in unit tests)."""

    def list_blocks(
        self,
        snapshot_id: str,
        start_index: int = 0,
        max_results: int = ...,
        next_token: str | None = None,
    ) -> BlockPage: ...

    def get_verified_block(
        self, snapshot_id: str, index: int, token: str
    ) -> tuple[bytes, bytes]: ...


@dataclass(frozen=True)
class RemoteTuning:
    """Knobs of the remote layer; the defaults suit AWS."""

    window_blocks: int = 8192  # 4 GiB of index range per ListSnapshotBlocks window
    renew_fraction: float = 0.8  # re-list after this share of a token lifetime
    checksum_attempts: int = 3
    token_attempts: int = 3
    # Failures botocore gave up on (its retry quota drains under heavy faults), bodies cut
    # short, throttling, a stopped endpoint: retried with back-off until the endpoint has
    # not answered any call of the mount for this long (Health), and never for longer than
    # four times this.
    io_timeout: float = 30.0
    not_found_grace: float = 180.0  # READ_LAG_GRACE
    backoff: float = 0.2  # first pause between our own retries; doubles, capped at 5 s

    def policy(self) -> RetryPolicy:
        """The retry policy of a block read: bounded by time, not by a number of attempts."""
        quarter = self.io_timeout / 4
        return RetryPolicy(
            attempts=math.inf,
            backoff=min(self.backoff, quarter),
            max_backoff=min(5.0, quarter),
            patience=4 * self.io_timeout,
            checksum_attempts=self.checksum_attempts,
            token_attempts=self.token_attempts,
            not_found_grace=self.not_found_grace,
        )


@dataclass
class _Window:
    start: int  # first index covered
    end: int  # one past the last index covered
    tokens: dict[int, str]
    renew_at: float  # trio.current_time() after which the tokens are renewed


class TokenWindows:
    """Block-token windows of every snapshot of a mount, bounded by a total token count.

    Least recently used windows are dropped first, so memory stays bounded whatever the
    volume sizes and the number of snapshots read (a token costs about 250 bytes).
    """

    def __init__(self, max_tokens: int = 200_000) -> None:
        self.max_tokens = max_tokens
        self._lru: OrderedDict[tuple[str, int], _Window] = OrderedDict()
        self._by_snapshot: dict[str, dict[int, _Window]] = {}
        self.tokens = 0

    def find(self, snapshot_id: str, index: int) -> _Window | None:
        for w in self._by_snapshot.get(snapshot_id, {}).values():
            if w.start <= index < w.end:
                self._lru.move_to_end((snapshot_id, w.start))
                return w
        return None

    def add(self, snapshot_id: str, new: _Window) -> None:
        mine = self._by_snapshot.setdefault(snapshot_id, {})
        for old in [w for w in mine.values() if w.start < new.end and new.start < w.end]:
            self._drop(snapshot_id, old.start)
        mine = self._by_snapshot.setdefault(snapshot_id, {})
        mine[new.start] = new
        self._lru[(snapshot_id, new.start)] = new
        self.tokens += len(new.tokens)
        while self.tokens > self.max_tokens and len(self._lru) > 1:
            (snap, start), _ = next(iter(self._lru.items()))
            self._drop(snap, start)

    def _drop(self, snapshot_id: str, start: int) -> None:
        w = self._lru.pop((snapshot_id, start))
        mine = self._by_snapshot[snapshot_id]
        del mine[start]
        if not mine:
            del self._by_snapshot[snapshot_id]
        self.tokens -= len(w.tokens)

    def __len__(self) -> int:
        return len(self._lru)


#: How long a 404 of a completed snapshot is taken for AWS's read lag, counted from its
#: completion: lags up to 53 s were observed (ebs-direct-api.md §4.4); three minutes of margin.
READ_LAG_GRACE = 180.0

#: Snapshot id -> epoch seconds of its completion, as far as this process knows (a few bytes
#: per snapshot this mount saw complete or listed).
_completed_at: dict[str, float] = {}


def seen_completed(snapshot_id: str, when: float | None = None) -> None:
    """Record that ``snapshot_id`` completed at ``when`` (epoch seconds; now if unknown):
    the read lag's grace counts from it. The earliest time known stays."""
    when = when or time.time()
    known = _completed_at.get(snapshot_id)
    if known is None or when < known:
        _completed_at[snapshot_id] = when


def since_completion(snapshot_id: str, since_first_sight: float) -> float:
    """Seconds since ``snapshot_id`` completed, else ``since_first_sight``; never less than
    ``since_first_sight``: a CompletionTime ahead of the local clock (skew) does not make
    the grace any longer than counted from first sight."""
    known = _completed_at.get(snapshot_id)
    return since_first_sight if known is None else max(time.time() - known, since_first_sight)


#: How often, at most, a snapshot answering 404 in the read lag's grace is described again
#: (is it still there?), whatever the number of reads waiting.
EXISTS_CHECK_INTERVAL = 10.0


class RemoteBlocks(BlockReader):
    """``BlockReader`` over the EBS direct APIs for one completed snapshot."""

    def __init__(
        self,
        api: BlockApi,
        calls: Calls,
        snapshot_id: str,
        volume_blocks: int,
        counters: Counter[str] | None = None,
        tuning: RemoteTuning | None = None,
        windows: TokenWindows | None = None,
    ) -> None:
        self.api = api
        self.calls = calls
        self.snapshot_id = snapshot_id
        self.volume_blocks = volume_blocks
        self.counters: Counter[str] = counters if counters is not None else Counter()
        self.tuning = tuning or RemoteTuning()
        self._windows = windows if windows is not None else TokenWindows()
        calls.health.configure(self.tuning.io_timeout, api)
        self._listing: dict[int, trio.Event] = {}
        self._created = trio.current_time()
        self._exists_checked = -math.inf  # when EC2 was last asked, in the read lag
        self._gone: str | None = None  # why EC2 says the snapshot is not readable any more
        self._lane = Lane(snapshot_id, READ)  # its window of AWS's limit per snapshot

    def stats(self) -> dict[str, int]:
        """Requests by API and outcome, bytes fetched, retries (shared between snapshots)."""
        return dict(self.counters)

    # ---- windows of block tokens ------------------------------------------------------------

    def _window_start(self, index: int) -> int:
        return index - index % self.tuning.window_blocks

    async def _window_for(self, index: int, *, fresh: bool = False) -> _Window:
        """The window covering ``index``, listed now if missing, stale or ``fresh``."""
        while True:
            w = self._windows.find(self.snapshot_id, index)
            now = trio.current_time()
            if w is not None and not fresh and (index not in w.tokens or now < w.renew_at):
                return w
            fresh = False
            start = w.start if w is not None else self._window_start(index)
            if start in self._listing:
                await self._listing[start].wait()
                continue
            done = self._listing[start] = trio.Event()
            try:
                new = await self._list_window(start)
            finally:
                del self._listing[start]
                done.set()
            self._windows.add(self.snapshot_id, new)
            if new.start <= index < new.end:
                return new

    async def _list_window(self, start: int) -> _Window:
        """List blocks from ``start`` until the window's end is passed or the listing ends."""
        want_end = min(start + self.tuning.window_blocks, self.volume_blocks)
        tokens: dict[int, str] = {}
        token: str | None = None
        expiry = math.inf
        covered = want_end
        page_restarts = 0
        started = trio.current_time()
        wall = time.time()
        while True:
            try:
                page = await self._call(
                    "ListSnapshotBlocks",
                    self.api.list_blocks,
                    self.snapshot_id,
                    start,
                    self.tuning.window_blocks,
                    token,
                )
            except InvalidTokenError:
                # A page token expired halfway: list the window again from its start.
                page_restarts += 1
                if page_restarts > self.tuning.token_attempts:
                    raise
                tokens.clear()
                token = None
                expiry = math.inf
                continue
            if page.blocks:
                expiry = min(expiry, page.expiry)
            tokens.update(page.blocks)
            if page.next_token is None:
                covered = max(want_end, self.volume_blocks)
                break
            last = page.blocks[-1][0] if page.blocks else start - 1
            if last >= want_end - 1:
                covered = last + 1
                break
            token = page.next_token
        lifetime = expiry - wall
        renew_at = started + lifetime * self.tuning.renew_fraction if tokens else math.inf
        self.counters["list_windows"] += 1
        return _Window(start, covered, tokens, renew_at)

    # ---- blocks -----------------------------------------------------------------------------

    async def read_block(self, index: BlockIndex) -> bytes | None:
        """The verified block, or None for a hole."""
        return (await self.read_verified(index))[0]

    async def read_verified(self, index: BlockIndex) -> tuple[bytes | None, bytes | None]:
        """The verified block and the raw SHA256 digest it was checked against, or
        ``(None, None)`` for a hole: a layer above that keeps the block (the disk cache) takes
        the digest rather than hashing the block again."""
        if not 0 <= index < self.volume_blocks:
            return None, None
        tries = Attempts(
            self.tuning.policy(),
            health=self.calls.health,
            age=lambda: since_completion(self.snapshot_id, trio.current_time() - self._created),
            progress=lambda: self.calls.windows.lane(self._lane).last_done,
        )
        fresh = False
        while True:
            try:
                w = await self._window_for(index, fresh=fresh)
                fresh = False
                block_token = w.tokens.get(index)
                if block_token is None:
                    self.counters["holes"] += 1
                    return None, None
                data, digest = await self._call(
                    "GetSnapshotBlock",
                    self.api.get_verified_block,
                    self.snapshot_id,
                    index,
                    block_token,
                    deadline=tries.bound,
                )
                self.counters["bytes_fetched"] += len(data)
                return data, digest
            except EbsfsError as exc:
                again = tries.again(exc)
                if again is None:
                    self._unreadable(index, exc, tries)
                    if isinstance(exc, NotFoundError):
                        gone = f"snapshot {self.snapshot_id} not readable: {exc}"
                        raise EbsfsError(gone) from exc
                    raise
                if again.renew:
                    fresh = True
                    continue
                if isinstance(exc, NotFoundError):
                    # AWS's read lag, unless EC2 says the snapshot is gone (deleted).
                    await self._check_still_there(exc)
                    fresh = True  # AWS's read lag: list the window again too
                self.counters["retries"] += 1
                await trio.sleep(again.pause)

    def _unreadable(self, index: int, exc: EbsfsError, tries: Attempts) -> None:
        """``exc`` is final for block ``index``: one log line says so."""
        what = f"snapshot {self.snapshot_id} block {index} unreadable"
        if isinstance(exc, ChecksumError):
            log.error("%s: checksum mismatch after %d attempts (%s)", what, tries.checksums, exc)
        elif isinstance(exc, InvalidTokenError):
            log.error("%s: token refused after re-listing (%s)", what, exc)
        elif isinstance(exc, NotFoundError):
            log.error("%s: %s", what, exc)
        elif isinstance(exc, BackendUnavailableError | ApiError):
            # While the endpoint is down one ERROR line said so (Health.mark_down): the reads
            # failed at once then are not each another.
            down = isinstance(exc, EndpointDownError)
            log.log(logging.INFO if down else logging.ERROR, "%s: %s", what, exc)

    async def _check_still_there(self, exc: NotFoundError) -> None:
        """A 404 in the read lag's grace is the lag only while EC2 still describes the
        snapshot as completed: asked at the first 404 and then at most every
        ``EXISTS_CHECK_INTERVAL`` seconds (shared by the reads of this snapshot); a deleted
        snapshot fails every read at once with NotFoundError (ENOENT), not after the grace."""
        if self._gone is None:
            describe = getattr(self.api, "describe_snapshot", None)
            now = trio.current_time()
            if describe is None or now - self._exists_checked < EXISTS_CHECK_INTERVAL:
                return
            self._exists_checked = now
            try:
                info = await self._call("DescribeSnapshots", describe, self.snapshot_id)
            except NotFoundError as gone:
                self._gone = f"deleted: {gone}"
            except EbsfsError as other:  # no ec2:DescribeSnapshots, say: wait the lag out
                log.debug("snapshot %s: DescribeSnapshots in the read lag: %s", self.snapshot_id,
                          other)
                return
            else:
                if getattr(info, "state", "completed") == "completed":
                    return
                self._gone = f"it is {info.state} now"
            log.error("snapshot %s is no longer readable (%s): its reads fail at once",
                      self.snapshot_id, self._gone)
        raise NotFoundError(
            f"snapshot {self.snapshot_id} does not exist any more ({self._gone})"
        ) from exc

    async def _call(
        self,
        api_name: str,
        fn: Callable[..., T],
        *args: Any,
        deadline: float | Callable[[], float] = math.inf,
    ) -> T:
        try:
            result = await self.calls.run(fn, *args, deadline=deadline, lane=self._lane)
        except EbsfsError as exc:
            self.counters[f"{api_name}.{type(exc).__name__}"] += 1
            raise
        self.counters[f"{api_name}.ok"] += 1
        return result


__all__ = [
    "READ_LAG_GRACE",
    "BlockApi",
    "RemoteBlocks",
    "RemoteTuning",
    "TokenWindows",
    "seen_completed",
    "since_completion",
]
