"""Logging for the daemons: readable on a terminal, journald-friendly under systemd, no secrets.

Under systemd (``JOURNAL_STREAM`` or ``INVOCATION_ID`` in the environment) each line starts
with the syslog priority in angle brackets (``<3>`` error ... ``<7>`` debug), which journald
turns into the entry's PRIORITY and strips; the journal adds its own timestamps, so none is
printed. On a terminal or in a file, lines carry a timestamp and the level name.

Every record passes through :class:`RedactSecrets`, which masks AWS secret keys, session
tokens, SigV4 signatures and credentials scopes wherever they appear, and any value passed to
:func:`register_secret`, so no log line can leak what signs requests.
"""

import logging
import logging.handlers
import os
import re
import sys
import threading
from typing import TextIO

LEVELS = ("debug", "info", "warning", "error", "critical")

_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}

MASK = "***"

# Shapes of secrets that may end up in a message: header values, query parameters, key=value
# pairs in configuration dumps, and long-term or temporary access key ids.
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(Signature=)[0-9a-fA-F]{16,}"), rf"\g<1>{MASK}"),
    (re.compile(r"(X-Amz-Signature=)[^&\s\"']+", re.I), rf"\g<1>{MASK}"),
    (re.compile(r"(X-Amz-(?:Security-Token|Credential)[=:]\s*)[^&\s\"',]+", re.I), rf"\g<1>{MASK}"),
    (re.compile(r"(Credential=)[^,\s\"']+"), rf"\g<1>{MASK}"),
    (
        re.compile(
            r"((?:aws_)?(?:secret_access_key|secret-access-key|session_token|security_token|"
            r"SecretAccessKey|SessionToken|password)[\"']?\s*[=:]\s*[\"']?)[^\s\"',}]+",
            re.I,
        ),
        rf"\g<1>{MASK}",
    ),
    (re.compile(r"\b((?:AKIA|ASIA)[A-Z0-9]{4})[A-Z0-9]{12}\b"), rf"\g<1>{MASK}"),
)

_secrets: set[str] = set()
_secrets_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """Mask this exact value in every later log line (say, a configured secret key)."""
    if value and len(value) >= 4:
        with _secrets_lock:
            _secrets.add(value)


def redact(text: str) -> str:
    """``text`` with every known secret and secret-shaped value masked."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    with _secrets_lock:
        known = sorted(_secrets, key=len, reverse=True)
    for secret in known:
        text = text.replace(secret, MASK)
    return text


class RedactSecrets(logging.Filter):
    """Rewrites each record's message (arguments merged in) with secrets masked."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if record.exc_info and not record.exc_text:
            # Format the traceback now so that its text is redacted too.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        return True


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


def setup_logging(
    level: str | int = "info", stream: TextIO | None = None, *, syslog: bool = False
) -> logging.Handler:
    """Configure the root logger once for a daemon or command; returns the handler installed.

    ``syslog=True`` (a daemon detached from its terminal) sends the lines to the system log
    (journald) when ``/dev/log`` exists, else to ``stream``. Calling it again replaces the
    handler it installed before (tests call it repeatedly).
    """
    stream = stream if stream is not None else sys.stderr
    handler: logging.Handler
    if syslog and os.path.exists(SYSLOG_SOCKET):
        handler = logging.handlers.SysLogHandler(address=SYSLOG_SOCKET)
        handler.setFormatter(logging.Formatter("ebsfs[%(process)d]: %(name)s: %(message)s"))
    elif under_systemd(stream):
        handler = logging.StreamHandler(stream)
        handler.setFormatter(JournalFormatter())
    else:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
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
