"""Unit tests of the disk cache layer over the remote layer and a fake API."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import mmap
import os
import stat
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import trio

from ebsfs.aws.runner import Calls
from ebsfs.core.blocks import BLOCK_SIZE, BlockIndex
from ebsfs.read import diskcache
from ebsfs.read.base import BlockReader
from ebsfs.read.diskcache import DiskCache, DiskCachedBlocks, cache_file
from ebsfs.read.remote import RemoteBlocks, RemoteTuning
from tests.read.fakes import FakeBlockApi, block_of

pytestmark = pytest.mark.timeout(60)
SNAP = "snap-0123456789abcdef0"
B = BlockIndex


def run(fn: Callable[[], Awaitable[None]]) -> None:
    trio.run(fn)


def fake_api(count: int = 16) -> FakeBlockApi:
    # Even indexes hold data, odd ones are holes.
    return FakeBlockApi({i: block_of(i) for i in range(0, count, 2)})


def layer(api: FakeBlockApi, cache: DiskCache) -> DiskCachedBlocks:
    remote = RemoteBlocks(
        api, Calls(trio.CapacityLimiter(4)), SNAP, 2048, tuning=RemoteTuning(backoff=0.01)
    )
    return DiskCachedBlocks(remote, cache, SNAP)


@contextlib.asynccontextmanager
async def running(cache: DiskCache) -> AsyncIterator[DiskCache]:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(cache.run)
        yield cache
        nursery.cancel_scope.cancel()


async def stored(cache: DiskCache, count: int) -> None:
    """Wait until ``count`` blocks have been stored (the writers run in the background)."""
    with trio.fail_after(10):
        while cache.counters["disk_cache_stored"] < count:
            await trio.sleep(0.005)


def test_miss_then_hit_from_disk(tmp_path: Path) -> None:
    api = fake_api()
    path = tmp_path / "cache" / "blocks"

    async def main() -> None:
        async with running(DiskCache(path, 8 * BLOCK_SIZE)) as cache:
            blocks = layer(api, cache)
            assert await blocks.read_block(B(2)) == block_of(2)
            await stored(cache, 1)
            assert await blocks.read_block(B(2)) == block_of(2)
            assert api.calls["get"] == 1  # the second read came from the file
            s = blocks.stats()
            assert (s["disk_cache_misses"], s["disk_cache_hits"]) == (1, 1)
            assert s["disk_cache_blocks"] == 1 and s["disk_cache_max_blocks"] == 8
            # The file holds the block, not the page cache's copy of it.
            assert os.path.getsize(path) == BLOCK_SIZE
            assert cache._direct  # tmp_path is on a disk file system here

    run(main)


def test_file_modes_stale_file_replaced_and_removed_at_the_end(tmp_path: Path) -> None:
    directory = tmp_path / "new" / "dir"
    path = directory / "blocks"
    directory.mkdir(parents=True)
    path.write_bytes(b"left by a crashed daemon")
    os.chmod(path, 0o644)

    async def main() -> None:
        async with running(DiskCache(path, 4 * BLOCK_SIZE)):
            st = os.stat(path)
            assert st.st_size == 0  # replaced, not reused
            assert stat.S_IMODE(st.st_mode) == 0o600

    run(main)
    assert not path.exists()

    fresh = tmp_path / "made" / "here" / "blocks"

    async def made() -> None:
        async with running(DiskCache(fresh, 4 * BLOCK_SIZE)):
            assert stat.S_IMODE(os.stat(fresh.parent).st_mode) == 0o700

    run(made)
    assert not fresh.exists()


def test_cache_file_is_per_mount_point() -> None:
    a = cache_file("/var/cache/ebsfs", "/mnt/a")
    assert a == cache_file("/var/cache/ebsfs", "/mnt/a/")
    assert a != cache_file("/var/cache/ebsfs", "/mnt/b")
    assert a.parent == Path("/var/cache/ebsfs")


def test_holes_are_not_stored(tmp_path: Path) -> None:
    api = fake_api()

    async def main() -> None:
        async with running(DiskCache(tmp_path / "blocks", 8 * BLOCK_SIZE)) as cache:
            blocks = layer(api, cache)
            assert await blocks.read_block(B(3)) is None
            assert await blocks.read_block(B(4)) == block_of(4)
            await stored(cache, 1)
            assert await blocks.read_block(B(3)) is None
            assert cache.stats()["disk_cache_blocks"] == 1
            assert cache.counters["disk_cache_stored"] == 1
            assert cache.counters["disk_cache_misses"] == 1  # block 4 only

    run(main)


def test_bounded_least_recently_used_dropped(tmp_path: Path) -> None:
    api = fake_api(40)
    path = tmp_path / "blocks"

    async def main() -> None:
        async with running(DiskCache(path, 4 * BLOCK_SIZE)) as cache:
            blocks = layer(api, cache)
            for n, i in enumerate(range(0, 20, 2), start=1):
                await blocks.read_block(B(i))
                await stored(cache, n)
            s = cache.stats()
            assert s["disk_cache_blocks"] == 4
            assert s["disk_cache_evictions"] == 6
            assert os.path.getsize(path) <= 4 * BLOCK_SIZE
            gets = api.calls["get"]
            for i in (14, 16, 18):  # the newest are held...
                assert await blocks.read_block(B(i)) == block_of(i)
            assert api.calls["get"] == gets
            assert await blocks.read_block(B(2)) == block_of(2)  # ...the oldest were dropped
            assert api.calls["get"] == gets + 1

    run(main)


def test_corrupted_slot_is_detected_and_read_from_below(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    api = fake_api()
    path = tmp_path / "blocks"

    async def main() -> None:
        async with running(DiskCache(path, 8 * BLOCK_SIZE)) as cache:
            blocks = layer(api, cache)
            await blocks.read_block(B(6))
            await stored(cache, 1)
            with open(path, "r+b") as f:  # one flipped byte in the middle of the block
                f.seek(BLOCK_SIZE // 2)
                byte = f.read(1)
                f.seek(BLOCK_SIZE // 2)
                f.write(bytes([byte[0] ^ 0xFF]))
            with caplog.at_level(logging.WARNING, logger="ebsfs.read.diskcache"):
                assert await blocks.read_block(B(6)) == block_of(6)
            assert api.calls["get"] == 2
            assert cache.counters["disk_cache_errors"] == 1
            assert cache.counters["disk_cache_hits"] == 0
            # It is stored again, and then served from the file.
            await stored(cache, 2)
            assert await blocks.read_block(B(6)) == block_of(6)
            assert api.calls["get"] == 2

    run(main)
    # Only the warnings: whether the INFO line of the open is captured depends on the level
    # earlier tests left on the "ebsfs" logger.
    lines = [
        r.getMessage()
        for r in caplog.records
        if r.name == "ebsfs.read.diskcache" and r.levelno >= logging.WARNING
    ]
    assert len(lines) == 1 and "block 6" in lines[0] and "SHA256" in lines[0]


def test_read_error_falls_back_to_below(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    api = fake_api()
    path = tmp_path / "blocks"

    async def main() -> None:
        async with running(DiskCache(path, 8 * BLOCK_SIZE)) as cache:
            blocks = layer(api, cache)
            await blocks.read_block(B(0))
            await blocks.read_block(B(2))
            await stored(cache, 2)
            os.truncate(path, 0)  # the slots are gone: short reads
            with caplog.at_level(logging.WARNING, logger="ebsfs.read.diskcache"):
                assert await blocks.read_block(B(0)) == block_of(0)
                assert await blocks.read_block(B(2)) == block_of(2)
            assert api.calls["get"] == 4
            assert cache.counters["disk_cache_errors"] == 2
            assert cache.stats()["disk_cache_blocks"] in (0, 1, 2)  # re-stored in the background

    run(main)
    assert any("cannot read it back" in r.getMessage() for r in caplog.records)


def _hit_after_store(path: Path) -> DiskCache:
    api = fake_api()
    made: list[DiskCache] = []

    async def main() -> None:
        cache = DiskCache(path, 8 * BLOCK_SIZE)
        made.append(cache)
        async with running(cache):
            blocks = layer(api, cache)
            await blocks.read_block(B(8))
            await stored(cache, 1)
            assert await blocks.read_block(B(8)) == block_of(8)
            assert api.calls["get"] == 1

    run(main)
    assert not path.exists()
    return made[0]


def test_no_o_direct_falls_back_to_buffered_io(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # ramfs refuses O_DIRECT (EINVAL at open); tmpfs did too before Linux 6.6.
    ram = tmp_path / "ram"
    ram.mkdir()
    subprocess.run(["mount", "-t", "ramfs", "ramfs", str(ram)], check=True)
    try:
        with caplog.at_level(logging.INFO, logger="ebsfs.read.diskcache"):
            cache = _hit_after_store(ram / "blocks")
    finally:
        subprocess.run(["umount", str(ram)], check=False)
    assert not cache._direct
    assert sum("O_DIRECT is not supported" in r.getMessage() for r in caplog.records) == 1


def test_tmpfs_dev_shm() -> None:
    shm = Path("/dev/shm")
    assert shm.is_dir(), "/dev/shm (tmpfs) is needed for this test"
    path = shm / f"ebsfs-test-diskcache-{os.getpid()}" / "blocks"
    try:
        _hit_after_store(path)  # O_DIRECT or buffered, whichever this kernel's tmpfs takes
    finally:
        with contextlib.suppress(OSError):
            path.parent.rmdir()


def test_writers_behind_skip_instead_of_queueing(tmp_path: Path) -> None:
    async def main() -> None:
        cache = DiskCache(tmp_path / "blocks", 64 * BLOCK_SIZE)
        try:
            # No writer runs: the queue fills, then blocks are skipped.
            for i in range(diskcache.QUEUE_BLOCKS + 5):
                cache.store_soon((SNAP, i), block_of(i))
            assert cache.counters["disk_cache_skipped"] == 5
        finally:
            cache.close()

    run(main)


def test_full_disk_stops_storing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    small = tmp_path / "small"
    small.mkdir()
    # A real file system that fills after two blocks (root: this suite mounts things anyway).
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1100k", "tmpfs", str(small)], check=True)
    api = fake_api(20)

    async def main() -> None:
        async with running(DiskCache(small / "blocks", 8 * BLOCK_SIZE)) as cache:
            blocks = layer(api, cache)
            with caplog.at_level(logging.WARNING, logger="ebsfs.read.diskcache"):
                for i in range(0, 20, 2):
                    assert await blocks.read_block(B(i)) == block_of(i)
                    await trio.sleep(0.02)
                with trio.fail_after(10):
                    while cache._storing:
                        await trio.sleep(0.01)
            held = cache.counters["disk_cache_stored"]
            assert 1 <= held <= 2
            for i in range(0, 2 * held, 2):  # what was stored is still served
                gets = api.calls["get"]
                assert await blocks.read_block(B(i)) == block_of(i)
                assert api.calls["get"] == gets

    try:
        run(main)
    finally:
        subprocess.run(["umount", str(small)], check=False)
    full = [r for r in caplog.records if "disk is full" in r.getMessage()]
    assert len(full) == 1


def test_direct_writes_refused_fall_back_to_buffered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Some file systems take O_DIRECT at open and refuse the writes (EINVAL): a fake for that.
    cache = DiskCache(tmp_path / "blocks", 8 * BLOCK_SIZE)
    real_pwritev = os.pwritev

    def pwritev(fd: int, buffers: list[mmap.mmap], offset: int) -> int:
        if cache._direct:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwritev(fd, buffers, offset)

    monkeypatch.setattr(diskcache.os, "pwritev", pwritev)
    api = fake_api()

    async def main() -> None:
        async with running(cache):
            blocks = layer(api, cache)
            with caplog.at_level(logging.INFO, logger="ebsfs.read.diskcache"):
                await blocks.read_block(B(0))
                await blocks.read_block(B(2))
                await stored(cache, 2)
            assert await blocks.read_block(B(0)) == block_of(0)
            assert await blocks.read_block(B(2)) == block_of(2)
            assert api.calls["get"] == 2

    run(main)
    assert not cache._direct
    assert sum("O_DIRECT writes fail" in r.getMessage() for r in caplog.records) == 1


class _CountingHashlib:
    """Stands in for the disk cache module's ``hashlib``: counts the blocks it hashes."""

    def __init__(self) -> None:
        self.blocks = 0

    def sha256(self, data: bytes | mmap.mmap = b"") -> hashlib._Hash:
        if len(data) == BLOCK_SIZE:
            self.blocks += 1
        return hashlib.sha256(data)


