"""The HTTP/1.1 transport: a thread per keep-alive connection, bodies read with bounds,
block data sent with sendfile, one debug log line per request.

The request line and headers are parsed here directly rather than by ``http.server``'s
email-based parser, which cost more CPU than everything else in a GetSnapshotBlock.
"""

import contextlib
import io
import logging
import mmap
import socket
import socketserver
import time
from email.utils import formatdate
from http import HTTPStatus
from typing import cast

from ebsfs.server.app import App
from ebsfs.server.wire import Request, Response
from ebsfs.types import BLOCK_SIZE

log = logging.getLogger("ebsfs.server.requests")

#: Longest body accepted: one block plus room; anything longer is refused unread.
MAX_BODY = 2 << 20
#: Seconds a connection may stay idle, or a body may take to arrive.
IDLE_TIMEOUT = 60.0
MAX_LINE = 65536
SOCKET_BUFFER = 4 << 20
MAX_HEADERS = 100

_REASONS = {s.value: s.phrase for s in HTTPStatus}
_REASONS[402] = "Payment Required"


_date_cache: tuple[int, str] = (0, "")


def _http_date() -> str:
    """The Date header's value, formatted once per second."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True))
    return _date_cache[1]


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

    def server_bind(self) -> None:
        # Socket buffers that hold a whole block let a block arrive or leave with few
        # wake-ups (measured: a third of the receive cost over loopback). Accepted sockets
        # inherit them; the kernel caps them at net.core.rmem_max/wmem_max.
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            self.socket.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
        super().server_bind()


class _BadRequest(Exception):
    pass


class Handler(socketserver.StreamRequestHandler):
    """Serves the requests of one connection, one after another."""

    timeout = IDLE_TIMEOUT
    server: Server

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.close_connection = False
        # A block-sized body is received straight into this page-aligned buffer: no copy
        # out of the reader, and the store can write it with O_DIRECT as it is. It is
        # reused by the connection's next request, after this one was answered.
        self._block_buffer: mmap.mmap | None = None

    def handle(self) -> None:
        while not self.close_connection:
            try:
                if not self._one():
                    return
            except (TimeoutError, ConnectionError):
                return
            except _BadRequest as exc:
                self._plain(400, str(exc))
                return

    def _read_head(self) -> tuple[str, str, str, dict[str, str]] | None:
        line = self.rfile.readline(MAX_LINE + 1)
        if not line:
            return None
        if len(line) > MAX_LINE:
            raise _BadRequest("request line too long")
        parts = line.decode("latin-1").split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise _BadRequest("malformed request line")
        method, target, version = parts
        headers: dict[str, str] = {}
        for _ in range(MAX_HEADERS + 1):
            raw = self.rfile.readline(MAX_LINE + 1)
            if raw in (b"\r\n", b"\n", b""):
                break
            name, sep, value = raw.decode("latin-1").partition(":")
            if not sep or len(raw) > MAX_LINE:
                raise _BadRequest("malformed header")
            key = name.strip().lower()
            value = value.strip()
            headers[key] = f"{headers[key]},{value}" if key in headers else value
        else:
            raise _BadRequest("too many headers")
        connection = headers.get("connection", "").lower()
        if version == "HTTP/1.0":
            self.close_connection = "keep-alive" not in connection
        else:
            self.close_connection = "close" in connection
        return method, target, version, headers

    def _read_body(self, method: str, headers: dict[str, str]) -> tuple[bytes | memoryview, bool]:
        if "transfer-encoding" in headers:
            raise _BadRequest("chunked request bodies are not supported")
        text = headers.get("content-length")
        if text is None:
            return b"", True
        try:
            length = int(text)
        except ValueError:
            raise _BadRequest("malformed Content-Length") from None
        if length < 0 or length > MAX_BODY:
            # Refused unread: the connection cannot be reused.
            self.close_connection = True
            return b"", False
        if length == 0:
            return b"", True
        if headers.get("expect", "").lower() == "100-continue":
            self.connection.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        body: bytes | memoryview
        try:
            if method == "PUT" and length == BLOCK_SIZE:
                if self._block_buffer is None:
                    self._block_buffer = mmap.mmap(-1, BLOCK_SIZE)
                body = memoryview(self._block_buffer)
                # Wake up once the rest of the block is there rather than for every piece
                # of it (the kernel caps the low-water mark at half the receive buffer).
                reader = cast(io.BufferedReader, self.rfile)
                buffered = min(len(reader.peek(1)), length)
                rest = max(length - buffered, 1)
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, rest)
                try:
                    body = body[: self.rfile.readinto(body) or 0]
                finally:
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)
            else:
                body = self.rfile.read(length)
        except OSError:
            body = b""
        if len(body) < length:
            # The client sent less than it announced: the connection cannot be reused.
            self.close_connection = True
            return body, False
        return body, True

    def _one(self) -> bool:
        head = self._read_head()
        if head is None:
            return False
        started = time.perf_counter()
        method, target, _, headers = head
        raw_path, _, raw_query = target.partition("?")
        body, complete = self._read_body(method, headers)
        req = Request(method, raw_path, raw_query, headers, body, complete)
        resp = self.server.app.handle(req)
        sent = self._send(resp, head_only=method == "HEAD")
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "%s %s %s %s -> %d%s %.1f ms",
                self.client_address[0], req.operation, method, target, resp.status,
                " dropped" if resp.drop else "", (time.perf_counter() - started) * 1000,
            )
        if not sent:
            self.close_connection = True
        return sent

    def _plain(self, status: int, text: str) -> None:
        body = text.encode()
        head = (
            f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\nContent-Type: text/plain\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        with contextlib.suppress(OSError):
            self.connection.sendall(head.encode("latin-1") + body)

    def _send(self, resp: Response, head_only: bool = False) -> bool:
        """Write the response; False if it was (deliberately or not) cut short."""
        length = resp.file_length if resp.file is not None else len(resp.body)
        head = [
            f"HTTP/1.1 {resp.status} {_REASONS.get(resp.status, '')}",
            f"Date: {_http_date()}",
            f"Content-Length: {length}",
        ]
        head += [f"{k}: {v}" for k, v in resp.headers]
        if self.close_connection or resp.drop:
            head.append("Connection: close")
        data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
        try:
            if resp.drop:
                # Block data is cut off halfway (the client sees fewer bytes than
                # Content-Length); other answers are not sent at all, since botocore would
                # parse half a JSON document as an empty one.
                if resp.file is not None:
                    self.connection.sendall(data + resp.file_bytes()[: length // 2])
                self.connection.shutdown(socket.SHUT_RDWR)
                return False
            if head_only:
                self.connection.sendall(data)
                return True
            if resp.file is None:
                self.connection.sendall(data + resp.body)
                return True
            with open(resp.file, "rb") as f:
                self.connection.sendall(data)
                # socket.sendfile copes with the socket's timeout (non-blocking) mode.
                return self.connection.sendfile(f, resp.file_offset, length) == length
        except OSError as exc:
            log.debug("client went away: %s", exc)
            return False
