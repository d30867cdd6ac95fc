"""``ebsfs umount MOUNTPOINT``: flush what the mount buffers, then unmount."""

from __future__ import annotations

import argparse
import errno
import os
import signal
import subprocess
import time

from ebsfs.cli import positive_seconds
from ebsfs.core.blocks import PID_XATTR
from ebsfs.core.errors import MountError
from ebsfs.daemon import mounttable
from ebsfs.daemon.mounttable import MountEntry

EPILOG = """\
examples:
  ebsfs umount /mnt/snapshots
  ebsfs umount --timeout 60 /mnt/snapshots

MOUNTPOINT must be exactly the mount point of an ebsfs (fuse.ebsfs) mount. As umount(8), it
refuses while the mount is busy (a process with a file or its directory in it, a loop
device backed by one of its files, a mount inside it), and names what holds it; --lazy
detaches it anyway. Otherwise the daemon is asked to stop (SIGTERM to the pid in the root's
user.ebsfs.pid attribute, once that pid is checked to be an ebsfs daemon): it flushes new/
and unmounts; the command returns once the mount is gone from the mount table and the daemon
has exited. A mount whose daemon died ("Transport endpoint is not connected") is unmounted
directly.
Exit codes: 0 unmounted, 6 not an ebsfs mount, busy, or it did not go within --timeout.
"""

#: Once the daemon has exited, how long its mount may take to leave the table.
GONE_GRACE = 5.0
#: How long a busy mount may take to become free before the command refuses.
BUSY_GRACE = 2.0
POLL = 0.05
#: Rounds of unmount commands for a mount whose daemon is gone, and the pause between.
DEAD_ROUNDS = 3
DEAD_PAUSE = 1.0


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
        type=positive_seconds,
        default=600.0,
        metavar="SECONDS",
        help="give up waiting for the flush after this long (default: 600)",
    )
    p.add_argument(
        "--lazy",
        action="store_true",
        help="unmount even while busy: what holds the mount then gets I/O errors (umount -l)",
    )
    p.set_defaults(func=run)


def _refuse_if_busy(mountpoint: str, entry: MountEntry, daemon: int | None) -> None:
    exclude = {os.getpid()} | ({daemon} if daemon else set())
    held = mounttable.holders(mountpoint, entry, exclude)
    # A loop device whose file system was just unmounted lets go a moment later (the kernel
    # detaches an autoclear loop device asynchronously): look again for a short while.
    grace = time.monotonic() + BUSY_GRACE
    while held and time.monotonic() < grace:
        time.sleep(0.1)
        held = mounttable.holders(mountpoint, entry, exclude)
    if held:
        raise MountError(
            f"{mountpoint} is busy, held by: {'; '.join(held[:5])}"
            + (f" (and {len(held) - 5} more)" if len(held) > 5 else "")
            + "; stop them, or use --lazy"
        )


def _in_table(entry: MountEntry) -> bool:
    return any(mounttable.same_mount(e, entry) for e in mounttable.mount_table())


