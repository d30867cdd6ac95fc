"""Logging for the daemons: readable on a terminal, journald-friendly under systemd, and
every record passed through :class:`RedactSecrets` so that no line leaks what signs
requests. See docs/operations.md and docs/architecture.md.
"""

import errno
import hashlib
import logging
import logging.handlers
import os
import socket
import stat
import sys
from typing import TextIO

from ebsfs.core.redact import LEVELS, RedactSecrets, register_environment_secrets

_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}

class JournalFormatter(logging.Formatter):
    """``<priority>logger: message``, one journal entry per line of a multi-line record."""

    def __init__(self) -> None:
        super().__init__("%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        prefix = f"<{_PRIORITY.get(record.levelno, _syslog_priority(record.levelno))}>"
        return "\n".join(prefix + line for line in text.splitlines() or [""])


def _syslog_priority(levelno: int) -> int:
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


def under_systemd(stream: TextIO | None = None) -> bool:
    """True when ``stream`` (stderr by default) goes to journald or we run as a unit."""
    journal = os.environ.get("JOURNAL_STREAM")
    if journal:
        stream = stream if stream is not None else sys.stderr
        try:
            device, inode = (int(part) for part in journal.split(":", 1))
            st = os.fstat(stream.fileno())
        except (ValueError, OSError, AttributeError):
            return True
        # JOURNAL_STREAM is inherited by children that may have redirected stderr elsewhere.
        return (st.st_dev, st.st_ino) == (device, inode)
    return bool(os.environ.get("INVOCATION_ID"))


def parse_level(level: str | int) -> int:
    """A level name (``info``) or number as logging's number; ValueError for anything else."""
    if isinstance(level, int):
        return level
    name = level.strip().lower()
    if name not in LEVELS:
        raise ValueError(f"unknown log level {level!r} (one of: {', '.join(LEVELS)})")
    return int(getattr(logging, name.upper()))


SYSLOG_SOCKET = "/dev/log"
#: Where a detached daemon logs when there is no system log (``EBSFS_LOG_DIR`` overrides).
FALLBACK_LOG_DIR = "/var/log/ebsfs"
LOG_DIR_ENV = "EBSFS_LOG_DIR"


def _syslog_listens() -> bool:
    """Whether something accepts messages on the system log's socket (SysLogHandler itself
    ignores a failed connect, and then every line goes nowhere)."""
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_UNIX, kind) as probe:
            try:
                probe.connect(SYSLOG_SOCKET)
            except OSError:
                continue
            return True
    return False


def _syslog_handler() -> logging.Handler | None:
    """A handler for the system log, or None when nothing listens on its socket."""
    if not _syslog_listens():
        return None
    try:
        handler = logging.handlers.SysLogHandler(address=SYSLOG_SOCKET)
    except OSError:
        return None
    handler.setFormatter(logging.Formatter("ebsfs[%(process)d]: %(name)s: %(message)s"))
    return handler


def escape_path(path: str) -> str:
    """``path`` as one file name, the way ``systemd-escape --path`` writes it
    (``/mnt/snapshots`` is ``mnt-snapshots``)."""
    trimmed = path.strip("/")
    if not trimmed:
        return "-"
    out = []
    for i, char in enumerate(trimmed):
        if char == "/":
            out.append("-")
        elif char.isascii() and (char.isalnum() or char in "_:" or (char == "." and i > 0)):
            out.append(char)
        else:
            out.extend(f"\\x{byte:02x}" for byte in char.encode())
    return "".join(out)


#: The longest file name most file systems take (NAME_MAX).
_NAME_MAX = 255


def fallback_log_path(name: str) -> str:
    """Where a daemon's log goes when there is no system log: ``NAME.log`` in
    ``$EBSFS_LOG_DIR``, else /var/log/ebsfs. A name too long for one file name is cut and
    ends with a hash of the whole (two long mount points never share a file)."""
    directory = os.environ.get(LOG_DIR_ENV) or FALLBACK_LOG_DIR
    escaped = escape_path(name)
    if len(escaped.encode()) + len(".log") > _NAME_MAX:
        digest = hashlib.sha256(escaped.encode()).hexdigest()[:16]
        escaped = f"{escaped[:200]}-{digest}"
    return os.path.join(directory, f"{escaped}.log")


