"""What the write package offers the FUSE layer for ``new/``: drafts of new snapshots.

``ebsfs.fs.ops`` routes every request on ``new/`` and its files to these, and knows nothing of
spools, write-back or sealing. Methods raise ``ebsfs.core.errors`` exceptions; the FUSE edge
maps them to errno. ``drafts.Drafts`` implements ``NewDirectory``; ``NoDrafts`` is a
read-only mount's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from ebsfs.core.errors import NotFoundError, ReadOnlyError


class Draft(Protocol):
    """A file in ``new/``: a snapshot being written (a draft until StartSnapshot, then pending)."""

    name: str

    def size(self) -> int:
        """The file size reported by getattr (declared, inherited or highest write so far)."""
        ...

    def mode(self) -> int:
        """Permission bits: 0o600 while writable, 0o400 once sealing has begun."""
        ...

    def mtime_ns(self) -> int:
        """Time of the last change, in nanoseconds since the epoch."""
        ...

    async def read(self, offset: int, length: int) -> bytes:
        """What was written, then the parent's data, then zeros (short only at end of file)."""
        ...

    async def write(self, offset: int, data: bytes) -> int:
        """Accept a write (EFBIG past the fixed size); returns the bytes taken."""
        ...

    async def truncate(self, size: int) -> None:
        """Declare or grow the size (truncate/fallocate); shrinking a started one is EPERM."""
        ...

    async def fsync(self) -> None:
        """Return once everything written before the call is stored (PutSnapshotBlock)."""
        ...

    async def release(self) -> None:
        """The last open handle closed: fixes the size if it was taken from the data."""
        ...

    def xattrs(self) -> dict[str, bytes]:
        """The ``user.ebsfs.*`` attributes to show."""
        ...

    async def setxattr(self, name: str, value: bytes) -> None:
        """Shape StartSnapshot before the first write (EINVAL on a bad value)."""
        ...

    async def seal(self) -> None:
        """Begin sealing (``chmod a-w``): flush, CompleteSnapshot; completion is reported later."""
        ...

    def kept(self) -> None:
        """The keep that creates it (``create(kept_from=...)``) wrote all it had to."""
        ...


class NewDirectory(Protocol):
    """The drafts under ``new/``."""

    def names(self) -> list[str]:
        """Current draft names, for readdir."""
        ...

    def get(self, name: str) -> Draft | None:
        """The draft called ``name``, or None."""
        ...

    async def create(self, name: str, *, kept_from: str = "") -> Draft:
        """A new, empty draft (EEXIST-style errors as ``ebsfs.core.errors``). ``kept_from``: a keep
        of that scratch overlay writes it; until ``Draft.kept`` no snapshot is started, and a
        restart finds it unfinished and discards it."""
        ...

    async def remove(self, name: str) -> None:
        """Abandon a draft or pending snapshot (DeleteSnapshot when it was started)."""
        ...

    def on_completed(self, callback: Callable[[str, str], None]) -> None:
        """Register ``callback(name, snapshot_id)``, called when a sealed draft completes, so
        the namespace can show it at the top level and under ``by-name/``."""
        ...

    def stats(self) -> dict[str, int]:
        """Counters of the write path, for ``ebsfs stats`` (none by default)."""
        return {}

    async def close(self) -> None:
        """Before an unmount: store what is dirty, bounded in time (nothing by default)."""
        return None


class NoDrafts(NewDirectory):
    """A ``new/`` with no drafts that refuses to make any (a read-only mount)."""

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
