"""The pyfuse3 Operations of a mount: one handler per request, each routed to its owner.

``Tree`` and ``PartsDirectory`` answer lookups and listings, ``Files`` open files, ``Xattrs``
extended attributes; errors become errno in ``fs/edge.py`` only. Everything runs on the
mount's trio thread. See docs/architecture.md and SPEC.md "The namespace".
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pyfuse3
import trio

from ebsfs.core.blocks import BLOCK_SIZE
from ebsfs.fs.blockcount import BlockCounts
from ebsfs.fs.catalog import Catalog
from ebsfs.fs.edge import ERRNO_COUNTS, fail, fuse_errors
from ebsfs.fs.entries import Entries, Namespace, OpsConfig
from ebsfs.fs.files import Files, refuse_change
from ebsfs.fs.inodes import BY_NAME, DIRECTORIES, NEW, ROOT, SCRATCH, InodeTable
from ebsfs.fs.partsdir import Listing, PartsDirectory
from ebsfs.fs.partview import DRAFT_PREFIX, PartitionTables
from ebsfs.fs.scratch import ScratchDirectory
from ebsfs.fs.tree import Tree
from ebsfs.fs.xattrs import Xattrs
from ebsfs.read.stack import ReadStacks
from ebsfs.write.newdir import NewDirectory

log = logging.getLogger(__name__)

__all__ = ["EbsfsOperations", "OpsConfig"]


class EbsfsOperations(pyfuse3.Operations):
    """Request handlers of one mount."""

    enable_writeback_cache = False
    enable_acl = False

    def __init__(
        self,
        catalog: Catalog,
        stacks: ReadStacks,
        newdir: NewDirectory,
        config: OpsConfig,
        nursery: trio.Nursery,
        delete_snapshot: Callable[[str], Awaitable[None]] | None = None,
        scratch: Callable[[PartitionTables], ScratchDirectory] | None = None,
    ) -> None:
        super().__init__()
        self.catalog = catalog
        self.stacks = stacks
        self.newdir = newdir
        self.config = config
        self.nursery = nursery
        self.delete_snapshot = delete_snapshot
        self.inodes = InodeTable()
        self.partitions = PartitionTables(catalog, stacks, newdir)
        self.block_counts = BlockCounts(stacks.api, stacks.calls, nursery, self._counted)
        #: None on a --read-only mount: scratch/ is then empty and refuses every change.
        self.scratch = scratch(self.partitions) if scratch is not None else None
        self.counters: Counter[str] = Counter()
        ns = Namespace(self.inodes, catalog, newdir, self.partitions, self.scratch, config)
        self.entries = Entries(ns, self.block_counts)
        self.tree = Tree(ns, self.entries, PartsDirectory(ns, self.entries))
        self.files = Files(ns, self.entries, stacks, self.counters)
        self.xattrs = Xattrs(ns, self.entries, self.stats)
        #: Directory handles: the inode and its entries, listed once at the first readdir so
        #: that a directory of 20,000 names is not rebuilt for every page of it.
        self.dir_handles: dict[int, tuple[int, Listing]] = {}
        newdir.on_completed(self._draft_completed)

    # ---- notices from below ------------------------------------------------------------------

    def _draft_completed(self, name: str, snapshot_id: str) -> None:
        """Called by the write path when a sealed draft is completed: show it at the top."""
        self.nursery.start_soon(self._add_completed, name, snapshot_id)

    async def _add_completed(self, name: str, snapshot_id: str) -> None:
        try:
            await self.catalog.add_completed(snapshot_id, name)
        except Exception as exc:  # a task of the mount's nursery must not end the mount
            log.error("could not show completed snapshot %s (%s): %s", snapshot_id, name, exc)
            return
        for parent, entry in ((NEW, name), (ROOT, snapshot_id), (BY_NAME, name)):
            # The kernel may not know the name at all; nothing to do then.
            with contextlib.suppress(Exception):
                pyfuse3.invalidate_entry_async(parent, entry.encode(), ignore_enoent=True)

    def _counted(self, snapshot_id: str) -> None:
        """A snapshot's blocks were counted: the kernel asks for its attributes again."""
        ino = self.inodes.number("snapshot", snapshot_id)
        with contextlib.suppress(Exception):
            pyfuse3.invalidate_inode(ino, attr_only=True)

    # ---- lookups and listings ------------------------------------------------------------------

    @fuse_errors
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        return await self.tree.lookup(parent_inode, os.fsdecode(name))

    @fuse_errors
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self.tree.attr_of(inode)

    @fuse_errors
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        return await self.tree.readlink(inode)

    @fuse_errors
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        if not self.tree.is_dir(inode):
            raise fail(errno.ENOTDIR)
        fh = self.files.next_fh()
        self.dir_handles[fh] = (inode, [])
        return fh

    @fuse_errors
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        inode, listed = self.dir_handles.get(fh, (fh, []))
        if not listed or start_id == 0:
            listed[:] = await self.tree.listing(inode)
            self.dir_handles[fh] = (inode, listed)
        for pos in range(start_id, len(listed)):
            name, attr = listed[pos]
            if not pyfuse3.readdir_reply(token, os.fsencode(name), attr, pos + 1):
                break

    @fuse_errors
    async def releasedir(self, fh: int) -> None:
        self.dir_handles.pop(fh, None)

    @fuse_errors
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        total = sum(i.volume_size << 30 for i in self.catalog.snapshots.values())
        s.f_bsize = BLOCK_SIZE
        s.f_frsize = 4096
        s.f_blocks = total // s.f_frsize
        s.f_bfree = s.f_bavail = 0
        s.f_files = len(self.catalog.snapshots) + len(self.newdir.names()) + 3
        s.f_ffree = s.f_favail = 0
        s.f_namemax = 255
        return s

    # ---- files ------------------------------------------------------------------------------

    @fuse_errors
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        entry = self.inodes.entry(inode)
        if self.tree.is_dir(inode) or entry is None:
            raise fail(errno.EISDIR if self.tree.is_dir(inode) else errno.ENOENT)
        return self.files.open(inode, *entry, flags)

    @fuse_errors
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        return await self.files.create(parent_inode, os.fsdecode(name))

    @fuse_errors
    async def read(  # type: ignore[override]  # pyfuse3 takes any buffer; its stub says bytes
        self, fh: int, off: int, size: int
    ) -> bytes | memoryview:
        return await self.files.read(fh, off, size)

    @fuse_errors
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        return await self.files.write(fh, off, buf)

    @fuse_errors
    async def flush(self, fh: int) -> None:
        return None

    @fuse_errors
    async def fsync(self, fh: int, datasync: bool) -> None:
        await self.files.fsync(fh)

    @fuse_errors
    async def release(self, fh: int) -> None:
        await self.files.release(fh)

    @fuse_errors
    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        entry = self.inodes.entry(inode)
        if entry is not None and entry[0] == "scratch" and not self.config.read_only:
            # Its size is its base's: truncation is ignored, as on a block device.
            if fields.update_mode or fields.update_uid or fields.update_gid:
                raise fail(errno.EPERM)
            return self.tree.attr_of(inode)
        of_draft = entry is not None and entry[1].startswith(DRAFT_PREFIX)
        if entry is not None and entry[0] == "part" and of_draft and not self.config.read_only:
            # A partition keeps its size, as a block device does: O_TRUNC and truncate are
            # ignored (so a plain dd works); nothing else about it can change.
            if fields.update_mode or fields.update_uid or fields.update_gid:
                raise fail(errno.EPERM)
            return self.tree.attr_of(inode)
        if entry is None or entry[0] != "draft" or self.config.read_only:
            if inode not in DIRECTORIES and entry is None:
                raise fail(errno.ENOENT)
            raise refuse_change()
        draft = self.entries.draft(entry[1])
        if fields.update_uid or fields.update_gid:
            raise fail(errno.EPERM)
        if fields.update_size:
            await draft.truncate(attr.st_size)
        if fields.update_mode and not attr.st_mode & 0o222:
            await draft.seal()  # chmod a-w: seal the snapshot
        return self.entries.of_draft(draft)

    # ---- extended attributes -----------------------------------------------------------------

    @fuse_errors
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        value = self.xattrs.of(inode).get(os.fsdecode(name))
        if value is None:
            raise fail(pyfuse3.ENOATTR)
        return value

    @fuse_errors
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> Sequence[bytes]:
        return [os.fsencode(n) for n in sorted(self.xattrs.of(inode))]

    @fuse_errors
    async def setxattr(
        self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        await self.xattrs.set(inode, os.fsdecode(name), value)

    @fuse_errors
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self.xattrs.remove(inode)

    # ---- changes to the namespace ------------------------------------------------------------

    @fuse_errors
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        text = os.fsdecode(name)
        if self.config.read_only:
            raise refuse_change()
        if parent_inode == NEW:
            await self.newdir.remove(text)
            return
        if parent_inode == SCRATCH and self.scratch is not None:
            await self.scratch.remove(text)
            return
        if parent_inode == ROOT and text in self.catalog.snapshots:
            if not self.config.allow_delete or self.delete_snapshot is None:
                raise refuse_change()
            await self.delete_snapshot(text)
            self.catalog.remove(text)
            self.counters["deleted"] += 1
            return
        if parent_inode in (ROOT, BY_NAME, SCRATCH) or self.tree.is_dir(parent_inode):
            raise refuse_change()
        raise fail(errno.ENOENT)

    @fuse_errors
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        if parent_inode == NEW and not self.config.read_only:
            raise fail(errno.ENOTDIR)  # new/ holds no directories
        raise refuse_change()

    @fuse_errors
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        if parent_inode == NEW and not self.config.read_only:
            raise fail(errno.EPERM)  # new/ holds only snapshot files
        raise refuse_change()

    @fuse_errors
    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        if parent_inode == NEW and not self.config.read_only:
            raise fail(errno.EPERM)
        raise refuse_change()

    @fuse_errors
    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        if parent_inode == NEW and not self.config.read_only:
            raise fail(errno.EPERM)
        raise refuse_change()

    @fuse_errors
    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        if new_parent_inode == NEW and not self.config.read_only:
            raise fail(errno.EPERM)
        raise refuse_change()

    @fuse_errors
    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        if parent_inode_old == NEW and parent_inode_new == NEW and not self.config.read_only:
            raise fail(errno.EPERM)  # a draft's name is its snapshot's Name tag
        raise refuse_change()

    @fuse_errors
    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        return None  # inode numbers live as long as the mount

    # ---- counters -----------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Every counter of the mount, for ``ebsfs stats``."""
        out: dict[str, Any] = {
            "read": self.stacks.stats(),
            "listing": self.catalog.stats(),
            "fuse": {**self.counters, "open_handles": len(self.files.handles)},
            "errors": dict(ERRNO_COUNTS),
        }
        written = self.newdir.stats()
        if written:
            out["write"] = written
        return out
