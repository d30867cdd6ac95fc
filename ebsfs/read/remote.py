"""The bottom read layer: a completed snapshot's blocks, fetched with GetSnapshotBlock.

Block tokens come from ListSnapshotBlocks in *windows* of block indexes fetched lazily around
what is read, so a 64 TiB volume needs no full listing before its first read. Windows are kept
up to a total token count shared by the snapshots of a mount (``TokenWindows``, least recently
used dropped), which bounds memory whatever the volume size. An index a window does not list
is a hole: it reads as zeros with no request.

A window whose tokens near their ExpiryTime is fetched again before use, and a token that AWS
refuses (INVALID_BLOCK_TOKEN) drops its window and is retried once re-listed. A block failing
its SHA256 check is fetched again, a bounded number of times, then the read fails with
ChecksumError and one log line. ``read_verified`` also hands up the digest the block was
checked against, for a layer above that keeps blocks and would otherwise hash them again. A
snapshot that completed moments ago may answer 404 for up to a minute (ebs-direct-api.md
§4.4): such answers are retried until ``not_found_grace`` (3 minutes) after its completion
(``seen_completed``: DescribeSnapshots' CompletionTime, or the moment ebsfs saw it complete),
or after this layer was created when that is unknown. Connection failures and 5xx answers
were already retried by botocore (bounded); what it gives up on is retried here with
back-off until the endpoint has not answered any call of the mount for ``io_timeout``
seconds (``Health``, one clock per mount), or at most four times that (a backend that only
throttles), then the read fails (EIO at the FUSE edge). Every call is bounded by that clock
even when its thread hangs (``Calls``), calls fail at once while the endpoint is known down,
and one probe task marks it up again: nothing hangs, reads resume without a remount, and
throttling alone is never an error.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import weakref
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import trio

from ebsfs.aws.api import BlockPage
from ebsfs.core.blocks import BlockIndex
from ebsfs.core.errors import (
    RETRY,
    ApiError,
    BackendUnavailableError,
    ChecksumError,
    EbsfsError,
    EndpointDownError,
    InvalidTokenError,
    NotFoundError,
)
from ebsfs.read.base import BlockReader

if TYPE_CHECKING:
    import outcome

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


class _Holder:
    """Borrows one limiter token for one call (the limiter tells borrowers apart)."""

    __slots__ = ()


def endpoint_answered(exc: BaseException) -> bool:
    """Whether a failed call still shows the endpoint at work: any answer but a 5xx (throttling
    included, whatever its status), a body cut short, or no answer at all."""
    if isinstance(exc, BackendUnavailableError):
        return False
    if isinstance(exc, ApiError) and not isinstance(exc, InvalidTokenError):
        if "Throttl" in exc.code or exc.code in ("SlowDown", "RequestLimitExceeded"):
            return True
        return not (exc.code == "IncompleteBody" or exc.status >= 500)
    return isinstance(exc, EbsfsError)


class Health:
    """Whether the endpoint answers, judged mount-wide from the last answer only.

    ``io_timeout`` seconds after the last answer (or after the first call made since, when
    the mount was idle) with calls waiting and none answered, the endpoint is *down*: every
    call fails at once with ``BackendUnavailableError`` and one prober task (a cheap request,
    with back-off) marks it up again at its first answer. Throttling and 4xx answers are
    answers: they never count towards "down". One ``Health`` per limiter (``Health.of``), so
    the read and write paths of a mount share it. ``io_timeout`` None: calls are unbounded
    (a limiter of local disk work, not of API calls).
    """


    def __init__(self, io_timeout: float | None = None) -> None:
        self.io_timeout = io_timeout
        #: trio.current_time() of the last answer (a success, throttling, a 4xx...).
        self.last_ok = -math.inf
        #: Start of the first call made after ``last_ok`` (None: none since).
        self._since: float | None = None
        #: When the endpoint was found down (None: up).
        self.down_since: float | None = None
        #: A cheap blocking request that returns once the endpoint answered (``Api.probe``).
        self.probe: Callable[[float], object] | None = None
        #: time.monotonic() of the last answer worker threads heard (``Api.last_answer``).
        self.heard: Callable[[], float] | None = None
        #: Cancel scopes of the calls waiting, with the deadline their caller gave.
        self._scopes: dict[trio.CancelScope, float] = {}
        self._bumped = -math.inf  # when answered() last moved their deadlines
        self._prober = False
        self._wake = trio.Event()  # a call asks the prober for a probe now
        self._up = trio.Event()  # set when the endpoint, found down, answers again
        self.counters: Counter[str] = Counter()

    def configure(self, io_timeout: float | None = None, api: object = None) -> None:
        """Take the mount's ``io_timeout`` and, from ``api``, a probe and an answer clock
        (``Api.probe``, ``Api.last_answer``; an upload process's ``fallback`` Api)."""
        if io_timeout is not None:
            self.io_timeout = io_timeout
        for source in (api, getattr(api, "fallback", None)):
            if self.probe is None:
                self.probe = getattr(source, "probe", None)
            if self.heard is None:
                heard = getattr(source, "last_answer", None)
                self.heard = heard if callable(heard) else None

    @classmethod
    def of(cls, limiter: trio.CapacityLimiter) -> Health:
        """The ``Health`` shared by every ``Calls`` of ``limiter``."""
        health = _HEALTH.get(limiter)
        if health is None:
            health = _HEALTH[limiter] = cls()
        return health

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def _last_answer(self) -> float:
        last = self.last_ok
        if self.heard is not None:
            mono = self.heard()
            if mono > -math.inf:
                last = max(last, mono - time.monotonic() + trio.current_time())
        return last

    def deadline(self) -> float:
        """When a call waiting now gives up unless something answers first."""
        if self.io_timeout is None:
            return math.inf
        now = trio.current_time()
        last = self._last_answer()
        if self._since is None or self._since < last:
            self._since = now  # the first call since the last answer: the clock starts now
        return max(last, self._since) + self.io_timeout

    async def admit(self) -> None:
        """While the endpoint is known down: ask for a probe now, wait a moment for its
        verdict (at most a second, or a quarter of io_timeout), and raise
        EndpointDownError unless the endpoint answered; a call right after it came back
        goes through, and none waits for the bound again."""
        if self.down_since is None:
            return
        self._wake.set()
        up = self._up
        with trio.move_on_after(min(1.0, (self.io_timeout or 4.0) / 4)):
            await up.wait()
        if self.down_since is not None:
            self.counters["calls_failed_fast"] += 1
            raise EndpointDownError(
                f"the endpoint has not answered for {self._silence():.0f} s "
                f"(--io-timeout {self.io_timeout:g} s); failing at once until it answers again"
            )

    def _silence(self) -> float:
        last = self._last_answer()
        origin = last if last > -math.inf else (self._since or trio.current_time())
        return trio.current_time() - origin

    def answered(self) -> None:
        """The endpoint answered: the clock restarts, calls waiting get a full bound again."""
        now = trio.current_time()
        self.last_ok = now
        self._since = None
        if self.down_since is not None:
            log.warning(
                "the endpoint answers again after %.0f s down: calls resume", now - self.down_since
            )
            self.down_since = None
            self._up.set()
        t = self.io_timeout
        if self._scopes and t is not None and now - self._bumped >= t / 8:
            # At most eight passes per io_timeout over the calls waiting (not one per call
            # answered): each then waits until between T and 1.125 T after the last answer.
            self._bumped = now
            for scope, cap in self._scopes.items():
                scope.deadline = min(cap, now + t * 1.125)

    def failed(self) -> None:
        """A call got no answer; past the bound, the endpoint is down."""
        if self.io_timeout is None or self.down_since is not None:
            return
        if self._since is not None and trio.current_time() >= self.deadline():
            self.mark_down()

    def mark_down(self) -> None:
        if self.down_since is not None or self.io_timeout is None:
            return
        self.down_since = trio.current_time()
        self._up = trio.Event()
        self.counters["endpoint_down"] += 1
        log.error(
            "the endpoint has not answered for %.0f s (--io-timeout %g s): calls fail at once "
            "with EIO until it answers again (probing it in the background)",
            self._silence(),
            self.io_timeout,
        )
        if not self._prober:
            self._prober = True
            trio.lowlevel.spawn_system_task(self._probe_until_up)

    async def _probe_until_up(self) -> None:
        assert self.io_timeout is not None
        pause = min(1.0, self.io_timeout / 4)
        last = -math.inf
        try:
            while self.down_since is not None:
                # Back-off, cut short when a call asks; at most two probes a second.
                with trio.move_on_after(pause):
                    await self._wake.wait()
                if not self._wake.is_set():
                    pause = min(pause * 2, max(self.io_timeout / 2, 1.0), 10.0)
                self._wake = trio.Event()
                await trio.sleep_until(last + 0.5)
                if self.down_since is None:
                    break
                if self.probe is None:
                    # Nothing to ask with: let calls try again, with a full bound.
                    self._since = None
                    self.down_since = None
                    self._up.set()
                    log.warning("the endpoint is tried again (no probe to ask it with)")
                    break
                last = trio.current_time()
                self.counters["probes"] += 1
                if await self._probe_once(self.probe, self.io_timeout):
                    self.answered()
        except Exception:  # a bug here must not end the mount
            log.exception("probing the endpoint failed unexpectedly")
            self.down_since = None
            self._up.set()
        finally:
            self._prober = False

    @staticmethod
    async def _probe_once(probe: Callable[[float], object], timeout: float) -> bool:
        # Not under the limiter: abandoned calls may hold all of its tokens while it is down.
        with trio.move_on_after(timeout):
            try:
                await trio.to_thread.run_sync(probe, timeout, abandon_on_cancel=True)
            except EbsfsError as exc:
                log.debug("probe: %s", exc)
                return endpoint_answered(exc)
            return True
        return False


#: The ``Health`` of each limiter (a mount's API calls share one limiter).
_HEALTH: weakref.WeakKeyDictionary[trio.CapacityLimiter, Health] = weakref.WeakKeyDictionary()


class Calls:
    """Runs blocking API calls in worker threads, at most ``limiter.total_tokens`` at once.

    A call goes straight to trio's thread cache (``trio.lowlevel.start_thread_soon``) and its
    outcome comes back with ``TrioToken.run_sync_soon``: about half the CPU of
    ``trio.to_thread.run_sync`` per call (no context copy, thread naming or cancellation
    machinery beyond what a call needs), which counts at one call per 512 KiB block.

    Every call, its wait for a thread included, is bounded by the mount-wide clock of
    ``health`` (``Health``): a call that outlives it fails with ``BackendUnavailableError``
    and its thread is abandoned (it ends on its own within botocore's timeouts, still
    holding its limiter token, and its answer is dropped); while the endpoint is down calls
    fail at once (after asking for a probe and waiting for it a moment, ``Health.admit``).
    """

    def __init__(self, limiter: trio.CapacityLimiter, io_timeout: float | None = None) -> None:
        self.limiter = limiter
        self.health = Health.of(limiter)
        if io_timeout is not None:
            self.health.io_timeout = io_timeout

    @property
    def last_ok(self) -> float:
        """trio.current_time() of the last answer of the endpoint."""
        return self.health.last_ok

    async def run(
        self,
        fn: Callable[..., T],
        *args: Any,
        deadline: float = math.inf,
        ended: Callable[[], None] | None = None,
    ) -> T:
        """``fn(*args)`` in a worker thread; gives up at ``deadline`` or the health bound.

        ``ended`` is called once in the trio thread when the worker is done with ``fn``, or
        at once if it never started: later than the return when the call was abandoned."""
        health = self.health
        try:
            await health.admit()
        except BaseException:
            if ended is not None:
                ended()
            raise
        with trio.move_on_at(min(deadline, health.deadline())) as scope:
            health._scopes[scope] = deadline
            try:
                result = await self._run(fn, args, ended)
            except EbsfsError as exc:
                if endpoint_answered(exc):
                    health.answered()
                else:
                    health.failed()
                raise
            finally:
                del health._scopes[scope]
            health.answered()
            return result
        health.failed()
        raise BackendUnavailableError(
            f"{getattr(fn, '__name__', 'call')}: no answer within the bound "
            f"(--io-timeout {health.io_timeout:g} s since the endpoint last answered)"
        )

    async def _run(
        self, fn: Callable[..., T], args: tuple[Any, ...], ended: Callable[[], None] | None
    ) -> T:
        holder = _Holder()
        try:
            await self.limiter.acquire_on_behalf_of(holder)
        except BaseException:
            if ended is not None:
                ended()
            raise
        task = trio.lowlevel.current_task()
        token = trio.lowlevel.current_trio_token()
        abandoned = False

        def back(result: outcome.Outcome[T]) -> None:
            # In the trio thread, once the worker is done: its token is free only now.
            self.limiter.release_on_behalf_of(holder)
            if ended is not None:
                ended()
            if not abandoned:
                trio.lowlevel.reschedule(task, result)

        def deliver(result: outcome.Outcome[T]) -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(back, result)

        def abort(_: Any) -> trio.lowlevel.Abort:
            # A cancelled or timed-out call must not wait for a stuck socket; the thread
            # finishes on its own within botocore's timeouts and its answer is dropped.
            nonlocal abandoned
            abandoned = True
            return trio.lowlevel.Abort.SUCCEEDED

        try:
            trio.lowlevel.start_thread_soon(partial(fn, *args), deliver)
        except BaseException:
            self.limiter.release_on_behalf_of(holder)
            if ended is not None:
                ended()
            raise
        result: T = await trio.lowlevel.wait_task_rescheduled(abort)
        return result


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
    """Seconds since ``snapshot_id`` completed, else ``since_first_sight``."""
    known = _completed_at.get(snapshot_id)
    return since_first_sight if known is None else time.time() - known


def _retryable(exc: EbsfsError) -> bool:
    # One classification (ebsfs.core.errors.classify): throttling, quotas (402), 5xx, transient.
    return exc.kind == RETRY and not isinstance(exc, InvalidTokenError)


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
        t = self.tuning
        checksum_failures = token_failures = 0
        started = trio.current_time()
        hard_deadline = started + 4 * t.io_timeout
        fresh = False
        pause = min(t.backoff, t.io_timeout / 4)
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
                    deadline=hard_deadline,
                )
                self.counters["bytes_fetched"] += len(data)
                return data, digest
            except ChecksumError as exc:
                checksum_failures += 1
                if checksum_failures >= t.checksum_attempts:
                    log.error(
                        "snapshot %s block %d unreadable: checksum mismatch after %d attempts (%s)",
                        self.snapshot_id,
                        index,
                        checksum_failures,
                        exc,
                    )
                    raise
            except InvalidTokenError as exc:
                token_failures += 1
                if token_failures >= t.token_attempts:
                    log.error(
                        "snapshot %s block %d unreadable: token refused after re-listing (%s)",
                        self.snapshot_id,
                        index,
                        exc,
                    )
                    raise
                fresh = True
                continue
            except NotFoundError as exc:
                since = since_completion(self.snapshot_id, trio.current_time() - self._created)
                if since >= t.not_found_grace:
                    log.error("snapshot %s block %d unreadable: %s", self.snapshot_id, index, exc)
                    raise EbsfsError(f"snapshot {self.snapshot_id} not readable: {exc}") from exc
                fresh = True
            except (BackendUnavailableError, ApiError) as exc:
                # Throttling or a few failures while other calls succeed is a busy backend,
                # not a broken one: give up only when the endpoint has not answered for
                # io_timeout (the mount-wide clock of Health), or is known down.
                health = self.calls.health
                now = trio.current_time()
                left = health.deadline() - now
                if not _retryable(exc) or health.down or left <= 0 or now + pause >= hard_deadline:
                    # While the endpoint is down one ERROR line said so (Health.mark_down):
                    # the reads failed at once then are not each another.
                    down = isinstance(exc, EndpointDownError)
                    log.log(
                        logging.INFO if down else logging.ERROR,
                        "snapshot %s block %d unreadable: %s",
                        self.snapshot_id,
                        index,
                        exc,
                    )
                    raise
                self.counters["retries"] += 1
                await trio.sleep(min(pause, left))
                pause = min(pause * 2, 5.0, t.io_timeout / 4)
                continue
            self.counters["retries"] += 1
            await trio.sleep(pause)
            pause = min(pause * 2, 5.0, t.io_timeout / 4)

    async def _call(
        self, api_name: str, fn: Callable[..., T], *args: Any, deadline: float = math.inf
    ) -> T:
        try:
            result = await self.calls.run(fn, *args, deadline=deadline)
        except EbsfsError as exc:
            self.counters[f"{api_name}.{type(exc).__name__}"] += 1
            raise
        self.counters[f"{api_name}.ok"] += 1
        return result


__all__ = [
    "READ_LAG_GRACE",
    "BlockApi",
    "Calls",
    "RemoteBlocks",
    "RemoteTuning",
    "TokenWindows",
    "seen_completed",
    "since_completion",
]
