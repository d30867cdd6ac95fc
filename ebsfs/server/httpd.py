"""The listening side of the HTTP/1.1 transport: a thread per keep-alive connection
(connection.py), at most MAX_CONNECTIONS at once, the idlest closed to make room, and the
Host names a loopback server answers to (docs/server.md, "Limits")."""

import contextlib
import ipaddress
import logging
import socket
import socketserver
import threading
import time
from typing import Any

from ebsfs.server.app import App
from ebsfs.server.connection import Handler

log = logging.getLogger("ebsfs.server.requests")

#: Connections served at once; more are answered 503 (which botocore retries) and closed.
MAX_CONNECTIONS = 256
SOCKET_BUFFER = 4 << 20

# Answered before anything tells which protocol the client speaks: EC2's XML, which
# botocore's JSON parsers take as the message (the code is x-amzn-ErrorType), where JSON was
# an unparsable answer (ResponseParserError, not retried) to an EC2 client.
_BUSY = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error>'
         b"<Code>Unavailable</Code><Message>Too many connections; try again.</Message>"
         b"</Error></Errors><RequestID>-</RequestID></Response>")
#: Seconds the accepting thread waits for an idle connection it closed to free its slot.
EVICT_WAIT = 5.0


class Server(socketserver.ThreadingTCPServer):
    """A threading HTTP server that hands every request to an App."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], app: App) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, Handler)
        self.app = app
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._refused, self._refused_logged = 0, 0.0
        # Connections waiting for a request with no byte of it received, by when they
        # started to: the first closed when all slots are taken.
        self._idle: dict[Handler, float] = {}
        self._idle_lock = threading.Lock()
        app.allowed_hosts = loopback_hosts(address[0], self.server_address)

    def server_bind(self) -> None:
        # Socket buffers that hold a whole block let a block arrive or leave with few
        # wake-ups (a large share of the receive cost over loopback). Accepted sockets
        # inherit them; the kernel caps them at net.core.rmem_max/wmem_max.
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            self.socket.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
        super().server_bind()

    def process_request(  # type: ignore[override]
        self, request: socket.socket, client_address: tuple[str, int]
    ) -> None:
        """Serve the connection in a thread of its own, if one of MAX_CONNECTIONS is free;
        else answer 503 at once and close it (a thread and its buffers per connection are
        what an unlimited number of idle connections would exhaust)."""
        if not self._slots.acquire(blocking=False) and not (
            self._close_idle() and self._slots.acquire(timeout=EVICT_WAIT)
        ):
            self._refused += 1
            now = time.monotonic()
            if now - self._refused_logged >= 1.0:  # one line a second, not one per refusal
                log.warning("more than %d connections: refused %d (the last from %s)",
                            MAX_CONNECTIONS, self._refused, client_address[0])
                self._refused, self._refused_logged = 0, now
            head = (
                "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/xml\r\n"
                "x-amzn-ErrorType: ServiceUnavailableException\r\nRetry-After: 1\r\n"
                f"Content-Length: {len(_BUSY)}\r\nConnection: close\r\n\r\n"
            )
            with contextlib.suppress(OSError):
                request.setblocking(False)
                request.send(head.encode("latin-1") + _BUSY)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def set_idle(self, handler: "Handler", idle: bool) -> None:
        """Whether ``handler`` waits for a request of which no byte arrived yet."""
        with self._idle_lock:
            if idle:
                self._idle.setdefault(handler, time.monotonic())
            else:
                self._idle.pop(handler, None)

    def _close_idle(self) -> bool:
        """Close the connection idle the longest (a keep-alive connection between requests,
        or one that sent nothing yet), as HTTP lets a server do at any time, so that idle
        connections cannot keep new clients out; False if none is idle."""
        with self._idle_lock:
            if not self._idle:
                return False
            victim = min(self._idle, key=self._idle.__getitem__)
            del self._idle[victim]
            victim.close_connection = True
            with contextlib.suppress(OSError):
                victim.request.shutdown(socket.SHUT_RDWR)
        return True

    def process_request_thread(  # type: ignore[override]
        self, request: socket.socket, client_address: tuple[str, int]
    ) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def loopback_hosts(name: str, bound: tuple[Any, ...]) -> frozenset[str] | None:
    """The Host values a server bound to ``bound`` (listening as ``name``) accepts: on a
    loopback address its loopback names with its port (and without, on port 80); None
    (any) elsewhere, where clients may use any name the address has."""
    address, port = str(bound[0]), int(bound[1])
    if not ipaddress.ip_address(address.split("%")[0]).is_loopback:
        return None
    names = {"localhost", "127.0.0.1", "[::1]"}
    name = name.lower()
    names.add(f"[{name}]" if ":" in name else name)
    if ":" in address:
        names.add(f"[{address.lower()}]")
    else:
        names.add(address)
    allowed = {f"{n}:{port}" for n in names}
    if port == 80:
        allowed |= names
    return frozenset(allowed)
