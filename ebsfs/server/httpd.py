"""The HTTP/1.1 transport: a thread per keep-alive connection, bodies read with bounds,
block data sent with sendfile, one debug log line per request."""

import http.server
import logging
import socket
import time
from email.utils import formatdate
from http import HTTPStatus
from typing import Any

from ebsfs.server.app import App
from ebsfs.server.wire import Request, Response

log = logging.getLogger("ebsfs.server.requests")

#: Longest body accepted: one block plus room; anything longer is refused unread.
MAX_BODY = 2 << 20
#: Seconds a connection may stay idle, or a body may take to arrive.
IDLE_TIMEOUT = 60.0

_REASONS = {s.value: s.phrase for s in HTTPStatus}
_REASONS[402] = "Payment Required"


class Server(http.server.ThreadingHTTPServer):
    """A threading HTTP server that hands every request to an App."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], app: App) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, Handler)
        self.app = app


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ebsfs"
    sys_version = ""
    timeout = IDLE_TIMEOUT
    server: Server

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def do_HEAD(self) -> None:
        self._serve()

    def _read_body(self) -> tuple[bytes, bool]:
        text = self.headers.get("Content-Length")
        if text is None:
            return b"", True
        try:
            length = int(text)
        except ValueError:
            self.close_connection = True
            return b"", False
        if length < 0 or length > MAX_BODY:
            self.close_connection = True
            return b"", False
        if length == 0:
            return b"", True
        try:
            body = self.rfile.read(length)
        except OSError:
            body = b""
        if len(body) < length:
            # The client sent less than it announced: the connection cannot be reused.
            self.close_connection = True
            return body, False
        return body, True

    def _serve(self) -> None:
        started = time.perf_counter()
        raw_path, _, raw_query = self.path.partition("?")
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]},{value}" if key in headers else value
        body, complete = self._read_body()
        req = Request(self.command, raw_path, raw_query, headers, body, complete)
        resp = self.server.app.handle(req)
        sent = self._send(resp)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "%s %s %s %s -> %d%s %.1f ms",
                self.client_address[0], req.operation, self.command, self.path, resp.status,
                " dropped" if resp.drop else "", (time.perf_counter() - started) * 1000,
            )
        if not sent:
            self.close_connection = True

    def _send(self, resp: Response) -> bool:
        """Write the response; False if it was (deliberately or not) cut short."""
        length = resp.file_length if resp.file is not None else len(resp.body)
        head = [
            f"HTTP/1.1 {resp.status} {_REASONS.get(resp.status, '')}",
            f"Date: {formatdate(usegmt=True)}",
            f"Content-Length: {length}",
        ]
        head += [f"{k}: {v}" for k, v in resp.headers]
        if self.close_connection or resp.drop:
            head.append("Connection: close")
        data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
        try:
            if resp.drop:
                # Headers and half the body, then the connection goes away.
                payload = resp.body if resp.file is None else resp.file.read_bytes()
                self.connection.sendall(data + payload[: len(payload) // 2])
                self.connection.shutdown(socket.SHUT_RDWR)
                return False
            if resp.file is None:
                self.connection.sendall(data + resp.body)
                return True
            with open(resp.file, "rb") as f:
                self.connection.sendall(data)
                # socket.sendfile copes with the socket's timeout (non-blocking) mode.
                return self.connection.sendfile(f, 0, length) == length
        except OSError as exc:
            log.debug("client went away: %s", exc)
            return False
