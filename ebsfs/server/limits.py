"""AWS's request-rate quotas on the block calls (``--rate-limit``, ``--account-rate-limit``):
token buckets per snapshot and per account, GetSnapshotBlock and PutSnapshotBlock counted
apart as AWS counts them (ebs-direct-api.md §8; docs/server.md, "Rate limits")."""

import logging
import re
import threading
import time
from collections.abc import Callable

from ebsfs.server.errors import EbsError
from ebsfs.server.validate import SNAPSHOT_ID_PATTERN

log = logging.getLogger(__name__)

#: The calls the quotas count.
LIMITED = frozenset({"GetSnapshotBlock", "PutSnapshotBlock"})
#: Buckets kept before full ones (equivalent to no bucket) are forgotten.
PRUNE_AT = 4096

_SNAPSHOT_ID = re.compile(SNAPSHOT_ID_PATTERN)


class TokenBucket:
    """``rate`` tokens a second, at most ``capacity`` saved up (one second's worth)."""

    __slots__ = ("capacity", "rate", "stamp", "tokens")

    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate)
        self.tokens = self.capacity
        self.stamp = now

    def refill(self, now: float) -> float:
        """The tokens there are at ``now``."""
        if now > self.stamp:
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
        return self.tokens


class RateLimits:
    """Decides whether a block call is within the quotas; safe from many threads."""

    def __init__(
        self, per_snapshot: float = 0.0, per_account: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_snapshot = per_snapshot
        self.per_account = per_account
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[tuple[str, str], TokenBucket] = {}
        #: Calls answered with throttling, by Reason (for tests and the log).
        self.throttled: dict[str, int] = {}
        self._logged = float("-inf")

    @property
    def idle(self) -> bool:
        return not (self.per_snapshot > 0 or self.per_account > 0)

    def check(self, operation: str, snapshot_id: str, account: str) -> EbsError | None:
        """The throttling answer if this call exceeds a quota, else None (the call is
        counted). A call refused by one quota takes no token from the other."""
        if operation not in LIMITED or self.idle:
            return None
        with self._lock:
            now = self._clock()
            keys: list[tuple[tuple[str, str], float, str]] = []
            # A malformed id (refused by validation later) gets no bucket of its own.
            if self.per_snapshot > 0 and _SNAPSHOT_ID.fullmatch(snapshot_id):
                keys.append(((operation, "snap:" + snapshot_id), self.per_snapshot,
                             "RESOURCE_LEVEL_THROTTLE"))
            if self.per_account > 0:
                keys.append(((operation, "acct:" + account), self.per_account,
                             "ACCOUNT_THROTTLED"))
            buckets = [self._bucket(key, rate, now) for key, rate, _ in keys]
            for bucket, (_, _, reason) in zip(buckets, keys, strict=True):
                if bucket.refill(now) < 1.0:
                    self._count(reason, now)
                    return EbsError(400, "RequestThrottledException", "Rate exceeded", reason)
            for bucket in buckets:
                bucket.tokens -= 1.0
        return None

    def _count(self, reason: str, now: float) -> None:
        """Count a throttled call; one log line a second at most says how many."""
        self.throttled[reason] = self.throttled.get(reason, 0) + 1
        if now - self._logged >= 1.0:
            log.info("throttled block calls so far: %s", ", ".join(
                f"{n} {r}" for r, n in sorted(self.throttled.items())))
            self._logged = now

    def _bucket(self, key: tuple[str, str], rate: float, now: float) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= PRUNE_AT:
                self._prune(now)
            bucket = self._buckets[key] = TokenBucket(rate, now)
        return bucket

    def _prune(self, now: float) -> None:
        """Forget buckets that are full again: a new one would be the same (each is full
        ``capacity / rate`` seconds after its last call), so idle snapshots never pile up."""
        for key in [k for k, b in self._buckets.items() if b.refill(now) >= b.capacity]:
            del self._buckets[key]
