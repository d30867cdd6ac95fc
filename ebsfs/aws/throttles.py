"""The throttled answers one call heard, by AWS's Reason, botocore's own retries included.

The ``Api``'s botocore hook runs in the thread making the call and notes each throttled answer
in that thread's ``Heard`` (``note``); the upload process sends its counts back with each
answer and the mount notes them the same way (``note_all``). The runner hands them to its
windows (``ebsfs.aws.windows``) when the call ends.
"""

from __future__ import annotations

import math
import mmap
import os
import struct
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from ebsfs.core.errors import ApiError

__all__ = ["EBS_THROTTLING", "AnswerClock", "Heard", "note", "note_all"]

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


_STAMP = struct.Struct("=d")


class AnswerClock:
    """time.monotonic() of the last answer heard, shared with the upload process the mount
    forks (``ebsfs.write.upload``): botocore's retries of a throttled put happen there, and
    the mount must hear them too, else a put throttled for longer than ``--io-timeout`` (the
    whole call in botocore's back-off) makes the endpoint look down while it answers.

    One 8-byte slot per process (the one that made it, and its forks), each written by its
    own process only; ``last`` is the newest of them. CLOCK_MONOTONIC is the machine's."""

    __slots__ = ("_map", "_pid")

    def __init__(self) -> None:
        self._pid = os.getpid()
        self._map = mmap.mmap(-1, 2 * _STAMP.size)  # MAP_SHARED: forks see it
        for slot in (0, 1):
            _STAMP.pack_into(self._map, slot * _STAMP.size, -math.inf)

    def heard(self) -> None:
        slot = 0 if os.getpid() == self._pid else 1
        _STAMP.pack_into(self._map, slot * _STAMP.size, time.monotonic())

    def last(self) -> float:
        ours, forked = _STAMP.unpack_from(self._map, 0)[0], _STAMP.unpack_from(self._map, 8)[0]
        newest = max(ours, forked)
        # A stamp from the future (a torn read, which aligned 8-byte stores do not give on
        # the machines ebsfs runs on) is not taken for an answer.
        return ours if newest > time.monotonic() + 1.0 else newest
