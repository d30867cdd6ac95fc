"""``ebsfs complete PATH``: seal a snapshot written through a mount and wait for ``completed``.

It talks only to the mount: ``chmod a-w PATH`` asks the daemon to seal, then PATH's
``user.ebsfs.*`` attributes are polled until the file leaves ``new/`` or its state says it
failed; progress is shown as progress.py says (docs/usage.md, "Sealing")."""

from __future__ import annotations

import argparse
import errno
import os
import stat
import sys
import time

from ebsfs.cli import positive_seconds
from ebsfs.commands import progress
from ebsfs.commands.stats import read_stats
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
#: Seconds between two reads of the mount's counters (for the throttled share).
STATS_EVERY = 1.0

EPILOG = """\
examples:
  ebsfs complete /mnt/ebs/new/backup          seal, wait, print the snapshot id
  chmod a-w /mnt/ebs/new/backup               the same, without waiting
  ebsfs complete --timeout 60 /mnt/ebs/new/x  give up waiting after a minute
  ebsfs complete --json /mnt/ebs/new/x        progress as JSON events, one a line

PATH is a file under MOUNTPOINT/new/. The command is the same as `chmod a-w PATH` followed by
waiting: the daemon stores what is still dirty, calls CompleteSnapshot and polls AWS until the
snapshot is completed; the file then leaves new/ and shows as MOUNTPOINT/snap-ID. The snapshot
id is printed on stdout. Progress goes to stderr: on a terminal a live bar (blocks stored of
blocks to store, rate, time left, throttled share), else one line per state change; with
--json, stdout has one JSON object a line instead (events state, progress, completed,
error; docs/usage.md). Running it again on a file that is being sealed just waits. If
AWS moves the snapshot to `error`, the data stays in the mount's spool and `ebsfs complete
PATH` (or chmod a-w) again stores it into a new snapshot.
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
    p.add_argument(
        "--json",
        action="store_true",
        help="print progress as JSON events, one object a line, on stdout (for scripts)",
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


#: How long a completed snapshot's file may take to leave new/ (the mount drops the kernel's
#: cached entry asynchronously): a script's next ``ls new/`` should not see it.
LEAVE_WAIT = 10.0


def _until_gone(path: str) -> None:
    """Return once ``path`` has left new/, or after LEAVE_WAIT (it is completed either way)."""
    deadline = time.monotonic() + LEAVE_WAIT
    while os.path.lexists(path) and time.monotonic() < deadline:
        time.sleep(POLL)


#: How far AWS's clock may be behind this machine's (SigV4 refuses more than 5 minutes).
CLOCK_SKEW = 300.0


def _newest_by_name(mountpoint: str, name: str, since: float, timeout: float) -> str:
    """The snapshot ``by-name/NAME`` points at, if it started after ``since`` (so it is the
    one this command sealed, not an older one of the same name), waiting for it a while."""
    link = os.path.join(mountpoint, "by-name", name)
    deadline = time.monotonic() + min(timeout, SHOW_WAIT)
    while True:
        try:
            target = os.path.basename(os.readlink(link))
            if os.stat(os.path.join(mountpoint, target)).st_mtime >= since - CLOCK_SKEW:
                return target
        except OSError:
            pass
        if time.monotonic() > deadline:
            return ""
        time.sleep(POLL)


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


def _int_attr(path: str, key: str) -> int:
    text = _attr(path, key)
    return int(text) if text.isdigit() else 0


def _reporter(args: argparse.Namespace, path: str) -> progress.Reporter:
    if getattr(args, "json", False):
        return progress.JsonEvents(sys.stdout, path)
    if sys.stderr.isatty():
        return progress.Bar(sys.stderr)
    return progress.Lines(sys.stderr)


class _Watch:
    """Samples of the file being sealed, with the mount's counters read now and then."""

    def __init__(self, path: str, mountpoint: str) -> None:
        self.path, self.mountpoint = path, mountpoint
        self.tracker = progress.Tracker()
        self._counts: tuple[int | None, int | None] = (None, None)
        self._read_at = float("-inf")

    def sample(self, state: str) -> progress.Sample:
        now = time.monotonic()
        if now - self._read_at >= STATS_EVERY:
            self._read_at = now
            try:
                self._counts = progress.throttle_counts(read_stats(self.mountpoint))
            except EbsfsError:
                self._counts = (None, None)
        found = progress.Sample(
            state=state,
            progress=_attr(self.path, "progress"),
            dirty=_int_attr(self.path, "dirty_blocks"),
            stored=_int_attr(self.path, "stored_blocks"),
            throttled=self._counts[0],
            answers=self._counts[1],
        )
        self.tracker.update(found)
        return found


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
    reporter = _reporter(args, path)
    watch = _Watch(path, mountpoint)
    name = os.path.basename(path)
    state = snapshot_id = ""
    started = time.time()
    deadline = time.monotonic() + args.timeout
    try:
        state = _attr(path, "state")
        if not state:
            raise UsageError(f"{path} is not a file of an ebsfs mount")
        if under != "new":
            if state == "completed":
                # Nothing to do, which is what a script running it again wants to hear.
                return _done(args, reporter, _attr(path, "snapshot_id"), watch.tracker)
            raise UsageError(f"{path} is not a snapshot being written (not under new/)")
        if state != "sealing":
            _seal(path)
        snapshot_id = _attr(path, "snapshot_id")
        while True:
            state = _attr(path, "state")
            snapshot_id = _attr(path, "snapshot_id") or snapshot_id
            if state == "sealing":
                reporter.update(name, snapshot_id, watch.sample(state), watch.tracker)
                if time.monotonic() > deadline:
                    raise BackendUnavailableError(
                        f"{path}: still sealing after {args.timeout:.0f} s (it goes on)"
                    )
                time.sleep(POLL)
                continue
            if state == "completed":
                _until_gone(path)
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
            reporter.failed(f"{path} does not exist", "")
            raise NotFoundError(f"{path} does not exist") from None
        left = max(10.0, deadline - time.monotonic())  # a moment even at the timeout
        if not snapshot_id:
            # It completed between two polls before its id was read (a small draft on a
            # fast endpoint): it shows under by-name/ as the newest snapshot of its name.
            snapshot_id = _newest_by_name(mountpoint, name, started, left)
        if not snapshot_id or not _shown(mountpoint, snapshot_id, left):
            reporter.failed(f"{path} disappeared before it was completed", state)
            raise NotFoundError(f"{path} disappeared before it was completed") from None
        return _done(args, reporter, snapshot_id, watch.tracker)
    except EbsfsError as exc:
        reporter.failed(str(exc), state)
        raise
    except OSError as exc:
        reporter.failed(exc.strerror or str(exc), state)
        raise EbsfsError(f"{path}: {exc.strerror or exc}") from None
    return _done(args, reporter, snapshot_id, watch.tracker)


def _done(args: argparse.Namespace, reporter: progress.Reporter, snapshot_id: str,
          tracker: progress.Tracker) -> int:
    reporter.done(snapshot_id, tracker)
    if not getattr(args, "json", False):
        progress.write(sys.stdout, snapshot_id)
    return 0
