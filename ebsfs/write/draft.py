"""One file of ``new/``: a draft of a new snapshot as a file, its size rules, reads, writes
and attributes (docs/usage.md "Writing", docs/architecture.md, the write path). Its states and
their moves are ``lifecycle.DraftLifeCycle``; its manifest ``state.Manifest``."""

from __future__ import annotations

import contextlib
import copy
import logging

import trio

from ebsfs.core.blocks import BLOCK_SIZE, MAX_VOLUME_BYTES, BlockIndex
from ebsfs.core.errors import (
    EbsfsError,
    FileTooLargeError,
    NotFoundError,
    NotPermittedError,
    ReadOnlyError,
)
from ebsfs.write import attrs, snapcalls
from ebsfs.write.lifecycle import COMPLETED, PENDING, SEALING, DraftLifeCycle, spool_error
from ebsfs.write.state import GIB, gib_ceil

log = logging.getLogger(__name__)


class SnapshotDraft(DraftLifeCycle):
    """One file in ``new/`` (implements ``ebsfs.write.newdir.Draft``)."""

    def size(self) -> int:
        return self.m.size if self.m.size is not None else self.spool.max_end

    def mode(self) -> int:
        # Owner only, like the spool (0700): disk images may hold secrets, and allow_other
        # lets every user of the machine into the mount.
        return 0o600 if self.m.writable else 0o400

    def mtime_ns(self) -> int:
        return self._mtime_ns

    def stats(self) -> dict[str, int]:
        return self.wb.stats()

    def _writable(self) -> None:
        if not self.m.writable:
            raise ReadOnlyError(f"{self.name} is {self.state}: it can no longer be written")

    # ---- data --------------------------------------------------------------------------------

    async def read(self, offset: int, length: int) -> bytes:
        if self.state == COMPLETED:
            # Its spool is gone; the data is read as MOUNTPOINT/snap-ID now.
            raise NotFoundError(f"{self.name} was sealed as {self.snapshot_id}")
        end = min(offset + length, self.size())
        parts = []
        pos = offset
        while pos < end:
            index = pos // BLOCK_SIZE
            within = pos - index * BLOCK_SIZE
            n = min(end - pos, BLOCK_SIZE - within)
            block = await self.wb.read_block(BlockIndex(index))
            parts.append(bytes(n) if block is None else block[within : within + n])
            pos += n
        return b"".join(parts)

    async def write(self, offset: int, data: bytes) -> int:
        self._writable()
        end = offset + len(data)
        if end > MAX_VOLUME_BYTES:
            raise FileTooLargeError(f"{self.name}: a snapshot holds at most 64 TiB")
        declared = self.m.size
        if declared is not None and end > declared:
            raise FileTooLargeError(
                f"{self.name}: write ends at {end}, past the size of {declared} bytes"
            )
        if not data:
            return 0
        first = not self.m.written
        if first:
            # Recorded before the data: a crash between the two must not bring back data
            # with its attributes still settable (a parent set under written blocks).
            before = copy.deepcopy(self.m)
            self.m.written = True
            self._save_or_undo(before)
        try:
            await self.wb.write(offset, data)
        except OSError as exc:
            log.error("%s: the spool %s cannot keep a write: %s", self.name,
                      self.spool.directory, exc)
            if first and not self.spool.coverage and not self.spool.max_end:
                # Nothing was accepted: the draft is as unwritten as before.
                self.m.written = False
                with contextlib.suppress(OSError):
                    self._save()
            raise spool_error(self.name, exc) from None
        self._touch()
        if declared is not None and not self.snapshot_id:
            self._start_soon()
        return len(data)

    def kept(self) -> None:
        """The keep writing it is done: it is a draft like any other from now on."""
        if self.m.kept_from:
            self.m.kept_from = ""
            self._save()
        if self.m.size is not None and self.m.written and not self.snapshot_id:
            self._start_soon()

    async def truncate(self, size: int) -> None:
        if size > MAX_VOLUME_BYTES:
            raise FileTooLargeError(f"{self.name}: a snapshot holds at most 64 TiB")
        self._writable()
        declared = self.m.size
        current = self.size()
        if size == current:
            return
        if self.snapshot_id or (self.m.written and declared is not None):
            if size > current:
                raise FileTooLargeError(f"{self.name}: the size is fixed at {current} bytes")
            raise NotPermittedError(f"{self.name}: a started snapshot cannot shrink")
        if self.m.written:
            if size < current:
                raise NotPermittedError(f"{self.name}: cannot shrink below what was written")
        elif size == 0:
            # O_TRUNC of a pre-sized, unwritten file (plain dd): the declared size stays.
            return
        new = gib_ceil(size)
        if self.m.parent and new < self.m.parent_gib * GIB:
            raise NotPermittedError(f"{self.name}: cannot be smaller than its parent")
        before = copy.deepcopy(self.m)
        self.m.size = new
        self.m.client_token = snapcalls.new_token()
        self._touch()
        self._save_or_undo(before)

    async def fsync(self) -> None:
        if self.m.writable:
            await self._fix_size()
        if self.snapshot_id and self.state in (PENDING, SEALING):
            await self.wb.flush()
        else:
            self.spool.commit_records()
            await trio.to_thread.run_sync(self.spool.sync)

    async def release(self) -> None:
        if self.m.writable:
            try:
                await self._fix_size()
            except EbsfsError as exc:
                # The data is safe in the spool; fsync or sealing will try again.
                log.warning("%s: could not start the snapshot at close: %s", self.name, exc)

    # ---- attributes --------------------------------------------------------------------------

    def xattrs(self) -> dict[str, bytes]:
        return attrs.shown(self.m, progress=self.progress, dirty_blocks=self.wb.dirty_blocks,
                           stored_blocks=self.wb.stored_blocks)

    async def setxattr(self, name: str, value: bytes) -> None:
        key, text = attrs.settable(self.m, name, value)
        before, parent_reader = copy.deepcopy(self.m), self.wb.parent
        if key == "parent":
            parent = attrs.parent_id(text)
            gib, encrypted = await snapcalls.parent_info(self.ctx, parent)
            attrs.set_parent(self.m, parent, gib, encrypted)
            self.wb.parent = self.ctx.parent_reader(parent, gib)
        else:
            attrs.set_other(self.m, key, text)
        self.m.client_token = snapcalls.new_token()
        self._touch()
        try:
            self._save_or_undo(before)
        except EbsfsError:
            self.wb.parent = parent_reader
            raise
