"""``ebsfs complete PATH``: seal a snapshot written through a mount and wait for ``completed``.

It talks only to the mount, through the filesystem: ``chmod a-w PATH`` asks the daemon to seal
(flush, CompleteSnapshot), then the ``user.ebsfs.state``, ``user.ebsfs.progress`` and
``user.ebsfs.state_message`` attributes of PATH are polled until the file leaves ``new/``
(completed) or its state says it failed.
"""

from __future__ import annotations

import argparse
import errno
import os
import stat
import sys
import time

from ebsfs.cli import positive_seconds
from ebsfs.core.blocks import XATTR_PREFIX
from ebsfs.core.errors import (
    BackendUnavailableError,
    EbsfsError,
    MountError,
    NotFoundError,
    NotPermittedError,
    SnapshotFailedError,
    UsageError,
)
from ebsfs.daemon import mounttable

POLL = 0.1

EPILOG = """\
examples:
  ebsfs complete /mnt/ebs/new/backup          seal, wait, print the snapshot id
  chmod a-w /mnt/ebs/new/backup               the same, without waiting
  ebsfs complete --timeout 60 /mnt/ebs/new/x  give up waiting after a minute

PATH is a file under MOUNTPOINT/new/. The command is the same as `chmod a-w PATH` followed by
waiting: the daemon stores what is still dirty, calls CompleteSnapshot and polls AWS until the
snapshot is completed; the file then leaves new/ and shows as MOUNTPOINT/snap-ID. The snapshot
id is printed on stdout; on a terminal, progress is shown on stderr. Running it again on a file
that is being sealed just waits. If AWS moves the snapshot to `error`, the data stays in the
mount's spool and `ebsfs complete PATH` (or chmod a-w) again stores it into a new snapshot.
A completed snapshot (MOUNTPOINT/snap-ID or by-name/NAME) is already done: its id is printed
and the exit code is 0, so a script may run it again safely.
Exit codes: 0 completed; 7 AWS failed the snapshot (its StateMessage is printed); 3 no such
file; 1 the file cannot be sealed (nothing written: EINVAL; already sealed: EPERM), or sealing
stopped with the snapshot still pending (the reason is printed; run it again to resume);
5 timed out.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``complete`` sub-command."""
    p = subparsers.add_parser(
        "complete",
        help="seal a snapshot written through a mount and wait until it is completed",
        description="Seal a pending snapshot written under MOUNTPOINT/new/ and wait until "
        "AWS reports it completed.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("path", metavar="PATH")
    p.add_argument(
        "--timeout",
        type=positive_seconds,
        default=3 * 3600.0,
        metavar="SECONDS",
        help="stop waiting after this long (default: 10800; sealing goes on in the mount)",
    )
    p.set_defaults(func=run)


def _attr(path: str, key: str) -> str:
    try:
        return os.getxattr(path, XATTR_PREFIX + key).decode("utf-8", "replace")
    except OSError as exc:
        if exc.errno in (errno.ENODATA, getattr(errno, "ENOATTR", errno.ENODATA)):
            return ""
        raise


#: How long a snapshot that left new/ may take to show as MOUNTPOINT/snap-ID: the mount
#: looks it up first, and with --snapshot it waits until AWS lets it be read (reads of a
#: snapshot completed moments ago are refused for up to about a minute).
SHOW_WAIT = 120.0


def _shown(mountpoint: str, snapshot_id: str, timeout: float) -> bool:
    """Whether ``snapshot_id`` shows at the top of the mount, waiting for it a while."""
    deadline = time.monotonic() + min(timeout, SHOW_WAIT)
    entry = os.path.join(mountpoint, snapshot_id)
    while not os.path.exists(entry):
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL)
    return True


def _seal(path: str) -> None:
    mode = stat.S_IMODE(os.stat(path).st_mode)
    try:
        os.chmod(path, mode & ~0o222)
    except OSError as exc:
        why = {
            errno.EINVAL: "nothing was written to it",
            errno.EPERM: "it is already sealed",
            errno.EROFS: "it is not a snapshot being written",
        }.get(exc.errno or 0, exc.strerror or str(exc))
        raise NotPermittedError(f"cannot seal {path}: {why}") from None


def run(args: argparse.Namespace) -> int:
    path = os.path.abspath(args.path)
    under = os.path.basename(os.path.dirname(path))
    # MOUNTPOINT/new/NAME and MOUNTPOINT/by-name/NAME, or MOUNTPOINT/snap-ID.
    mountpoint = os.path.dirname(os.path.dirname(path) if under in ("new", "by-name") else path)
    try:
        # Its attributes (and the chmod that seals) mean something only on an ebsfs mount;
        # a missing file is reported as such below.
        if os.path.lexists(path):
            mounttable.ebsfs_mount(mountpoint)
    except MountError:
        raise UsageError(f"{path} is not a file of an ebsfs mount") from None
    tty = sys.stderr.isatty()
    state = snapshot_id = ""
    deadline = time.monotonic() + args.timeout
    try:
        state = _attr(path, "state")
        if not state:
            raise UsageError(f"{path} is not a file of an ebsfs mount")
        if under != "new":
            if state == "completed":
                # Nothing to do, which is what a script running it again wants to hear.
                print(_attr(path, "snapshot_id"))
                return 0
            raise UsageError(f"{path} is not a snapshot being written (not under new/)")
        if state != "sealing":
            _seal(path)
        snapshot_id = _attr(path, "snapshot_id")
        shown = ""
        while True:
            state = _attr(path, "state")
            snapshot_id = _attr(path, "snapshot_id") or snapshot_id
            if state == "sealing":
                progress = _attr(path, "progress")
                if tty and progress != shown:
                    print(f"\r\033[K{os.path.basename(path)} {snapshot_id}: {progress}",
                          end="", file=sys.stderr, flush=True)
                    shown = progress
                if time.monotonic() > deadline:
                    raise BackendUnavailableError(
                        f"{path}: still sealing after {args.timeout:.0f} s (it goes on)"
                    )
                time.sleep(POLL)
                continue
            if state == "completed":
                break
            message = _attr(path, "state_message") or f"the snapshot is {state}"
            if state == "error":
                raise SnapshotFailedError(f"{snapshot_id or path}: {message}")
            # Sealing stopped with the snapshot still pending (the endpoint, a refused
            # call): not AWS failing it (7); sealing again resumes.
            raise EbsfsError(f"{snapshot_id or path}: {message}")
    except FileNotFoundError:
        # The file left new/: the snapshot completed (or was removed, which the check says).
        if not snapshot_id and state == "":
            raise NotFoundError(f"{path} does not exist") from None
        if tty:
            print("\r\033[K", end="", file=sys.stderr, flush=True)
        left = max(10.0, deadline - time.monotonic())  # a moment even at the timeout
        if not snapshot_id or not _shown(mountpoint, snapshot_id, left):
            raise NotFoundError(f"{path} disappeared before it was completed") from None
        print(snapshot_id)
        return 0
    except EbsfsError:
        if tty:
            print(file=sys.stderr)
        raise
    except OSError as exc:
        raise EbsfsError(f"{path}: {exc.strerror or exc}") from None
    if tty:
        print("\r\033[K", end="", file=sys.stderr, flush=True)
    print(snapshot_id)
    return 0
