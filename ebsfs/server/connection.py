"""One HTTP/1.1 connection: request heads parsed strictly from one receive buffer, bodies
received with bounds (a block straight into a page-aligned buffer), answers sent with
``sendfile`` for block data, one debug log line per request (docs/server.md, "Limits")."""

import contextlib
import logging
import mmap
import os
import re
import select
import socket
import socketserver
import struct
import time
from email.utils import formatdate
from http import HTTPStatus
from typing import TYPE_CHECKING

from ebsfs.core.blocks import BLOCK_SIZE
from ebsfs.server.wire import Request, Response

if TYPE_CHECKING:
    from ebsfs.server.httpd import Server

log = logging.getLogger("ebsfs.server.requests")

#: Longest body accepted (a block upload): one block plus room; anything longer is
#: refused unread. Other requests are held to ``app.MAX_SMALL_BODY``.
MAX_BODY = 2 << 20
#: Seconds a keep-alive connection may stay idle between requests.
IDLE_TIMEOUT = 60.0
#: Seconds a request head may take to arrive: from the connection's start for its first
#: request, from the head's first byte for later ones. Slower heads (slowloris) are dropped.
HEAD_TIMEOUT = 10.0
#: Seconds a request body may take to arrive, in all.
BODY_TIMEOUT = 60.0
#: After an answer given from the head alone, the body still on its way is read and
#: discarded (so that the client reads the answer, not a reset) while it keeps coming:
#: at most this long in all, and this long without a byte.
DRAIN_TIMEOUT = 5.0
DRAIN_PAUSE = 1.0
#: Longest request head (request line and headers) accepted.
HEAD_BUFFER = 65536
#: Most bytes received into the head buffer at once: a head is about 1 KiB, and whatever
#: of a block's body is read along with it has to be copied out again. The head buffer
#: starts at twice this and grows (up to HEAD_BUFFER) only for a longer head.
HEAD_READ = 4096
#: Pieces in which a body other than a block's is received: its buffer grows as it arrives.
BODY_READ = 65536
MAX_HEADERS = 100

_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_REQUEST_LINE = re.compile(rf"({_TOKEN}) (/[\x21-\x7e]*) HTTP/1\.([01])")
_HEADER_NAME = re.compile(_TOKEN)
# Header values: visible characters (obs-text included), spaces and tabs; no controls.
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")
_CONTENT_LENGTH = re.compile(r"[0-9]{1,18}")
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


class _BadRequest(Exception):
    pass


