"""Fault injection: added latency, throttling, internal errors, dropped connections and
corrupted block data, each at a configured share of requests (SPEC.md, "The local server");
and named AWS errors (``--fault REASON:RATE``) in AWS's shape, on the APIs that can return
them."""

import random
import threading
import time
from collections.abc import Callable

from ebsfs.server.errors import EbsError, Ec2Error

_EBS_BLOCK_WRITES = frozenset({"PutSnapshotBlock"})
_EBS_DIRECT = None  # every EBS direct API

#: ``--fault`` names -> (service, code, HTTP status, Reason, operations it strikes; None: all
#: of that service). The Reasons are AWS's (ebs 2019-11-02 model); RequestLimitExceeded is
#: EC2's throttling, which it answers with 503.
NAMED_FAULTS: dict[str, tuple[str, str, int, str, frozenset[str] | None]] = {
    "DEPENDENCY_SERVICE_QUOTA_EXCEEDED": (
        "ebs", "ServiceQuotaExceededException", 402, "DEPENDENCY_SERVICE_QUOTA_EXCEEDED",
        _EBS_DIRECT,
    ),
    "WRITE_REQUEST_TIMEOUT": (
        "ebs", "ValidationException", 400, "WRITE_REQUEST_TIMEOUT", _EBS_BLOCK_WRITES
    ),
    "CONFLICTING_BLOCK_UPDATE": (
        "ebs", "ValidationException", 400, "CONFLICTING_BLOCK_UPDATE", _EBS_BLOCK_WRITES
    ),
    "DEPENDENCY_RESOURCE_NOT_FOUND": (
        "ebs", "ResourceNotFoundException", 404, "DEPENDENCY_RESOURCE_NOT_FOUND", _EBS_DIRECT
    ),
    "DEPENDENCY_ACCESS_DENIED": (
        "ebs", "AccessDeniedException", 403, "DEPENDENCY_ACCESS_DENIED", _EBS_DIRECT
    ),
    "DEPENDENCY_REQUEST_THROTTLED": (
        "ebs", "RequestThrottledException", 400, "DEPENDENCY_REQUEST_THROTTLED", _EBS_DIRECT
    ),
    "ACCOUNT_THROTTLED": (
        "ebs", "RequestThrottledException", 400, "ACCOUNT_THROTTLED", _EBS_DIRECT
    ),
    "RESOURCE_LEVEL_THROTTLE": (
        "ebs", "RequestThrottledException", 400, "RESOURCE_LEVEL_THROTTLE",
        frozenset({"PutSnapshotBlock", "GetSnapshotBlock"}),
    ),
    "RequestLimitExceeded": ("ec2", "RequestLimitExceeded", 503, "", None),
}

_MESSAGES = {
    "ServiceQuotaExceededException": "Your request exceeded a dependency service quota.",
    "ValidationException": "The request could not be completed in time; send it again.",
    "ResourceNotFoundException": "The KMS key the snapshot depends on was not found.",
    "AccessDeniedException": "Access to a dependency of the snapshot was denied.",
    "RequestThrottledException": "Rate exceeded",
    "RequestLimitExceeded": "Request limit exceeded.",
}


def parse_fault(text: str) -> tuple[str, float]:
    """``REASON:RATE`` -> (name, rate); ValueError with a one-line reason if malformed."""
    name, sep, rate_text = text.rpartition(":")
    if not sep or name not in NAMED_FAULTS:
        raise ValueError(
            f"expected REASON:RATE with REASON one of {', '.join(sorted(NAMED_FAULTS))}, "
            f"not {text!r}"
        )
    try:
        rate = float(rate_text)
    except ValueError:
        raise ValueError(f"not a number: {rate_text!r}") from None
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"the rate must be between 0 and 1: {text!r}")
    return name, rate


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
        named: tuple[tuple[str, float], ...] = (),
    ) -> None:
        self.latency_ms = latency_ms
        self.throttle_rate = throttle_rate
        self.error_rate = error_rate
        self.drop_rate = drop_rate
        self.corrupt_rate = corrupt_rate
        #: (name, rate) of each ``--fault``, in the order given.
        self.named = tuple((n, r) for n, r in named if r > 0)
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    @property
    def idle(self) -> bool:
        """Whether no fault is configured at all."""
        return not (self.latency_ms > 0 or self.throttle_rate > 0 or self.error_rate > 0
                    or self.drop_rate > 0 or self.corrupt_rate > 0 or bool(self.named))

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

    def _named(self, service: str, operation: str) -> tuple[str, int, str] | None:
        for name, rate in self.named:
            svc, code, status, reason, ops = NAMED_FAULTS[name]
            if svc == service and (ops is None or operation in ops) and self._hit(rate):
                return code, status, reason
        return None

    def before_ebs(self, operation: str = "") -> None:
        """Raise a throttling, internal or ``--fault`` error for this EBS request, if one
        strikes."""
        named = self._named("ebs", operation)
        if named is not None:
            code, status, reason = named
            raise EbsError(status, code, _MESSAGES.get(code, code), reason or None)
        if self._hit(self.throttle_rate):
            raise EbsError(400, "RequestThrottledException", "Rate exceeded", "ACCOUNT_THROTTLED")
        if self._hit(self.error_rate):
            raise EbsError(500, "InternalServerException", "An internal error occurred.")

    def before_ec2(self, operation: str = "") -> None:
        named = self._named("ec2", operation)
        if named is not None:
            code, status, _ = named
            raise Ec2Error(code, _MESSAGES.get(code, code), status)
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
