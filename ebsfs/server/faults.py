"""Fault injection: added latency, throttling, internal errors, dropped connections and
corrupted block data, each at a configured share of requests (SPEC.md, "The local server")."""

import random
import threading
import time
from collections.abc import Callable

from ebsfs.server.errors import EbsError, Ec2Error


class Faults:
    """Decides, per request, which configured faults strike."""

    def __init__(
        self,
        latency_ms: float = 0.0,
        throttle_rate: float = 0.0,
        error_rate: float = 0.0,
        drop_rate: float = 0.0,
        corrupt_rate: float = 0.0,
        seed: int | None = None,
    ) -> None:
        self.latency_ms = latency_ms
        self.throttle_rate = throttle_rate
        self.error_rate = error_rate
        self.drop_rate = drop_rate
        self.corrupt_rate = corrupt_rate
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    @property
    def idle(self) -> bool:
        """Whether no fault is configured at all."""
        return not (self.latency_ms > 0 or self.throttle_rate > 0 or self.error_rate > 0
                    or self.drop_rate > 0 or self.corrupt_rate > 0)

    def _hit(self, rate: float) -> bool:
        if rate <= 0:
            return False
        with self._lock:
            return self._rng.random() < rate

    def delay(self) -> None:
        """Sleep the configured latency, with ±10% jitter."""
        if self.latency_ms > 0:
            with self._lock:
                jitter = self._rng.uniform(0.9, 1.1)
            time.sleep(self.latency_ms * jitter / 1000)

    def before_ebs(self) -> None:
        """Raise a throttling or internal error for this EBS request, if one strikes."""
        if self._hit(self.throttle_rate):
            raise EbsError(400, "RequestThrottledException", "Rate exceeded", "ACCOUNT_THROTTLED")
        if self._hit(self.error_rate):
            raise EbsError(500, "InternalServerException", "An internal error occurred.")

    def before_ec2(self) -> None:
        if self._hit(self.throttle_rate):
            raise Ec2Error("RequestLimitExceeded", "Request limit exceeded.", 503)
        if self._hit(self.error_rate):
            raise Ec2Error(
                "InternalError", "An internal error has occurred. Please try again later.", 500
            )

    def drop(self) -> bool:
        """Whether to close this request's connection before its response is complete."""
        return self._hit(self.drop_rate)

    def corrupt(self, load: Callable[[], bytes]) -> bytes | None:
        """Altered block bytes if corruption strikes this GetSnapshotBlock, else None.

        ``load`` is called only when it strikes, so the common case reads nothing.
        """
        if not self._hit(self.corrupt_rate):
            return None
        altered = bytearray(load())
        with self._lock:
            pos = self._rng.randrange(len(altered))
        altered[pos] ^= 0xFF
        return bytes(altered)
