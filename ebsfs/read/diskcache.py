"""The disk cache layer (``--disk-cache``, off by default): fetched blocks in one local file.

``DiskCache`` is shared by the snapshots of a mount: fixed ``BLOCK_SIZE`` slots, an LRU index
``(snapshot, index) -> (slot, SHA256)``, a file made fresh at mount and removed at unmount.
Nothing on disk is trusted: a block read back is checked against its digest, and a bad one is
dropped and fetched again. I/O runs in its own worker threads, ``O_DIRECT`` where the file
system allows. docs/architecture.md (the read path) and docs/operations.md (the disk cache).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import mmap
import os
import queue
import threading
from collections import Counter
from collections.abc import Hashable, Iterator
from pathlib import Path

import trio
from cachetools import LRUCache

from ebsfs.aws.runner import Calls
from ebsfs.core.blocks import BLOCK_SIZE, BlockIndex
from ebsfs.read.base import BlockReader

log = logging.getLogger(__name__)

#: Disk I/O calls in flight at once (reads, and writes of a batch): a local disk gains little
#: past this, and each holds one reused block buffer.
DISK_THREADS = 8
#: Tasks storing queued blocks, each holding one of the DISK_THREADS while it writes.
#: Several, because under a cold read the worker threads wait for the GIL (the network's
#: threads want it too), and that wait, not the disk, bounded how fast one writer stored.
WRITERS = 4
#: Blocks one writer takes from the queue for one hand-off to its thread (fewer hand-offs
#: and GIL round trips per block).
BATCH_BLOCKS = 4
#: Fetched blocks waiting to be stored, by default; past this a block is not stored.
QUEUE_BLOCKS = 32

_Key = tuple[Hashable, int]
#: A block waiting to be stored: its key, its bytes, and its SHA256 digest when known.
_Queued = tuple[_Key, bytes, bytes | None]


def cache_file(directory: str, mountpoint: str) -> Path:
    """The cache file of the mount at ``mountpoint``: one per mount point, so a daemon that
    crashed leaves at most one stale file, which the next mount of that point replaces."""
    tag = hashlib.sha256(os.path.abspath(mountpoint).encode()).hexdigest()[:16]
    return Path(directory) / f"blocks-{tag}"


class _SlotIndex(LRUCache[_Key, tuple[int, bytes]]):
    """The index; an entry dropped to make room hands its slot back."""

    def __init__(self, maxsize: int, cache: DiskCache) -> None:
        super().__init__(maxsize=maxsize)
        self._cache = cache

    def popitem(self) -> tuple[_Key, tuple[int, bytes]]:
        key, entry = super().popitem()
        self._cache.counters["disk_cache_evictions"] += 1
        self._cache._release(entry[0])
        return key, entry


class _Closed(OSError):
    pass


class DiskCache:
    """Verified blocks of any snapshot in one local file of ``max_bytes // BLOCK_SIZE`` slots.

    Index and slots change only on the trio thread; the worker threads only read and write
    slots they were handed. ``run`` (a task in the mount's nursery) stores queued blocks and,
    when cancelled, closes and removes the file.
    """

    def __init__(
        self,
        path: Path,
        max_bytes: int,
        threads: int = DISK_THREADS,
        queue_blocks: int = QUEUE_BLOCKS,
    ) -> None:
        self.path = path
        self.slots = max_bytes // BLOCK_SIZE
        self.counters: Counter[str] = Counter()
        # Its own runner: disk I/O must neither take the network's threads nor count as an
        # answer of the endpoint.
        self.calls = Calls(trio.CapacityLimiter(threads))
        self._index = _SlotIndex(max(self.slots, 1), self)
        self._free: list[int] = []
        self._next_slot = 0  # slots at and past this were never used: the file grows lazily
        self._reading: Counter[int] = Counter()  # slot -> reads in progress
        self._doomed: set[int] = set()  # slots dropped while read: free once the reads end
        self._queued: set[_Key] = set()
        self._send, self._receive = trio.open_memory_channel[_Queued](queue_blocks)
        self._storing = self.slots > 0
        self._buffers: queue.SimpleQueue[mmap.mmap] = queue.SimpleQueue()
        self._lock = threading.Lock()  # guards the descriptor against close() mid-I/O
        self._io_count = 0
        self._closed = False
        self._fd, self._direct = _create(path)
        log.info("disk cache %s: %d blocks of %d KiB", path, self.slots, BLOCK_SIZE >> 10)

    # ---- the trio side ----------------------------------------------------------------------

    async def load(self, key: _Key) -> bytes | None:
        """The block stored under ``key`` after checking its digest, or None (not held, or
        found bad and dropped)."""
        entry = self._index.get(key)
        if entry is None:
            return None
        slot, digest = entry
        self._reading[slot] += 1
        try:
            data = await self.calls.run(self._read_slot, slot, digest)
        except OSError as exc:
            self._drop(key, entry, f"cannot read it back ({exc})")
            return None
        finally:
            self._unpin(slot)
        if data is None:
            self._drop(key, entry, "its SHA256 does not match what was stored")
            return None
        self.counters["disk_cache_hits"] += 1
        return data

    def store_soon(self, key: _Key, data: bytes, digest: bytes | None = None) -> None:
        """Queue ``data`` for storing; dropped when the writers are behind or storing is off.

        ``digest``: its raw SHA256 digest, when already verified (else it is hashed here)."""
        if not self._storing or key in self._index or key in self._queued:
            return
        try:
            self._send.send_nowait((key, data, digest))
        except trio.WouldBlock:
            self.counters["disk_cache_skipped"] += 1
            return
        self._queued.add(key)

    async def run(self) -> None:
        """Store queued blocks until cancelled, then close and remove the cache file."""
        try:
            async with trio.open_nursery() as nursery:
                for _ in range(WRITERS):
                    nursery.start_soon(self._writer)
        finally:
            self.close()

    async def _writer(self) -> None:
        async for first in self._receive:
            batch = [first]
            while len(batch) < BATCH_BLOCKS:
                try:
                    batch.append(self._receive.receive_nowait())
                except trio.WouldBlock:
                    break
            try:
                await self._store(batch)
            finally:
                for key, _, _ in batch:
                    self._queued.discard(key)

    async def _store(self, batch: list[_Queued]) -> None:
        todo: list[tuple[_Key, int, bytes, bytes | None]] = []
        for key, data, digest in batch:
            if not self._storing or key in self._index:
                continue
            slot = self._take_slot()
            if slot is None:
                self.counters["disk_cache_skipped"] += 1  # every slot is being read
                continue
            todo.append((key, slot, data, digest))
        if not todo:
            return
        try:
            done = await self.calls.run(self._write_slots, [(s, d, h) for _, s, d, h in todo])
        except BaseException:
            self._free.extend(slot for _, slot, _, _ in todo)
            raise
        for (key, slot, _, _), result in zip(todo, done, strict=True):
            if isinstance(result, bytes):
                self._index[key] = (slot, result)
                self.counters["disk_cache_stored"] += 1
                continue
            self._free.append(slot)
            self.counters["disk_cache_errors"] += 1
            if result.errno == errno.ENOSPC:
                if self._storing:
                    log.warning("disk cache %s: the disk is full; no more blocks are stored "
                                "(those stored are still served)", self.path)
                self._storing = False
            elif not isinstance(result, _Closed):
                log.warning("disk cache %s: cannot store a block (%s)", self.path, result)

    def _take_slot(self) -> int | None:
        while not self._free:
            if self._next_slot < self.slots:
                self._next_slot += 1
                return self._next_slot - 1
            if not self._index:
                return None
            self._index.popitem()  # the least recently used entry gives its slot back
        return self._free.pop()

    def _release(self, slot: int) -> None:
        if self._reading[slot]:
            self._doomed.add(slot)
        else:
            self._free.append(slot)

    def _unpin(self, slot: int) -> None:
        self._reading[slot] -= 1
        if self._reading[slot] <= 0:
            del self._reading[slot]
            if slot in self._doomed:
                self._doomed.discard(slot)
                self._free.append(slot)

    def _drop(self, key: _Key, entry: tuple[int, bytes], why: str) -> None:
        self.counters["disk_cache_errors"] += 1
        log.warning("disk cache %s: dropped %s block %d: %s; reading it from the backend",
                    self.path, key[0], key[1], why)
        if self._index.get(key) == entry:
            del self._index[key]
            self._release(entry[0])

    def stats(self) -> dict[str, int]:
        return {
            **self.counters,
            "disk_cache_blocks": len(self._index),
            "disk_cache_max_blocks": self.slots,
        }

    # ---- the worker threads -----------------------------------------------------------------

    @contextlib.contextmanager
    def _io(self, count: int = 1) -> Iterator[list[mmap.mmap]]:
        """``count`` reused block buffers for I/O on the descriptor; _Closed once it is closed."""
        with self._lock:
            if self._closed:
                raise _Closed(errno.EBADF, "the disk cache is closed")
            self._io_count += 1
        bufs: list[mmap.mmap] = []
        try:
            for _ in range(count):
                try:
                    bufs.append(self._buffers.get_nowait())
                except queue.Empty:
                    bufs.append(mmap.mmap(-1, BLOCK_SIZE))  # page-aligned, as O_DIRECT needs
            yield bufs
        finally:
            for buf in bufs:
                self._buffers.put(buf)
            with self._lock:
                self._io_count -= 1
                if self._closed and not self._io_count:
                    os.close(self._fd)

    def _read_slot(self, slot: int, digest: bytes) -> bytes | None:
        with self._io() as [buf]:
            got = os.preadv(self._fd, [buf], slot * BLOCK_SIZE)
            if got != BLOCK_SIZE:
                raise OSError(errno.EIO, f"short read of slot {slot} ({got} bytes)")
            if hashlib.sha256(buf).digest() != digest:
                return None
            return buf[:]

    def _write_slots(
        self, todo: list[tuple[int, bytes, bytes | None]]
    ) -> list[bytes | OSError]:
        """Each block's digest once written to its slot (the one given, else hashed here), or
        the error that kept it out.

        Blocks bound for consecutive slots (the usual case while the file grows) go out in one
        ``pwritev``: one system call and one GIL round trip for the lot.
        """
        out: list[bytes | OSError] = []
        try:
            with self._io(len(todo)) as bufs:
                for buf, (_, data, _) in zip(bufs, todo, strict=True):
                    buf[:] = data
                start = 0
                while start < len(todo):
                    end = start + 1
                    while end < len(todo) and todo[end][0] == todo[end - 1][0] + 1:
                        end += 1
                    try:
                        self._pwrite(bufs[start:end], todo[start][0] * BLOCK_SIZE)
                    except OSError as exc:
                        out.extend(exc for _ in range(start, end))
                        if exc.errno == errno.ENOSPC:
                            break
                    else:
                        out.extend(
                            h if h is not None else hashlib.sha256(d).digest()
                            for _, d, h in todo[start:end]
                        )
                    start = end
        except _Closed as exc:
            out.clear()
            out.extend(exc for _ in todo)
        if len(out) < len(todo):  # stopped by a full disk: the rest is not stored either
            last = out[-1]
            out.extend(last for _ in range(len(todo) - len(out)))
        return out

    def _pwrite(self, bufs: list[mmap.mmap], offset: int) -> None:
        total = len(bufs) * BLOCK_SIZE
        try:
            done = os.pwritev(self._fd, bufs, offset)
        except OSError as exc:
            if exc.errno != errno.EINVAL or not self._direct:
                raise
            self._go_buffered(exc)
            done = 0
        while done < total:  # a short write: the rest, a buffer at a time
            which, at = divmod(done, BLOCK_SIZE)
            done += os.pwrite(self._fd, memoryview(bufs[which])[at:], offset + done)

    def _go_buffered(self, exc: OSError) -> None:
        # Some file systems open with O_DIRECT but refuse the writes.
        with self._lock:
            if self._direct:
                log.info("disk cache %s: O_DIRECT writes fail (%s); using buffered I/O",
                         self.path, exc.strerror)
                buffered = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
                os.dup2(buffered, self._fd)
                os.close(buffered)
                self._direct = False

    def close(self) -> None:
        """Remove the file; its descriptor closes once no I/O uses it."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if not self._io_count:
                os.close(self._fd)
        with contextlib.suppress(OSError):
            self.path.unlink()


def _create(path: Path) -> tuple[int, bool]:
    """A new, empty cache file at ``path`` (mode 0600, directory 0700 if made here) and
    whether its descriptor does O_DIRECT."""
    if not path.parent.is_dir():
        path.parent.mkdir(mode=0o700, parents=True)
        os.chmod(path.parent, 0o700)  # mkdir's mode is cut by the umask
    # A stale file is removed, never opened: O_EXCL also refuses a planted symlink.
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
    fd = os.open(path, flags, 0o600)
    direct = getattr(os, "O_DIRECT", 0)
    if not direct:
        return fd, False
    try:
        direct_fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | direct)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            os.close(fd)
            raise
        log.info("disk cache %s: O_DIRECT is not supported here; using buffered I/O", path)
        return fd, False
    os.close(fd)
    return direct_fd, True


class DiskCachedBlocks(BlockReader):
    """``BlockReader`` that keeps one snapshot's fetched blocks in a shared ``DiskCache``."""

    def __init__(self, below: BlockReader, cache: DiskCache, key: Hashable) -> None:
        self.below = below
        self.cache = cache
        self.key = key

    async def read_block(self, index: BlockIndex) -> bytes | None:
        key = (self.key, int(index))
        data = await self.cache.load(key)
        if data is not None:
            return data
        # The digest the block was verified against below, if any: then it is not hashed again.
        data, digest = await self.below.read_verified(index)
        if data is not None:  # a hole costs nothing below: neither a miss nor worth storing
            self.cache.counters["disk_cache_misses"] += 1
            self.cache.store_soon(key, data, digest)
        return data

    def stats(self) -> dict[str, int]:
        return self.cache.stats()


__all__ = ["DiskCache", "DiskCachedBlocks", "cache_file"]
