"""Unit tests of the read layers (remote, cache, read-ahead, ranges) against a fake API."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable

import pytest
import trio

from ebsfs.aws.runner import Calls
from ebsfs.core import errors
from ebsfs.core.blocks import BLOCK_SIZE, BlockIndex
from ebsfs.read.cache import BlockCache, CachedBlocks
from ebsfs.read.ranges import ReplyBuffers, read_range
from ebsfs.read.readahead import ReadAhead
from ebsfs.read.remote import RemoteBlocks, RemoteTuning, TokenWindows
from ebsfs.read.stack import ReadStacks, StackConfig
from tests.read.fakes import FakeBlockApi, block_of

pytestmark = pytest.mark.timeout(60)
SNAP = "snap-0123456789abcdef0"


def run(fn: Callable[[], Awaitable[None]]) -> None:
    trio.run(fn)


def remote(api: FakeBlockApi, limit: int = 8, **tuning: float) -> RemoteBlocks:
    return RemoteBlocks(
        api,
        Calls(trio.CapacityLimiter(limit)),
        SNAP,
        api.volume_gib * 2048,
        tuning=RemoteTuning(backoff=0.01, **tuning),  # type: ignore[arg-type]
    )


def test_blocks_and_holes() -> None:
    api = FakeBlockApi({0: block_of(0), 5: block_of(5), 2047: block_of(2047)})

    async def main() -> None:
        r = remote(api)
        assert await r.read_block(BlockIndex(5)) == block_of(5)
        assert await r.read_block(BlockIndex(2047)) == block_of(2047)
        assert await r.read_block(BlockIndex(6)) is None
        assert await r.read_block(BlockIndex(1)) is None

    run(main)
    # one listing for the whole (small) volume, one GET per block, no request for holes
    assert api.calls == {"list": 1, "get": 2}


def test_read_verified_hands_up_the_digest_the_block_was_checked_against() -> None:
    api = FakeBlockApi({0: block_of(0), 5: block_of(5)})

    async def main() -> None:
        r = remote(api)
        assert await r.read_verified(BlockIndex(5)) == (
            block_of(5),
            hashlib.sha256(block_of(5)).digest(),
        )
        assert await r.read_verified(BlockIndex(6)) == (None, None)  # a hole
        assert await r.read_verified(BlockIndex(2048)) == (None, None)  # past the volume

    run(main)
    assert api.calls == {"list": 1, "get": 1}


def test_huge_sparse_volume_lists_lazily() -> None:
    last = 65536 * 2048 - 1
    api = FakeBlockApi({0: block_of(0), last: block_of(last)}, volume_gib=65536)

    async def main() -> None:
        r = remote(api)
        assert await r.read_block(BlockIndex(0)) == block_of(0)
        assert await r.read_block(BlockIndex(last)) == block_of(last)
        assert await r.read_block(BlockIndex(last - 1)) is None

    run(main)
    assert api.calls["list"] <= 2


def test_windows_are_bounded_in_tokens() -> None:
    api = FakeBlockApi({i: b"" for i in range(0, 40000)}, volume_gib=20)
    windows = TokenWindows(max_tokens=10000)

    async def main() -> None:
        r = RemoteBlocks(
            api,
            Calls(trio.CapacityLimiter(4)),
            SNAP,
            40960,
            tuning=RemoteTuning(window_blocks=4096),
            windows=windows,
        )
        for i in range(0, 40000, 4096):
            await r._window_for(i)
        assert windows.tokens <= 10000 + 4096
        assert len(windows) <= 3

    run(main)


def test_expired_tokens_are_renewed() -> None:
    api = FakeBlockApi({i: block_of(i) for i in range(4)}, ttl=0.5)

    async def main() -> None:
        r = remote(api)
        assert await r.read_block(BlockIndex(0)) == block_of(0)
        await trio.sleep(0.6)
        assert await r.read_block(BlockIndex(1)) == block_of(1)

    run(main)
    assert api.calls["list"] == 2


def test_refused_token_relists_once() -> None:
    api = FakeBlockApi({0: block_of(0)})

    async def main() -> None:
        r = remote(api)
        w = await r._window_for(0)
        w.tokens[0] = "0:1"  # expired long ago, though the window thinks it fresh
        assert await r.read_block(BlockIndex(0)) == block_of(0)

    run(main)
    assert api.calls["list"] == 2


def test_checksum_failures_retry_then_fail_with_log(caplog: pytest.LogCaptureFixture) -> None:
    api = FakeBlockApi({0: block_of(0), 1: block_of(1)})
    api.corrupt_once.add(0)
    api.corrupt.add(1)

    async def main() -> None:
        r = remote(api)
        assert await r.read_block(BlockIndex(0)) == block_of(0)
        with pytest.raises(errors.ChecksumError):
            await r.read_block(BlockIndex(1))

    with caplog.at_level(logging.ERROR):
        run(main)
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(lines) == 1
    assert SNAP in lines[0] and "block 1" in lines[0] and "checksum" in lines[0]


def test_not_found_right_after_completion_is_retried() -> None:
    api = FakeBlockApi({0: block_of(0)})
    api.not_found_until = time.time() + 0.3

    async def main() -> None:
        assert await remote(api).read_block(BlockIndex(0)) == block_of(0)

    run(main)


def test_not_found_past_the_grace_is_an_error() -> None:
    api = FakeBlockApi({0: block_of(0)})
    api.not_found_until = time.time() + 100

    async def main() -> None:
        with pytest.raises(errors.EbsfsError, match="not readable"):
            await remote(api, not_found_grace=0.2).read_block(BlockIndex(0))

    run(main)


def test_unavailable_backend_fails_within_io_timeout() -> None:
    api = FakeBlockApi({0: block_of(0)})
    api.unavailable = True

    async def main() -> None:
        r = remote(api, io_timeout=0.5)
        start = trio.current_time()
        with pytest.raises(errors.BackendUnavailableError):
            await r.read_block(BlockIndex(0))
        assert trio.current_time() - start < 3
        api.unavailable = False
        # Known down: reads fail at once until the prober hears the endpoint again.
        with trio.fail_after(10):
            while r.calls.health.down:
                await trio.sleep(0.05)
        assert await r.read_block(BlockIndex(0)) == block_of(0)

    run(main)


def test_throttling_alone_is_never_an_error() -> None:
    # Block 1 is throttled for twice io_timeout while other reads keep succeeding: a busy
    # backend, not a broken one, so the read waits instead of failing. (Half of the 4x
    # io_timeout bound is left as margin for a loaded machine.)
    api = FakeBlockApi({0: block_of(0), 1: block_of(1)})
    api.throttled_until[1] = time.time() + 1.0

    async def main() -> None:
        r = remote(api, io_timeout=0.5)
        got: list[bytes | None] = []

        async def keep_reading_block_0() -> None:
            while not got:
                assert await r.read_block(BlockIndex(0)) == block_of(0)
                await trio.sleep(0.05)

        async with trio.open_nursery() as n:
            n.start_soon(keep_reading_block_0)
            got.append(await r.read_block(BlockIndex(1)))
        assert got == [block_of(1)]

    run(main)


def test_throttling_is_bounded_when_nothing_succeeds() -> None:
    api = FakeBlockApi({1: block_of(1)})
    api.throttled_until[1] = time.time() + 60

    async def main() -> None:
        r = remote(api, io_timeout=0.5)
        start = trio.current_time()
        with pytest.raises(errors.ApiError, match="Rate exceeded"):
            await r.read_block(BlockIndex(1))
        assert trio.current_time() - start < 3

    run(main)


def test_concurrent_misses_cost_one_fetch() -> None:
    api = FakeBlockApi({3: block_of(3)})
    api.delay = 0.1

    async def main() -> None:
        cached = CachedBlocks(remote(api), BlockCache(8 * BLOCK_SIZE), SNAP)
        results = []

        async def reader() -> None:
            results.append(await cached.read_block(BlockIndex(3)))

        async with trio.open_nursery() as n:
            for _ in range(10):
                n.start_soon(reader)
        assert results == [block_of(3)] * 10
        assert await cached.read_block(BlockIndex(3)) == block_of(3)
        stats = cached.stats()
        assert stats["cache_misses"] == 1 and stats["cache_hits"] == 1

    run(main)
    assert api.calls["get"] == 1


def test_cache_is_bounded_in_bytes() -> None:
    api = FakeBlockApi({i: block_of(i) for i in range(20)})

    async def main() -> None:
        cache = BlockCache(4 * BLOCK_SIZE)
        cached = CachedBlocks(remote(api), cache, SNAP)
        for i in range(20):
            assert await cached.read_block(BlockIndex(i)) == block_of(i)
        s = cache.stats()
        assert s["cache_bytes"] <= 4 * BLOCK_SIZE and s["cache_blocks"] == 4
        assert s["cache_evictions"] == 16

    run(main)


def test_failed_fetch_reaches_every_waiter_and_is_not_cached() -> None:
    api = FakeBlockApi({0: block_of(0)})
    api.corrupt.add(0)
    api.delay = 0.05

    async def main() -> None:
        cached = CachedBlocks(remote(api), BlockCache(8 * BLOCK_SIZE), SNAP)
        failures = []

        async def reader() -> None:
            try:
                await cached.read_block(BlockIndex(0))
            except errors.ChecksumError:
                failures.append(1)

        async with trio.open_nursery() as n:
            for _ in range(3):
                n.start_soon(reader)
        assert len(failures) == 3
        api.corrupt.clear()
        assert await cached.read_block(BlockIndex(0)) == block_of(0)

    run(main)


def test_sequential_reads_prefetch_in_parallel() -> None:
    api = FakeBlockApi({i: block_of(i) for i in range(64)})
    api.delay = 0.05

    async def main() -> None:
        async with trio.open_nursery() as n:
            cached = CachedBlocks(remote(api, limit=16), BlockCache(64 * BLOCK_SIZE), SNAP)
            ra = ReadAhead(cached, n, 16, 2048)
            for i in range(48):
                assert await ra.read_block(BlockIndex(i)) == block_of(i)
            assert ra.stats()["readahead_blocks"] >= 16

    run(main)
    assert api.max_in_flight >= 8
    assert api.calls["get"] <= 64  # nothing fetched twice, nothing past the volume end


def test_random_reads_do_not_prefetch() -> None:
    api = FakeBlockApi({i: block_of(i) for i in range(200)})

    async def main() -> None:
        async with trio.open_nursery() as n:
            cached = CachedBlocks(remote(api), BlockCache(64 * BLOCK_SIZE), SNAP)
            ra = ReadAhead(cached, n, 16, 2048)
            for i in (100, 7, 150, 30, 180, 60):
                await ra.read_block(BlockIndex(i))

    run(main)
    assert api.calls["get"] == 6


def test_read_range_spans_blocks_and_holes() -> None:
    api = FakeBlockApi({0: block_of(0), 2: block_of(2)})
    image = block_of(0) + bytes(BLOCK_SIZE) + block_of(2) + bytes(BLOCK_SIZE)

    async def main() -> None:
        async with trio.open_nursery() as n:
            stacks = ReadStacks(api, StackConfig(8 * BLOCK_SIZE, 0, 4), n)
            stack = stacks.get(SNAP, 1)
            for off, length in [
                (0, 10),
                (BLOCK_SIZE - 5, 10),
                (100, 3 * BLOCK_SIZE),
                (0, 4 * BLOCK_SIZE),
            ]:
                assert await read_range(stack, off, length, len(image)) == image[off : off + length]
            assert await read_range(stack, len(image) - 3, 100, len(image)) == image[-3:]
            assert await read_range(stack, len(image), 100, len(image)) == b""
            n.cancel_scope.cancel()

    run(main)


def test_read_range_error_is_unwrapped() -> None:
    api = FakeBlockApi({0: block_of(0), 1: block_of(1)})
    api.corrupt.add(1)

    async def main() -> None:
        async with trio.open_nursery() as n:
            stack = ReadStacks(api, StackConfig(8 * BLOCK_SIZE, 0, 4), n).get(SNAP, 1)
            with pytest.raises(errors.ChecksumError):
                await read_range(stack, 0, 2 * BLOCK_SIZE, 2048 * BLOCK_SIZE)
            n.cancel_scope.cancel()

    run(main)


def test_reply_buffers_are_reused_only_once_released() -> None:
    replies = ReplyBuffers()
    a, b = b"a" * BLOCK_SIZE, b"b" * BLOCK_SIZE
    first = replies.join([a, b], 2 * BLOCK_SIZE)
    assert bytes(first) == a + b
    # A reply still referred to is never written over: the next join gets another buffer.
    second = replies.join([b, memoryview(a)[:10]], BLOCK_SIZE + 10)
    assert bytes(first) == a + b
    assert bytes(second) == b + a[:10]
    assert isinstance(first, memoryview) and isinstance(second, memoryview)
    assert first.obj is not second.obj
    handed_out = {id(first.obj), id(second.obj)}
    del first, second
    # Both released: the next join writes into a buffer handed out before, no new one.
    third = replies.join([a, a], 2 * BLOCK_SIZE)
    assert isinstance(third, memoryview)
    assert bytes(third) == a + a
    assert id(third.obj) in handed_out
    # Larger than a reply buffer (not asked by the kernel): a plain join.
    big = replies.join([a, b, a], 3 * BLOCK_SIZE)
    assert bytes(big) == a + b + a


def test_read_range_waits_in_order_for_blocks_being_fetched() -> None:
    # With read-ahead, the blocks of a 1 MiB read are already being fetched: the read waits
    # for them one after the other (no tasks) and still gets every byte right.
    api = FakeBlockApi({i: block_of(i) for i in range(64)})
    api.delay = 0.02
    image = b"".join(block_of(i) for i in range(64))

    async def main() -> None:
        async with trio.open_nursery() as n:
            stack = ReadStacks(api, StackConfig(64 * BLOCK_SIZE, 8 * BLOCK_SIZE, 8), n).get(
                SNAP, 1
            )
            for off in range(0, 32 * BLOCK_SIZE, 2 * BLOCK_SIZE):
                got = await read_range(stack, off, 2 * BLOCK_SIZE, len(image))
                assert bytes(got) == image[off : off + 2 * BLOCK_SIZE]
            n.cancel_scope.cancel()

    run(main)
    assert api.calls["get"] <= 48
    assert api.max_in_flight >= 4


def test_calls_run_in_threads_under_the_limiter() -> None:
    release = threading.Event()

    def stuck() -> int:
        release.wait(10)
        return 1

    def boom() -> None:
        raise errors.ApiError("no", "Boom")

    async def main() -> None:
        limiter = trio.CapacityLimiter(2)
        calls = Calls(limiter)
        assert await calls.run(sum, (1, 2, 3)) == 6
        with pytest.raises(errors.ApiError):
            await calls.run(boom)
        assert limiter.borrowed_tokens == 0
        # A cancelled call returns at once; its thread keeps its token until it ends.
        with trio.move_on_after(0.1) as scope:
            await calls.run(stuck)
        assert scope.cancelled_caught
        assert limiter.borrowed_tokens == 1
        release.set()
        with trio.fail_after(5):
            while limiter.borrowed_tokens:
                await trio.sleep(0.01)
        assert await calls.run(sum, (1, 1)) == 2

    run(main)
