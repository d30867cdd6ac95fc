"""The spool: every byte written to a draft, kept on local disk until it is sealed.

One directory per draft: ``manifest.json`` (replaced atomically), ``data`` (512 KiB slots in the
order blocks were first touched) and ``journal`` (CRC32-checked records, compacted when it
outgrows the state it describes). The layout, the crash guarantees and compaction are in
docs/architecture.md ("The spool and its crash guarantees").
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import struct
import uuid
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ebsfs.core.blocks import BLOCK_SIZE, ZERO_BLOCK
from ebsfs.core.durable import fsync_path, punch_hole

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
DATA = "data"
JOURNAL = "journal"

# kind, crc32 of the rest, a, b, digest
_RECORD = struct.Struct("<c3xIQQ32s")
#: A journal smaller than this is never compacted (its replay takes well under a second).
COMPACT_MIN = 16 << 20
#: ... nor one less than this many times the size of its compacted form.
COMPACT_RATIO = 4
_NO_DIGEST = bytes(32)

Interval = tuple[int, int]


def _add_interval(intervals: list[Interval], start: int, end: int) -> list[Interval]:
    """``intervals`` (sorted, disjoint) with ``[start, end)`` merged in."""
    out: list[Interval] = []
    placed = False
    for s, e in intervals:
        if e < start:
            out.append((s, e))
        elif s > end:
            if not placed:
                out.append((start, end))
                placed = True
            out.append((s, e))
        else:
            start, end = min(s, start), max(e, end)
    if not placed:
        out.append((start, end))
    return out


FULL: list[Interval] = [(0, BLOCK_SIZE)]


class Spool:
    """One draft's spool directory. Not thread-safe: used from the mount's trio thread."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        #: Written byte ranges per block index, offsets within the block.
        self.coverage: dict[int, list[Interval]] = {}
        self.slots: dict[int, int] = {}
        #: Raw SHA256 digest of what was last stored at each index (PutSnapshotBlock done).
        self.stored: dict[int, bytes] = {}
        #: Indexes written since they were last stored (as replayed from the journal).
        self.dirty: set[int] = set()
        #: End of the highest write, in bytes.
        self.max_end = 0
        self.manifest: dict[str, Any] = {}
        self._data_fd = -1
        self._journal_fd = -1
        #: Whole zero blocks are holes, not bytes, where the filesystem can punch them.
        self._can_punch = True
        #: Size of the journal file (records are appended with O_APPEND; kept here so an
        #: append needs no lseek to know where a torn record would have to be cut off).
        self._journal_end = 0
        #: ``P`` records not yet appended (see docs/architecture.md, the journal).
        self._stored_records = bytearray()
        #: Journal size at which compaction is next considered.
        self._compact_at = COMPACT_MIN

    @property
    def data_path(self) -> Path:
        """The data file: block ``i``'s bytes are at ``slots[i] * BLOCK_SIZE``."""
        return self.directory / DATA

    # ---- life cycle --------------------------------------------------------------------------

    @classmethod
    def create(cls, root: Path, manifest: dict[str, Any]) -> Spool:
        """A new, empty spool directory under ``root``."""
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        directory = root / uuid.uuid4().hex
        directory.mkdir(mode=0o700)  # disk images may hold secrets
        spool = cls(directory)
        try:
            spool._open()
            spool.save_manifest(manifest)
        except BaseException:  # a full disk: no half-made directory is left behind
            spool.destroy()
            raise
        return spool

    @classmethod
    def load(cls, directory: Path) -> Spool:
        """Reopen a spool directory and replay its journal."""
        spool = cls(directory)
        with open(directory / MANIFEST, encoding="utf-8") as f:
            spool.manifest = json.load(f)
        spool._open()
        spool._replay()
        spool._maybe_compact()
        return spool

    @staticmethod
    def find(root: Path) -> list[Path]:
        """The spool directories under ``root`` (those with a manifest)."""
        if not root.is_dir():
            return []
        return sorted(p for p in root.iterdir() if (p / MANIFEST).is_file())

    def _open(self) -> None:
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
        self._data_fd = os.open(self.directory / DATA, flags, 0o600)
        self._journal_fd = os.open(self.directory / JOURNAL, flags | os.O_APPEND, 0o600)
        self._journal_end = os.fstat(self._journal_fd).st_size

    def close(self) -> None:
        """Close the files (the directory stays)."""
        if self._journal_fd >= 0:
            with contextlib.suppress(OSError):  # only means storing those blocks again
                self.commit_records()
        for fd in (self._data_fd, self._journal_fd):
            if fd >= 0:
                os.close(fd)
        self._data_fd = self._journal_fd = -1

    def destroy(self) -> None:
        """Close and delete the whole directory (the snapshot is completed or abandoned)."""
        self.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    # ---- manifest ----------------------------------------------------------------------------

    def save_manifest(self, manifest: dict[str, Any]) -> None:
        """Replace the manifest atomically and durably."""
        tmp = self.directory / (MANIFEST + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(manifest, f, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.directory / MANIFEST)
        fsync_path(self.directory)
        self.manifest = dict(manifest)

    # ---- journal -----------------------------------------------------------------------------

    def _record(self, kind: bytes, a: int, b: int, digest: bytes = _NO_DIGEST) -> bytes:
        body = struct.pack("<QQ32s", a, b, digest)
        return _RECORD.pack(kind, zlib.crc32(kind + body), a, b, digest)

    def _append(self, records: bytes) -> None:
        pending = bytes(self._stored_records)
        if pending:
            records = pending + records
        view = memoryview(records)
        start = self._journal_end
        try:
            while view:
                n = os.write(self._journal_fd, view)
                view = view[n:]
        except OSError:
            # A torn record would end every later replay there: cut it off.
            os.ftruncate(self._journal_fd, start)
            raise
        del self._stored_records[: len(pending)]
        self._journal_end = start + len(records)

    def _check_compact(self) -> None:
        # Called once memory holds what the journal says (never between an append and the
        # change it records, or the compacted journal would miss that change).
        if self._journal_end >= self._compact_at:
            self._maybe_compact()

    def _state_records(self) -> bytes:
        """The journal of the current state: what replaying it gives is what is in memory."""
        out = bytearray()
        for index, slot in self.slots.items():
            out += self._record(b"S", index, slot)
        covered = 0
        for index, cov in self.coverage.items():
            base = index * BLOCK_SIZE
            for s, e in cov:
                out += self._record(b"W", base + s, base + e)
            covered = max(covered, base + cov[-1][1])
        if self.max_end > covered:  # an empty write past the data still set the end
            out += self._record(b"W", self.max_end, self.max_end)
        # Replayed W records make every written block dirty; a P record marked current
        # makes a stored one clean again.
        for index, digest in self.stored.items():
            out += self._record(b"P", index, 0 if index in self.dirty else 1, digest)
        return bytes(out)

    def _maybe_compact(self) -> None:
        """Compact the journal if it has grown past its thresholds (docs/architecture.md).
        A failure (a full disk) leaves the journal as it was and is retried later."""
        if self._journal_end < COMPACT_MIN:
            self._compact_at = COMPACT_MIN
            return
        state = self._state_records()
        if self._journal_end < COMPACT_RATIO * len(state):
            self._compact_at = max(COMPACT_MIN, COMPACT_RATIO * len(state))
            return
        try:
            self._compact(state)
        except OSError as exc:
            log.warning("%s: journal not compacted (%s); trying again later", self.directory, exc)
            self._compact_at = self._journal_end + COMPACT_MIN
            return
        self._compact_at = max(COMPACT_MIN, COMPACT_RATIO * len(state))

    def _compact(self, state: bytes) -> None:
        tmp = self.directory / (JOURNAL + ".tmp")
        flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(tmp, flags, 0o600)
        try:
            view = memoryview(state)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
            # The records claim data: it must be on disk before they replace the journal.
            os.fdatasync(self._data_fd)
            os.replace(tmp, self.directory / JOURNAL)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        # From the rename on, appends must go to the new file: switch the descriptor first.
        os.dup2(fd, self._journal_fd, inheritable=False)
        os.close(fd)
        self._journal_end = len(state)
        self._stored_records.clear()  # they are in the state just written
        fsync_path(self.directory)

    def _replay(self) -> None:
        with open(self.directory / JOURNAL, "rb") as f:
            raw = f.read()
        good = 0
        size = _RECORD.size
        for pos in range(0, len(raw) - size + 1, size):
            kind, crc, a, b, digest = _RECORD.unpack_from(raw, pos)
            if zlib.crc32(kind + struct.pack("<QQ32s", a, b, digest)) != crc:
                break
            if kind == b"S":
                self.slots[a] = b
            elif kind == b"W":
                self._cover(a, b)
            elif kind == b"P":
                self.stored[a] = digest
                if b:
                    self.dirty.discard(a)
            elif kind == b"R":
                self.stored.clear()
                self.dirty = set(self.coverage)
            else:
                break
            good = pos + size
        if good != len(raw):
            # The torn tail was never acknowledged to anyone: drop it.
            os.ftruncate(self._journal_fd, good)
        self._journal_end = good

    # ---- data --------------------------------------------------------------------------------

    def _cover(self, start: int, end: int) -> list[int]:
        touched = []
        pos = start
        while pos < end:
            index = pos // BLOCK_SIZE
            block_start = index * BLOCK_SIZE
            stop = min(end, block_start + BLOCK_SIZE)
            old = self.coverage.get(index)
            if old is not FULL:
                merged = _add_interval(old or [], pos - block_start, stop - block_start)
                self.coverage[index] = FULL if merged == FULL else merged
            self.dirty.add(index)
            touched.append(index)
            pos = stop
        self.max_end = max(self.max_end, end)
        return touched

    def write(self, offset: int, data: bytes) -> list[int]:
        """Keep ``data`` written at volume byte ``offset``; returns the block indexes touched.

        On an error (a full disk) nothing is recorded: the write was not accepted."""
        end = offset + len(data)
        records = bytearray()
        new_slots: list[int] = []
        # Runs of the write that are contiguous in the data file too (a sequential stream
        # gets consecutive slots): one pwrite each, not one per block.
        runs: list[list[int]] = []  # [file position, start in data, length]
        view = memoryview(data)
        pos = offset
        try:
            while pos < end:
                index = pos // BLOCK_SIZE
                within = pos - index * BLOCK_SIZE
                n = min(end - pos, BLOCK_SIZE - within)
                slot = self.slots.get(index)
                if slot is None:
                    slot = len(self.slots)
                    self.slots[index] = slot
                    new_slots.append(index)
                    records += self._record(b"S", index, slot)
                at = slot * BLOCK_SIZE + within
                if (
                    n == BLOCK_SIZE
                    and self._can_punch
                    and view[pos - offset : pos - offset + n] == ZERO_BLOCK
                    and self._punch(at)
                ):
                    # A whole block of zeros takes no room in the spool: a hole reads as
                    # zeros (the slot's old bytes, or a crashed write's, are gone with it).
                    pos += n
                    continue
                last = runs[-1] if runs else None
                if last is not None and last[0] + last[2] == at:
                    last[2] += n
                else:
                    runs.append([at, pos - offset, n])
                pos += n
            for at, start, n in runs:
                written = 0
                while written < n:
                    written += os.pwrite(
                        self._data_fd, view[start + written : start + n], at + written
                    )
            records += self._record(b"W", offset, end)
            self._append(bytes(records))
        except OSError:
            for index in new_slots:
                del self.slots[index]
            raise
        touched = self._cover(offset, end)
        self._check_compact()
        return touched

    def _punch(self, at: int) -> bool:
        """A hole over the slot at file position ``at``; False (write zeros) where the
        filesystem cannot punch one."""
        err = punch_hole(self._data_fd, at, BLOCK_SIZE)
        if err in (errno.EOPNOTSUPP, errno.ENOSYS):
            log.info("spool %s: no hole punching here; zero blocks are written", self.directory)
            self._can_punch = False
        elif err:
            raise OSError(err, f"punching a hole in the spool: {os.strerror(err)}")
        return not err

    def is_full(self, index: int) -> bool:
        """Whether every byte of the block was written."""
        return self.coverage.get(index) is FULL

    def read_block(self, index: int, base: bytes | None) -> bytes | None:
        """The block as written over ``base`` (None: zeros); None if it was never written."""
        cov = self.coverage.get(index)
        if cov is None:
            return base
        return self.compose(self.slots[index], cov, base)

    def compose(self, slot: int, cov: list[Interval], base: bytes | None) -> bytes:
        """The bytes of ``slot`` where ``cov`` says they were written, ``base`` elsewhere.

        Touches no mutable state but the file, so it may run in a worker thread (``cov`` is
        never changed in place: writes replace it)."""
        raw = os.pread(self._data_fd, BLOCK_SIZE, slot * BLOCK_SIZE)
        if cov is FULL or base is None:
            # Unwritten parts of a slot read as zeros (a hole, or past the end of the file).
            return raw + bytes(BLOCK_SIZE - len(raw)) if len(raw) < BLOCK_SIZE else raw
        out = bytearray(base)
        for s, e in cov:
            out[s:e] = raw[s:e].ljust(e - s, b"\0")
        return bytes(out)

    def mark_stored(self, index: int, digest: bytes, current: bool) -> None:
        """PutSnapshotBlock of ``index`` succeeded; ``current``: no write since it was read."""
        self.stored[index] = digest
        if current:
            self.dirty.discard(index)
        self._stored_records += self._record(b"P", index, 1 if current else 0, digest)
        if len(self._stored_records) >= 64 * _RECORD.size:
            self._append(b"")
            self._check_compact()

    def reset_stored(self) -> None:
        """Forget what was stored (the snapshot is being started again): all written is dirty."""
        self._append(self._record(b"R", 0, 0))
        self.stored.clear()
        self.dirty = set(self.coverage)
        self._check_compact()

    def sync(self) -> None:
        """Flush data and journal to the disk (fsync of the file).

        Touches only the files, so it may run in a worker thread; call ``commit_records``
        first, in the thread that writes."""
        os.fdatasync(self._data_fd)
        os.fdatasync(self._journal_fd)

    def commit_records(self) -> None:
        """Append the ``P`` records kept back, so that a ``sync`` makes them durable too."""
        if self._stored_records:
            self._append(b"")

    def sync_data(self, forget: Iterable[int] = ()) -> None:
        """Flush the data file to the disk, so that a later ``sync`` has little left to do;
        then drop the page-cache pages of the ``forget`` slots (written before this call).

        It may run in a worker thread while the trio thread writes: it only flushes pages.
        Dropping is a hint (``POSIX_FADV_DONTNEED`` leaves dirty pages alone), so a slot
        written again meanwhile loses nothing; it lets the next writes reuse pages just
        freed instead of faulting in memory the VM gave back to its host."""
        os.fdatasync(self._data_fd)
        for slot, count in _runs(sorted(forget)):
            os.posix_fadvise(
                self._data_fd, slot * BLOCK_SIZE, count * BLOCK_SIZE, os.POSIX_FADV_DONTNEED
            )


def _runs(slots: list[int]) -> list[tuple[int, int]]:
    """Sorted slot numbers as (first, count) runs of consecutive ones."""
    runs: list[tuple[int, int]] = []
    for slot in slots:
        if runs and runs[-1][0] + runs[-1][1] == slot:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        elif not runs or runs[-1][0] + runs[-1][1] < slot:
            runs.append((slot, 1))
    return runs
