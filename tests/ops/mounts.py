"""Small helpers for the operations tests: run ebsfs, mount it, always unmount."""

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from ebsfs.daemon import mounttable
from tests import mounting
from tests.serverproc import LocalServer

BIN = Path(sys.executable).parent


def ebsfs_env(server: LocalServer, tmp_path: Path, **extra: str) -> dict[str, str]:
    """The server's environment, ebsfs on PATH, no machine configuration, a private spool."""
    env = server.env()
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}",
        EBSFS_CONFIG="/dev/null",
        EBSFS_SPOOL_DIR=str(tmp_path / "spool"),
        EBSFS_MAX_ATTEMPTS="2",
    )
    env.update(extra)
    return env


def ebsfs(
    *argv: str, env: dict[str, str], timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """``python -m ebsfs ARGV``; AssertionError if it fails, unless ``check`` is False."""
    return mounting.ebsfs(*argv, env=env, timeout=timeout, check=check)


def in_mount_table(path: Path) -> bool:
    """True while ``path`` is mounted, even when its daemon died (os.path.ismount says False
    then: its stat fails with ENOTCONN); names with spaces or newlines included."""
    return any(e.mountpoint == str(path) for e in mounttable.mount_table())


def detach(mountpoint: Path, timeout: float = 10) -> None:
    """A lazy fusermount if ``mountpoint`` is still mounted; waits (a while) until it is gone."""
    if in_mount_table(mountpoint):
        subprocess.run(["fusermount3", "-uz", str(mountpoint)], capture_output=True, timeout=30)
    mounting.wait_for(lambda: not in_mount_table(mountpoint), timeout, every=0.1)


def unmount(mountpoint: Path, env: dict[str, str]) -> None:
    """``ebsfs umount``, falling back to a lazy fusermount; waits until it is gone."""
    if not in_mount_table(mountpoint):
        return
    if os.path.ismount(mountpoint):
        ebsfs("umount", str(mountpoint), env=env, check=False, timeout=120)
    detach(mountpoint)


@contextlib.contextmanager
def mounted(mountpoint: Path, *args: str, env: dict[str, str]) -> Iterator[Path]:
    """``ebsfs mount MOUNTPOINT ARGS`` (returns once it answers), unmounted afterwards."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    try:
        ebsfs("mount", str(mountpoint), *args, env=env)
        assert os.path.ismount(mountpoint)
        yield mountpoint
    finally:
        unmount(mountpoint, env)
