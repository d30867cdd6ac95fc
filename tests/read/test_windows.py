"""The windows by Reason (ebsfs.aws.windows), on a fake clock: a lane per snapshot and
direction backs off on RESOURCE_LEVEL_THROTTLE, the mount's window on ACCOUNT_THROTTLED;
lanes grow from their start to find the limit; a direction's share keeps reads of one snapshot
from taking every slot from writes of another. The model of AWS is the local server's own
token buckets (ebsfs.server.limits) on trio's clock."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

from ebsfs.aws.concurrency import Concurrency
from ebsfs.aws.throttles import Heard, note, note_all
from ebsfs.aws.windows import ACCOUNT, READ, RESOURCE, START, WRITE, Lane, Windows
from ebsfs.core.errors import ApiError
from ebsfs.server.limits import RateLimits

pytestmark = pytest.mark.timeout(120)

SNAP_A = "snap-0123456789abcdef0"
SNAP_B = "snap-0123456789abcdef1"
ACCOUNT_ID = "000000000000"


def on_fake_clock(fn: Callable[[], Awaitable[None]]) -> None:
    trio.run(fn, clock=trio.testing.MockClock(autojump_threshold=0))


def windows_of(ceiling: int) -> Windows:
    return Windows(Concurrency(trio.CapacityLimiter(ceiling), counters=Counter()))


def throttled(reason: str, count: int = 1) -> Heard:
    heard = Heard()
    heard.add(reason, count)
    heard.final_throttled = True
    return heard


def test_each_reason_backs_off_its_own_window() -> None:
    async def main() -> None:
        w = windows_of(128)
        a, b = Lane(SNAP_A, READ), Lane(SNAP_B, WRITE)
        reads_a, writes_b = w.lane(a), w.lane(b)
        assert reads_a.limit == writes_b.limit == START and w.account.limit == 128
        w.ended(a, throttled(RESOURCE, 5), answered=True)  # A's reads hit A's limit
        assert reads_a.limit == START // 2 and reads_a.found == START
        assert writes_b.limit == START and w.account.limit == 128
        assert w.lane(Lane(SNAP_A, WRITE)).limit == START  # A's writes are counted apart
        await trio.sleep(1.0)
        w.ended(b, throttled(ACCOUNT, 3), answered=True)  # the account's limit
        assert w.account.limit == 64 and writes_b.limit == START
        assert reads_a.limit == START // 2
        await trio.sleep(1.0)
        w.ended(b, throttled(""), answered=True)  # no Reason: the lane's
        assert writes_b.limit == START // 2 and w.account.limit == 64
        w.ended(None, throttled(RESOURCE), answered=True)  # a call of no lane: the mount's
        assert w.account.limit == 32
        c = w.counters
        assert c["lane_found_max"] == START and c["lane_limit_max"] == START
        assert c["lane_backoffs"] == 2 and c["throttled_share_pct"] == 100

    on_fake_clock(main)


def test_a_call_heard_throttles_once_each_in_its_own_thread() -> None:
    heard = Heard()

    def call() -> None:
        note(RESOURCE)  # botocore's retries, heard by the Api's hook
        note_all({ACCOUNT: 2, "bad": "x"})  # the upload process's counts
        raise ApiError("slow down", "RequestThrottledException", RESOURCE, 400)

    with pytest.raises(ApiError):
        heard.run(call)
    # The final throttle was heard by the hook already: not counted twice.
    assert heard.reasons == {RESOURCE: 1, ACCOUNT: 2} and heard.final_throttled
    note(RESOURCE)  # no call of the runner in this thread: nobody to tell
    assert heard.throttled == 3
    bare = Heard()
    with pytest.raises(ApiError):  # no hook (a fake client): the final answer is counted
        bare.run(lambda: (_ for _ in ()).throw(
            ApiError("slow down", "RequestThrottledException", ACCOUNT, 400)))
    assert bare.reasons == {ACCOUNT: 1}


async def clients(
    w: Windows,
    limits: RateLimits,
    lanes: list[Lane],
    seconds: float,
    *,
    latency: float = 0.1,
    per_lane: int = 160,
) -> tuple[Counter[Lane], Counter[Lane], list[int]]:
    """Callers keeping every lane busy against ``limits`` for ``seconds``; blocks served and
    throttled per lane after the first third, and the lanes' windows seen then."""
    served: Counter[Lane] = Counter()
    refused: Counter[Lane] = Counter()
    seen: list[int] = []
    start = trio.current_time()
    end = start + seconds
    warm = start + seconds / 3

    async def client(lane: Lane) -> None:
        op = "GetSnapshotBlock" if lane.direction == READ else "PutSnapshotBlock"
        pause = 0.2
        while trio.current_time() < end:
            holder = object()
            w.started(lane)
            await w.acquire(lane, holder)
            await w.account.limiter.acquire_on_behalf_of(holder)
            await trio.sleep(latency)
            w.account.limiter.release_on_behalf_of(holder)
            w.release(lane, holder)
            err = limits.check(op, lane.snapshot_id, ACCOUNT_ID)
            late = trio.current_time() >= warm
            if err is None:
                w.ended(lane, Heard(), answered=True)
                served[lane] += late
                pause = 0.2
            else:  # retried after a back-off, as the retry policy does: never failed
                w.ended(lane, throttled(err.reason), answered=True)
                refused[lane] += late
                await trio.sleep(pause)
                pause = min(pause * 2, 5.0)

    async def watch() -> None:
        while trio.current_time() < end:
            await trio.sleep(0.5)
            if trio.current_time() >= warm:
                seen.extend(w.lane(lane).limit for lane in lanes)

    async with trio.open_nursery() as n:
        n.start_soon(watch)
        for lane in lanes:
            for _ in range(per_lane):
                n.start_soon(client, lane)
    return served, refused, seen


