"""Building images and checking completed snapshots from outside ebsfs (plain boto3, the
kernel's loop driver, e2fsck)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
from collections.abc import Iterator
from pathlib import Path

from tests.mounting import ebsfs
from tests.serverproc import LocalServer, download_image

MIB = 1 << 20


def sh(*cmd: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command, failing with its output."""
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} exited {done.returncode}: "
                             f"{done.stdout}{done.stderr}")
    return done


def make_tree(root: Path, files: int = 20, big: int = 2 * MIB) -> Path:
    """A directory of small random files and one bigger one."""
    root.mkdir(parents=True, exist_ok=True)
    sub = root / "sub"
    sub.mkdir(exist_ok=True)
    for i in range(files):
        (sub / f"f{i:04d}.bin").write_bytes(os.urandom(100 + 37 * i))
    (root / "big.bin").write_bytes(os.urandom(big))
    (root / "hello.txt").write_text("hello from ebsfs\n")
    return root


def make_ext4(path: Path, size_mib: int, tree: Path) -> Path:
    """An ext4 image of ``size_mib`` MiB holding ``tree`` (mkfs.ext4 -d, no mount needed)."""
    sh("mkfs.ext4", "-q", "-F", "-d", tree, path, f"{size_mib}M")
    return path


def seal(path: Path, server: LocalServer) -> str:
    """``ebsfs complete PATH``; returns the snapshot id it prints."""
    done = ebsfs("complete", str(path), env=server.env(), timeout=300)
    assert done.returncode == 0, f"ebsfs complete exited {done.returncode}: {done.stderr}"
    return done.stdout.strip()


def download(server: LocalServer, snapshot_id: str, length: int) -> bytes:
    """The first ``length`` bytes of a completed snapshot, read with plain boto3."""
    data = download_image(server.ebs(max_attempts=10), snapshot_id, length=length)
    assert data is not None
    return data


@contextlib.contextmanager
def loop_mounted(image: Path, where: Path) -> Iterator[Path]:
    """``mount -o loop,ro image where``; unmounted afterwards."""
    where.mkdir(parents=True, exist_ok=True)
    sh("mount", "-o", "loop,ro", image, where)
    try:
        yield where
    finally:
        sh("umount", where, check=False)


def check_filesystem(image: Path, tree: Path, where: Path) -> None:
    """e2fsck -fn is clean, and a read-only loop mount shows exactly ``tree``."""
    fsck = sh("e2fsck", "-fn", image, check=False)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    with loop_mounted(image, where) as mnt:
        sh("diff", "-r", "--exclude=lost+found", tree, mnt)


def complete_on_a_terminal(
    target: Path, env: dict[str, str], columns: int | None = None
) -> tuple[subprocess.Popen[str], str, bytes]:
    """``ebsfs complete TARGET`` with its stderr on a pseudo-terminal (``columns`` wide, if
    given): the process, its stdout and everything the terminal was shown."""
    master, slave = pty.openpty()
    if columns is not None:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ebsfs", "complete", str(target)], env=env,
            stdout=subprocess.PIPE, stderr=slave, text=True,
        )
        os.close(slave)
        out, _ = proc.communicate(timeout=240)
        shown = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the terminal's other side is closed
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(master)
    return proc, out, shown


class Clock:
    """A clock the test sets (``now``) for the progress arithmetic."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now
