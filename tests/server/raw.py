"""Hand-made requests to the server, for input that boto3 refuses to send: each is signed
with botocore's own SigV4 signer (or deliberately not), then sent over a plain socket."""

import json
import socket
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from ebsfs.server.records import data_bytes
from ebsfs.server.storage import INDEX_DELAY
from tests.serverproc import LocalServer


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error_type(self) -> str:
        return self.headers.get("x-amzn-errortype", "").split(":")[0]


def sign(
    server: LocalServer,
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    *,
    service: str = "ebs",
    secret: str | None = None,
    unsigned_payload: bool = False,
) -> dict[str, str]:
    """Headers of a SigV4-signed request, as botocore would make them."""
    url = server.endpoint_url + path
    req = AWSRequest(method=method, url=url, data=body, headers=dict(headers or {}))
    if unsigned_payload:
        req.headers["X-Amz-Content-SHA256"] = "UNSIGNED-PAYLOAD"
    creds = Credentials(server.access_key_id, secret or server.secret_access_key)
    signer = SigV4Auth(creds, service, server.region)
    if unsigned_payload:
        signer._should_sha256_sign_payload = lambda request: False  # type: ignore[method-assign]
    signer.add_auth(req)
    return {k: v for k, v in req.headers.items()}


def send(
    server: LocalServer,
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    *,
    content_length: int | None = None,
    shut_write: bool = False,
    timeout: float = 10.0,
) -> Answer:
    """Send one request over a fresh connection and read the answer.

    ``content_length`` may announce more bytes than ``body`` holds; ``shut_write`` then ends
    the upload early, as a client that dies mid-request would.
    """
    host = urlsplit(server.endpoint_url).netloc
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    hdrs = {k: v for k, v in (headers or {}).items() if k.lower() != "host"}
    length = len(body) if content_length is None else content_length
    hdrs.setdefault("Content-Length", str(length))
    lines += [f"{k}: {v}" for k, v in hdrs.items()]
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as s:
        s.sendall(data)
        if shut_write:
            s.shutdown(socket.SHUT_WR)
        f = s.makefile("rb")
        status_line = f.readline().decode()
        status = int(status_line.split()[1])
        got: dict[str, str] = {}
        while True:
            line = f.readline().decode("latin-1")
            if line in ("\r\n", "\n", ""):
                break
            k, _, v = line.partition(":")
            got[k.strip().lower()] = v.strip()
        n = int(got.get("content-length", "0"))
        payload = f.read(n)
    return Answer(status, got, payload)


def signed(
    server: LocalServer,
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    **kwargs: Any,
) -> Answer:
    """Sign as botocore does, then send."""
    sign_kw = {k: kwargs.pop(k) for k in ("service", "secret", "unsigned_payload") if k in kwargs}
    return send(server, method, path, body, sign(server, method, path, body, headers, **sign_kw),
                **kwargs)


def store_state(data_dir: Path) -> tuple[Any, ...]:
    """Everything the server has stored: snapshot records, block rows, stored contents and
    the segment files' sizes; once the server's index has caught up with the puts it has
    acknowledged (it indexes them a moment later)."""
    state = _store_state(data_dir)
    for _ in range(20):
        time.sleep(INDEX_DELAY + 0.1)
        again = _store_state(data_dir)
        if again == state:
            return state
        state = again
    raise AssertionError("the server's index never settled")


def _store_state(data_dir: Path) -> tuple[Any, ...]:
    db = sqlite3.connect(f"file:{data_dir / 'meta.sqlite3'}?mode=ro", uri=True)
    try:
        snaps = db.execute("SELECT id, doc FROM snapshots ORDER BY id").fetchall()
        rows = db.execute("SELECT snapshot_id, idx, digest FROM blocks ORDER BY 1, 2").fetchall()
        tokens = db.execute("SELECT token FROM client_tokens ORDER BY 1").fetchall()
    finally:
        db.close()
    segments = sorted((p.name, p.stat().st_size) for p in (data_dir / "segments").iterdir())
    return snaps, rows, tokens, stored(data_dir), segments


def stored(data_dir: Path) -> set[str]:
    """Hex SHA256 of every block content the server stores (once each)."""
    db = sqlite3.connect(f"file:{data_dir / 'meta.sqlite3'}?mode=ro", uri=True)
    try:
        return {bytes(r[0]).hex() for r in db.execute("SELECT digest FROM objects")}
    finally:
        db.close()


def allocated(data_dir: Path) -> int:
    """Bytes of data the segment files hold (punched holes not counted, nor the blocks a
    filesystem spends on mapping a file with many holes)."""
    return sum(data_bytes(path) for path in (data_dir / "segments").iterdir())