def _detach(mountpoint: str, entry: MountEntry) -> None:
    for cmd in (["umount", "-l", mountpoint], ["fusermount3", "-u", "-z", mountpoint]):
        try:
            subprocess.run(cmd, capture_output=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if not _in_table(entry):
            return
    raise MountError(f"could not detach {mountpoint} (umount -l failed)")


def _unmount_dead(mountpoint: str, entry: MountEntry, lazy: bool) -> None:
    """Unmount a mount whose daemon is gone (nothing left to flush)."""
    if not lazy:
        _refuse_if_busy(mountpoint, entry, None)
    commands = (
        [["fusermount3", "-u", "-z", mountpoint], ["umount", "-l", mountpoint]]
        if lazy
        # Last, a detach: nothing holds the mount (refused above otherwise, and never after
        # an unmount said busy) and no daemon serves it, so nothing can lose data by it.
        else [
            ["umount", mountpoint],
            ["fusermount3", "-u", mountpoint],
            ["umount", "-l", mountpoint],
        ]
    )
    errors: list[str] = []
    busy = False
    for attempt in range(DEAD_ROUNDS):
        if attempt:
            time.sleep(DEAD_PAUSE)  # a mount seen half torn down (EINVAL) may be gone soon
        for cmd in commands:
            if busy and "-l" in cmd:
                continue
            # What matters is that the mount left the table, whoever took it out: the exited
            # daemon's own unmount may still be at work, and a second one then fails.
            if not _in_table(entry):
                return
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
            except (OSError, subprocess.TimeoutExpired) as exc:
                errors.append(f"{cmd[0]}: {exc}")
                continue
            if done.returncode == 0 and not _in_table(entry):
                return
            said = done.stderr.strip().splitlines()
            errors.append(said[-1] if said else f"{cmd[0]} exited {done.returncode}")
            if not lazy and "busy" in done.stderr:
                # Held after all (by what the scan above cannot see: a process that came in
                # since, one out of this /proc's sight, or another unmount of it at work):
                # never detached; the next rounds only try again without.
                busy = True
                break
    if not _in_table(entry):
        return
    if busy:
        raise MountError(f"{mountpoint} is busy ({errors[-1]}); stop what holds it, or use --lazy")
    raise MountError(f"could not unmount {mountpoint}: {'; '.join(errors[-len(commands) :])}")


def unmount(mountpoint: str, timeout: float = 600.0, lazy: bool = False) -> None:
    """Stop the daemon of ``mountpoint`` and wait until the mount is gone and it exited."""
    deadline = time.monotonic() + timeout
    mountpoint, entry = mounttable.ebsfs_mount(mountpoint)
    try:
        raw = mounttable.bounded_getxattr(
            mountpoint, PID_XATTR, min(mounttable.XATTR_TIMEOUT, max(timeout, 1.0))
        )
    except TimeoutError:
        raise MountError(
            f"{mountpoint} does not answer (its daemon hangs?); "
            f"detach it with: fusermount3 -uz {mountpoint}"
        ) from None
    except OSError as exc:
        if exc.errno in (errno.ENOTCONN, errno.ECONNABORTED, errno.ENODEV):
            _unmount_dead(mountpoint, entry, lazy)  # the daemon is gone: nothing to flush
            return
        if not _in_table(entry):
            return  # unmounted meanwhile (another ebsfs umount of it): what was asked holds
        raise MountError(
            f"{mountpoint} is not an ebsfs mount (no daemon pid: {exc.strerror})"
        ) from None
    pid = mounttable.daemon_pid(mountpoint, entry, raw)
    if lazy:
        # Detached first: the daemon, which does not stop while its mount is busy, then
        # finds nothing mounted, flushes and exits; what held the mount gets I/O errors.
        _detach(mountpoint, entry)
    else:
        _refuse_if_busy(mountpoint, entry, pid)
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        _unmount_dead(mountpoint, entry, lazy)
        return
    _wait_gone(mountpoint, entry, pid, deadline, lazy)
    if _in_table(entry) or mounttable.alive(pid):
        raise _timeout_error(mountpoint, entry, pid, timeout)


def _timeout_error(mountpoint: str, entry: MountEntry, pid: int, timeout: float) -> MountError:
    state = "still mounted" if _in_table(entry) else "unmounted, but its daemon still runs"
    return MountError(f"{mountpoint} {state} after {timeout:.0f}s (daemon pid {pid}); see its log")


def _wait_gone(mountpoint: str, entry: MountEntry, pid: int, deadline: float, lazy: bool) -> None:
    # The daemon closes its FUSE connection before it unmounts: in between, a stat of the
    # mount point fails as if it were gone. Only the mount table (and the daemon's exit) say
    # that it is.
    exited_at: float | None = None
    while time.monotonic() < deadline:
        mounted = _in_table(entry)
        running = mounttable.alive(pid)
        if not mounted and not running:
            return
        if not running:
            exited_at = exited_at or time.monotonic()
            if time.monotonic() - exited_at > GONE_GRACE:
                # The daemon exited and left its mount behind (it crashed while stopping).
                _unmount_dead(mountpoint, entry, lazy)
                return
        time.sleep(POLL)


def run(args: argparse.Namespace) -> int:
    unmount(args.mountpoint, args.timeout, lazy=args.lazy)
    return 0
