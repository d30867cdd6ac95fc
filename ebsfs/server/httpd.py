"""The HTTP/1.1 transport: a thread per keep-alive connection, bodies read with bounds,
block data sent with sendfile, one debug log line per request.

The request line and headers are parsed here directly rather than by ``http.server``'s
email-based parser, which cost more CPU than everything else in a GetSnapshotBlock.
"""

import contextlib
import logging
import mmap
import os
import select
import socket
import socketserver
import struct
import time
from email.utils import formatdate
from http import HTTPStatus

from ebsfs.server.app import App
from ebsfs.server.wire import Request, Response
from ebsfs.types import BLOCK_SIZE

log = logging.getLogger("ebsfs.server.requests")

#: Longest body accepted: one block plus room; anything longer is refused unread.
MAX_BODY = 2 << 20
#: Seconds a connection may stay idle, or a body may take to arrive.
IDLE_TIMEOUT = 60.0
#: Longest request head (request line and headers) accepted.
HEAD_BUFFER = 65536
#: Most bytes received into the head buffer at once: a head is about 1 KiB, and whatever
#: of a block's body is read along with it has to be copied out again.
HEAD_READ = 4096
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


class Handler(socketserver.BaseRequestHandler):
    """Serves the requests of one connection, one after another.

    The socket is blocking, with kernel send and receive timeouts (``SO_RCVTIMEO``,
    ``SO_SNDTIMEO``): Python's own timeout mode would poll before every call. Request heads
    are read into one buffer and parsed from it; bodies are received straight into their
    destination.
    """

    server: Server
    request: socket.socket

    def setup(self) -> None:
        sock = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(None)
        limit = struct.pack("ll", int(IDLE_TIMEOUT), 0)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, limit)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, limit)
        self.close_connection = False
        self._poller = select.poll()
        self._poller.register(sock, select.POLLIN)
        # Received bytes not parsed yet are self._buf[self._pos:self._end].
        self._buf = bytearray(HEAD_BUFFER)
        self._buf_view = memoryview(self._buf)
        self._pos = self._end = 0
        # A block-sized body is received straight into this page-aligned buffer: no copy
        # out of a reader, and the store can write it with O_DIRECT as it is. It is
        # reused by the connection's next request, after this one was answered.
        self._block_buffer: memoryview | None = None
        # Whether to time and log each request, fixed for the connection.
        self._debug = log.isEnabledFor(logging.DEBUG)

    def handle(self) -> None:
        while not self.close_connection:
            try:
                if not self._one():
                    return
            except OSError:  # reset, timed out (EAGAIN from SO_RCVTIMEO), ...
                return
            except _BadRequest as exc:
                self._plain(400, str(exc))
                return

    def _fill(self) -> int:
        """Receive more bytes into the head buffer; how many (0: the peer closed)."""
        buf = self._buf
        if self._pos:
            # Keep what is unparsed at the start, so the buffer never runs out at its end.
            rest = self._end - self._pos
            buf[:rest] = buf[self._pos:self._end]
            self._pos, self._end = 0, rest
        if self._end == len(buf):
            raise _BadRequest("request head too long")
        n = self.request.recv_into(self._buf_view[self._end:], HEAD_READ)
        self._end += n
        return n

    def _read_head(self) -> tuple[str, str, str, dict[str, str]] | None:
        buf = self._buf
        while True:
            # The head ends at the first empty line: "\n\r\n" (bare newlines are tolerated,
            # as http.server does, hence also "\n\n"). Lines keep a trailing "\r", which
            # the parsing below strips.
            end = buf.find(b"\n\r\n", self._pos, self._end)
            bare = buf.find(b"\n\n", self._pos, self._end if end < 0 else end)
            if bare >= 0:
                end, skip = bare, 2
                break
            if end >= 0:
                skip = 3
                break
            if not self._fill():
                if self._end > self._pos:
                    self.close_connection = True
                return None
        text = buf[self._pos:end].decode("latin-1")
        self._pos = end + skip
        lines = text.split("\n")
        if len(lines) > MAX_HEADERS + 1:
            raise _BadRequest("too many headers")
        parts = lines[0].split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise _BadRequest("malformed request line")
        method, target, version = parts
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise _BadRequest("malformed header")
            key = name.strip().lower()
            value = value.strip()
            headers[key] = f"{headers[key]},{value}" if key in headers else value
        connection = headers.get("connection")
        if connection is None:
            self.close_connection = version == "HTTP/1.0"
        elif version == "HTTP/1.0":
            self.close_connection = "keep-alive" not in connection.lower()
        else:
            self.close_connection = "close" in connection.lower()
        return method, target, version, headers

    def _take(self, view: memoryview) -> int:
        """Move bytes received with the head into ``view``; how many."""
        n = min(self._end - self._pos, len(view))
        if n:
            view[:n] = self._buf[self._pos:self._pos + n]
            self._pos += n
        return n

    def _receive(self, view: memoryview) -> int:
        """Fill ``view`` from the buffer, then the socket; how many bytes arrived."""
        got = self._take(view)
        length = len(view)
        if got == length:
            return got
        sock = self.request
        # Wake up once the rest of the body is there rather than for every piece of it
        # (the kernel caps the low-water mark at half the receive buffer). poll() honours
        # the mark; the receive itself must not block: a blocking recv copies what is
        # there, then waits for the mark counted afresh, which the rest may never reach.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, length - got)
        try:
            while got < length:
                if not self._poller.poll(IDLE_TIMEOUT * 1000):
                    break
                try:
                    n = sock.recv_into(view[got:], 0, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    continue
                if not n:
                    break
                got += n
                if got < length:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, length - got)
        except OSError:
            pass
        finally:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)
        return got

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
            self.request.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        body: bytes | memoryview
        if method == "PUT" and length == BLOCK_SIZE:
            view = self._block_buffer
            if view is None:
                view = self._block_buffer = memoryview(mmap.mmap(-1, BLOCK_SIZE))
            got = self._receive(view)
            body = view if got == BLOCK_SIZE else view[:got]
        else:
            data = bytearray(length)
            body = bytes(data[: self._receive(memoryview(data))])
        if len(body) < length:
            # The client sent less than it announced: the connection cannot be reused.
            self.close_connection = True
            return body, False
        return body, True

    def _one(self) -> bool:
        head = self._read_head()
        if head is None:
            return False
        started = time.perf_counter() if self._debug else 0.0
        method, target, _, headers = head
        raw_path, _, raw_query = target.partition("?")
        body, complete = self._read_body(method, headers)
        req = Request(method, raw_path, raw_query, headers, body, complete)
        resp = self.server.app.handle(req)
        sent = self._send(resp, head_only=method == "HEAD")
        if self._debug:
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
            self.request.sendall(head.encode("latin-1") + body)

    def _send(self, resp: Response, head_only: bool = False) -> bool:
        """Write the response; False if it was (deliberately or not) cut short."""
        length = resp.file_length if resp.file is not None else len(resp.body)
        head = [
            f"HTTP/1.1 {resp.status} {_REASONS.get(resp.status, '')}\r\n"
            f"Date: {_http_date()}\r\nContent-Length: {length}\r\n"
        ]
        head += [f"{k}: {v}\r\n" for k, v in resp.headers]
        if self.close_connection or resp.drop:
            head.append("Connection: close\r\n")
        head.append("\r\n")
        data = "".join(head).encode("latin-1")
        sock = self.request
        try:
            if resp.drop:
                # Block data is cut off halfway (the client sees fewer bytes than
                # Content-Length); other answers are not sent at all, since botocore would
                # parse half a JSON document as an empty one.
                if resp.file is not None:
                    sock.sendall(data + resp.file_bytes()[: length // 2])
                sock.shutdown(socket.SHUT_RDWR)
                return False
            if head_only:
                sock.sendall(data)
                return True
            if resp.file is None:
                sock.sendall(data + resp.body)
                return True
            fd = os.open(resp.file, os.O_RDONLY)
            try:
                # The head goes out with the first bytes of the block, in one segment.
                sock.sendall(data, socket.MSG_MORE)
                offset, left = resp.file_offset, length
                while left:
                    n = os.sendfile(sock.fileno(), fd, offset, left)
                    if not n:
                        return False
                    offset += n
                    left -= n
                return True
            finally:
                os.close(fd)
        except OSError as exc:
            log.debug("client went away: %s", exc)
            return False
