"""The upload process's wire format (docs/architecture.md, the write path): length-prefixed
JSON frames, a request's block after its arguments, and errors as explicit typed records."""

from __future__ import annotations

import json
import socket
import struct
from dataclasses import dataclass
from typing import Any

from ebsfs.core import errors
from ebsfs.core.errors import ApiError, BackendUnavailableError, EbsfsError

#: Request frame: length of the JSON arguments, length of the block (each connection carries
#: one call at a time, so frames need no id).
REQUEST = struct.Struct("!II")
#: Answer frame (and the start-up frames): length of the JSON that follows.
ANSWER = struct.Struct("!I")
#: The longest JSON a frame may carry (arguments, answers, the start-up settings).
MAX_JSON = 1 << 20
#: The largest block a request may carry (a block is 512 KiB).
MAX_DATA = 1 << 20

#: The errors that cross the socket, by class name; the fields each carries are WireError's.
ERROR_TYPES: dict[str, type[EbsfsError]] = {
    cls.__name__: cls
    for cls in (
        errors.EbsfsError,
        errors.UsageError,
        errors.NotFoundError,
        errors.AccessDeniedError,
        errors.BackendUnavailableError,
        errors.EndpointDownError,
        errors.MountError,
        errors.SnapshotFailedError,
        errors.ApiError,
        errors.InvalidTokenError,
        errors.DependencyMissingError,
        errors.ChecksumError,
        errors.ReadOnlyError,
        errors.FileTooLargeError,
        errors.NotPermittedError,
        errors.InvalidValueError,
        errors.NoSpaceError,
    )
}
_KINDS = frozenset(
    {errors.RETRY, errors.RESEND, errors.GONE, errors.DEPENDENCY, errors.DENIED,
     errors.INVALID, errors.FINAL}
)


@dataclass(frozen=True)
class WireError:
    """An ``ebsfs.core.errors`` exception as it crosses the socket: its class (a name of
    ``ERROR_TYPES``), message and kind, and for ``ApiError`` AWS's code, reason and status."""

    type: str
    message: str
    kind: str = errors.FINAL
    code: str = ""
    reason: str = ""
    status: int = 0

    @classmethod
    def of(cls, exc: EbsfsError) -> WireError:
        # The nearest class of the table (every one of ebsfs.core.errors is in it).
        name = next(k.__name__ for k in type(exc).__mro__ if k.__name__ in ERROR_TYPES)
        if isinstance(exc, ApiError):
            return cls(name, str(exc), exc.kind, exc.code, exc.reason, exc.status)
        return cls(name, str(exc), exc.kind)

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "message": self.message, "kind": self.kind,
                "code": self.code, "reason": self.reason, "status": self.status}

    @classmethod
    def from_json(cls, raw: Any) -> WireError:
        """Only the fields above, each of its type; anything else is left at its default."""
        if not isinstance(raw, dict):
            return cls("", "the upload process sent a garbled error")

        def text(key: str, default: str = "") -> str:
            value = raw.get(key)
            return value if isinstance(value, str) else default

        status = raw.get("status")
        return cls(
            text("type"),
            text("message", "the upload process failed"),
            text("kind", errors.FINAL),
            text("code"),
            text("reason"),
            status if isinstance(status, int) and not isinstance(status, bool) else 0,
        )

    def exception(self) -> EbsfsError:
        """The exception to raise; of an unknown type, a BackendUnavailableError (transient,
        as the child's own failures) that names it."""
        cls = ERROR_TYPES.get(self.type)
        if cls is None:
            return BackendUnavailableError(
                f"the upload process failed ({self.type or 'unknown error'}): {self.message}")
        exc = (cls(self.message, self.code, self.reason, self.status)
               if issubclass(cls, ApiError) else cls(self.message))
        if self.kind in _KINDS and self.kind != exc.kind:
            exc.kind = self.kind
        return exc


def send_parts(sock: socket.socket, parts: list[bytes | memoryview]) -> None:
    """Send every part, in order, in as few system calls as the socket takes."""
    views = [memoryview(p).cast("B") for p in parts if len(p)]
    while views:
        sent = sock.sendmsg(views)
        while sent:
            if sent >= len(views[0]):
                sent -= len(views[0])
                views.pop(0)
            else:
                views[0] = views[0][sent:]
                sent = 0


def send_frame(sock: socket.socket, value: Any) -> None:
    body = json.dumps(value).encode()
    send_parts(sock, [ANSWER.pack(len(body)), body])


def recv_exact(sock: socket.socket, view: memoryview) -> None:
    got = 0
    while got < len(view):
        n = sock.recv_into(view[got:])
        if not n:
            raise EOFError("connection closed")
        got += n


def recv_json(sock: socket.socket) -> Any:
    head = bytearray(ANSWER.size)
    recv_exact(sock, memoryview(head))
    (length,) = ANSWER.unpack(head)
    if length > MAX_JSON:
        raise ValueError(f"a frame of {length} bytes")
    body = bytearray(length)
    recv_exact(sock, memoryview(body))
    return json.loads(body)
