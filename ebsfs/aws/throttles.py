"""The throttled answers one call heard, by AWS's Reason, botocore's own retries included.

The ``Api``'s botocore hook runs in the thread making the call and notes each throttled answer
in that thread's ``Heard`` (``note``); the upload process sends its counts back with each
answer and the mount notes them the same way (``note_all``). The runner hands them to its
windows (``ebsfs.aws.windows``) when the call ends.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from ebsfs.core.errors import ApiError

__all__ = ["EBS_THROTTLING", "Heard", "note", "note_all"]

T = TypeVar("T")

#: The EBS direct APIs' "slow down" (Reason RESOURCE_LEVEL_THROTTLE or ACCOUNT_THROTTLED).
EBS_THROTTLING = frozenset({"RequestThrottledException", "ThrottlingException"})

_local = threading.local()


class Heard:
    """What one call heard: throttled answers by Reason ("" when AWS gave none), and how it
    ended (``error``; ``final_throttled``: its last answer was throttling)."""

    __slots__ = ("error", "final_throttled", "ran", "reasons")

    def __init__(self) -> None:
        self.reasons: dict[str, int] = {}
        self.ran = False  # the call started (a call cancelled before has nothing to tell)
        self.error: BaseException | None = None
        self.final_throttled = False

    @property
    def throttled(self) -> int:
        return sum(self.reasons.values())

    def add(self, reason: str, count: int = 1) -> None:
        self.reasons[reason] = self.reasons.get(reason, 0) + count

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in this (worker) thread, noting what it hears here."""
        self.ran = True
        outer = getattr(_local, "heard", None)
        _local.heard = self
        try:
            return fn(*args)
        except BaseException as exc:
            self.error = exc
            if isinstance(exc, ApiError) and exc.code in EBS_THROTTLING:
                self.final_throttled = True
                if not self.reasons:  # no hook heard it (a client without one): count it here
                    self.add(exc.reason)
            raise
        finally:
            _local.heard = outer


def note(reason: str, count: int = 1) -> None:
    """A throttled answer heard by the call running in this thread (if the runner made it)."""
    heard = getattr(_local, "heard", None)
    if heard is not None and count > 0:
        heard.add(reason, count)


def note_all(reasons: object) -> None:
    """``note`` each of ``reasons`` ({Reason: count}, as the upload process sends them)."""
    if isinstance(reasons, Mapping):
        for reason, count in reasons.items():
            if isinstance(reason, str) and isinstance(count, int):
                note(reason, count)
