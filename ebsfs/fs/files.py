"""Open files of a mount: the handle table, and reads and writes routed to their owner.

A handle stands for a completed snapshot (its read stack), a draft in ``new/``, a partition
under ``parts/`` or a scratch overlay. See docs/architecture.md.
"""

from __future__ import annotations

import errno
import os
from collections import Counter
from dataclasses import dataclass

import pyfuse3

from ebsfs.aws.api import SnapshotInfo
from ebsfs.fs.edge import fail
from ebsfs.fs.entries import Entries, Namespace
from ebsfs.fs.inodes import NEW, SCRATCH
from ebsfs.fs.partitions import Partition
from ebsfs.fs.partview import DRAFT_PREFIX
from ebsfs.fs.scratch import Overlay
from ebsfs.read.ranges import read_range
from ebsfs.read.stack import ReadStacks
from ebsfs.write.newdir import Draft


@dataclass
class Handle:
    inode: int
    snapshot: SnapshotInfo | None = None
    draft: Draft | None = None
    draft_name: str = ""
    #: A partition file: its owner (snapshot id or new/NAME) and the partition.
    part_owner: str = ""
    part: Partition | None = None
    overlay: Overlay | None = None


def refuse_change() -> pyfuse3.FUSEError:
    """The answer to any change of what cannot change (a completed snapshot, a read-only mount)."""
    return fail(errno.EROFS)


class Files:
    """The open files of a mount."""

    def __init__(
        self, ns: Namespace, entries: Entries, stacks: ReadStacks, counters: Counter[str]
    ) -> None:
        self.ns = ns
        self.entries = entries
        self.stacks = stacks
        self.counters = counters
        self.handles: dict[int, Handle] = {}
        #: Open handles per draft name (its own and its partitions'): the last one released
        #: releases the draft.
        self.draft_opens: Counter[str] = Counter()
        self._next_fh = 1

    def next_fh(self) -> int:
        """A handle number not used before (file and directory handles share them)."""
        fh = self._next_fh
        self._next_fh += 1
        return fh

    def _new(self, handle: Handle) -> int:
        fh = self.next_fh()
        self.handles[fh] = handle
        return fh

    def get(self, fh: int) -> Handle:
        handle = self.handles.get(fh)
        if handle is None:
            raise fail(errno.EBADF)
        return handle

    def open(self, inode: int, kind: str, name: str, flags: int) -> pyfuse3.FileInfo:
        """Open the file ``(kind, name)``, a name of ``inode``."""
        writing = (flags & os.O_ACCMODE) != os.O_RDONLY or flags & os.O_TRUNC
        if kind == "scratch":
            if writing and self.ns.config.read_only:
                raise refuse_change()
            overlay = self.entries.overlay_of(name)
            fh = self._new(Handle(inode, overlay=overlay))
            if self.ns.scratch is not None:
                self.ns.scratch.opened(overlay)
            return pyfuse3.FileInfo(fh=fh, keep_cache=False)
        if kind == "part":
            owner, _, number = name.rpartition("\0")
            of_draft = owner.startswith(DRAFT_PREFIX)
            if writing and (self.ns.config.read_only or not of_draft):
                raise refuse_change()
            part = self.ns.partitions.partition(owner, int(number))
            if part is None:
                raise fail(errno.ENOENT)
            draft_name = owner[len(DRAFT_PREFIX) :] if of_draft else ""
            fh = self._new(Handle(inode, part_owner=owner, part=part, draft_name=draft_name))
            if draft_name:
                self.draft_opens[draft_name] += 1  # released like the draft's own handles
            self.counters["opens"] += 1
            # A completed snapshot's partition never changes; a draft's may.
            return pyfuse3.FileInfo(fh=fh, keep_cache=not of_draft)
        if kind == "snapshot":
            if writing:
                raise refuse_change()
            info = self.ns.catalog.snapshots.get(name)
            if info is None:
                raise fail(errno.ENOENT)
            fh = self._new(Handle(inode, snapshot=info))
            self.counters["opens"] += 1
            # Completed snapshots never change: let the kernel keep their pages.
            return pyfuse3.FileInfo(fh=fh, keep_cache=True)
        if kind == "draft":
            if writing and self.ns.config.read_only:
                raise refuse_change()
            draft = self.entries.draft(name)
            fh = self._new(Handle(inode, draft=draft, draft_name=name))
            self.draft_opens[name] += 1
            # Drafts change under us (seal, remount): never serve them from stale pages.
            return pyfuse3.FileInfo(fh=fh, keep_cache=False)
        raise fail(errno.ELOOP)

    async def create(
        self, parent: int, text: str
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        """A new scratch overlay or draft, open."""
        if parent == SCRATCH and self.ns.scratch is not None and not self.ns.config.read_only:
            if self.ns.scratch.get(text) is not None:
                raise fail(errno.EEXIST)
            overlay = await self.ns.scratch.create(text)
            ino = self.ns.inodes.number("scratch", overlay.key)
            fh = self._new(Handle(ino, overlay=overlay))
            self.ns.scratch.opened(overlay)
            return pyfuse3.FileInfo(fh=fh, keep_cache=False), self.entries.of_overlay(overlay)
        if parent != NEW or self.ns.config.read_only:
            raise refuse_change()
        draft = await self.ns.newdir.create(text)
        fh = self._new(Handle(self.ns.inodes.number("draft", text), draft=draft, draft_name=text))
        self.draft_opens[text] += 1
        return pyfuse3.FileInfo(fh=fh, keep_cache=False), self.entries.of_draft(draft)

    async def read(self, fh: int, off: int, size: int) -> bytes | memoryview:
        handle = self.get(fh)
        if handle.draft is not None:
            return await handle.draft.read(off, size)
        if handle.overlay is not None:
            assert self.ns.scratch is not None
            return await self.ns.scratch.read(handle.overlay, off, size)
        if handle.part is not None:
            data = await self.ns.partitions.read(handle.part_owner, handle.part, off, size)
        else:
            info = handle.snapshot
            assert info is not None
            stack = self.stacks.get(info.snapshot_id, info.volume_size)
            data = await read_range(stack, off, size, info.volume_size << 30)
        self.counters["reads"] += 1
        self.counters["read_bytes"] += len(data)
        return data

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        handle = self.get(fh)
        if handle.overlay is not None and self.ns.scratch is not None:
            return await self.ns.scratch.write(handle.overlay, off, buf)
        if handle.part is not None and handle.draft_name and not self.ns.config.read_only:
            return await self.ns.partitions.write(handle.part_owner, handle.part, off, buf)
        if handle.draft is None or self.ns.config.read_only:
            raise refuse_change()
        return await handle.draft.write(off, buf)

    async def fsync(self, fh: int) -> None:
        handle = self.get(fh)
        draft = handle.draft
        if draft is None and handle.draft_name:
            draft = self.ns.newdir.get(handle.draft_name)
        if draft is not None:
            await draft.fsync()

    async def release(self, fh: int) -> None:
        handle = self.handles.pop(fh, None)
        if handle is not None and handle.overlay is not None and self.ns.scratch is not None:
            self.ns.scratch.released(handle.overlay)
        if handle is None or not handle.draft_name:
            return
        self.draft_opens[handle.draft_name] -= 1
        if self.draft_opens[handle.draft_name] <= 0:
            del self.draft_opens[handle.draft_name]
            draft = handle.draft or self.ns.newdir.get(handle.draft_name)
            if draft is not None:
                await draft.release()
