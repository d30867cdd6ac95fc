"""Scratch overlays (``MOUNTPOINT/scratch/``): local copy-on-write views of a completed
snapshot or partition; nothing is sent until ``user.ebsfs.keep`` writes the copied blocks
into a draft. See docs/usage.md ("Scratch overlays") and docs/architecture.md.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import resource
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from ebsfs.core.blocks import BLOCK_SIZE, XATTR_BASE, XATTR_KEEP, XATTR_USED
from ebsfs.core.errors import EbsfsError, InvalidValueError, NoSpaceError, NotFoundError
from ebsfs.fs.partitions import Partition
from ebsfs.write.newdir import NewDirectory

log = logging.getLogger(__name__)

#: ``snap-ID`` or ``snap-ID/N`` (partition N) as the value of ``user.ebsfs.base`` or as the
#: name of a new overlay (``snap-ID.pN`` there, since a name cannot hold ``/``).
_BASE = re.compile(r"(snap-[0-9a-f]{8,17})(?:[/.]p?([0-9]{1,4}))?")
_NAME = re.compile(r"[^/\0]{1,255}")

#: Resolves ``(snapshot id, partition number or None)`` to the base's size and its partition
#: (None for the whole disk); raises NotFoundError.
Resolver = Callable[[str, int | None], Awaitable[tuple[int, Partition | None]]]
#: Reads ``[offset, offset+length)`` of a snapshot's whole disk.
DiskReader = Callable[[str, int, int], Awaitable[bytes | memoryview]]


class ScratchFullError(NoSpaceError):
    """The mount's scratch limit is reached."""


def max_overlays() -> int:
    """How many overlays a mount keeps at once: each holds a descriptor, and the daemon
    needs most of its descriptors for the spool, the cache and the endpoint."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 4096
    return max(8, soft // 4)


@dataclass
class Overlay:
    """One scratch file."""

    name: str
    path: Path
    created_ns: int = field(default_factory=time.time_ns)
    snapshot_id: str = ""
    part: Partition | None = None
    size: int = 0
    copied: set[int] = field(default_factory=set)
    fd: int = -1
    #: Open file handles; an overlay removed while open keeps its copies until the last
    #: one is released (``removed`` then), as any unlinked file does.
    opens: int = 0
    removed: bool = False
    #: What tells this overlay from any other of the mount living at the same time, even one
    #: of the same name made after it was removed while open (its inode is keyed by it).
    key: str = ""

    @property
    def base(self) -> str:
        """The ``user.ebsfs.base`` value ("" until set)."""
        if not self.snapshot_id:
            return ""
        return self.snapshot_id + (f"/{self.part.number}" if self.part else "")

    @property
    def offset(self) -> int:
        """Where the overlay starts on the base snapshot's disk."""
        return self.part.start if self.part else 0


