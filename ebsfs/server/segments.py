"""Block data in append-only pack files ("segments"), each block at a block-aligned offset.

Writers append concurrently (an offset is reserved under a lock, the write itself is not);
durability is the caller's business: ``sync`` makes a set of segments' writes durable with
one ``fdatasync`` each, so a batch of puts shares it. The index of what lives where is kept
by the caller (SQLite); this module only knows files, offsets and free space:

- ``recover`` truncates each segment to the end of its last committed block (a torn or
  uncommitted write at the tail disappears), punches holes where nothing committed lives
  and removes segments nothing lives in;
- ``free`` punches a hole over one block's extent, so the space of an unreferenced block
  goes back to the filesystem at once, and ``drop`` removes a whole unreferenced segment.
"""

import contextlib
import ctypes
import errno
import logging
import mmap
import os
import threading
from pathlib import Path

from ebsfs.types import BLOCK_SIZE

log = logging.getLogger(__name__)

#: Blocks per segment before a new one is started (256 MiB).
SEGMENT_BLOCKS = 512
_SUFFIX = ".seg"

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_libc = ctypes.CDLL(None, use_errno=True)
_fallocate = getattr(_libc, "fallocate", None)
if _fallocate is not None:
    _fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    _fallocate.restype = ctypes.c_int


class Segments:
    """The segment files of one directory; safe to use from many threads."""

    def __init__(self, directory: Path, segment_blocks: int = SEGMENT_BLOCKS) -> None:
        self.dir = directory
        self.dir.mkdir(exist_ok=True)
        self._dirname = str(directory)
        self._segment_blocks = segment_blocks
        self._lock = threading.Lock()
        self._direct = hasattr(os, "O_DIRECT")
        self._can_punch = _fallocate is not None
        self._local = threading.local()
        self._active = -1
        self._next_offset = 0
        #: Open descriptors of segments being appended to, and appends in each not yet
        #: released (written, synced and committed or freed by the caller).
        self._fds: dict[int, int] = {}
        self._pinned: dict[int, int] = {}

    def path(self, segment: int) -> Path:
        return Path(self._name(segment))

    def _name(self, segment: int) -> str:
        return f"{self._dirname}/{segment:08d}{_SUFFIX}"

    def on_disk(self) -> list[int]:
        """Numbers of the segment files present."""
        return sorted(int(p.stem) for p in self.dir.glob(f"*{_SUFFIX}") if p.stem.isdigit())

    def recover(self, live: dict[int, set[int]], highest_known: int) -> None:
        """Bring the files in line with the committed index ``live`` (segment -> offsets).

        Called once at start-up, before any append. New blocks go to a fresh segment
        numbered above every number on disk and ``highest_known``.
        """
        present = self.on_disk()
        for segment in present:
            offsets = live.get(segment)
            path = self.path(segment)
            if not offsets:
                log.info("removing segment %s: no committed block lives in it", path.name)
                path.unlink()
                continue
            end = max(offsets) + BLOCK_SIZE
            size = path.stat().st_size
            fd = os.open(path, os.O_RDWR)
            try:
                if size > end:
                    log.info("truncating segment %s from %d to %d bytes: uncommitted tail",
                             path.name, size, end)
                    os.ftruncate(fd, end)
                for offset in range(0, end, BLOCK_SIZE):
                    if offset not in offsets:
                        self._punch(fd, offset)
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(self.dir)
        self._active = max([*present, highest_known, 0]) + 1
        self._next_offset = 0

    def append(self, data: bytes | memoryview) -> tuple[int, int]:
        """Write one block at the end of the active segment; (segment, offset). Not durable
        until ``sync`` of that segment returns. The segment stays pinned (never dropped)
        until ``release``."""
        with self._lock:
            if self._next_offset >= self._segment_blocks * BLOCK_SIZE:
                self._retire(self._active)
                self._active += 1
                self._next_offset = 0
            segment, offset = self._active, self._next_offset
            self._next_offset += BLOCK_SIZE
            fd = self._fds.get(segment)
            if fd is None:
                fd = self._fds[segment] = self._open(segment)
            self._pinned[segment] = self._pinned.get(segment, 0) + 1
        try:
            self._write(segment, fd, data, offset)
        except BaseException:
            self.release(segment)
            raise
        return segment, offset

    def release(self, segment: int) -> None:
        """The caller is done with an append to ``segment`` (committed, or freed)."""
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
        """Give one block's space back to the filesystem (its data reads as zeros after)."""
        if not self._can_punch:
            return
        with contextlib.suppress(FileNotFoundError):
            fd = os.open(self._name(segment), os.O_WRONLY)
            try:
                self._punch(fd, offset)
            finally:
                os.close(fd)

    def drop(self, segment: int) -> None:
        """Remove a segment no committed block lives in, unless appends are still going to
        it. The caller must hold off commits into it meanwhile."""
        with self._lock:
            if segment == self._active or segment in self._fds or segment in self._pinned:
                return
            with contextlib.suppress(FileNotFoundError):
                self.path(segment).unlink()

    def allocated(self) -> int:
        """Bytes the segment files occupy on disk (holes not counted)."""
        return sum(p.stat().st_blocks * 512 for p in self.dir.glob(f"*{_SUFFIX}"))

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()

    # -- plumbing -----------------------------------------------------------------------------

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
                fd = os.open(path, flags | os.O_DIRECT, 0o644)
            except OSError:
                log.info("O_DIRECT is not supported in %s; using buffered writes", self.dir)
                self._direct = False
            else:
                _fsync_dir(self.dir)
                return fd
        fd = os.open(path, flags, 0o644)
        _fsync_dir(self.dir)
        return fd

    def _write(self, segment: int, fd: int, data: bytes | memoryview, offset: int) -> None:
        view = memoryview(data)
        if self._direct and not _page_aligned(view):
            # O_DIRECT skips the page cache (the fdatasync then has no dirty pages to write
            # back, which cuts a put's CPU) but needs an aligned buffer. The HTTP layer
            # receives blocks into one; anything else is copied into this thread's.
            buf = getattr(self._local, "buf", None)
            if buf is None or len(buf) < len(view):
                buf = self._local.buf = mmap.mmap(-1, max(len(view), BLOCK_SIZE))
            buf[: len(view)] = view
            view = memoryview(buf)[: len(view)]
        done = 0
        while done < len(view):
            try:
                done += os.pwrite(fd, view[done:], offset + done)
            except OSError as exc:
                if exc.errno != errno.EINVAL or not self._direct:
                    raise
                # A filesystem that takes O_DIRECT opens but not the writes.
                log.info("O_DIRECT writes fail in %s (%s); using buffered writes", self.dir, exc)
                self._direct = False
                buffered = os.open(self._name(segment), os.O_WRONLY)
                os.dup2(buffered, fd)
                os.close(buffered)

    def _punch(self, fd: int, offset: int) -> None:
        if not self._can_punch or _fallocate is None:
            return
        mode = _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE
        if _fallocate(fd, mode, offset, BLOCK_SIZE) != 0:
            err = ctypes.get_errno()
            log.info("cannot punch holes in %s (%s); space comes back with whole segments",
                     self.dir, os.strerror(err))
            self._can_punch = False


def _page_aligned(view: memoryview) -> bool:
    """Whether ``view`` is a writable buffer starting on a page boundary (O_DIRECT's rule)."""
    if view.readonly or not view.c_contiguous or len(view) % mmap.PAGESIZE:
        return False
    return ctypes.addressof(ctypes.c_char.from_buffer(view)) % mmap.PAGESIZE == 0


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
