"""The ``parts/`` directory: one directory per snapshot or draft, its partitions and labels.

Lookups and listings only; the tables and the partitions' data are ``PartitionTables``'
(fs/partview.py). See docs/architecture.md and SPEC.md "The namespace".
"""

from __future__ import annotations

import errno

import pyfuse3

from ebsfs.fs.edge import fail
from ebsfs.fs.entries import Entries, Namespace
from ebsfs.fs.inodes import DIRECTORIES, PARTS, PARTS_NEW
from ebsfs.fs.partview import DRAFT_PREFIX

Listing = list[tuple[str, pyfuse3.EntryAttributes]]


class PartsDirectory:
    """Names under ``parts/``: ``parts/ID/N``, ``parts/new/NAME/N`` and their ``by-label/``."""

    def __init__(self, ns: Namespace, entries: Entries) -> None:
        self.ns = ns
        self.entries = entries

    def is_dir(self, inode: int) -> bool:
        """Whether ``inode`` is a directory of the mount (these and the fixed ones)."""
        entry = self.ns.inodes.entry(inode)
        return inode in DIRECTORIES or (entry is not None and entry[0] in ("partdir", "labeldir"))

    def owner_of(self, inode: int) -> tuple[str, str]:
        """``(kind, owner)`` of a directory inode under parts/; ENOENT once its owner is gone."""
        entry = self.ns.inodes.entry(inode)
        if entry is None or entry[0] not in ("partdir", "labeldir"):
            raise fail(errno.ENOENT)
        if not self.ns.partitions.exists(entry[1]):
            raise fail(errno.ENOENT)
        return entry

    def attr(self, inode: int, kind: str, name: str) -> pyfuse3.EntryAttributes:
        """The attributes of a ``partdir``, ``labeldir``, ``part`` or ``label`` inode."""
        if kind in ("partdir", "labeldir"):
            self.owner_of(inode)
            return self.entries.owner_dir(kind, name)
        owner, _, leaf = name.rpartition("\0")
        if kind == "label":
            number = self.ns.partitions.labels(owner).get(leaf)
            if number is None:
                raise fail(errno.ENOENT)
            return self.entries.label(owner, leaf, number)
        part = self.ns.partitions.partition(owner, int(leaf))
        if part is None:
            raise fail(errno.ENOENT)
        return self.entries.part(owner, part)

    def readlink(self, name: str) -> bytes:
        """The target of a ``by-label/`` link (``name`` is its inode's name)."""
        owner, _, label = name.rpartition("\0")
        number = self.ns.partitions.labels(owner).get(label)
        if number is None:
            raise fail(errno.ENOENT)
        return f"../{number}".encode()

    async def lookup(self, parent: int, name: str) -> pyfuse3.EntryAttributes:
        """lookup under parts/ (parent is PARTS, PARTS_NEW or an owner's directory)."""
        if parent == PARTS:
            if name == "new":
                return self.entries.directory(PARTS_NEW)
            if await self.ns.catalog.lookup(name) is None:
                raise fail(errno.ENOENT)
            return self.entries.owner_dir("partdir", name)
        if parent == PARTS_NEW:
            owner = DRAFT_PREFIX + name
            if not self.ns.partitions.exists(owner):
                raise fail(errno.ENOENT)
            return self.entries.owner_dir("partdir", owner)
        kind, owner = self.owner_of(parent)
        table = await self.ns.partitions.table(owner)
        if kind == "partdir":
            if name == "by-label" and self.ns.partitions.labels(owner):
                return self.entries.owner_dir("labeldir", owner)
            part = next((p for p in table if str(p.number) == name), None)
            if part is None:
                raise fail(errno.ENOENT)
            return self.entries.part(owner, part)
        number = self.ns.partitions.labels(owner).get(name)
        if number is None:
            raise fail(errno.ENOENT)
        return self.entries.label(owner, name, number)

    async def listing(self, inode: int) -> Listing:
        """The entries of a directory under parts/, in a stable order."""
        if inode == PARTS:
            out = [("new", self.entries.directory(PARTS_NEW))]
            for sid in sorted(self.ns.catalog.snapshots):
                out.append((sid, self.entries.owner_dir("partdir", sid)))
            return out
        if inode == PARTS_NEW:
            return [
                (name, self.entries.owner_dir("partdir", DRAFT_PREFIX + name))
                for name in sorted(self.ns.newdir.names())
            ]
        kind, owner = self.owner_of(inode)
        table = await self.ns.partitions.table(owner)
        labels = self.ns.partitions.labels(owner)
        if kind == "labeldir":
            return [(n, self.entries.label(owner, n, labels[n])) for n in sorted(labels)]
        out = [(str(p.number), self.entries.part(owner, p)) for p in table]
        if labels:
            out.append(("by-label", self.entries.owner_dir("labeldir", owner)))
        return out
