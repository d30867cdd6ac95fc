"""Throttled puts (issue 14 item 3): throttling alone never fails a put, however many times
it comes (more than the put's attempts); the throttled answers are counted
(``puts_throttled``) and back off the snapshot's write lane, not the mount's window."""

from __future__ import annotations

import threading
from collections import Counter

import pytest
import trio

from ebsfs.aws.runner import Calls
from ebsfs.aws.windows import START, WRITE, Lane
from ebsfs.core import errors
from ebsfs.core.blocks import BLOCK_SIZE
from ebsfs.write.sink import PutTuning, RemoteWriter
from ebsfs.write.spooled import ThreadPuts

pytestmark = pytest.mark.timeout(60)
SNAP = "snap-0123456789abcdef0"
THROTTLES = 12  # more than PutTuning.transient_attempts


class ThrottledPuts:
    """Throttles each block's first ``THROTTLES`` puts as AWS does past a snapshot's limit."""

    def __init__(self) -> None:
        self.stored: dict[int, bytes] = {}
        self.tries: Counter[int] = Counter()
        self.lock = threading.Lock()

    def put_block(self, snapshot_id: str, index: int, data: bytes, checksum_b64: str) -> None:
        with self.lock:
            self.tries[index] += 1
            if self.tries[index] <= THROTTLES:
                raise errors.ApiError("Rate exceeded", "RequestThrottledException",
                                      "RESOURCE_LEVEL_THROTTLE", 400)
            self.stored[index] = bytes(data)


def test_throttled_puts_slow_down_and_never_fail() -> None:
    api = ThrottledPuts()

    async def main() -> None:
        limiter = trio.CapacityLimiter(64)
        calls = Calls(limiter, io_timeout=10.0)
        counters: Counter[str] = Counter()
        tuning = PutTuning(backoff=0.001, max_backoff=0.002)
        w = RemoteWriter(ThreadPuts(api), SNAP, limiter, counters=counters, tuning=tuning)
        async with trio.open_nursery() as n:
            for i in range(8):
                n.start_soon(w.put, i, bytes([i + 1]) * BLOCK_SIZE)
        assert api.stored == {i: bytes([i + 1]) * BLOCK_SIZE for i in range(8)}
        assert counters["puts"] == 8 and counters["puts_throttled"] == 8 * THROTTLES
        assert counters["put_failures"] == 0
        lane = calls.windows.lane(Lane(SNAP, WRITE))
        assert lane.found == START and lane.limit < START
        assert calls.window.limit == 64 and calls.window.found == 0

    trio.run(main)
