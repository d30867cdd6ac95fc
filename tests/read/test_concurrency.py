"""The runner's adaptive window (ebsfs.aws.concurrency): on a fake clock against a model of
AWS's rate limit, and through the runner with a throttling fake, where no read fails."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

from ebsfs.aws.concurrency import Concurrency
from ebsfs.aws.runner import Calls
from ebsfs.core.blocks import BlockIndex
from ebsfs.read.remote import RemoteBlocks, RemoteTuning
from tests.read.fakes import FakeBlockApi, block_of

pytestmark = pytest.mark.timeout(60)


def on_fake_clock(fn: Callable[[], Awaitable[None]]) -> None:
    trio.run(fn, clock=trio.testing.MockClock(autojump_threshold=0))


class Full:
    """Keeps the limiter's tokens all borrowed, as a busy mount does."""

    def __init__(self, limiter: trio.CapacityLimiter) -> None:
        self.limiter = limiter
        self.holders: list[object] = []

    def fill(self) -> None:
        while self.limiter.borrowed_tokens < self.limiter.total_tokens:
            holder = object()
            self.limiter.acquire_on_behalf_of_nowait(holder)
            self.holders.append(holder)
        while self.limiter.borrowed_tokens > self.limiter.total_tokens:
            self.limiter.release_on_behalf_of(self.holders.pop())


def test_without_throttling_the_window_stays_at_the_ceiling() -> None:
    async def main() -> None:
        limiter = trio.CapacityLimiter(32)
        window = Concurrency(limiter)
        full = Full(limiter)
        for _ in range(1000):
            full.fill()
            window.started()
            window.ended()
            await trio.sleep(0.01)
        assert window.limit == 32 and window.found == 0
        assert window.counters["throttled_share_pct"] == 0

    on_fake_clock(main)


def test_a_burst_of_throttles_halves_the_window_once() -> None:
    async def main() -> None:
        window = Concurrency(trio.CapacityLimiter(32))
        for _ in range(20):  # every call in flight hears "slow down" at once
            window.ended(throttled=True)
        assert window.limit == 16 and window.found == 32
        await trio.sleep(1.0)
        window.ended(throttled=True)  # still throttled a period later: halved again
        assert window.limit == 8
        for _ in range(10):
            window.ended(throttled=True)
        assert window.limit == 8
        assert window.counters["concurrency_limit"] == 8
        assert window.counters["concurrency_found"] == 16
        assert window.counters["throttled_share_pct"] == 100

    on_fake_clock(main)


def test_the_window_grows_only_while_calls_wait_and_nothing_is_throttled() -> None:
    async def main() -> None:
        limiter = trio.CapacityLimiter(16)
        window = Concurrency(limiter)
        window.ended(throttled=True)
        assert window.limit == 8
        for _ in range(500):  # a reader that never fills the window: no growth
            window.started()
            window.ended()
            await trio.sleep(0.01)
        assert window.limit == 8
        full = Full(limiter)
        for _ in range(3000):  # calls waiting for tokens: one more per period, to the ceiling
            full.fill()
            window.started()
            window.ended()
            await trio.sleep(0.01)
        assert window.limit == 16

    on_fake_clock(main)


def test_the_window_finds_a_rate_limit_with_few_throttles() -> None:
    """AWS allows ``rate`` calls a second and answers in ``latency``: a window over
    rate x latency only buys throttling. The window settles below that, few calls throttled."""
    rate, latency, ceiling = 300.0, 0.1, 64

    async def main() -> None:
        limiter = trio.CapacityLimiter(ceiling)
        window = Concurrency(limiter)
        full = Full(limiter)
        step = 0.01
        owed = 0.0
        answered = throttled = 0
        windows = []
        for tick in range(int(120 / step)):
            full.fill()
            window.started()
            owed += window.limit / latency * step  # answers due this step
            served = min(1.0, rate / (window.limit / latency))
            while owed >= 1:
                owed -= 1
                over = (answered + throttled) * (1 - served) >= throttled + 1
                window.ended(throttled=over)
                throttled += over
                answered += not over
            if tick * step > 30:
                windows.append(window.limit)
            await trio.sleep(step)
        assert max(windows) <= rate * latency + 1
        assert min(windows) >= rate * latency / 2 - 1
        assert throttled / (answered + throttled) < 0.05

    on_fake_clock(main)


def test_reads_under_throttling_slow_down_and_never_fail() -> None:
    api = FakeBlockApi({i: block_of(i) for i in range(16)})
    for i in range(16):
        api.throttled_until[i] = time.time() + 0.3

    async def main() -> None:
        calls = Calls(trio.CapacityLimiter(8))
        r = RemoteBlocks(api, calls, "snap-0123456789abcdef0", 2048,
                         tuning=RemoteTuning(backoff=0.01, io_timeout=5.0))
        got: dict[int, bytes | None] = {}

        async def read(i: int) -> None:
            got[i] = await r.read_block(BlockIndex(i))

        async with trio.open_nursery() as n:
            for i in range(16):
                n.start_soon(read, i)
        assert got == {i: block_of(i) for i in range(16)}
        stats = calls.health.counters
        assert stats["concurrency_found"] == 8 and stats["concurrency_limit"] < 8
        assert 0 < stats["throttled_share_pct"] < 100

    trio.run(main)
