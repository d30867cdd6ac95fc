"""Issue 14: a call waiting for a slot of its lane (``ebsfs.aws.windows``) behind calls that
are at work, the endpoint answering them (botocore's retries of throttled answers, heard by
``Health.heard``), is not given up at the io bound: it waits its turn, as the calls ahead of
it do; only silence of the endpoint for ``io_timeout`` fails it. Real worker threads."""

from __future__ import annotations

import threading
import time

import pytest
import trio

from ebsfs.aws.runner import Calls
from ebsfs.aws.windows import READ, Lane
from ebsfs.core.errors import BackendUnavailableError

pytestmark = pytest.mark.timeout(60)

IO_TIMEOUT = 0.3
LANE = Lane("snap-0123456789abcdef0", READ)


def test_a_call_queued_behind_calls_at_work_waits_its_turn() -> None:
    release = threading.Event()

    def busy() -> str:
        # Hears answers all along (throttling, say) and ends after several bounds.
        release.wait(20)
        return "first"

    def quick() -> str:
        return "second"

    async def main() -> None:
        calls = Calls(trio.CapacityLimiter(8), io_timeout=IO_TIMEOUT)
        calls.windows.start = 1  # a lane of one slot: the second call queues
        calls.health.heard = time.monotonic  # the endpoint answers all along
        results: dict[str, object] = {}

        async def run(name: str, fn: object) -> None:
            try:
                results[name] = await calls.run(fn, lane=LANE)  # type: ignore[arg-type]
            except BackendUnavailableError as exc:
                results[name] = exc

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run, "busy", busy)
            await trio.sleep(0.05)
            nursery.start_soon(run, "queued", quick)
            await trio.sleep(IO_TIMEOUT * 5)
            release.set()
        assert results == {"busy": "first", "queued": "second"}, results

    trio.run(main)


def test_a_silent_endpoint_still_fails_the_queued_call() -> None:
    release = threading.Event()

    def stuck() -> str:
        release.wait(20)
        return "late"

    async def main() -> None:
        calls = Calls(trio.CapacityLimiter(8), io_timeout=IO_TIMEOUT)
        calls.windows.start = 1
        failed: list[str] = []

        async def run(name: str) -> None:
            try:
                await calls.run(stuck, lane=LANE)
            except BackendUnavailableError:
                failed.append(name)

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run, "stuck")
                await trio.sleep(0.05)
                nursery.start_soon(run, "queued")
        finally:
            release.set()
        assert sorted(failed) == ["queued", "stuck"]
        # The abandoned call frees its slot once its thread ends: the lane works again.
        await trio.sleep(0.2)
        assert calls.windows.lane(LANE).limiter.borrowed_tokens == 0

    trio.run(main)