def test_a_lane_grows_from_its_start_to_what_the_snapshot_allows() -> None:
    """AWS allows a snapshot 1000 calls a second: at 100 ms, 100 in flight. A lane starting at
    32 grows there (and not far past it), with few calls throttled."""
    rate, latency, seconds = 1000.0, 0.1, 30.0

    async def main() -> None:
        w = windows_of(256)
        limits = RateLimits(per_snapshot=rate, clock=trio.current_time)
        lane = Lane(SNAP_A, READ)
        served, refused, seen = await clients(w, limits, [lane], seconds, per_lane=300)
        window = seconds * 2 / 3
        assert served[lane] / window >= 0.8 * rate
        assert refused[lane] / (served[lane] + refused[lane]) < 0.05
        assert max(seen) <= 2 * rate * latency
        assert min(seen) >= rate * latency / 2

    on_fake_clock(main)


def test_two_snapshots_read_at_once_share_the_account_limit() -> None:
    """Under an account limit of 300 a second, two snapshots read at once both progress, each
    within 20 % of the other, and the account's throughput is mostly used."""
    rate, seconds = 300.0, 30.0

    async def main() -> None:
        w = windows_of(128)
        limits = RateLimits(per_account=rate, clock=trio.current_time)
        lanes = [Lane(SNAP_A, READ), Lane(SNAP_B, READ)]
        served, refused, _ = await clients(w, limits, lanes, seconds, per_lane=100)
        assert sum(refused.values()) < 0.05 * sum(served.values())
        a, b = served[lanes[0]], served[lanes[1]]
        assert min(a, b) >= 0.8 * max(a, b)
        assert (a + b) / (seconds * 2 / 3) >= 0.75 * rate
        assert w.counters["concurrency_backoffs"] >= 1  # the account's window backed off

    on_fake_clock(main)


def test_reads_of_one_snapshot_leave_writes_of_another_a_share() -> None:
    """Reads of A enough to fill the mount's window wait on their share: a write of B still
    gets a slot at once."""

    async def main() -> None:
        w = windows_of(8)
        reads, write = Lane(SNAP_A, READ), Lane(SNAP_B, WRITE)
        held: list[object] = []

        async def reader() -> None:
            holder = object()
            await w.acquire(reads, holder)
            await w.account.limiter.acquire_on_behalf_of(holder)
            held.append(holder)
            await trio.sleep_forever()

        async with trio.open_nursery() as n:
            for _ in range(50):
                n.start_soon(reader)
            await trio.sleep(1.0)
            assert len(held) == 6  # three quarters of 8
            with trio.fail_after(1.0):
                holder = object()
                await w.acquire(write, holder)
                await w.account.limiter.acquire_on_behalf_of(holder)
            n.cancel_scope.cancel()

    on_fake_clock(main)
