"""The ``user.ebsfs.*`` attributes: of snapshots, drafts, scratch overlays and the root.

The root's are the mount's counters (``user.ebsfs.stats``, read by ``ebsfs stats``) and
the daemon's pid (``ebsfs umount``). Names and values: SPEC.md; see docs/architecture.md.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from collections.abc import Callable
from typing import Any

import pyfuse3

from ebsfs.aws.api import SnapshotInfo
from ebsfs.core.blocks import PID_XATTR, STATS_XATTR, XATTR_BASE, XATTR_KEEP, XATTR_PREFIX
from ebsfs.fs.edge import fail
from ebsfs.fs.entries import Entries, Namespace
from ebsfs.fs.files import refuse_change
from ebsfs.fs.inodes import NEW, ROOT
from ebsfs.fs.scratch import keep_name


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


class Xattrs:
    """Extended attributes by inode, and the few that may be set."""

    def __init__(
        self, ns: Namespace, entries: Entries, stats: Callable[[], dict[str, Any]]
    ) -> None:
        self.ns = ns
        self.entries = entries
        self.stats = stats

    def of(self, inode: int) -> dict[str, bytes]:
        """Every attribute of ``inode`` by name."""
        if inode == ROOT:
            return {
                STATS_XATTR: json.dumps(self.stats(), sort_keys=True).encode(),
                PID_XATTR: str(os.getpid()).encode(),
            }
        entry = self.ns.inodes.entry(inode)
        if entry is None:
            return {}
        kind, name = entry
        if kind == "snapshot":
            info = self.ns.catalog.snapshots.get(name)
            return snapshot_xattrs(info) if info else {}
        if kind == "draft":
            return self.entries.draft(name).xattrs()
        if kind == "scratch" and self.ns.scratch is not None:
            return self.ns.scratch.xattrs(self.entries.overlay_of(name))
        return {}

    async def set(self, inode: int, name: str, value: bytes) -> None:
        """Set a draft's attribute (its StartSnapshot shape) or a scratch overlay's
        (``base``, ``keep``); EROFS anywhere else."""
        entry = self.ns.inodes.entry(inode)
        if entry is not None and entry[0] == "scratch" and self.ns.scratch is not None:
            overlay = self.entries.overlay_of(entry[1])
            if name == XATTR_BASE:
                await self.ns.scratch.set_base(overlay, value)
            elif name == XATTR_KEEP:
                await self.ns.scratch.keep(overlay, value, self.ns.newdir)
                leaf = keep_name(value).encode()
                with contextlib.suppress(Exception):
                    pyfuse3.invalidate_entry_async(NEW, leaf, ignore_enoent=True)
            else:
                raise fail(errno.ENOTSUP)
            return
        if entry is None or entry[0] != "draft" or self.ns.config.read_only:
            raise refuse_change()
        await self.entries.draft(entry[1]).setxattr(name, value)
        # A parent gives the draft its size: the kernel must not keep serving the old one
        # (attributes only: no page is dropped, so this cannot wait on this request).
        with contextlib.suppress(Exception):
            pyfuse3.invalidate_inode(inode, attr_only=True)

    def remove(self, inode: int) -> None:
        """No attribute can be removed: ENOTSUP on a draft, EROFS elsewhere."""
        entry = self.ns.inodes.entry(inode)
        if entry is None or entry[0] != "draft" or self.ns.config.read_only:
            raise refuse_change()
        raise fail(errno.ENOTSUP)
