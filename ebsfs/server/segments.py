"""Block data in append-only pack files ("segments") of records (records.py): concurrent
appends, durable by ``RWF_DSYNC`` or a shared ``fdatasync``, recovery against the caller's
index, space freed by punching holes. Segments of an older layout (``N.seg``, bare blocks)
are still read and freed (docs/server.md, "Storage")."""

import contextlib
import errno
import fcntl
import logging
import mmap
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from ebsfs.core.blocks import BLOCK_SIZE
from ebsfs.core.durable import fsync_path, punch_hole
from ebsfs.server.records import (
    HEADER_SIZE,
    RECORD_SIZE,
    Record,
    data_bytes,
    decode_header,
    page_aligned,
)

log = logging.getLogger(__name__)

#: Blocks per segment before a new one is started (256 MiB of data).
SEGMENT_BLOCKS = 512
_SUFFIX = ".rec"
_LEGACY_SUFFIX = ".seg"


class Segments:
    """The segment files of one directory; safe to use from many threads."""

    def __init__(self, directory: Path, segment_blocks: int = SEGMENT_BLOCKS) -> None:
        self.dir = directory
        self.dir.mkdir(mode=0o700, exist_ok=True)
        self._dirname = str(directory)
        self._segment_blocks = segment_blocks
        self._lock = threading.Lock()
        self._direct = hasattr(os, "O_DIRECT")
        self._dsync_flag: int = getattr(os, "RWF_DSYNC", 0)
        self._can_punch = True
        self._local = threading.local()
        self._active = -1
        self._next_offset = 0
        #: Numbers of segments in the older, header-less layout.
        self._legacy: set[int] = set()
        #: Open descriptors of segments being appended to, and appends in each not yet
        #: released (written, synced and indexed or freed by the caller).
        self._fds: dict[int, int] = {}
        self._pinned: dict[int, int] = {}

    def path(self, segment: int) -> Path:
        return Path(self._name(segment))

    def _name(self, segment: int) -> str:
        suffix = _LEGACY_SUFFIX if segment in self._legacy else _SUFFIX
        return f"{self._dirname}/{segment:08d}{suffix}"

    def on_disk(self) -> list[int]:
        """Numbers of the segment files present."""
        found = []
        for p in self.dir.iterdir():
            if p.suffix in (_SUFFIX, _LEGACY_SUFFIX) and p.stem.isdigit():
                found.append(int(p.stem))
                if p.suffix == _LEGACY_SUFFIX:
                    self._legacy.add(int(p.stem))
        return sorted(found)

    def scan(self, live: dict[int, set[int]]) -> Iterator[tuple[int, int, Record]]:
        """(segment, data offset, header) of every intact record header at an offset not in
        ``live`` (segment -> data offsets). The data is not checked: see ``read``."""
        for segment in self.on_disk():
            if segment in self._legacy:
                continue
            known = live.get(segment, set())
            fd = os.open(self._name(segment), os.O_RDONLY)
            try:
                size = os.fstat(fd).st_size
                for start in range(0, size - RECORD_SIZE + 1, RECORD_SIZE):
                    if start + HEADER_SIZE in known:
                        continue
                    record = decode_header(os.pread(fd, HEADER_SIZE, start))
                    if record is not None:
                        yield segment, start + HEADER_SIZE, record
            finally:
                os.close(fd)

    def read(self, segment: int, offset: int) -> bytes:
        """The block stored at ``offset`` of a segment."""
        fd = os.open(self._name(segment), os.O_RDONLY)
        try:
            return os.pread(fd, BLOCK_SIZE, offset)
        finally:
            os.close(fd)

    def recover(self, live: dict[int, set[int]], highest_known: int) -> None:
        """Bring the files in line with the index ``live`` (segment -> data offsets).

        Called once at start-up, before any append. New records go to a fresh segment
        numbered above every number on disk and ``highest_known``.
        """
        present = self.on_disk()
        for segment in present:
            offsets = live.get(segment)
            path = self.path(segment)
            if not offsets:
                log.info("removing segment %s: no indexed block lives in it", path.name)
                path.unlink()
                continue
            end = max(offsets) + BLOCK_SIZE
            size = path.stat().st_size
            fd = os.open(path, os.O_RDWR)
            try:
                if size > end:
                    log.info("truncating segment %s from %d to %d bytes: unindexed tail",
                             path.name, size, end)
                    os.ftruncate(fd, end)
                slot, header = self._slot(segment)
                for start in range(0, end, slot):
                    if start + header not in offsets:
                        self._punch(fd, start, slot)
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_path(self.dir)
        self._active = max([*present, highest_known, 0]) + 1
        self._next_offset = 0

    def append(
        self, header: bytes, data: bytes | memoryview, durable: bool = False
    ) -> tuple[int, int]:
        """Write one record (``header`` and the block) at the end of the active segment;
        (segment, offset of the block). Not durable until ``sync`` of that segment returns,
        unless ``durable``: then it is when this returns. The segment stays pinned (never
        dropped) until ``release``."""
        with self._lock:
            if self._next_offset >= self._segment_blocks * RECORD_SIZE:
                self._retire(self._active)
                self._active += 1
                self._next_offset = 0
            segment, start = self._active, self._next_offset
            self._next_offset += RECORD_SIZE
            fd = self._fds.get(segment)
            if fd is None:
                fd = self._fds[segment] = self._open(segment)
            self._pinned[segment] = self._pinned.get(segment, 0) + 1
        try:
            self._write(segment, fd, header, data, start, durable)
        except BaseException:
            # The write may have gone through though its sync did not: the put is not
            # acknowledged, so its record must not turn up at the next start.
            with contextlib.suppress(OSError):
                self.discard(segment, start + HEADER_SIZE)
            self.release(segment)
            raise
        return segment, start + HEADER_SIZE

    def release(self, segment: int) -> None:
        """The caller is done with an append to ``segment`` (indexed, or freed)."""
        with self._lock:
            self._pinned[segment] -= 1
            if segment != self._active and not self._pinned[segment]:
                self._retire(segment)

    def sync(self, segments: set[int]) -> None:
        """Make every completed append to these segments durable (one fdatasync each).
        Each must have an append not yet released (so its descriptor is still open)."""
        for segment in sorted(segments):
            with self._lock:
                fd = self._fds[segment]
            os.fdatasync(fd)

    def free(self, segment: int, offset: int) -> None:
        """Give the space of the block at ``offset`` (and its header) back to the filesystem;
        it reads as zeros after (where holes can be punched)."""
        if not self._can_punch:
            return
        slot, header = self._slot(segment)
        with contextlib.suppress(FileNotFoundError):
            fd = os.open(self._name(segment), os.O_WRONLY)
            try:
                self._punch(fd, offset - header, slot)
            finally:
                os.close(fd)

    def discard(self, segment: int, offset: int) -> None:
        """Make sure the record of the block at ``offset`` never counts as a put (one that
        failed or was refused): its header is overwritten with zeros, which needs no new
        space and works where holes cannot be punched (or a full disk refuses to), then
        its space is freed and both made durable. Raises OSError if the disk refuses."""
        slot, header = self._slot(segment)
        fd = os.open(self._name(segment), os.O_WRONLY)
        try:
            failure: OSError | None = None
            if header:
                try:
                    os.pwrite(fd, bytes(header), offset - header)
                except OSError as exc:
                    failure = exc
            if self._can_punch:
                self._punch(fd, offset - header, slot)
            os.fdatasync(fd)
            if failure is not None:
                raise failure
        finally:
            os.close(fd)

    def drop(self, segment: int) -> None:
        """Remove a segment no indexed block lives in, unless appends are still going to
        it. The caller must hold off indexing into it meanwhile."""
        with self._lock:
            if segment == self._active or segment in self._fds or segment in self._pinned:
                return
            with contextlib.suppress(FileNotFoundError):
                self.path(segment).unlink()
            self._legacy.discard(segment)

    def allocated(self) -> int:
        """Bytes of data the segment files hold: holes not counted, nor the blocks the
        filesystem spends on mapping a file with many holes."""
        total = 0
        for p in self.dir.iterdir():
            if p.suffix in (_SUFFIX, _LEGACY_SUFFIX):
                total += data_bytes(p)
        return total

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()

    # -- plumbing -----------------------------------------------------------------------------

    def _slot(self, segment: int) -> tuple[int, int]:
        """(bytes per slot, bytes before the block in a slot) of a segment's layout."""
        return (BLOCK_SIZE, 0) if segment in self._legacy else (RECORD_SIZE, HEADER_SIZE)

    def _retire(self, segment: int) -> None:
        """Close a segment that is no longer appended to, once its writes are done."""
        if not self._pinned.get(segment):
            self._pinned.pop(segment, None)
            fd = self._fds.pop(segment, None)
            if fd is not None:
                os.close(fd)

    def _open(self, segment: int) -> int:
        path = self._name(segment)
        flags = os.O_WRONLY | os.O_CREAT
        if self._direct:
            try:
                fd = os.open(path, flags | os.O_DIRECT, 0o600)
            except OSError:
                log.info("O_DIRECT is not supported in %s; using buffered writes", self.dir)
                self._direct = False
            else:
                fsync_path(self.dir)
                return fd
        fd = os.open(path, flags, 0o600)
        fsync_path(self.dir)
        return fd

    def _aligned(self, name: str, size: int) -> mmap.mmap:
        """This thread's page-aligned buffer ``name`` of at least ``size`` bytes."""
        buf: mmap.mmap | None = getattr(self._local, name, None)
        if buf is None or len(buf) < size:
            buf = mmap.mmap(-1, max(size, mmap.PAGESIZE))
            setattr(self._local, name, buf)
        return buf

    def _write(
        self, segment: int, fd: int, header: bytes, data: bytes | memoryview, start: int,
        durable: bool,
    ) -> None:
        view = memoryview(data)
        # O_DIRECT skips the page cache (the fdatasync then has no dirty pages to write
        # back, which cuts a put's CPU) but needs aligned buffers. The HTTP layer receives
        # blocks into one; anything else is copied into this thread's.
        if self._direct and not page_aligned(view):
            buf = self._aligned("block", len(view))
            buf[: len(view)] = view
            view = memoryview(buf)[: len(view)]
        page = self._aligned("header", HEADER_SIZE)
        page[: len(header)] = header
        pieces = [memoryview(page)[:HEADER_SIZE], view]
        total = HEADER_SIZE + len(view)
        # RWF_DSYNC: the write returns once it is durable (what fdatasync would make it),
        # without a second system call.
        flags = self._dsync_flag if durable else 0
        retried = False
        while True:
            try:
                done = os.pwritev(fd, pieces, start, flags)
                break
            except OSError as exc:
                if flags and exc.errno == errno.EOPNOTSUPP:
                    log.info("RWF_DSYNC is not supported here; writes are synced by fdatasync")
                    self._dsync_flag = flags = 0
                    continue
                if exc.errno != errno.EINVAL:
                    raise
                if not self._direct:
                    # Another put's write failed the same way first and made this very
                    # descriptor buffered (below) while this write was under way: retry,
                    # once. Any other EINVAL is an error.
                    if retried or fcntl.fcntl(fd, fcntl.F_GETFL) & getattr(os, "O_DIRECT", 0):
                        raise
                    retried = True
                    continue
                # A filesystem that takes O_DIRECT opens but not the writes.
                log.info("O_DIRECT writes fail in %s (%s); using buffered writes", self.dir, exc)
                self._direct = False
                buffered = os.open(self._name(segment), os.O_WRONLY)
                os.dup2(buffered, fd)
                os.close(buffered)
                done = 0
                break
        if done < total:
            self._finish(segment, fd, pieces, start, done)
            flags = 0  # the rest was written without RWF_DSYNC
        if durable and not flags:
            # Either descriptor will do: fdatasync flushes the file, not the descriptor.
            os.fdatasync(fd)

    def _finish(
        self, segment: int, fd: int, pieces: list[memoryview], start: int, done: int
    ) -> None:
        """Write what a short ``pwritev`` left of a record, from byte ``done`` on.

        The rest starts at an offset and an address of no particular alignment, which an
        ``O_DIRECT`` descriptor refuses (EINVAL), so it goes through a buffered descriptor
        of the same file; its dirty pages are the file's, so the caller's ``fdatasync`` (or
        the group sync) covers them as it covers the direct part."""
        offset = start + done
        rest: list[memoryview] = []
        for piece in pieces:
            if done < len(piece):
                rest.append(piece[done:])
            done = max(0, done - len(piece))
        direct = fcntl.fcntl(fd, fcntl.F_GETFL) & getattr(os, "O_DIRECT", 0)
        out = os.open(self._name(segment), os.O_WRONLY) if direct else fd
        try:
            while rest:
                n = os.pwritev(out, rest, offset)
                if n <= 0:
                    raise OSError(errno.EIO, f"write to {self._name(segment)} made no progress")
                offset += n
                while rest and n >= len(rest[0]):
                    n -= len(rest[0])
                    rest.pop(0)
                if n:
                    rest[0] = rest[0][n:]
        finally:
            if out != fd:
                os.close(out)

    def _punch(self, fd: int, offset: int, length: int) -> None:
        if not self._can_punch:
            return
        err = punch_hole(fd, offset, length)
        if err:
            if err in (errno.EOPNOTSUPP, errno.ENOSYS):
                log.info("cannot punch holes in %s (%s); space comes back with whole segments",
                         self.dir, os.strerror(err))
                self._can_punch = False
            else:
                # A passing failure (a full disk: a punch may need a block for the extent
                # tree): this record's space comes back at the next start-up.
                log.warning("punching a hole in %s at %d failed (%s); its space comes back "
                            "at the next start", self.dir, offset, os.strerror(err))