class ScratchDirectory:
    """The overlays of one mount, their local files and their shared space limit."""

    def __init__(
        self, root: Path, limit: int, resolve: Resolver, read_disk: DiskReader
    ) -> None:
        self.root = root
        self.limit = limit
        self.resolve = resolve
        self.read_disk = read_disk
        self.overlays: dict[str, Overlay] = {}
        self.max_overlays = max_overlays()
        #: Removed from the directory while open: gone at their last release.
        self.detached: list[Overlay] = []
        self._by_key: dict[str, Overlay] = {}
        # Left by a daemon that died: overlays never outlive their mount. The directory is
        # made again only for the first overlay.
        shutil.rmtree(root, ignore_errors=True)

    @property
    def used(self) -> int:
        """Bytes of copied blocks, all overlays together."""
        held = [*self.overlays.values(), *self.detached]
        return sum(len(o.copied) for o in held) * BLOCK_SIZE

    def names(self) -> list[str]:
        return sorted(self.overlays)

    def get(self, name: str) -> Overlay | None:
        return self.overlays.get(name)

    def by_key(self, key: str) -> Overlay | None:
        """The overlay of ``key`` (``Overlay.key``), removed or not, while it lives."""
        return self._by_key.get(key)

    async def create(self, name: str) -> Overlay:
        """A new overlay; a name like ``snap-ID`` or ``snap-ID.pN`` sets its base at once."""
        if not _NAME.fullmatch(name) or name in (".", ".."):
            raise InvalidValueError(f"scratch: not a usable name: {name!r}")
        if name in self.overlays:
            raise EbsfsError(f"scratch/{name} exists")
        if len(self.overlays) + len(self.detached) >= self.max_overlays:
            raise ScratchFullError(
                f"scratch/{name}: this mount holds {self.max_overlays} overlays already "
                "(a quarter of its open-file limit); rm one first"
            )
        path = self.root / f"{time.time_ns()}"
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise NoSpaceError(f"scratch/{name}: the spool's disk is full") from None
            raise EbsfsError(f"scratch/{name}: {path}: {exc.strerror or exc}") from None
        # The name again unless an overlay of that name removed while open still lives: then
        # another key (and inode); the keys, and so the inodes, of a name are few and reused.
        alive = {o.key for o in self.detached if o.name == name}
        generation = 0
        while f"{name}\0{generation}" in alive:
            generation += 1
        overlay = Overlay(name, path, fd=fd, key=f"{name}\0{generation}")
        self.overlays[name] = overlay
        self._by_key[overlay.key] = overlay
        if _BASE.fullmatch(name):
            try:
                await self.set_base(overlay, name.encode())
            except EbsfsError:
                await self.remove(name)
                raise
        return overlay

    async def set_base(self, overlay: Overlay, value: bytes) -> None:
        """``user.ebsfs.base``: which snapshot (and partition) the overlay shows."""
        match = _BASE.fullmatch(value.decode(errors="replace").strip())
        if match is None:
            raise InvalidValueError(f"{XATTR_BASE}: expected snap-ID or snap-ID/N, not {value!r}")
        if overlay.copied:
            raise InvalidValueError(f"scratch/{overlay.name}: written already; its base is fixed")
        number = int(match.group(2)) if match.group(2) else None
        try:
            size, part = await self.resolve(match.group(1), number)
        except NotFoundError as exc:
            raise InvalidValueError(f"{XATTR_BASE}: {exc}") from None
        if overlay.copied:  # a write copied blocks of the old base while this one was read
            raise InvalidValueError(f"scratch/{overlay.name}: written already; its base is fixed")
        overlay.snapshot_id, overlay.part, overlay.size = match.group(1), part, size
        log.info("scratch/%s: a local overlay of %s (%d bytes)", overlay.name, overlay.base, size)

    async def remove(self, name: str) -> None:
        """Discard an overlay and its copies."""
        overlay = self.overlays.pop(name, None)
        if overlay is None:
            raise NotFoundError(f"no scratch/{name}")
        if overlay.opens > 0:
            # Its handles keep working on the (unlinked) copies until they are released.
            overlay.removed = True
            self.detached.append(overlay)
            _unlink(overlay)
            return
        self._by_key.pop(overlay.key, None)
        _close(overlay)

    def opened(self, overlay: Overlay) -> None:
        """A file handle of ``overlay`` was opened."""
        overlay.opens += 1

    def released(self, overlay: Overlay) -> None:
        """A file handle of ``overlay`` was released: a removed overlay goes at its last."""
        overlay.opens -= 1
        if overlay.removed and overlay.opens <= 0:
            if overlay in self.detached:
                self.detached.remove(overlay)
            self._by_key.pop(overlay.key, None)
            _close(overlay)

    def close(self) -> None:
        """Discard every overlay (unmount)."""
        for overlay in [*self.overlays.values(), *self.detached]:
            _close(overlay)
        self.overlays.clear()
        self.detached.clear()
        self._by_key.clear()
        shutil.rmtree(self.root, ignore_errors=True)

    async def read(self, overlay: Overlay, offset: int, length: int) -> bytes:
        end = min(offset + length, overlay.size)
        out = bytearray()
        pos = offset
        while pos < end:
            index, within = divmod(pos, BLOCK_SIZE)
            n = min(end - pos, BLOCK_SIZE - within)
            if index in overlay.copied:
                out += os.pread(overlay.fd, n, pos).ljust(n, b"\0")
            else:
                out += await self._base(overlay, pos, n)
            pos += n
        return bytes(out)

    async def write(self, overlay: Overlay, offset: int, data: bytes) -> int:
        if not overlay.snapshot_id:
            raise InvalidValueError(
                f"scratch/{overlay.name}: set {XATTR_BASE} (snap-ID or snap-ID/N) first"
            )
        if offset + len(data) > overlay.size:
            raise NoSpaceError(f"scratch/{overlay.name}: a write past its end ({overlay.size})")
        first, last = offset // BLOCK_SIZE, (offset + len(data) - 1) // BLOCK_SIZE
        missing = [i for i in range(first, last + 1) if i not in overlay.copied]
        if self.used + len(missing) * BLOCK_SIZE > self.limit:
            raise ScratchFullError(
                f"scratch/{overlay.name}: the mount's scratch limit ({self.limit} bytes) is "
                "used up; rm an overlay or mount with a larger --scratch-limit"
            )
        for index in missing:
            start = index * BLOCK_SIZE
            n = min(BLOCK_SIZE, overlay.size - start)
            block = await self._base(overlay, start, n)
            if index in overlay.copied:
                # Another write copied it while the base was read, and may have written into
                # it since: the base must not go over that.
                continue
            if any(block):  # zeros stay a hole in the sparse file
                _pwrite_all(overlay.fd, block, start)
            overlay.copied.add(index)
        _pwrite_all(overlay.fd, data, offset)
        return len(data)

    async def keep(self, overlay: Overlay, value: bytes, newdir: NewDirectory) -> None:
        """``user.ebsfs.keep=NAME``: write the overlay's changes into ``new/NAME``, a child of
        its base snapshot, ready to be sealed."""
        name = keep_name(value)
        if not overlay.snapshot_id:
            raise InvalidValueError(f"scratch/{overlay.name}: nothing to keep, no base set")
        if not overlay.copied:  # the child could never be sealed: nothing written to it
            raise InvalidValueError(f"scratch/{overlay.name}: nothing changed, nothing to keep")
        if newdir.get(name) is not None:
            raise InvalidValueError(f"{XATTR_KEEP}: {name!r} is not a free name in new/")
        # Held as an open file is: an rm meanwhile leaves its copies until the keep is done.
        self.opened(overlay)
        try:
            await self._keep(overlay, name, newdir)
        finally:
            self.released(overlay)

    async def _keep(self, overlay: Overlay, name: str, newdir: NewDirectory) -> None:
        draft = await newdir.create(name, kept_from=f"scratch/{overlay.name}")
        try:
            await draft.setxattr("user.ebsfs.parent", overlay.snapshot_id.encode())
            for index in sorted(overlay.copied):
                start = index * BLOCK_SIZE
                length = min(BLOCK_SIZE, overlay.size - start)
                block = os.pread(overlay.fd, length, start).ljust(length, b"\0")
                await draft.write(overlay.offset + start, block)
        except BaseException:
            # A child holding some of the changes would seal into a disk never written: none.
            with trio.CancelScope(shield=True):
                try:
                    await draft.release()
                    await newdir.remove(name)
                except Exception as exc:  # the first error is the answer
                    log.warning("scratch/%s: new/%s not removed: %s", overlay.name, name, exc)
            raise
        draft.kept()
        await draft.release()
        log.info(
            "scratch/%s: %d changed blocks written to new/%s (a child of %s)",
            overlay.name,
            len(overlay.copied),
            name,
            overlay.snapshot_id,
        )

    def xattrs(self, overlay: Overlay) -> dict[str, bytes]:
        return {
            XATTR_BASE: overlay.base.encode(),
            XATTR_USED: str(len(overlay.copied) * BLOCK_SIZE).encode(),
        }

    async def _base(self, overlay: Overlay, offset: int, length: int) -> bytes:
        data = await self.read_disk(overlay.snapshot_id, overlay.offset + offset, length)
        return bytes(data).ljust(length, b"\0")


def keep_name(value: bytes) -> str:
    """The draft name a ``user.ebsfs.keep`` value asks for (InvalidValueError if none)."""
    try:
        name = value.decode().strip()
    except UnicodeDecodeError:
        raise InvalidValueError(f"{XATTR_KEEP}: {value!r} is not UTF-8 text") from None
    if not _NAME.fullmatch(name) or name in (".", ".."):
        raise InvalidValueError(f"{XATTR_KEEP}: {name!r} cannot name a file in new/")
    return name


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.pwrite(fd, view, offset)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise NoSpaceError(f"scratch: the spool's disk is full ({exc.strerror})") from None
            raise
        view, offset = view[n:], offset + n


def _close(overlay: Overlay) -> None:
    if overlay.fd >= 0:
        os.close(overlay.fd)
        overlay.fd = -1
    _unlink(overlay)


def _unlink(overlay: Overlay) -> None:
    try:
        overlay.path.unlink()
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            log.warning("scratch/%s: cannot remove %s: %s", overlay.name, overlay.path, exc)
