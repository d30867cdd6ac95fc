"""The write-back layer against the fake API: what is stored, when, and how often."""

import dataclasses
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio

from ebsfs.core import checksum
from ebsfs.core.blocks import BLOCK_SIZE
from ebsfs.core.errors import ApiError, BackendUnavailableError, NotFoundError
from ebsfs.write.sink import PutTuning, RemoteWriter
from ebsfs.write.spool import Spool
from ebsfs.write.spooled import ThreadPuts
from ebsfs.write.writeback import WriteBack, WriteTuning

from .fakes import DictReader, FakeApi

BS = BLOCK_SIZE
FAST_PUT = PutTuning(backoff=0.001, max_backoff=0.01, not_found_step=0.01, not_found_grace=0.5)


def run(
    tmp_path: Path,
    body: Callable[[WriteBack, FakeApi, str], Awaitable[None]],
    *,
    parent: dict[int, bytes] | None = None,
    tuning: WriteTuning | None = None,
    api: FakeApi | None = None,
    put_tuning: PutTuning = FAST_PUT,
) -> FakeApi:
    api = api or FakeApi()

    async def main() -> None:
        parent_id = api.add_completed(parent) if parent is not None else None
        info = api.start_snapshot(1, parent=parent_id, client_token="t")
        spool = Spool.create(tmp_path, {"name": "x"})
        reader = DictReader(api, parent_id) if parent_id else None
        wb = WriteBack(spool, reader,
                       tuning=tuning or WriteTuning(delay=0.05, max_uploads=4))
        limiter = trio.CapacityLimiter(4)
        wb.attach(RemoteWriter(ThreadPuts(api), info.snapshot_id, limiter, tuning=put_tuning,
                               counters=wb.counters))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wb.run)
            await body(wb, api, info.snapshot_id)
            nursery.cancel_scope.cancel()

    trio.run(main)
    return api


