"""The mount's tree: what each inode is, lookups, links and directory listings.

The root (completed snapshots), ``by-name/``, ``new/`` and ``scratch/`` are answered here,
``parts/`` by ``PartsDirectory``. See docs/architecture.md and SPEC.md "The namespace".
"""

from __future__ import annotations

import errno

import pyfuse3

from ebsfs.fs.edge import fail
from ebsfs.fs.entries import Entries, Namespace, link_target
from ebsfs.fs.inodes import BY_NAME, DIRECTORIES, NEW, PARTS, PARTS_NEW, ROOT, SCRATCH
from ebsfs.fs.partsdir import Listing, PartsDirectory

#: The fixed directories of the root, in listing order.
_TOP = (("by-name", BY_NAME), ("new", NEW), ("parts", PARTS), ("scratch", SCRATCH))


class Tree:
    """Lookups and listings of the whole namespace."""

    def __init__(self, ns: Namespace, entries: Entries, parts: PartsDirectory) -> None:
        self.ns = ns
        self.entries = entries
        self.parts = parts

    def is_dir(self, inode: int) -> bool:
        return self.parts.is_dir(inode)

    def attr_of(self, inode: int) -> pyfuse3.EntryAttributes:
        """The attributes of any inode handed out (ENOENT once what it stood for is gone)."""
        if inode in DIRECTORIES:
            return self.entries.directory(inode)
        entry = self.ns.inodes.entry(inode)
        if entry is None:
            raise fail(errno.ENOENT)
        kind, name = entry
        if kind == "snapshot":
            info = self.ns.catalog.snapshots.get(name)
            if info is None:
                raise fail(errno.ENOENT)
            return self.entries.snapshot(info)
        if kind == "link":
            target = self.ns.catalog.by_name().get(name)
            if target is None:
                raise fail(errno.ENOENT)
            return self.entries.link(name, target)
        if kind == "scratch":
            return self.entries.of_overlay(self.entries.overlay_of(name))
        if kind in ("partdir", "labeldir", "part", "label"):
            return self.parts.attr(inode, kind, name)
        return self.entries.of_draft(self.entries.draft(name))

    async def lookup(self, parent: int, text: str) -> pyfuse3.EntryAttributes:
        if text == ".":
            return self.attr_of(parent)
        if text == "..":
            return self.entries.directory(ROOT)
        if parent == ROOT:
            fixed = dict(_TOP).get(text)
            if fixed is not None:
                return self.entries.directory(fixed)
            info = await self.ns.catalog.lookup(text)
            if info is None:
                raise fail(errno.ENOENT)
            return self.entries.snapshot(info)
        if parent == BY_NAME:
            await self.ns.catalog.listed()
            target = self.ns.catalog.by_name().get(text)
            if target is None:
                raise fail(errno.ENOENT)
            return self.entries.link(text, target)
        if parent == NEW:
            return self.entries.of_draft(self.entries.draft(text))
        if parent == SCRATCH:
            return self.entries.of_overlay(self.entries.overlay(text))
        if parent in (PARTS, PARTS_NEW) or self.is_dir(parent):
            return await self.parts.lookup(parent, text)
        raise fail(errno.ENOTDIR)

    async def readlink(self, inode: int) -> bytes:
        entry = self.ns.inodes.entry(inode)
        if entry is not None and entry[0] == "label":
            return self.parts.readlink(entry[1])
        if entry is None or entry[0] != "link":
            raise fail(errno.EINVAL)
        await self.ns.catalog.listed()
        target = self.ns.catalog.by_name().get(entry[1])
        if target is None:
            raise fail(errno.ENOENT)
        return link_target(target)

    async def listing(self, inode: int) -> Listing:
        """The entries of directory ``inode``, in a stable order."""
        await self.ns.catalog.listed()
        if inode == SCRATCH:
            names = self.ns.scratch.names() if self.ns.scratch else []
            return [(n, self.entries.of_overlay(self.entries.overlay(n))) for n in names]
        if inode == ROOT:
            out = [(name, self.entries.directory(ino)) for name, ino in _TOP]
            for sid in sorted(self.ns.catalog.snapshots):
                out.append((sid, self.entries.snapshot(self.ns.catalog.snapshots[sid])))
            return out
        if inode == BY_NAME:
            links = self.ns.catalog.by_name()
            return [(n, self.entries.link(n, links[n])) for n in sorted(links)]
        if inode == NEW:
            drafts = []
            for name in sorted(self.ns.newdir.names()):
                draft = self.ns.newdir.get(name)
                if draft is not None:
                    drafts.append((name, self.entries.of_draft(draft)))
            return drafts
        return await self.parts.listing(inode)