class _PlainBelow(BlockReader):
    """A lower layer with ``read_block`` only: the default ``read_verified`` offers no digest."""

    def __init__(self) -> None:
        self.reads = 0

    async def read_block(self, index: BlockIndex) -> bytes | None:
        self.reads += 1
        return block_of(index)

    def stats(self) -> dict[str, int]:
        return {}


def test_a_fetched_block_is_stored_with_the_digest_it_was_verified_against(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    counting = _CountingHashlib()
    monkeypatch.setattr(diskcache, "hashlib", counting)
    api = fake_api()

    async def main() -> None:
        async with running(DiskCache(tmp_path / "blocks", 8 * BLOCK_SIZE)) as cache:
            blocks = layer(api, cache)
            for i in (0, 2, 4):
                assert await blocks.read_block(B(i)) == block_of(i)
            await stored(cache, 3)
            assert counting.blocks == 0  # the remote layer's digests were taken as they are
            assert cache._index[(SNAP, 2)][1] == hashlib.sha256(block_of(2)).digest()
            # Reading back still checks every block against its digest.
            for i in (0, 2, 4):
                assert await blocks.read_block(B(i)) == block_of(i)
            assert counting.blocks == 3
            assert api.calls["get"] == 3

    run(main)


def test_a_block_whose_digest_is_not_known_is_hashed_when_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    counting = _CountingHashlib()
    monkeypatch.setattr(diskcache, "hashlib", counting)
    below = _PlainBelow()

    async def main() -> None:
        async with running(DiskCache(tmp_path / "blocks", 8 * BLOCK_SIZE)) as cache:
            blocks = DiskCachedBlocks(below, cache, SNAP)
            assert await blocks.read_block(B(3)) == block_of(3)
            await stored(cache, 1)
            assert counting.blocks == 1
            assert cache._index[(SNAP, 3)][1] == hashlib.sha256(block_of(3)).digest()
            assert await blocks.read_block(B(3)) == block_of(3)
            assert (below.reads, counting.blocks) == (1, 2)

    run(main)


def test_a_given_digest_that_does_not_match_is_caught_on_reading_back(tmp_path: Path) -> None:
    # The digest handed down is what the read back is checked against: a wrong one (a bug
    # below) costs a fetch, never wrong bytes.
    below = _PlainBelow()

    async def main() -> None:
        async with running(DiskCache(tmp_path / "blocks", 8 * BLOCK_SIZE)) as cache:
            cache.store_soon((SNAP, 5), block_of(5), hashlib.sha256(b"other").digest())
            await stored(cache, 1)
            blocks = DiskCachedBlocks(below, cache, SNAP)
            assert await blocks.read_block(B(5)) == block_of(5)
            assert below.reads == 1
            assert cache.counters["disk_cache_errors"] == 1

    run(main)