def test_full_blocks_are_stored_after_the_delay_and_once(tmp_path: Path) -> None:
    async def body(wb: WriteBack, api: FakeApi, sid: str) -> None:
        for i in range(8):  # a block in four 128 KiB writes, as the kernel sends them
            for q in range(4):
                await wb.write(i * BS + q * (BS // 4), bytes([i + 1]) * (BS // 4))
        with trio.fail_after(5):
            while wb.dirty_blocks:
                await trio.sleep(0.01)
        assert sorted(api.puts) == list(range(8))
        count, aggregate = wb.summary()
        assert count == 8
        own = api.snaps[sid].own
        assert aggregate == checksum.linear_aggregate(checksum.digest(own[i]) for i in range(8))

    run(tmp_path, body)


def test_a_block_rewritten_within_the_delay_is_stored_once(tmp_path: Path) -> None:
    async def body(wb: WriteBack, api: FakeApi, sid: str) -> None:
        for n in range(5):
            await wb.write(0, bytes([n]) * BS)
            await trio.sleep(0.005)
        await wb.flush()
        assert api.puts == [0]
        assert api.snaps[sid].own[0] == bytes([4]) * BS

    run(tmp_path, body, tuning=WriteTuning(delay=0.2))


def test_partial_blocks_wait_for_flush_and_are_completed_from_the_parent(
    tmp_path: Path,
) -> None:
    parent = {0: b"P" * BS, 2: b"Q" * BS}

    async def body(wb: WriteBack, api: FakeApi, sid: str) -> None:
        await wb.write(10, b"abc")  # into an inherited block
        await wb.write(BS + 5, b"xy")  # a hole of the parent: zeros around it
        await wb.write(3 * BS - 1, b"12")  # across a boundary into inherited block 2... and 3
        await trio.sleep(0.2)
        assert api.puts == []  # partial blocks are not stored on their own
        block0 = await wb.read_block(0)
        assert block0 == b"P" * 10 + b"abc" + b"P" * (BS - 13)
        await wb.flush()
        own = api.snaps[sid].own
        assert own[0] == block0
        assert own[1] == bytes(5) + b"xy" + bytes(BS - 7)
        assert own[2] == b"Q" * (BS - 1) + b"1"
        assert own[3] == b"2" + bytes(BS - 1)
        assert wb.summary()[0] == 4

    run(tmp_path, body, parent=parent)


def test_zero_blocks_are_skipped_without_parent_unless_stored_before(tmp_path: Path) -> None:
    async def body(wb: WriteBack, api: FakeApi, sid: str) -> None:
        await wb.write(0, bytes(BS))
        await wb.write(BS, b"x" * BS)
        await wb.flush()
        assert api.puts == [1]
        await wb.write(BS, bytes(BS))  # clearing a stored block must store the zeros
        await wb.flush()
        assert api.puts == [1, 1]
        assert api.snaps[sid].own[1] == bytes(BS)
        assert wb.summary()[0] == 1
        assert wb.stats()["zero_blocks_skipped"] == 1

    run(tmp_path, body)


def test_zero_blocks_are_stored_with_a_parent(tmp_path: Path) -> None:
    async def body(wb: WriteBack, api: FakeApi, sid: str) -> None:
        await wb.write(0, bytes(BS))
        await wb.flush()
        assert api.puts == [0]
        assert api.view(sid)[0] == bytes(BS)

    run(tmp_path, body, parent={0: b"P" * BS})


def test_blocks_the_parent_holds_unchanged_are_not_stored(tmp_path: Path) -> None:
    parent = {0: b"P" * BS, 1: b"Q" * BS}

    async def body(wb: WriteBack, api: FakeApi, sid: str) -> None:
        await wb.write(0, b"P" * BS)  # the same bytes: not stored
        await wb.write(BS, b"Q" * (BS - 1) + b"!")  # one byte differs: stored
        await wb.write(2 * BS, bytes(BS))  # zeros over a hole of the parent: not stored
        await wb.flush()
        assert sorted(api.puts) == [1]
        assert wb.stats()["unchanged_blocks_skipped"] == 1
        assert wb.stats()["zero_blocks_skipped"] == 1

    run(tmp_path, body, parent=parent)


def test_flush_returns_only_when_everything_before_it_is_stored(tmp_path: Path) -> None:
    api = FakeApi()
    api.put_delay = 0.05

    async def body(wb: WriteBack, api: FakeApi, sid: str) -> None:
        for i in range(12):
            await wb.write(i * BS + 7, b"data")
        await wb.flush()
        assert sorted(api.snaps[sid].own) == list(range(12))
        assert wb.dirty_blocks == 0
        assert not api.overlap

    run(tmp_path, body, api=api)


def test_back_pressure_bounds_what_is_dirty(tmp_path: Path) -> None:
    api = FakeApi()
    api.put_delay = 0.02
    peak = 0

    async def body(wb: WriteBack, api: FakeApi, sid: str) -> None:
        nonlocal peak
        for i in range(40):
            await wb.write(i * BS, bytes([i + 1]) * BS)
            peak = max(peak, wb.dirty_blocks)
        await wb.flush()
        assert len(api.snaps[sid].own) == 40
        assert wb.stats()["write_waits"] > 0

    run(tmp_path, body, api=api,
        tuning=WriteTuning(dirty_limit=4 * BS, delay=10.0, max_uploads=2))
    assert peak <= 5


def test_one_index_is_never_in_flight_twice(tmp_path: Path) -> None:
    api = FakeApi()
    api.put_delay = 0.03

    async def body(wb: WriteBack, api: FakeApi, sid: str) -> None:
        for n in range(20):
            await wb.write(0, bytes([n + 1]) * BS)
            await trio.sleep(0.01)
        await wb.flush()
        assert api.snaps[sid].own[0] == bytes([20]) * BS
        assert not api.overlap

    run(tmp_path, body, api=api, tuning=WriteTuning(delay=0.0))


def test_transient_failures_and_early_404s_are_retried(tmp_path: Path) -> None:
    api = FakeApi()
    api.not_found_puts = 3
    api.fail_puts = [
        BackendUnavailableError("dropped"),
        ApiError("x", "RequestThrottledException", "ACCOUNT_THROTTLED", 400),
        ApiError("x", "InternalServerException", "", 500),
        ApiError("Failed to read block data", "ValidationException", "INVALID_PARAMETER_VALUE",
                 400),
    ]

    async def body(wb: WriteBack, api: FakeApi, sid: str) -> None:
        await wb.write(0, b"x" * BS)
        await wb.flush()
        assert api.snaps[sid].own[0] == b"x" * BS
        assert wb.stats()["put_retries"] == 7

    # A grace a loaded machine cannot outlive between the three 404s (0.5 s could): the
    # 404s here are early ones, retried, not a snapshot gone.
    run(tmp_path, body, api=api,
        put_tuning=dataclasses.replace(FAST_PUT, not_found_grace=30.0))
    assert api.calls["put"] == 8


def test_a_permanent_failure_fails_flush_and_keeps_the_block_dirty(tmp_path: Path) -> None:
    api = FakeApi()
    api.fail_puts = [ApiError("bad", "ValidationException", "INVALID_BLOCK", 400)]

    async def body(wb: WriteBack, api: FakeApi, sid: str) -> None:
        await wb.write(0, b"x" * BS)
        with pytest.raises(ApiError):
            await wb.flush()
        assert wb.dirty_blocks == 1
        await wb.flush()  # the next attempt goes through
        assert api.snaps[sid].own[0] == b"x" * BS

    run(tmp_path, body, api=api, tuning=WriteTuning(delay=10.0, retry_pause=0.01))


def test_a_vanished_snapshot_stops_uploads(tmp_path: Path) -> None:
    async def body(wb: WriteBack, api: FakeApi, sid: str) -> None:
        api.delete_snapshot(sid)
        await wb.write(0, b"x" * BS)
        with pytest.raises(NotFoundError):
            await wb.flush()
        assert wb.fatal is not None
        await wb.write(BS, b"y" * BS)  # still accepted into the spool
        assert await wb.read_block(1) == b"y" * BS

    run(tmp_path, body)


def test_a_whole_block_kept_in_memory_never_hides_a_later_partial_write(tmp_path: Path) -> None:
    async def body(wb: WriteBack, api: FakeApi, sid: str) -> None:
        await wb.write(0, b"a" * (2 * BS))  # whole blocks 0 and 1, kept in memory
        await wb.write(BS + 10, b"zz")  # a partial write over block 1
        await wb.flush()
        assert api.snaps[sid].own[0] == b"a" * BS
        assert api.snaps[sid].own[1] == b"a" * 10 + b"zz" + b"a" * (BS - 12)

    run(tmp_path, body, tuning=WriteTuning(delay=5.0))


def test_the_spool_is_flushed_to_disk_in_the_background(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    monkeypatch.setattr(Spool, "sync_data", lambda self, forget=(): synced.append(1))

    async def wait_for(n: int) -> None:
        with trio.fail_after(5):
            while len(synced) < n:
                await trio.sleep(0.01)
        await trio.sleep(0.05)
        assert len(synced) == n

    async def body(wb: WriteBack, api: FakeApi, sid: str) -> None:
        await wb.write(0, b"s" * BS)
        await wait_for(0)
        await wb.write(BS, b"s" * BS)  # sync_every reached
        await wait_for(1)
        await wb.write(2 * BS, b"s" * BS)
        await wait_for(1)
        await wb.write(3 * BS, b"s" * BS)
        await wait_for(2)

    run(tmp_path, body, tuning=WriteTuning(delay=5.0, sync_every=2 * BS))


def test_a_retried_put_sends_the_bytes_read_for_its_first_attempt(tmp_path: Path) -> None:
    api = FakeApi()
    api.fail_puts = [BackendUnavailableError("dropped")]

    async def body(wb: WriteBack, api: FakeApi, sid: str) -> None:
        # A partial block is composed in the mount (a whole one is read by whoever stores
        # it: the upload process, or ThreadPuts, again at each attempt).
        await wb.write(0, b"1" * (BS - 1))
        reads: list[int] = []
        real = wb.spool.compose

        def compose(slot: int, cov: list[tuple[int, int]], base: bytes | None) -> bytes:
            reads.append(slot)
            return real(slot, cov, base)

        wb.spool.compose = compose  # type: ignore[method-assign]
        await wb.flush()
        assert reads == [0]  # read once, in the put's worker thread, sent twice
        assert api.snaps[sid].own[0] == b"1" * (BS - 1) + b"\0"
        assert api.calls["put"] == 2

    run(tmp_path, body, api=api)


def test_blocks_a_sequential_stream_completed_are_stored_without_the_delay(
    tmp_path: Path,
) -> None:
    async def body(wb: WriteBack, api: FakeApi, sid: str) -> None:
        await wb.write(10 * BS, b"i" * BS)  # a lone whole block: waits for the delay
        step = BS // 4
        for off in range(0, 2 * BS + step, step):  # a stream in quarter blocks
            await wb.write(off, b"s" * step)
        with trio.fail_after(2):  # well before the 5 s delay
            while sorted(api.puts) != [0, 1]:
                await trio.sleep(0.01)
        await trio.sleep(0.1)
        # Block 2 is partial, block 10 was not streamed: both still wait.
        assert sorted(api.puts) == [0, 1] and wb.dirty_blocks == 2

    run(tmp_path, body, tuning=WriteTuning(delay=5.0))


def test_streamed_blocks_once_stored_leave_the_page_cache_at_the_next_flush(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    forgotten: list[list[int]] = []
    monkeypatch.setattr(
        Spool, "sync_data", lambda self, forget=(): forgotten.append(sorted(forget))
    )

    async def body(wb: WriteBack, api: FakeApi, sid: str) -> None:
        await wb.write(10 * BS, b"i" * BS)  # whole, but not part of a stream: kept
        for index in range(3):  # a stream: blocks 1 and 2 are due at once
            await wb.write(index * BS, b"s" * BS)
        with trio.fail_after(5):
            # Stored as write-back sees it (the fake records a put in its thread, before the
            # put has returned to write-back).
            while not {1, 2} <= set(api.puts) or {1, 2} & wb._inflight:
                await trio.sleep(0.01)
        await wb.write(3 * BS, b"s" * BS)  # sync_every reached: that flush forgets 1 and 2
        with trio.fail_after(5):
            while not forgotten:
                await trio.sleep(0.01)
        slots = wb.spool.slots
        assert forgotten == [sorted([slots[1], slots[2]])]

    run(tmp_path, body, tuning=WriteTuning(delay=5.0, sync_every=5 * BS))
