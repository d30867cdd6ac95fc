"""systemd's readiness protocol (sd_notify): one datagram per state change to $NOTIFY_SOCKET;
nothing without it, and a failure to send never stops the daemon.
See docs/operations.md.
"""

import logging
import os
import socket

log = logging.getLogger(__name__)

_ENV = "NOTIFY_SOCKET"


def _address(raw: str) -> str | bytes | None:
    if raw.startswith("@"):
        # Abstract namespace: the kernel expects a leading NUL instead of the '@'.
        return b"\0" + raw[1:].encode()
    if raw.startswith("/"):
        return raw
    # vsock addresses (vsock:CID:PORT) are for VMs talking to their host; not ours to reach.
    return None


def notify(state: str) -> bool:
    """Send ``state`` (``KEY=VALUE`` lines) to the service manager; True if it was sent."""
    raw = os.environ.get(_ENV)
    if not raw:
        return False
    address = _address(raw)
    if address is None:
        log.warning("NOTIFY_SOCKET=%s is not a unix socket; not notifying systemd", raw)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(2.0)
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:
        log.warning("could not notify systemd at %s: %s", raw, exc)
        return False
    return True


def notify_ready(status: str | None = None) -> bool:
    """Tell systemd the service is up (the mount answers); with an optional status line."""
    state = f"READY=1\nMAINPID={os.getpid()}"
    if status:
        state += f"\nSTATUS={_one_line(status)}"
    return notify(state)


def notify_stopping(status: str | None = "flushing buffered writes") -> bool:
    """Tell systemd the service is shutting down (flushing before the unmount)."""
    state = "STOPPING=1"
    if status:
        state += f"\nSTATUS={_one_line(status)}"
    return notify(state)


def _one_line(text: str) -> str:
    return " ".join(text.split())
