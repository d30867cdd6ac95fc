"""``ebsfs umount MOUNTPOINT``: flush what the mount buffers, then unmount."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import time

from ebsfs.errors import MountError
from ebsfs.fs.ops import PID_XATTR

EPILOG = """\
examples:
  ebsfs umount /mnt/snapshots
  ebsfs umount --timeout 60 /mnt/snapshots

The daemon is asked to stop (SIGTERM to the pid in the root's user.ebsfs.pid attribute): it
flushes new/ and unmounts; the command returns when the mount point is free. A mount whose
daemon died ("Transport endpoint is not connected") is unmounted directly.
Exit codes: 0 unmounted, 6 not an ebsfs mount, or it did not go within --timeout.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``umount`` sub-command."""
    p = subparsers.add_parser(
        "umount",
        help="flush and unmount",
        description="Flush what a mount buffers, then unmount it.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="give up waiting for the flush after this long (default: 600)",
    )
    p.set_defaults(func=run)


def _daemon_pid(mountpoint: str) -> int | None:
    try:
        return int(os.getxattr(mountpoint, PID_XATTR))
    except OSError:
        return None
    except ValueError:
        return None


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie waiting for its parent does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _lazy_unmount(mountpoint: str) -> None:
    for cmd in (["fusermount3", "-u", "-z", mountpoint], ["umount", "-l", mountpoint]):
        with contextlib.suppress(OSError):
            if subprocess.run(cmd, capture_output=True).returncode == 0:
                return
    raise MountError(f"could not unmount {mountpoint}")


def unmount(mountpoint: str, timeout: float = 600.0) -> None:
    """Stop the daemon of ``mountpoint`` and wait until the mount is gone."""
    mountpoint = os.path.abspath(mountpoint)
    try:
        os.stat(mountpoint)
    except FileNotFoundError:
        raise MountError(f"{mountpoint} does not exist") from None
    except OSError:
        _lazy_unmount(mountpoint)  # the daemon is gone: nothing to flush
        return
    if not os.path.ismount(mountpoint):
        raise MountError(f"{mountpoint} is not mounted")
    pid = _daemon_pid(mountpoint)
    if pid is None:
        raise MountError(f"{mountpoint} is not an ebsfs mount")
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        _lazy_unmount(mountpoint)
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not os.path.ismount(mountpoint):
            # The mount is gone; let the daemon finish exiting too.
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.05)
            return
        time.sleep(0.05)
    raise MountError(f"{mountpoint} still mounted after {timeout:.0f}s (daemon pid {pid})")


def run(args: argparse.Namespace) -> int:
    unmount(args.mountpoint, args.timeout)
    return 0
