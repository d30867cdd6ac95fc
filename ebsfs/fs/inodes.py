"""Stable inode numbers for the names a mount shows: fixed for its directories, handed out
at first sight for every other name and kept for the life of the mount.
See docs/architecture.md.
"""

from __future__ import annotations

from typing import Literal

import pyfuse3

#: ``partdir``/``labeldir``: a snapshot's or draft's directory under parts/ (and its
#: by-label/); ``part``/``label``: a partition file and a label link in them.
Kind = Literal["snapshot", "link", "draft", "partdir", "labeldir", "part", "label", "scratch"]

ROOT = pyfuse3.ROOT_INODE
BY_NAME = ROOT + 1
NEW = ROOT + 2
PARTS = ROOT + 3
PARTS_NEW = ROOT + 4
SCRATCH = ROOT + 5
DIRECTORIES = {
    ROOT: "",
    BY_NAME: "by-name",
    NEW: "new",
    PARTS: "parts",
    PARTS_NEW: "parts/new",
    SCRATCH: "scratch",
}
_FIRST = 16


class InodeTable:
    """Maps ``(kind, name)`` to a stable inode number and back."""

    def __init__(self) -> None:
        self._by_key: dict[tuple[Kind, str], int] = {}
        self._by_inode: dict[int, tuple[Kind, str]] = {}
        self._next = _FIRST

    def number(self, kind: Kind, name: str) -> int:
        """The inode of ``(kind, name)``, allocated on first use."""
        key = (kind, name)
        ino = self._by_key.get(key)
        if ino is None:
            ino = self._next
            self._next += 1
            self._by_key[key] = ino
            self._by_inode[ino] = key
        return ino

    def entry(self, inode: int) -> tuple[Kind, str] | None:
        """What ``inode`` stands for, or None if it was never handed out."""
        return self._by_inode.get(inode)