def _open_fallback(name: str) -> tuple[TextIO | None, str]:
    """The fallback log file, opened for appending, or None and why not. Whatever is in the
    way is not written through: a symlink (the file's or its directory's, unless root or
    this user made it), a FIFO or device, a file with other links or of another owner."""
    path = fallback_log_path(name)
    directory = os.path.dirname(path)
    me = os.geteuid()
    try:
        os.makedirs(directory, mode=0o750, exist_ok=True)
        link = os.lstat(directory)
        if stat.S_ISLNK(link.st_mode) and link.st_uid not in (0, me):
            return None, f"{directory}: a symlink of another user, not followed"
        fd = os.open(
            path,
            os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK,
            0o640,
        )
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return None, f"{path}: a symlink, not followed"
        return None, f"{path}: {exc.strerror}"
    info = os.fstat(fd)
    why = ""
    if not stat.S_ISREG(info.st_mode):
        why = "not a regular file"
    elif info.st_nlink != 1:
        why = f"a file with {info.st_nlink} links"
    elif info.st_uid != me:
        why = f"a file of user {info.st_uid}"
    if why:
        os.close(fd)
        return None, f"{path}: {why}, not written"
    os.set_blocking(fd, True)
    return os.fdopen(fd, "a", buffering=1), path


def describe(handler: logging.Handler) -> str:
    """Where ``handler`` writes, in words for the user."""
    if isinstance(handler, logging.handlers.SysLogHandler):
        return f"the system log ({SYSLOG_SOCKET}; journalctl -t ebsfs)"
    if getattr(handler, "ebsfs_destination", None):
        return str(handler.ebsfs_destination)  # type: ignore[attr-defined]
    stream = getattr(handler, "stream", None)
    name = getattr(stream, "name", None)
    if name in (sys.stderr.name if sys.stderr else None, "<stderr>"):
        return "stderr"
    if isinstance(name, str) and name != os.devnull:
        return name
    return getattr(handler, "ebsfs_destination", "nowhere")


def setup_logging(
    level: str | int = "info",
    stream: TextIO | None = None,
    *,
    syslog: bool = False,
    fallback_name: str | None = None,
) -> logging.Handler:
    """Configure the root logger once for a daemon or command; returns the handler installed.

    ``syslog=True`` (a daemon detached from its terminal) sends the lines to the system log
    (journald) when something listens on ``/dev/log``; else, given ``fallback_name`` (the
    mount point), to the file :func:`fallback_log_path` names; else to ``stream``.
    :func:`describe` says which. Calling it again replaces the handler it installed before
    (tests call it repeatedly).
    """
    stream = stream if stream is not None else sys.stderr
    register_environment_secrets()
    handler: logging.Handler | None = _syslog_handler() if syslog else None
    destination = ""
    if handler is None and syslog and fallback_name is not None:
        opened, where = _open_fallback(fallback_name)
        if opened is not None:
            stream, destination = opened, where
        else:
            destination = f"nowhere (no system log at {SYSLOG_SOCKET}, and {where})"
    if handler is not None:
        pass
    elif under_systemd(stream) and not (syslog and fallback_name is not None):
        handler = logging.StreamHandler(stream)
        handler.setFormatter(JournalFormatter())
    else:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    if destination:
        handler.ebsfs_destination = destination  # type: ignore[attr-defined]
    handler.set_name("ebsfs")
    handler.addFilter(RedactSecrets())
    root = logging.getLogger()
    for old in list(root.handlers):
        if old.get_name() == "ebsfs":
            root.removeHandler(old)
            old.close()
    root.addHandler(handler)
    root.setLevel(parse_level(level))
    # botocore at debug prints every request's headers and bodies: too much for a daemon's
    # debug log (and redaction is the last line of defence, not the first).
    if root.level <= logging.DEBUG:
        for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
            logging.getLogger(noisy).setLevel(logging.INFO)
    logging.captureWarnings(True)
    return handler
