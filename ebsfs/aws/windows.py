"""The windows a mount's AWS calls take slots of, one per limit AWS throttles by its Reason
(docs/operations.md, "Concurrency and throttling").

- a lane per snapshot and direction (reads, writes: AWS counts them apart), for
  RESOURCE_LEVEL_THROTTLE; it starts at ``START`` and grows to ``--max-concurrency``;
- the mount's window, the account's limit (ACCOUNT_THROTTLED), ``--max-concurrency`` at most.

A block call takes a slot of its lane, then of its direction's share, then of the mount's: one
direction holds at most ``SHARE`` of the mount's window, so reads of one snapshot never take
every slot from writes of another (nor writes from reads). Calls without a lane (EC2's, the
catalog's) take the mount's slot only. A throttled answer without a Reason backs off its lane.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import trio

from ebsfs.aws.concurrency import Concurrency
from ebsfs.aws.throttles import Heard

__all__ = ["ACCOUNT", "READ", "RESOURCE", "WRITE", "Lane", "Windows"]

READ, WRITE = "read", "write"
RESOURCE, ACCOUNT = "RESOURCE_LEVEL_THROTTLE", "ACCOUNT_THROTTLED"

#: A lane's first window: 32 calls in flight are 320 a second at AWS's 100 ms (of the 1000 a
#: second AWS allows a snapshot); growth finds more where throughput follows.
START = 32
#: Most of the mount's window one direction may hold.
SHARE = 0.75
#: Idle lanes kept (a lane holding no call is dropped past this many: it starts again).
MAX_LANES = 256


@dataclass(frozen=True)
class Lane:
    """The snapshot and direction (``READ`` or ``WRITE``) of a block call."""

    snapshot_id: str
    direction: str


class Windows:
    """The lanes and shares of one mount window (``Windows.of``); ``counters`` sums them up:
    ``lane_limit_max``, ``lane_found_max``, ``lane_backoffs``, ``throttled_share_pct``."""

    def __init__(self, account: Concurrency, *, start: int = START) -> None:
        self.account = account
        self.start = max(1, min(start, account.ceiling))
        self.counters = account.counters
        self._lanes: dict[Lane, Concurrency] = {}
        self._shares = {d: trio.CapacityLimiter(self._share_size()) for d in (READ, WRITE)}
        self._answers = 0
        self._throttled = 0

    @classmethod
    def of(cls, account: Concurrency) -> Windows:
        found = _WINDOWS.get(account)
        if found is None:
            found = _WINDOWS[account] = cls(account)
        return found

    def _share_size(self) -> int:
        return max(1, math.ceil(self.account.limit * SHARE))

    def lane(self, lane: Lane) -> Concurrency:
        """The window of ``lane``, made at its first call."""
        window = self._lanes.get(lane)
        if window is None:
            if len(self._lanes) >= MAX_LANES:
                for key in [k for k, w in self._lanes.items() if not w.limiter.borrowed_tokens]:
                    del self._lanes[key]
            window = Concurrency(
                trio.CapacityLimiter(self.start),
                ceiling=self.account.ceiling,
                floor=max(1, self.start // 4),
                period=self.account.period,
                clock=self.account.clock,
            )
            self._lanes[lane] = window
        return window

    def started(self, lane: Lane | None) -> None:
        """A call asks for its slots (see ``Concurrency.started``)."""
        if lane is None:
            self.account.started()
            return
        # A call held back by its direction's share waits for the mount's window too: it
        # grows until a share of it covers what the account allows.
        share = self._shares[lane.direction]
        account = self.account.limiter
        held_back = (
            share.borrowed_tokens >= share.total_tokens
            or account.borrowed_tokens >= account.total_tokens
        )
        self.account.started(held_back)
        if not held_back:  # a lane grows only where it, not the account, holds calls back
            self.lane(lane).started()

    async def acquire(self, lane: Lane, holder: object) -> None:
        """A slot of ``lane`` and of its direction's share (the mount's is the runner's)."""
        window = self.lane(lane)
        share = self._shares[lane.direction]
        size = self._share_size()
        if share.total_tokens != size:
            share.total_tokens = size
        await window.limiter.acquire_on_behalf_of(holder)
        try:
            await share.acquire_on_behalf_of(holder)
        except BaseException:
            window.limiter.release_on_behalf_of(holder)
            raise

    def release(self, lane: Lane, holder: object) -> None:
        self._shares[lane.direction].release_on_behalf_of(holder)
        window = self._lanes.get(lane)
        if window is not None:
            window.limiter.release_on_behalf_of(holder)

    def ended(self, lane: Lane | None, heard: Heard, answered: bool) -> None:
        """A call ended: each throttled answer it heard backs off the window its Reason names;
        its last answer, if any and not throttling, counts towards throughput."""
        window = None if lane is None else self._lanes.get(lane)
        before = None if window is None else (window.limit, window.found)
        for reason, count in heard.reasons.items():
            target = self.account if window is None or reason == ACCOUNT else window
            for _ in range(count):
                target.ended(throttled=True)
            self._throttled += count
            self._answers += count
        if answered and not heard.final_throttled:
            self.account.ended()
            if window is not None:
                window.ended()
                if heard.error is None:
                    window.last_done = window.clock()
            self._answers += 1
        if window is not None and before != (window.limit, window.found):
            self._publish()
        share = round(100 * self._throttled / self._answers) if self._answers else 0
        self.counters["throttled_share_pct"] = share

    def _publish(self) -> None:
        c = self.counters
        lanes = self._lanes.values()
        c["lane_limit_max"] = max((w.limit for w in lanes), default=0)
        c["lane_found_max"] = max((w.found for w in lanes), default=0)
        c["lane_backoffs"] = sum(w.counters["concurrency_backoffs"] for w in lanes)


_WINDOWS: weakref.WeakKeyDictionary[Concurrency, Windows] = weakref.WeakKeyDictionary()
