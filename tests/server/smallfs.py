"""A small loop-mounted ext4 filesystem for tests that need a disk to fill up."""

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

FILLER = "filler"


class SmallFs:
    """An ext4 image of ``size_mib`` MiB mounted at ``mountpoint`` (no blocks reserved)."""

    def __init__(self, root: Path, size_mib: int = 32) -> None:
        self.image = root / "small.img"
        self.mountpoint = root / "mnt"
        self.size_mib = size_mib

    @contextlib.contextmanager
    def mounted(self) -> Iterator["SmallFs"]:
        self.mountpoint.mkdir(exist_ok=True)
        with open(self.image, "wb") as f:
            f.truncate(self.size_mib << 20)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(self.image)],
                       check=True, timeout=60, capture_output=True)
        subprocess.run(["mount", "-o", "loop", str(self.image), str(self.mountpoint)],
                       check=True, timeout=60, capture_output=True)
        try:
            yield self
        finally:
            if subprocess.run(["umount", str(self.mountpoint)], timeout=60,
                              capture_output=True).returncode:
                subprocess.run(["umount", "-l", str(self.mountpoint)], timeout=60,
                               capture_output=True)

    def free_bytes(self) -> int:
        st = os.statvfs(self.mountpoint)
        return st.f_bavail * st.f_frsize

    def fill(self, leave: int = 0) -> None:
        """Write a filler file until no more than ``leave`` bytes are free (0: full). Not
        synced: the filesystem reserves the space of written data at once."""
        fd = os.open(self.mountpoint / FILLER, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for size in (1 << 20, 4096):
                chunk = b"\xa5" * size
                while self.free_bytes() - size >= leave:
                    try:
                        os.write(fd, chunk)
                    except OSError as exc:
                        if exc.errno != errno.ENOSPC:
                            raise
                        break
        finally:
            os.close(fd)

    def unfill(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.mountpoint / FILLER).unlink()
