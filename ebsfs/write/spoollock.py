"""The lock of a spool root: one mount daemon per spool (docs/operations.md)."""

from __future__ import annotations

import fcntl
import logging
import os
import stat
from pathlib import Path

from ebsfs.core.errors import MountError

log = logging.getLogger(__name__)

#: The lock file of a spool root: held (``flock``) by the one mount that uses the root, and
#: naming it (pid and mount point) for a mount that is refused.
LOCK = "lock"


class SpoolLock:
    """The exclusive lock of a spool root, held by one mount daemon for its whole life.

    An ``flock`` on ``ROOT/lock``, whose text names the holder. The lock belongs to the open
    file (not to a process, as ``lockf`` locks do): a child that inherited or closes the
    descriptor neither takes nor drops it, so the upload process (forked before, and closing
    every descriptor of the mount) cannot release it, and the daemon never loses it by
    opening the file again. The descriptor is close-on-exec; when the daemon ends, even by
    ``kill -9``, the kernel closes it and the lock is free.
    """

    def __init__(self, root: Path, fd: int) -> None:
        self.root = root
        self._fd = fd

    @classmethod
    def acquire(cls, root: Path, holder: str) -> SpoolLock:
        """Lock ``root`` (created if need be) for the mount at ``holder``; MountError (exit 6)
        naming the holder if another mount has it."""
        try:
            root.mkdir(mode=0o700, parents=True, exist_ok=True)
            _check_owner(root)
            flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
            fd = os.open(root / LOCK, flags, 0o600)
        except OSError as exc:
            raise MountError(f"spool {root}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                text = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
            finally:
                os.close(fd)
            raise MountError(
                f"spool {root} is in use by {_holder(text)}; give each mount its own "
                "--spool-dir"
            ) from None
        except OSError as exc:
            os.close(fd)
            raise MountError(f"spool {root}: cannot lock {LOCK}: {exc.strerror}") from None
        line = f"pid={os.getpid()} mountpoint={holder}\n".encode()
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, line, 0)
        except OSError as exc:  # only the name of the holder is lost; the lock holds
            log.warning("spool %s: cannot write %s: %s", root, LOCK, exc.strerror)
        return cls(root, fd)

    def release(self) -> None:
        """Free the lock (the daemon's end does it too)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _check_owner(root: Path) -> None:
    """Refuse a spool another user could change: the daemon (often root) creates, truncates
    and reads files there, and whoever may rename entries in it could swap in symlinks."""
    link = os.lstat(root)
    if stat.S_ISLNK(link.st_mode) and link.st_uid != os.geteuid():
        # Whoever made it chose the directory the daemon works in (as fs.protected_symlinks).
        raise MountError(
            f"spool {root} is a symlink of uid {link.st_uid}, not of this mount's user "
            f"(uid {os.geteuid()}); give the directory itself"
        )
    real = Path(os.path.realpath(root))
    for above in real.parents:
        up = os.stat(above)
        if up.st_uid not in (0, os.geteuid()):
            raise MountError(
                f"spool {root}: {above} belongs to uid {up.st_uid}, who could move the spool "
                "away and put their own in its place; use a directory under one of root's "
                "or the mount user's"
            )
        if up.st_mode & 0o002 and not up.st_mode & stat.S_ISVTX:
            raise MountError(
                f"spool {root}: {above} is writable by everyone (and not sticky); use a "
                "directory under one that is not"
            )
    st = os.stat(root)
    if st.st_uid != os.geteuid():
        raise MountError(
            f"spool {root} belongs to uid {st.st_uid}, not to this mount's user "
            f"(uid {os.geteuid()}); use a directory of its own"
        )
    if st.st_mode & 0o022:
        raise MountError(
            f"spool {root} is writable by others (mode {st.st_mode & 0o7777:o}); "
            f"chmod go-w it, or use a directory of the mount's own"
        )


def _holder(text: str) -> str:
    """``pid=1 mountpoint=/mnt/x`` as words: "the mount of /mnt/x (pid 1)"."""
    fields = dict(part.partition("=")[::2] for part in text.split(" ", 1) if "=" in part)
    mountpoint, pid = fields.get("mountpoint"), fields.get("pid")
    if mountpoint and pid:
        return f"the mount of {mountpoint} (pid {pid})"
    return "another mount"
