"""The pyfuse3 Operations of a mount, kept thin.

Each handler finds what an inode or handle stands for and hands the work to the object that
owns it: the ``Catalog`` (which snapshots exist), the ``ReadStacks`` (their blocks), the
``NewDirectory`` (drafts in ``new/``). Errors are ebsfs exceptions, turned into errno by
``fuse_errors`` at this edge only. Everything runs on the mount's trio thread.

The namespace (SPEC.md "The namespace")::

    /                 0555 dir   completed snapshots, by-name/, new/
    /snap-...         0444 file  size VolumeSize GiB, mtime StartTime, kernel page cache kept
    /by-name/NAME     symlink    ../snap-... (the newest snapshot of that Name tag)
    /new/             0755 dir   drafts (0555 on --read-only)
    /new/NAME         file       a draft; its mode, size and mtime are the draft's
    /parts/           0555 dir   one directory per completed snapshot, and new/ for drafts
    /parts/snap-.../N 0444 file  partition N of that snapshot (MBR or GPT), read-only
    /parts/snap-.../by-label/LABEL   symlink ../N, for each GPT partition name
    /parts/new/NAME/  0555 dir   the same for the draft new/NAME (read again at each lookup);
                                 its partition files are 0600 and writable, within their size
    /scratch/NAME     0600 file  a local copy-on-write overlay of a snapshot or partition

Anything that would change a completed snapshot, the root or ``by-name/`` is EROFS, as is
every change on a ``--read-only`` mount. ``rm snap-...`` deletes the snapshot only with
``--allow-delete``. The mount's counters are the JSON value of the ``user.ebsfs.stats``
attribute of the root directory (``ebsfs stats`` reads it).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import stat
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pyfuse3
import trio

from ebsfs.aws.api import SnapshotInfo
from ebsfs.core.blocks import (
    BLOCK_SIZE,
    PID_XATTR,
    STATS_XATTR,
    XATTR_BASE,
    XATTR_KEEP,
    XATTR_PREFIX,
)
from ebsfs.core.errors import NotFoundError, ReadOnlyError
from ebsfs.fs.blockcount import BlockCounts
from ebsfs.fs.catalog import Catalog
from ebsfs.fs.edge import ERRNO_COUNTS, fail, fuse_errors
from ebsfs.fs.inodes import (
    BY_NAME,
    DIRECTORIES,
    NEW,
    PARTS,
    PARTS_NEW,
    ROOT,
    SCRATCH,
    InodeTable,
)
from ebsfs.fs.newdir import Draft, NewDirectory
from ebsfs.fs.partitions import Partition
from ebsfs.fs.partview import DRAFT_PREFIX, PartitionTables
from ebsfs.fs.scratch import Overlay, ScratchDirectory, keep_name
from ebsfs.read.ranges import read_range
from ebsfs.read.stack import ReadStacks

log = logging.getLogger(__name__)

#: Completed snapshots never change: their attributes may be cached long.
SNAPSHOT_ATTR_TIMEOUT = 300.0
#: Names come and go (listing refreshes, drafts sealed): look them up again soon.
ENTRY_TIMEOUT = 1.0
DRAFT_ATTR_TIMEOUT = 1.0


@dataclass(frozen=True)
class OpsConfig:
    """The mount options the namespace obeys."""

    read_only: bool = False
    allow_delete: bool = False


@dataclass
class _Handle:
    inode: int
    snapshot: SnapshotInfo | None = None
    draft: Draft | None = None
    draft_name: str = ""
    #: A partition file: its owner (snapshot id or new/NAME) and the partition.
    part_owner: str = ""
    part: Partition | None = None
    overlay: Overlay | None = None


def snapshot_xattrs(info: SnapshotInfo) -> dict[str, bytes]:
    """The ``user.ebsfs.*`` attributes of a completed snapshot file (SPEC.md)."""
    attrs = {
        "snapshot_id": info.snapshot_id,
        "state": info.state,
        "volume_size": str(info.volume_size),
        "description": info.description,
        "parent": info.parent,
    }
    out = {XATTR_PREFIX + k: v.encode() for k, v in attrs.items()}
    for key, value in info.tags.items():
        out[f"{XATTR_PREFIX}tag.{key}"] = value.encode()
    return out


class EmptyNewDirectory:
    """A ``new/`` with no drafts that refuses to make any (tests; mounts without a write path)."""

    def names(self) -> list[str]:
        return []

    def get(self, name: str) -> Draft | None:
        return None

    async def create(self, name: str, *, kept_from: str = "") -> Draft:
        raise ReadOnlyError("this mount has no write path")

    async def remove(self, name: str) -> None:
        raise NotFoundError(f"no draft {name!r}")

    def on_completed(self, callback: Callable[[str, str], None]) -> None:
        pass


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
        self.handles: dict[int, _Handle] = {}
        self.draft_opens: Counter[str] = Counter()
        #: Directory handles: the inode and its entries, listed once at the first readdir so
        #: that a directory of 20,000 names is not rebuilt for every page of it.
        self.dir_handles: dict[int, tuple[int, list[tuple[str, pyfuse3.EntryAttributes]]]] = {}
        self.counters: Counter[str] = Counter()
        self._next_fh = 1
        self.started = time.time_ns()
        newdir.on_completed(self._draft_completed)

    # ---- namespace helpers -------------------------------------------------------------------

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

    def _dir_attr(self, inode: int) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        writable = inode in (NEW, SCRATCH) and not self.config.read_only
        a.st_mode = stat.S_IFDIR | (0o755 if writable else 0o555)
        a.st_nlink = 2
        a.st_size = 0
        a.st_mtime_ns = a.st_ctime_ns = a.st_atime_ns = self.started
        return self._common(a, inode, ENTRY_TIMEOUT, ENTRY_TIMEOUT)

    def _common(
        self, a: pyfuse3.EntryAttributes, inode: int, entry: float, attr: float
    ) -> pyfuse3.EntryAttributes:
        a.st_ino = inode
        a.st_uid = os.getuid()
        a.st_gid = os.getgid()
        a.st_blksize = BLOCK_SIZE
        a.st_blocks = (a.st_size + 511) // 512
        a.entry_timeout = entry
        a.attr_timeout = attr
        return a

    def _snapshot_attr(self, info: SnapshotInfo) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_mode = stat.S_IFREG | 0o444
        a.st_nlink = 1
        a.st_size = info.volume_size << 30
        a.st_mtime_ns = a.st_ctime_ns = a.st_atime_ns = int(info.start_time * 1e9)
        ino = self.inodes.number("snapshot", info.snapshot_id)
        a = self._common(a, ino, ENTRY_TIMEOUT, SNAPSHOT_ATTR_TIMEOUT)
        held = self.block_counts.get(info.snapshot_id)
        if held is not None:  # else the full size until counted (an upper bound)
            a.st_blocks = held * (BLOCK_SIZE // 512)
        return a

    def _link_attr(self, name: str, target: str) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_mode = stat.S_IFLNK | 0o777
        a.st_nlink = 1
        a.st_size = len(self._link_target(target))
        a.st_mtime_ns = a.st_ctime_ns = a.st_atime_ns = self.started
        return self._common(a, self.inodes.number("link", name), ENTRY_TIMEOUT, ENTRY_TIMEOUT)

    @staticmethod
    def _link_target(snapshot_id: str) -> bytes:
        return f"../{snapshot_id}".encode()

    def _draft_attr(self, draft: Draft) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_mode = stat.S_IFREG | draft.mode()
        a.st_nlink = 1
        a.st_size = draft.size()
        a.st_mtime_ns = a.st_ctime_ns = a.st_atime_ns = draft.mtime_ns()
        ino = self.inodes.number("draft", draft.name)
        return self._common(a, ino, ENTRY_TIMEOUT, DRAFT_ATTR_TIMEOUT)

    # ---- parts/ -----------------------------------------------------------------------------

    def _is_dir(self, inode: int) -> bool:
        entry = self.inodes.entry(inode)
        return inode in DIRECTORIES or (entry is not None and entry[0] in ("partdir", "labeldir"))

    def _part_attr(self, owner: str, part: Partition) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        writable = owner.startswith(DRAFT_PREFIX) and not self.config.read_only
        a.st_mode = stat.S_IFREG | (0o600 if writable else 0o444)
        a.st_nlink = 1
        a.st_size = part.size
        a.st_mtime_ns = a.st_ctime_ns = a.st_atime_ns = self._owner_mtime(owner)
        ino = self.inodes.number("part", f"{owner}\0{part.number}")
        timeout = DRAFT_ATTR_TIMEOUT if owner.startswith(DRAFT_PREFIX) else SNAPSHOT_ATTR_TIMEOUT
        return self._common(a, ino, ENTRY_TIMEOUT, timeout)

    def _label_attr(self, owner: str, label: str, number: int) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_mode = stat.S_IFLNK | 0o777
        a.st_nlink = 1
        a.st_size = len(f"../{number}")
        a.st_mtime_ns = a.st_ctime_ns = a.st_atime_ns = self._owner_mtime(owner)
        ino = self.inodes.number("label", f"{owner}\0{label}")
        return self._common(a, ino, ENTRY_TIMEOUT, ENTRY_TIMEOUT)

    def _owner_mtime(self, owner: str) -> int:
        if owner.startswith(DRAFT_PREFIX):
            draft = self.newdir.get(owner[len(DRAFT_PREFIX) :])
            return draft.mtime_ns() if draft is not None else self.started
        info = self.catalog.snapshots.get(owner)
        return int(info.start_time * 1e9) if info is not None else self.started

    def _owner_dir_attr(self, kind: str, owner: str) -> pyfuse3.EntryAttributes:
        a = self._dir_attr(PARTS)
        a.st_ino = self.inodes.number("partdir" if kind == "partdir" else "labeldir", owner)
        a.st_mtime_ns = a.st_ctime_ns = a.st_atime_ns = self._owner_mtime(owner)
        return a

    async def _parts_lookup(self, parent: int, name: str) -> pyfuse3.EntryAttributes:
        """lookup under parts/ (parent is PARTS, PARTS_NEW or an owner's directory)."""
        if parent == PARTS:
            if name == "new":
                return self._dir_attr(PARTS_NEW)
            if await self.catalog.lookup(name) is None:
                raise fail(errno.ENOENT)
            return self._owner_dir_attr("partdir", name)
        if parent == PARTS_NEW:
            owner = DRAFT_PREFIX + name
            if not self.partitions.exists(owner):
                raise fail(errno.ENOENT)
            return self._owner_dir_attr("partdir", owner)
        kind, owner = self._owner_of(parent)
        table = await self.partitions.table(owner)
        if kind == "partdir":
            if name == "by-label" and self.partitions.labels(owner):
                return self._owner_dir_attr("labeldir", owner)
            part = next((p for p in table if str(p.number) == name), None)
            if part is None:
                raise fail(errno.ENOENT)
            return self._part_attr(owner, part)
        number = self.partitions.labels(owner).get(name)
        if number is None:
            raise fail(errno.ENOENT)
        return self._label_attr(owner, name, number)

    def _owner_of(self, inode: int) -> tuple[str, str]:
        entry = self.inodes.entry(inode)
        if entry is None or entry[0] not in ("partdir", "labeldir"):
            raise fail(errno.ENOENT)
        if not self.partitions.exists(entry[1]):
            raise fail(errno.ENOENT)
        return entry

    async def _parts_entries(self, inode: int) -> list[tuple[str, pyfuse3.EntryAttributes]]:
        if inode == PARTS:
            out = [("new", self._dir_attr(PARTS_NEW))]
            for sid in sorted(self.catalog.snapshots):
                out.append((sid, self._owner_dir_attr("partdir", sid)))
            return out
        if inode == PARTS_NEW:
            return [
                (name, self._owner_dir_attr("partdir", DRAFT_PREFIX + name))
                for name in sorted(self.newdir.names())
            ]
        kind, owner = self._owner_of(inode)
        table = await self.partitions.table(owner)
        labels = self.partitions.labels(owner)
        if kind == "labeldir":
            return [(n, self._label_attr(owner, n, labels[n])) for n in sorted(labels)]
        out = [(str(p.number), self._part_attr(owner, p)) for p in table]
        if labels:
            out.append(("by-label", self._owner_dir_attr("labeldir", owner)))
        return out

    # ---- scratch/ ---------------------------------------------------------------------------

    def _overlay(self, name: str) -> Overlay:
        overlay = self.scratch.get(name) if self.scratch is not None else None
        if overlay is None:
            raise fail(errno.ENOENT)
        return overlay

    def _overlay_of(self, key: str) -> Overlay:
        """The overlay of a scratch inode (keyed by ``Overlay.key``, not by its name: one
        removed while open keeps its inode, and a new one of the same name gets another)."""
        overlay = self.scratch.by_key(key) if self.scratch is not None else None
        if overlay is None:
            raise fail(errno.ENOENT)
        return overlay

    def _scratch_attr(self, overlay: Overlay) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_mode = stat.S_IFREG | 0o600
        a.st_nlink = 1
        a.st_size = overlay.size
        a.st_mtime_ns = a.st_ctime_ns = a.st_atime_ns = overlay.created_ns
        # Local and cheap to ask: no attribute caching, so a new base's size shows at once.
        a = self._common(a, self.inodes.number("scratch", overlay.key), 0.0, 0.0)
        a.st_blocks = len(overlay.copied) * (BLOCK_SIZE // 512)
        return a

    def _draft(self, name: str) -> Draft:
        draft = self.newdir.get(name)
        if draft is None:
            raise fail(errno.ENOENT)
        return draft

    def _attr_of(self, inode: int) -> pyfuse3.EntryAttributes:
        if inode in DIRECTORIES:
            return self._dir_attr(inode)
        entry = self.inodes.entry(inode)
        if entry is None:
            raise fail(errno.ENOENT)
        kind, name = entry
        if kind == "snapshot":
            info = self.catalog.snapshots.get(name)
            if info is None:
                raise fail(errno.ENOENT)
            return self._snapshot_attr(info)
        if kind == "link":
            target = self.catalog.by_name().get(name)
            if target is None:
                raise fail(errno.ENOENT)
            return self._link_attr(name, target)
        if kind == "scratch":
            return self._scratch_attr(self._overlay_of(name))
        if kind in ("partdir", "labeldir"):
            self._owner_of(inode)
            return self._owner_dir_attr(kind, name)
        if kind in ("part", "label"):
            owner, _, leaf = name.rpartition("\0")
            if kind == "label":
                number = self.partitions.labels(owner).get(leaf)
                if number is None:
                    raise fail(errno.ENOENT)
                return self._label_attr(owner, leaf, number)
            part = self.partitions.partition(owner, int(leaf))
            if part is None:
                raise fail(errno.ENOENT)
            return self._part_attr(owner, part)
        return self._draft_attr(self._draft(name))

    def _refuse_change(self) -> pyfuse3.FUSEError:
        return fail(errno.EROFS)

    def _new_handle(self, handle: _Handle) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self.handles[fh] = handle
        return fh

    def _handle(self, fh: int) -> _Handle:
        handle = self.handles.get(fh)
        if handle is None:
            raise fail(errno.EBADF)
        return handle

    # ---- lookups and listings -------------------------------------------------------------------

    @fuse_errors
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        text = os.fsdecode(name)
        if text == ".":
            return self._attr_of(parent_inode)
        if text == "..":
            return self._dir_attr(ROOT)
        if parent_inode == ROOT:
            if text == "by-name":
                return self._dir_attr(BY_NAME)
            if text == "new":
                return self._dir_attr(NEW)
            if text == "parts":
                return self._dir_attr(PARTS)
            if text == "scratch":
                return self._dir_attr(SCRATCH)
            info = await self.catalog.lookup(text)
            if info is None:
                raise fail(errno.ENOENT)
            return self._snapshot_attr(info)
        if parent_inode == BY_NAME:
            await self.catalog.listed()
            target = self.catalog.by_name().get(text)
            if target is None:
                raise fail(errno.ENOENT)
            return self._link_attr(text, target)
        if parent_inode == NEW:
            return self._draft_attr(self._draft(text))
        if parent_inode == SCRATCH:
            return self._scratch_attr(self._overlay(text))
        if parent_inode in (PARTS, PARTS_NEW) or self._is_dir(parent_inode):
            return await self._parts_lookup(parent_inode, text)
        raise fail(errno.ENOTDIR)

    @fuse_errors
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._attr_of(inode)

    @fuse_errors
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        entry = self.inodes.entry(inode)
        if entry is not None and entry[0] == "label":
            owner, _, label = entry[1].rpartition("\0")
            number = self.partitions.labels(owner).get(label)
            if number is None:
                raise fail(errno.ENOENT)
            return f"../{number}".encode()
        if entry is None or entry[0] != "link":
            raise fail(errno.EINVAL)
        await self.catalog.listed()
        target = self.catalog.by_name().get(entry[1])
        if target is None:
            raise fail(errno.ENOENT)
        return self._link_target(target)

    @fuse_errors
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        if not self._is_dir(inode):
            raise fail(errno.ENOTDIR)
        fh = self._next_fh
        self._next_fh += 1
        self.dir_handles[fh] = (inode, [])
        return fh

    def _entries(self, inode: int) -> list[tuple[str, pyfuse3.EntryAttributes]]:
        if inode == ROOT:
            out = [
                ("by-name", self._dir_attr(BY_NAME)),
                ("new", self._dir_attr(NEW)),
                ("parts", self._dir_attr(PARTS)),
                ("scratch", self._dir_attr(SCRATCH)),
            ]
            for sid in sorted(self.catalog.snapshots):
                out.append((sid, self._snapshot_attr(self.catalog.snapshots[sid])))
            return out
        if inode == BY_NAME:
            links = self.catalog.by_name()
            return [(n, self._link_attr(n, links[n])) for n in sorted(links)]
        drafts = []
        for name in sorted(self.newdir.names()):
            draft = self.newdir.get(name)
            if draft is not None:
                drafts.append((name, self._draft_attr(draft)))
        return drafts

    @fuse_errors
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        inode, listed = self.dir_handles.get(fh, (fh, []))
        if not listed or start_id == 0:
            listed[:] = await self._list_dir(inode)
            self.dir_handles[fh] = (inode, listed)
        for pos in range(start_id, len(listed)):
            name, attr = listed[pos]
            if not pyfuse3.readdir_reply(token, os.fsencode(name), attr, pos + 1):
                break

    async def _list_dir(self, fh: int) -> list[tuple[str, pyfuse3.EntryAttributes]]:
        """The entries of directory ``fh`` (an inode), in a stable order."""
        await self.catalog.listed()
        if fh == SCRATCH:
            entries = [
                (n, self._scratch_attr(self._overlay(n)))
                for n in (self.scratch.names() if self.scratch else [])
            ]
        elif fh in (ROOT, BY_NAME, NEW):
            entries = self._entries(fh)
        else:
            entries = await self._parts_entries(fh)
        return entries

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
        writing = (flags & os.O_ACCMODE) != os.O_RDONLY or flags & os.O_TRUNC
        entry = self.inodes.entry(inode)
        if self._is_dir(inode) or entry is None:
            raise fail(errno.EISDIR if self._is_dir(inode) else errno.ENOENT)
        kind, name = entry
        if kind == "scratch":
            if writing and self.config.read_only:
                raise self._refuse_change()
            overlay = self._overlay_of(name)
            fh = self._new_handle(_Handle(inode, overlay=overlay))
            if self.scratch is not None:
                self.scratch.opened(overlay)
            return pyfuse3.FileInfo(fh=fh, keep_cache=False)
        if kind == "part":
            owner, _, number = name.rpartition("\0")
            of_draft = owner.startswith(DRAFT_PREFIX)
            if writing and (self.config.read_only or not of_draft):
                raise self._refuse_change()
            part = self.partitions.partition(owner, int(number))
            if part is None:
                raise fail(errno.ENOENT)
            draft_name = owner[len(DRAFT_PREFIX) :] if of_draft else ""
            fh = self._new_handle(
                _Handle(inode, part_owner=owner, part=part, draft_name=draft_name)
            )
            if draft_name:
                self.draft_opens[draft_name] += 1  # released like the draft's own handles
            self.counters["opens"] += 1
            # A completed snapshot's partition never changes; a draft's may.
            return pyfuse3.FileInfo(fh=fh, keep_cache=not owner.startswith(DRAFT_PREFIX))
        if kind == "snapshot":
            if writing:
                raise self._refuse_change()
            info = self.catalog.snapshots.get(name)
            if info is None:
                raise fail(errno.ENOENT)
            fh = self._new_handle(_Handle(inode, snapshot=info))
            self.counters["opens"] += 1
            # Completed snapshots never change: let the kernel keep their pages.
            return pyfuse3.FileInfo(fh=fh, keep_cache=True)
        if kind == "draft":
            if writing and self.config.read_only:
                raise self._refuse_change()
            draft = self._draft(name)
            fh = self._new_handle(_Handle(inode, draft=draft, draft_name=name))
            self.draft_opens[name] += 1
            # Drafts change under us (seal, remount): never serve them from stale pages.
            return pyfuse3.FileInfo(fh=fh, keep_cache=False)
        raise fail(errno.ELOOP)

    @fuse_errors
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        text = os.fsdecode(name)
        if parent_inode == SCRATCH and self.scratch is not None and not self.config.read_only:
            if self.scratch.get(text) is not None:
                raise fail(errno.EEXIST)
            overlay = await self.scratch.create(text)
            fh = self._new_handle(
                _Handle(self.inodes.number("scratch", overlay.key), overlay=overlay)
            )
            self.scratch.opened(overlay)
            return pyfuse3.FileInfo(fh=fh, keep_cache=False), self._scratch_attr(overlay)
        if parent_inode != NEW or self.config.read_only:
            raise self._refuse_change()
        draft = await self.newdir.create(text)
        fh = self._new_handle(
            _Handle(self.inodes.number("draft", text), draft=draft, draft_name=text)
        )
        self.draft_opens[text] += 1
        return pyfuse3.FileInfo(fh=fh, keep_cache=False), self._draft_attr(draft)

    @fuse_errors
    async def read(  # type: ignore[override]  # pyfuse3 takes any buffer; its stub says bytes
        self, fh: int, off: int, size: int
    ) -> bytes | memoryview:
        handle = self._handle(fh)
        if handle.draft is not None:
            return await handle.draft.read(off, size)
        if handle.overlay is not None:
            assert self.scratch is not None
            return await self.scratch.read(handle.overlay, off, size)
        if handle.part is not None:
            data = await self.partitions.read(handle.part_owner, handle.part, off, size)
            self.counters["reads"] += 1
            self.counters["read_bytes"] += len(data)
            return data
        info = handle.snapshot
        assert info is not None
        stack = self.stacks.get(info.snapshot_id, info.volume_size)
        data = await read_range(stack, off, size, info.volume_size << 30)
        self.counters["reads"] += 1
        self.counters["read_bytes"] += len(data)
        return data

    @fuse_errors
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        handle = self._handle(fh)
        if handle.overlay is not None and self.scratch is not None:
            return await self.scratch.write(handle.overlay, off, buf)
        if handle.part is not None and handle.draft_name and not self.config.read_only:
            return await self.partitions.write(handle.part_owner, handle.part, off, buf)
        if handle.draft is None or self.config.read_only:
            raise self._refuse_change()
        return await handle.draft.write(off, buf)

    @fuse_errors
    async def flush(self, fh: int) -> None:
        return None

    @fuse_errors
    async def fsync(self, fh: int, datasync: bool) -> None:
        handle = self._handle(fh)
        draft = handle.draft or (self.newdir.get(handle.draft_name) if handle.draft_name else None)
        if draft is not None:
            await draft.fsync()

    @fuse_errors
    async def release(self, fh: int) -> None:
        handle = self.handles.pop(fh, None)
        if handle is not None and handle.overlay is not None and self.scratch is not None:
            self.scratch.released(handle.overlay)
        if handle is None or not handle.draft_name:
            return
        self.draft_opens[handle.draft_name] -= 1
        if self.draft_opens[handle.draft_name] <= 0:
            del self.draft_opens[handle.draft_name]
            draft = handle.draft or self.newdir.get(handle.draft_name)
            if draft is not None:
                await draft.release()

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
            return self._attr_of(inode)
        of_draft = entry is not None and entry[1].startswith(DRAFT_PREFIX)
        if entry is not None and entry[0] == "part" and of_draft and not self.config.read_only:
            # A partition keeps its size, as a block device does: O_TRUNC and truncate are
            # ignored (so a plain dd works); nothing else about it can change.
            if fields.update_mode or fields.update_uid or fields.update_gid:
                raise fail(errno.EPERM)
            return self._attr_of(inode)
        if entry is None or entry[0] != "draft" or self.config.read_only:
            if inode not in DIRECTORIES and entry is None:
                raise fail(errno.ENOENT)
            raise self._refuse_change()
        draft = self._draft(entry[1])
        if fields.update_uid or fields.update_gid:
            raise fail(errno.EPERM)
        if fields.update_size:
            await draft.truncate(attr.st_size)
        if fields.update_mode and not attr.st_mode & 0o222:
            await draft.seal()  # chmod a-w: seal the snapshot
        return self._draft_attr(draft)

    # ---- attributes --------------------------------------------------------------------------

    def _xattrs(self, inode: int) -> dict[str, bytes]:
        if inode == ROOT:
            return {
                STATS_XATTR: json.dumps(self.stats(), sort_keys=True).encode(),
                PID_XATTR: str(os.getpid()).encode(),
            }
        entry = self.inodes.entry(inode)
        if entry is None:
            return {}
        kind, name = entry
        if kind == "snapshot":
            info = self.catalog.snapshots.get(name)
            return snapshot_xattrs(info) if info else {}
        if kind == "draft":
            return self._draft(name).xattrs()
        if kind == "scratch" and self.scratch is not None:
            return self.scratch.xattrs(self._overlay_of(name))
        return {}

    @fuse_errors
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        value = self._xattrs(inode).get(os.fsdecode(name))
        if value is None:
            raise fail(pyfuse3.ENOATTR)
        return value

    @fuse_errors
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> Sequence[bytes]:
        return [os.fsencode(n) for n in sorted(self._xattrs(inode))]

    @fuse_errors
    async def setxattr(
        self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        entry = self.inodes.entry(inode)
        if entry is not None and entry[0] == "scratch" and self.scratch is not None:
            overlay, key = self._overlay_of(entry[1]), os.fsdecode(name)
            if key == XATTR_BASE:
                await self.scratch.set_base(overlay, value)
            elif key == XATTR_KEEP:
                await self.scratch.keep(overlay, value, self.newdir)
                leaf = keep_name(value).encode()
                with contextlib.suppress(Exception):
                    pyfuse3.invalidate_entry_async(NEW, leaf, ignore_enoent=True)
            else:
                raise fail(errno.ENOTSUP)
            return
        if entry is None or entry[0] != "draft" or self.config.read_only:
            raise self._refuse_change()
        await self._draft(entry[1]).setxattr(os.fsdecode(name), value)
        # A parent gives the draft its size: the kernel must not keep serving the old one
        # (attributes only: no page is dropped, so this cannot wait on this request).
        with contextlib.suppress(Exception):
            pyfuse3.invalidate_inode(inode, attr_only=True)

    @fuse_errors
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        entry = self.inodes.entry(inode)
        if entry is None or entry[0] != "draft" or self.config.read_only:
            raise self._refuse_change()
        raise fail(errno.ENOTSUP)

    # ---- changes to the namespace ------------------------------------------------------------

    @fuse_errors
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        text = os.fsdecode(name)
        if self.config.read_only:
            raise self._refuse_change()
        if parent_inode == NEW:
            await self.newdir.remove(text)
            return
        if parent_inode == SCRATCH and self.scratch is not None:
            await self.scratch.remove(text)
            return
        if parent_inode == ROOT and text in self.catalog.snapshots:
            if not self.config.allow_delete or self.delete_snapshot is None:
                raise self._refuse_change()
            await self.delete_snapshot(text)
            self.catalog.remove(text)
            self.counters["deleted"] += 1
            return
        if parent_inode in (ROOT, BY_NAME, SCRATCH) or self._is_dir(parent_inode):
            raise self._refuse_change()
        raise fail(errno.ENOENT)

    @fuse_errors
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        if parent_inode == NEW and not self.config.read_only:
            raise fail(errno.ENOTDIR)  # new/ holds no directories
        raise self._refuse_change()

    @fuse_errors
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        if parent_inode == NEW and not self.config.read_only:
            raise fail(errno.EPERM)  # new/ holds only snapshot files
        raise self._refuse_change()

    @fuse_errors
    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        if parent_inode == NEW and not self.config.read_only:
            raise fail(errno.EPERM)
        raise self._refuse_change()

    @fuse_errors
    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        if parent_inode == NEW and not self.config.read_only:
            raise fail(errno.EPERM)
        raise self._refuse_change()

    @fuse_errors
    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        if new_parent_inode == NEW and not self.config.read_only:
            raise fail(errno.EPERM)
        raise self._refuse_change()

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
        raise self._refuse_change()

    @fuse_errors
    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        return None  # inode numbers live as long as the mount

    # ---- counters -----------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Every counter of the mount, for ``ebsfs stats``."""
        out: dict[str, Any] = {
            "read": self.stacks.stats(),
            "listing": self.catalog.stats(),
            "fuse": {**self.counters, "open_handles": len(self.handles)},
            "errors": dict(ERRNO_COUNTS),
        }
        draft_stats = getattr(self.newdir, "stats", None)
        if callable(draft_stats):
            out["write"] = draft_stats()
        return out
