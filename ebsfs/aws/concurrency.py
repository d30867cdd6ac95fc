"""How many AWS calls a mount keeps in flight: found, not fixed (docs/operations.md, tuning).

A window starts at its limiter's tokens (the mount's: ``--max-concurrency``; a snapshot's:
less, ``ebsfs.aws.windows``) and grows to its ceiling while calls wait for a token, nothing
is throttled and throughput follows (a step that does not raise it holds growth for ``HOLD``
periods): by a quarter a period until AWS first throttles, then by an eighth up to three
quarters of the limit found, then by one. EBS throttling halves it
(once per period: the calls in flight when AWS said "slow down" all hear it), never below its
floor (a quarter of the ceiling, or of the start).
Throttling alone never fails a call: the retry policy waits it out (``ebsfs.aws.retry``).
"""

from __future__ import annotations

import math
import weakref
from collections import Counter
from collections.abc import Callable

import trio

__all__ = ["Concurrency"]

#: What the window is multiplied by on throttling.
BACKOFF = 0.5
#: Seconds over which throughput is measured and the window moved at most once.
PERIOD = 1.0
#: Periods without growth after a step that did not raise throughput.
HOLD = 30


class Concurrency:
    """The adaptive window of one limiter (``Concurrency.of``): ``started`` and ``ended``
    around every call; ``limiter.total_tokens`` follows ``limit``."""

    def __init__(
        self,
        limiter: trio.CapacityLimiter,
        *,
        floor: int | None = None,
        ceiling: int | None = None,
        period: float = PERIOD,
        clock: Callable[[], float] = trio.current_time,
        counters: Counter[str] | None = None,
    ) -> None:
        self.limiter = limiter
        self.ceiling = max(1, int(limiter.total_tokens) if ceiling is None else ceiling)
        # Never below a quarter of the ceiling: throttling that does not follow the calls in
        # flight (another tool's load, a server's --throttle-rate) must not starve the mount.
        self.floor = max(1, min(self.ceiling // 4 if floor is None else floor, self.ceiling))
        self.period = period
        self.clock = clock
        self.counters: Counter[str] = counters if counters is not None else Counter()
        #: The window when AWS last throttled (0: never): the limit found.
        self.found = 0
        #: The Api's count of throttled answers already told (``Calls``).
        self.heard = 0
        #: clock() of the last call that succeeded (``Windows.ended``): calls go through.
        self.last_done = -math.inf
        self._start = -math.inf
        self._done = 0  # calls answered this period
        self._throttled = 0  # throttled answers this period
        self._waited = False  # a call waited for a token this period
        self._rate = 0.0  # calls answered per second, last period
        self._backed_off = -math.inf
        self._grew: tuple[float, float] | None = None  # (rate before, gain hoped) of a step
        self._hold_until = -math.inf  # no growth before (a step bought nothing)
        self._answers = 0
        self._throttled_total = 0
        self._publish()

    @classmethod
    def of(cls, limiter: trio.CapacityLimiter, counters: Counter[str] | None = None) -> Concurrency:
        """The ``Concurrency`` shared by every runner of ``limiter``."""
        found = _WINDOWS.get(limiter)
        if found is None:
            found = _WINDOWS[limiter] = cls(limiter, counters=counters)
        return found

    @property
    def limit(self) -> int:
        return int(self.limiter.total_tokens)

    def started(self, waiting: bool = False) -> None:
        """A call asks for a token: was the window full (or the call ``waiting`` anyway)?"""
        if waiting or self.limiter.borrowed_tokens >= self.limiter.total_tokens:
            self._waited = True

    def ended(self, throttled: bool = False) -> None:
        """An answer: a call's, or one botocore heard and retried (``throttled``: AWS said
        slow down)."""
        now = self.clock()
        if self._start == -math.inf:
            self._start = now
        self._answers += 1
        if throttled:
            self._throttled += 1
            self._throttled_total += 1
            if now - self._backed_off >= self.period:
                self._back_off(now)
        else:
            self._done += 1
        if now - self._start >= self.period:
            self._end_period(now)

    def _back_off(self, now: float) -> None:
        self.found = self.limit
        self._set(max(self.floor, int(self.limit * BACKOFF)))
        self._backed_off = now
        self._grew = None  # throughput after a back-off says nothing of the last step
        self.counters["concurrency_backoffs"] += 1
        self._publish()

    def _end_period(self, now: float) -> None:
        rate = self._done / (now - self._start)
        if self._grew is not None:
            before, gain = self._grew
            self._grew = None
            if self._waited and rate < before * (1 + gain / 2):
                # The last step bought no throughput (CPU, the reader or the server holds it
                # back): more calls in flight would only cost memory and threads.
                self._hold_until = now + HOLD * self.period
        if (
            self._throttled == 0
            and self._waited
            and self.limit < self.ceiling
            and now - self._backed_off >= self.period
            and now >= self._hold_until
            and rate >= self._rate
        ):
            step = self._step()
            self._grew = (rate, step / self.limit)
            self._set(self.limit + step)
        self._rate = rate
        self._start = now
        self._done = self._throttled = 0
        self._waited = False
        self._publish()

    def _step(self) -> int:
        """How much the window grows: fast while no limit is known, or far below it."""
        limit = self.limit
        if self.found == 0:
            return max(1, limit // 4)
        if limit < self.found * 3 // 4:
            return max(1, limit // 8)
        return 1

    def _set(self, limit: int) -> None:
        # Tokens already borrowed stay borrowed; a lower total only stops new ones.
        self.limiter.total_tokens = max(self.floor, min(self.ceiling, limit))

    def _publish(self) -> None:
        # At most once a period (and at each back-off): not a cost per call.
        c = self.counters
        c["concurrency_limit"] = self.limit
        c["concurrency_found"] = self.found
        c["throttled_share_pct"] = (
            round(100 * self._throttled_total / self._answers) if self._answers else 0
        )


_WINDOWS: weakref.WeakKeyDictionary[trio.CapacityLimiter, Concurrency] = (
    weakref.WeakKeyDictionary()
)
