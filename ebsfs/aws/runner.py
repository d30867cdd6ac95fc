"""The one runner of blocking AWS calls: worker threads under the mount's limiter, every call
bounded by one mount-wide clock of the endpoint's answers (``Health``).

Read, write, seal and the catalog reach a thread through ``Calls.run``; the background probe
through ``in_thread`` without the limiter. docs/errors.md says what the bound is.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import weakref
from collections import Counter
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from ebsfs.aws.concurrency import Concurrency
from ebsfs.aws.pending import Pending
from ebsfs.aws.throttles import Heard
from ebsfs.aws.windows import Lane, Windows
from ebsfs.core.errors import (
    ApiError,
    BackendUnavailableError,
    EbsfsError,
    EndpointDownError,
    InvalidTokenError,
    throttling,
)

if TYPE_CHECKING:
    import outcome

log = logging.getLogger(__name__)

T = TypeVar("T")

__all__ = ["Calls", "Health", "endpoint_answered", "in_thread"]


class _Holder:
    """Borrows one limiter token for one call (the limiter tells borrowers apart)."""

    __slots__ = ()


def endpoint_answered(exc: BaseException) -> bool:
    """Whether a failed call still shows the endpoint at work: any answer (throttling included,
    whatever its status) but a 5xx or a body cut short; no answer at all does not."""
    if isinstance(exc, BackendUnavailableError):
        return False
    if isinstance(exc, ApiError) and not isinstance(exc, InvalidTokenError):
        if throttling(exc.code):
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
        #: trio.current_time() of the last call that succeeded: the mount makes progress
        #: (throttling that lets calls through only slows it down, ``ebsfs.aws.retry``).
        self.last_done = -math.inf
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

    def deadline(self, start: bool = True) -> float:
        """When a call waiting now gives up unless something answers first. ``start``
        False: only asked (a retry's pause), the clock does not start if no call waits."""
        if self.io_timeout is None:
            return math.inf
        now = trio.current_time()
        last = self._last_answer()
        if self._since is None or self._since < last:
            if not start:
                return max(last, now) + self.io_timeout
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
                await in_thread(probe, timeout)
            except EbsfsError as exc:
                log.debug("probe: %s", exc)
                return endpoint_answered(exc)
            return True
        return False


#: The ``Health`` of each limiter (a mount's API calls share one limiter).
_HEALTH: weakref.WeakKeyDictionary[trio.CapacityLimiter, Health] = weakref.WeakKeyDictionary()


class Calls:
    """Runs blocking API calls in worker threads, at most ``limiter.total_tokens`` at once.

    Every call, its wait for a thread included, is bounded by the mount-wide clock of
    ``health`` (``Health``): a call that outlives it fails with ``BackendUnavailableError``
    and its thread is abandoned (it ends on its own within botocore's timeouts, still
    holding its limiter token, and its answer is dropped), unless the endpoint answered
    within the bound (a call of many requests, such as DescribeSnapshots' pages, heard by
    ``Health.heard``): it is waited for on; while the endpoint is down calls fail at once
    (after asking for a probe and waiting for it a moment, ``Health.admit``).
    """

    def __init__(self, limiter: trio.CapacityLimiter, io_timeout: float | None = None) -> None:
        self.limiter = limiter
        self.health = Health.of(limiter)
        if io_timeout is not None:
            self.health.io_timeout = io_timeout
        #: The adaptive window of the limiter (API calls only: those with an io_timeout).
        self.window = Concurrency.of(limiter, self.health.counters)
        #: Its lanes per snapshot and direction, and the directions' shares.
        self.windows = Windows.of(self.window)

    @property
    def last_ok(self) -> float:
        """trio.current_time() of the last answer of the endpoint."""
        return self.health.last_ok

    async def run(
        self,
        fn: Callable[..., T],
        *args: Any,
        deadline: float | Callable[[], float] = math.inf,
        ended: Callable[[], None] | None = None,
        lane: Lane | None = None,
        heard: Heard | None = None,
    ) -> T:
        """``fn(*args)`` in a worker thread; gives up at ``deadline`` (a time, or a function
        giving it: it may move on while the call waits, ``Attempts.bound``) or the health bound.
        ``lane``: a block call's snapshot and direction, whose window it takes a slot of
        (``ebsfs.aws.windows``); ``heard`` gets the throttled answers it heard, complete when
        ``ended`` is called: once, in the trio thread, when the worker is done with ``fn`` or at
        once if it never started (after the return when the call was abandoned)."""
        health = self.health
        try:
            await health.admit()
        except BaseException:
            if ended is not None:
                ended()
            raise
        adapt = health.io_timeout is not None
        windows = self.windows if adapt else None
        heard = heard or Heard()
        holder = _Holder()
        slotted = False
        finished = False

        def finish() -> None:
            # The caller's ``ended``, once: the worker is done, or the call never started.
            nonlocal finished
            if not finished:
                finished = True
                if ended is not None:
                    ended()

        def done() -> None:
            # The worker is done (abandoned calls too), or its wait for a thread was cut
            # short (it may wait again): free the lane's slot, tell the windows what it heard.
            nonlocal slotted
            if slotted and windows is not None and lane is not None:
                slotted = False
                windows.release(lane, holder)
            if windows is not None and heard.ran:
                error = heard.error
                answered = error is None or (
                    isinstance(error, EbsfsError) and endpoint_answered(error)
                )
                windows.ended(lane, heard, answered)
            if call.started:
                finish()

        if windows is not None:
            windows.started(lane)
        call = Pending()
        limit = deadline if callable(deadline) else (lambda: deadline)
        bound = min(limit(), health.deadline())
        try:
            while True:
                with trio.move_on_at(bound) as scope:
                    health._scopes[scope] = limit()
                    try:
                        if call.started:
                            result = await call.wait()
                        else:
                            if windows is not None and lane is not None and not slotted:
                                await windows.acquire(lane, holder)
                                slotted = True
                            result = await self._run(heard.run, (fn, *args), done, call)
                    except EbsfsError as exc:
                        if endpoint_answered(exc):
                            health.answered()
                        else:
                            health.failed()
                        raise
                    finally:
                        del health._scopes[scope]
                    health.answered()
                    health.last_done = trio.current_time()
                    return result
                # The bound passed, but the endpoint may still be answering (``Health.heard``):
                # a call of many requests (DescribeSnapshots' pages) or in botocore's retries
                # is at work, and a call waiting for a slot behind such calls waits its turn.
                if health.io_timeout is not None:
                    bound = min(limit(), health._last_answer() + health.io_timeout)
                if call.done or trio.current_time() < bound:
                    continue
                call.abandon()
                break
            health.failed()
            raise BackendUnavailableError(
                f"{getattr(fn, '__name__', 'call')}: no answer within the bound "
                f"(--io-timeout {health.io_timeout:g} s since the endpoint last answered)"
            )
        except BaseException:
            if not call.started:
                # It never ran: nothing holds its slot but this task, and nothing ends it later.
                if slotted and windows is not None and lane is not None:
                    slotted = False
                    windows.release(lane, holder)
                finish()
            raise

    async def _run(
        self,
        fn: Callable[..., T],
        args: tuple[Any, ...],
        ended: Callable[[], None] | None,
        call: Pending | None = None,
    ) -> T:
        return await in_thread(fn, *args, limiter=self.limiter, ended=ended, call=call)


async def in_thread(
    fn: Callable[..., T],
    *args: Any,
    limiter: trio.CapacityLimiter | None = None,
    ended: Callable[[], None] | None = None,
    call: Pending | None = None,
) -> T:
    """``fn(*args)`` in a worker thread, holding a token of ``limiter`` (if any) until the
    worker is done; the only way ebsfs hands an AWS call to a thread.

    The call goes straight to trio's thread cache (``trio.lowlevel.start_thread_soon``) and
    its outcome comes back with ``TrioToken.run_sync_soon``: less trio-side CPU per call than
    ``trio.to_thread.run_sync`` (docs/benchmarks.md), which counts at one call per block.
    A cancelled caller abandons the worker (its answer is dropped). ``ended`` is called once
    in the trio thread when the worker is done, or at once if it never started. ``call``:
    the outcome goes there, and a cancelled wait leaves it to be waited for again
    (``Calls.run``)."""
    call = call if call is not None else Pending()
    holder = _Holder()
    if limiter is not None:
        try:
            await limiter.acquire_on_behalf_of(holder)
        except BaseException:
            if ended is not None:
                ended()
            raise
    token = trio.lowlevel.current_trio_token()

    def back(result: outcome.Outcome[T]) -> None:
        # In the trio thread, once the worker is done: its token is free only now.
        if limiter is not None:
            limiter.release_on_behalf_of(holder)
        if ended is not None:
            ended()
        call.deliver(result)

    def deliver(result: outcome.Outcome[T]) -> None:
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(back, result)

    try:
        trio.lowlevel.start_thread_soon(partial(fn, *args), deliver)
    except BaseException:
        if limiter is not None:
            limiter.release_on_behalf_of(holder)
        if ended is not None:
            ended()
        raise
    call.started = True
    result: T = await call.wait()
    return result