class Handler(socketserver.BaseRequestHandler):
    """Serves the requests of one connection, one after another.

    The socket is blocking, with kernel send and receive timeouts (``SO_RCVTIMEO``,
    ``SO_SNDTIMEO``): Python's own timeout mode would poll before every call. Request heads
    are read into one buffer and parsed from it; bodies are received straight into their
    destination.
    """

    server: "Server"
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
        # Received bytes not parsed yet are self._buf[self._pos:self._end]. The buffer
        # grows only when a head does not fit: an idle connection costs little.
        self._buf = bytearray(2 * HEAD_READ)
        self._buf_view = memoryview(self._buf)
        self._pos = self._end = 0
        # The first head is timed from the connection's start (HEAD_TIMEOUT), later ones
        # from their first byte, after up to IDLE_TIMEOUT of keep-alive silence.
        self._first = True
        # A block-sized body is received straight into this page-aligned buffer: no copy
        # out of a reader, and the store can write it with O_DIRECT as it is. It is
        # reused by the connection's next request, after this one was answered. Its pages
        # take memory only once written.
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
            if len(buf) >= HEAD_BUFFER:
                raise _BadRequest("request head too long")
            # A bytearray with a view on it cannot grow: a new one, twice the size.
            bigger = bytearray(min(2 * len(buf), HEAD_BUFFER))
            bigger[:self._end] = buf[:self._end]
            self._buf, self._buf_view = bigger, memoryview(bigger)
        n = self.request.recv_into(self._buf_view[self._end:], HEAD_READ)
        self._end += n
        return n

    def _find_head_end(self) -> tuple[int, int]:
        """Where the buffered head ends and the length of its terminator; (-1, 0): not yet.
        The head ends at the first empty line: "\n\r\n" (bare newlines are tolerated,
        as http.server does, hence also "\n\n"). Lines keep a trailing "\r", which the
        parsing strips."""
        buf = self._buf
        end = buf.find(b"\n\r\n", self._pos, self._end)
        bare = buf.find(b"\n\n", self._pos, self._end if end < 0 else end)
        if bare >= 0:
            return bare, 2
        if end >= 0:
            return end, 3
        return -1, 0

    def _read_head(self) -> tuple[str, str, str, dict[str, str]] | None:
        self.server.set_idle(self, self._end == self._pos)
        try:
            return self._wait_head()
        finally:
            self.server.set_idle(self, False)

    def _wait_head(self) -> tuple[str, str, str, dict[str, str]] | None:
        deadline = time.monotonic() + HEAD_TIMEOUT if self._first else None
        while True:
            end, skip = self._find_head_end()
            if end >= 0:
                break
            if deadline is None and self._end > self._pos:
                deadline = time.monotonic() + HEAD_TIMEOUT
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0 or not self._poller.poll(left * 1000):
                    log.info("%s: no complete request head within %.0f s; closing",
                             self.client_address[0], HEAD_TIMEOUT)
                    self.close_connection = True
                    return None
            if not self._fill():
                if self._end > self._pos:
                    self.close_connection = True
                return None
            self.server.set_idle(self, False)
        self._first = False
        text = self._buf[self._pos:end].decode("latin-1")
        self._pos = end + skip
        return self._parse_head(text)

    def _parse_head(self, text: str) -> tuple[str, str, str, dict[str, str]]:
        """Request line and headers, strictly: a token method, an origin-form target of
        visible ASCII, HTTP/1.0 or 1.1, header names that are tokens right before their
        colon (no space, no folded lines) and values without control characters."""
        lines = text.split("\n")
        if len(lines) > MAX_HEADERS + 1:
            raise _BadRequest("too many headers")
        m = _REQUEST_LINE.fullmatch(lines[0].removesuffix("\r"))
        if m is None:
            raise _BadRequest("malformed request line")
        method, target, minor = m.groups()
        version = "HTTP/1." + minor
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.removesuffix("\r").partition(":")
            if not sep or not _HEADER_NAME.fullmatch(name):
                raise _BadRequest("malformed header")
            if not _HEADER_VALUE.fullmatch(value):
                raise _BadRequest("control character in a header value")
            key = name.lower()
            value = value.strip(" \t")
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
        deadline = time.monotonic() + BODY_TIMEOUT
        # Wake up once the rest of the body is there rather than for every piece of it
        # (the kernel caps the low-water mark at half the receive buffer). poll() honours
        # the mark; the receive itself must not block: a blocking recv copies what is
        # there, then waits for the mark counted afresh, which the rest may never reach.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, length - got)
        try:
            while got < length:
                left = deadline - time.monotonic()
                if left <= 0 or not self._poller.poll(left * 1000):
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

    def _receive_small(self, length: int) -> bytes:
        """A body other than a block's, in a buffer that grows as its bytes arrive (an
        announced length reserves nothing); shorter than ``length`` if it stopped."""
        first = min(self._end - self._pos, length)
        data = bytearray(self._buf[self._pos:self._pos + first])
        self._pos += first
        sock = self.request
        deadline = time.monotonic() + BODY_TIMEOUT
        try:
            while len(data) < length:
                left = deadline - time.monotonic()
                if left <= 0 or not self._poller.poll(left * 1000):
                    break
                try:
                    piece = sock.recv(min(length - len(data), BODY_READ), socket.MSG_DONTWAIT)
                except BlockingIOError:
                    continue
                if not piece:
                    break
                data += piece
        except OSError:
            pass
        return bytes(data)

    def _content_length(self, headers: dict[str, str]) -> int:
        if "transfer-encoding" in headers:
            raise _BadRequest("chunked request bodies are not supported")
        text = headers.get("content-length")
        if text is None:
            return 0
        # ASCII digits only: int() would also take "+16", "1_6", " 16" or other scripts'
        # digits, and convert 5000 of them.
        if not _CONTENT_LENGTH.fullmatch(text):
            raise _BadRequest("malformed Content-Length")
        return int(text)

    def _read_body(self, method: str, headers: dict[str, str], length: int
                   ) -> tuple[bytes | memoryview, bool]:
        if length > MAX_BODY:
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
            body = self._receive_small(length)
        if len(body) < length:
            # The client sent less than it announced: the connection cannot be reused.
            self.close_connection = True
            return body, False
        return body, True

    def _drain(self, length: int, headers: dict[str, str]) -> None:
        """Read and discard what arrives of a body that will not be used, while it keeps
        coming (bounded in bytes and time), so that a client still sending it gets to read
        the answer instead of a connection reset."""
        if headers.get("expect", "").lower() == "100-continue":
            return  # the client waits for a 100 that will not come: nothing is on its way
        left = min(length, MAX_BODY) - self._end + self._pos
        self._pos = self._end
        scratch = memoryview(bytearray(BODY_READ))
        deadline = time.monotonic() + DRAIN_TIMEOUT
        with contextlib.suppress(OSError):
            while left > 0:
                wait = min(DRAIN_PAUSE, deadline - time.monotonic())
                if wait <= 0 or not self._poller.poll(wait * 1000):
                    return
                try:
                    n = self.request.recv_into(scratch, min(left, BODY_READ), socket.MSG_DONTWAIT)
                except BlockingIOError:
                    continue
                if not n:
                    return
                left -= n

    def _one(self) -> bool:
        head = self._read_head()
        if head is None:
            return False
        started = time.perf_counter() if self._debug else 0.0
        method, target, _, headers = head
        raw_path, _, raw_query = target.partition("?")
        length = self._content_length(headers)
        req = Request(method, raw_path, raw_query, headers)
        app = self.server.app
        refusal = app.admit(req, length)
        if refusal is not None:
            # Answered from the head: the body is never read, the connection not reused.
            self.close_connection = True
            resp = refusal
            sent = self._send(resp)
            if sent and length:
                self._drain(length, headers)
            sent = False
        else:
            req.body, req.body_complete = self._read_body(method, headers, length)
            resp = app.handle(req)
            if resp.close:
                self.close_connection = True
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
