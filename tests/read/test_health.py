"""The mount-wide endpoint clock (``remote.Health``) against fakes: what counts as "down",
calls bounded even when their thread hangs, fail-fast while down, recovery by the prober."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable

import pytest
import trio

from ebsfs.aws.api import SnapshotInfo
from ebsfs.aws.runner import Calls
from ebsfs.core import errors
from ebsfs.core.blocks import BLOCK_SIZE, BlockIndex
from ebsfs.fs.catalog import Catalog, CatalogConfig
from ebsfs.read.cache import BlockCache, CachedBlocks
from ebsfs.read.remote import RemoteBlocks, RemoteTuning
from tests.read.fakes import FakeBlockApi, block_of

pytestmark = pytest.mark.timeout(60)
SNAP = "snap-0123456789abcdef0"
T = 0.5  # io_timeout of these tests
BOUND = 2 * T + 3  # generous: the machine is shared


def run(fn: Callable[[], Awaitable[None]]) -> None:
    trio.run(fn)


def remote(api: FakeBlockApi) -> RemoteBlocks:
    return RemoteBlocks(
        api,
        Calls(trio.CapacityLimiter(8)),
        SNAP,
        api.volume_gib * 2048,
        tuning=RemoteTuning(backoff=0.01, io_timeout=T),
    )


async def until_up(r: RemoteBlocks, within: float = 10) -> None:
    with trio.fail_after(within):
        while r.calls.health.down:
            await trio.sleep(0.02)


def test_a_hanging_call_is_abandoned_within_the_bound_then_reads_fail_fast() -> None:
    # A stopped server: calls never return. Before, the read waited for the thread.
    api = FakeBlockApi({0: block_of(0), 1: block_of(1), 2: block_of(2)})

    async def main() -> None:
        r = remote(api)
        assert await r.read_block(BlockIndex(0)) == block_of(0)
        api.stuck = True
        start = trio.current_time()
        with pytest.raises(errors.BackendUnavailableError):
            await r.read_block(BlockIndex(1))
        assert trio.current_time() - start < BOUND
        assert r.calls.health.down
        start = trio.current_time()
        with pytest.raises(errors.BackendUnavailableError, match="failing at once"):
            await r.read_block(BlockIndex(2))
        assert trio.current_time() - start < T / 2
        api.stuck = False
        await until_up(r)
        assert await r.read_block(BlockIndex(1)) == block_of(1)

    run(main)
    assert api.calls["probe"] >= 1


def test_joined_readers_of_a_stuck_fetch_fail_too() -> None:
    # Single-flight: readers joined to a fetch that never returns are bounded with it.
    api = FakeBlockApi({0: block_of(0), 1: block_of(1)})

    async def main() -> None:
        r = remote(api)
        cached = CachedBlocks(r, BlockCache(8 * BLOCK_SIZE), SNAP)
        assert await cached.read_block(BlockIndex(0)) == block_of(0)
        api.stuck = True
        failed: list[BaseException] = []

        async def reader() -> None:
            try:
                await cached.read_block(BlockIndex(1))
            except errors.EbsfsError as exc:
                failed.append(exc)

        start = trio.current_time()
        async with trio.open_nursery() as n:
            for _ in range(5):
                n.start_soon(reader)
        assert len(failed) == 5
        assert trio.current_time() - start < BOUND
        api.stuck = False

    run(main)


def test_a_cancelled_fetch_lets_a_joined_reader_fetch_itself() -> None:
    api = FakeBlockApi({1: block_of(1)})
    api.delay = 0.2

    async def main() -> None:
        cached = CachedBlocks(remote(api), BlockCache(8 * BLOCK_SIZE), SNAP)
        got: list[bytes | None] = []

        async def first() -> None:
            with trio.move_on_after(0.05):
                await cached.read_block(BlockIndex(1))

        async def joined() -> None:
            await trio.sleep(0.01)
            got.append(await cached.read_block(BlockIndex(1)))

        with trio.fail_after(5):
            async with trio.open_nursery() as n:
                n.start_soon(first)
                n.start_soon(joined)
        assert got == [block_of(1)]

    run(main)


def test_throttling_never_marks_the_endpoint_down() -> None:
    api = FakeBlockApi({0: block_of(0), 1: block_of(1)})
    api.throttled_until[1] = time.time() + 60

    async def main() -> None:
        # A longer bound than the other tests: throttling is waited out for 4 bounds, and
        # with many attempts one thread start on a loaded machine could take 0.5 s, which
        # then (rightly) reads as a silent endpoint.
        r = RemoteBlocks(
            api,
            Calls(trio.CapacityLimiter(8)),
            SNAP,
            api.volume_gib * 2048,
            tuning=RemoteTuning(backoff=0.01, io_timeout=2.0),
        )
        with pytest.raises(errors.ApiError, match="Rate exceeded"):
            await r.read_block(BlockIndex(1))
        assert not r.calls.health.down
        # Not failed fast: the next read goes to the endpoint and succeeds.
        assert await r.read_block(BlockIndex(0)) == block_of(0)

    run(main)
    assert api.calls["probe"] == 0


def test_access_denied_is_not_down() -> None:
    api = FakeBlockApi({0: block_of(0)})
    api.denied = True

    async def main() -> None:
        r = remote(api)
        for _ in range(3):
            with pytest.raises(errors.AccessDeniedError):
                await r.read_block(BlockIndex(0))
            await trio.sleep(T / 2)
        assert not r.calls.health.down
        api.denied = False
        assert await r.read_block(BlockIndex(0)) == block_of(0)

    run(main)


def test_an_idle_mount_gets_a_whole_bound_at_its_next_read() -> None:
    # The clock counts from the last answer or the first call since, never over idle time.
    api = FakeBlockApi({0: block_of(0), 1: block_of(1)})

    async def main() -> None:
        r = remote(api)
        assert await r.read_block(BlockIndex(0)) == block_of(0)
        await trio.sleep(3 * T)
        api.unavailable = True

        async def heal() -> None:
            await trio.sleep(T / 3)
            api.unavailable = False

        async with trio.open_nursery() as n:
            n.start_soon(heal)
            assert await r.read_block(BlockIndex(1)) == block_of(1)
        assert not r.calls.health.down

    run(main)


def test_reads_started_late_in_an_outage_wait_only_the_time_left() -> None:
    # Mount-wide: a read that starts when the endpoint has already been silent for most of
    # the bound does not get a whole bound of its own.
    api = FakeBlockApi({0: block_of(0), 1: block_of(1), 2: block_of(2)})

    async def main() -> None:
        r = remote(api)
        assert await r.read_block(BlockIndex(0)) == block_of(0)
        api.stuck = True
        ends: dict[str, float] = {}
        start = trio.current_time()

        async def read(name: str, index: int, after: float) -> None:
            await trio.sleep(after)
            with pytest.raises(errors.BackendUnavailableError):
                await r.read_block(BlockIndex(index))
            ends[name] = trio.current_time() - start

        async with trio.open_nursery() as n:
            n.start_soon(read, "early", 1, 0)
            n.start_soon(read, "late", 2, 0.8 * T)
        api.stuck = False
        assert ends["late"] < ends["early"] + T / 2

    run(main)


class HangingEc2:
    """DescribeSnapshots that never answers (a stopped EC2 endpoint)."""

    def __init__(self) -> None:
        self.stuck = True

    def describe_snapshots(
        self, snapshot_ids: Iterable[str] = (), owner: str = "", filters: object = ()
    ) -> list[SnapshotInfo]:
        while self.stuck:
            time.sleep(0.01)
        return []


def test_a_listing_refresh_on_a_stopped_endpoint_is_bounded() -> None:
    api = HangingEc2()

    async def main() -> None:
        cat = Catalog(api, Calls(trio.CapacityLimiter(2), io_timeout=T), CatalogConfig())  # type: ignore[arg-type]
        start = trio.current_time()
        with pytest.raises(errors.BackendUnavailableError):
            await cat.refresh(raise_errors=True)
        assert trio.current_time() - start < BOUND
        api.stuck = False

    run(main)
