"""The attributes of every name a mount shows, and the objects behind them.

``Entries`` turns a snapshot, link, draft, partition or scratch overlay into the
``EntryAttributes`` the kernel caches (modes and timeouts as in SPEC.md "The namespace").
See docs/architecture.md.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from dataclasses import dataclass

import pyfuse3

from ebsfs.aws.api import SnapshotInfo
from ebsfs.core.blocks import BLOCK_SIZE
from ebsfs.fs.blockcount import BlockCounts
from ebsfs.fs.catalog import Catalog
from ebsfs.fs.edge import fail
from ebsfs.fs.inodes import NEW, PARTS, SCRATCH, InodeTable
from ebsfs.fs.partitions import Partition
from ebsfs.fs.partview import DRAFT_PREFIX, PartitionTables
from ebsfs.fs.scratch import Overlay, ScratchDirectory
from ebsfs.write.newdir import Draft, NewDirectory

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


def link_target(snapshot_id: str) -> bytes:
    """What a ``by-name/`` link points to."""
    return f"../{snapshot_id}".encode()


@dataclass(frozen=True)
class Namespace:
    """What every part of the FUSE edge works on: the mount's names and what they stand for."""

    inodes: InodeTable
    catalog: Catalog
    newdir: NewDirectory
    partitions: PartitionTables
    #: None on a --read-only mount: scratch/ is then empty and refuses every change.
    scratch: ScratchDirectory | None
    config: OpsConfig


class Entries:
    """Attributes of the mount's names, and the drafts and overlays they stand for."""

    def __init__(self, ns: Namespace, block_counts: BlockCounts) -> None:
        self.ns = ns
        self.block_counts = block_counts
        self.started = time.time_ns()

    # ---- what a name stands for ----------------------------------------------------------

    def draft(self, name: str) -> Draft:
        draft = self.ns.newdir.get(name)
        if draft is None:
            raise fail(errno.ENOENT)
        return draft

    def overlay(self, name: str) -> Overlay:
        overlay = self.ns.scratch.get(name) if self.ns.scratch is not None else None
        if overlay is None:
            raise fail(errno.ENOENT)
        return overlay

    def overlay_of(self, key: str) -> Overlay:
        """The overlay of a scratch inode (keyed by ``Overlay.key``, not by its name: one
        removed while open keeps its inode, and a new one of the same name gets another)."""
        overlay = self.ns.scratch.by_key(key) if self.ns.scratch is not None else None
        if overlay is None:
            raise fail(errno.ENOENT)
        return overlay

    # ---- attributes ----------------------------------------------------------------------

    def common(
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

    def directory(self, inode: int) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        writable = inode in (NEW, SCRATCH) and not self.ns.config.read_only
        a.st_mode = stat.S_IFDIR | (0o755 if writable else 0o555)
        a.st_nlink = 2
        a.st_size = 0
        a.st_mtime_ns = a.st_ctime_ns = a.st_atime_ns = self.started
        return self.common(a, inode, ENTRY_TIMEOUT, ENTRY_TIMEOUT)

    def snapshot(self, info: SnapshotInfo) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_mode = stat.S_IFREG | 0o444
        a.st_nlink = 1
        a.st_size = info.volume_size << 30
        a.st_mtime_ns = a.st_ctime_ns = a.st_atime_ns = int(info.start_time * 1e9)
        ino = self.ns.inodes.number("snapshot", info.snapshot_id)
        a = self.common(a, ino, ENTRY_TIMEOUT, SNAPSHOT_ATTR_TIMEOUT)
        held = self.block_counts.get(info.snapshot_id)
        if held is not None:  # else the full size until counted (an upper bound)
            a.st_blocks = held * (BLOCK_SIZE // 512)
        return a

    def link(self, name: str, target: str) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_mode = stat.S_IFLNK | 0o777
        a.st_nlink = 1
        a.st_size = len(link_target(target))
        a.st_mtime_ns = a.st_ctime_ns = a.st_atime_ns = self.started
        return self.common(a, self.ns.inodes.number("link", name), ENTRY_TIMEOUT, ENTRY_TIMEOUT)

    def of_draft(self, draft: Draft) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_mode = stat.S_IFREG | draft.mode()
        a.st_nlink = 1
        a.st_size = draft.size()
        a.st_mtime_ns = a.st_ctime_ns = a.st_atime_ns = draft.mtime_ns()
        ino = self.ns.inodes.number("draft", draft.name)
        return self.common(a, ino, ENTRY_TIMEOUT, DRAFT_ATTR_TIMEOUT)

    def of_overlay(self, overlay: Overlay) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_mode = stat.S_IFREG | 0o600
        a.st_nlink = 1
        a.st_size = overlay.size
        a.st_mtime_ns = a.st_ctime_ns = a.st_atime_ns = overlay.created_ns
        # Local and cheap to ask: no attribute caching, so a new base's size shows at once.
        a = self.common(a, self.ns.inodes.number("scratch", overlay.key), 0.0, 0.0)
        a.st_blocks = len(overlay.copied) * (BLOCK_SIZE // 512)
        return a

    def part(self, owner: str, part: Partition) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        writable = owner.startswith(DRAFT_PREFIX) and not self.ns.config.read_only
        a.st_mode = stat.S_IFREG | (0o600 if writable else 0o444)
        a.st_nlink = 1
        a.st_size = part.size
        a.st_mtime_ns = a.st_ctime_ns = a.st_atime_ns = self.owner_mtime(owner)
        ino = self.ns.inodes.number("part", f"{owner}\0{part.number}")
        timeout = DRAFT_ATTR_TIMEOUT if owner.startswith(DRAFT_PREFIX) else SNAPSHOT_ATTR_TIMEOUT
        return self.common(a, ino, ENTRY_TIMEOUT, timeout)

    def label(self, owner: str, label: str, number: int) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_mode = stat.S_IFLNK | 0o777
        a.st_nlink = 1
        a.st_size = len(f"../{number}")
        a.st_mtime_ns = a.st_ctime_ns = a.st_atime_ns = self.owner_mtime(owner)
        ino = self.ns.inodes.number("label", f"{owner}\0{label}")
        return self.common(a, ino, ENTRY_TIMEOUT, ENTRY_TIMEOUT)

    def owner_dir(self, kind: str, owner: str) -> pyfuse3.EntryAttributes:
        """A snapshot's or draft's directory under parts/ (``partdir``) or its by-label/."""
        a = self.directory(PARTS)
        a.st_ino = self.ns.inodes.number("partdir" if kind == "partdir" else "labeldir", owner)
        a.st_mtime_ns = a.st_ctime_ns = a.st_atime_ns = self.owner_mtime(owner)
        return a

    def owner_mtime(self, owner: str) -> int:
        if owner.startswith(DRAFT_PREFIX):
            draft = self.ns.newdir.get(owner[len(DRAFT_PREFIX) :])
            return draft.mtime_ns() if draft is not None else self.started
        info = self.ns.catalog.snapshots.get(owner)
        return int(info.start_time * 1e9) if info is not None else self.started
