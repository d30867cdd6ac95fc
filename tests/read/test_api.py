"""ebsfs.aws.api: botocore errors become ebsfs errors; blocks are verified before returned."""

import contextlib
import datetime
import hashlib
import json
import logging
import os
import socket
import threading
import time
import tomllib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import boto3.session
import botocore
import botocore.credentials
import botocore.exceptions
import pytest
from botocore.credentials import RefreshableCredentials

from ebsfs.aws import blockcalls
from ebsfs.aws.api import Api
from ebsfs.aws.blockcalls import BlockCalls, ClientBlockCalls, block_calls
from ebsfs.aws.convert import convert as _convert
from ebsfs.core import checksum, errors
from ebsfs.core.blocks import BLOCK_SIZE
from ebsfs.options.config import DEV_ACCESS_KEY_ID, DEV_SECRET_ACCESS_KEY, AwsConfig
from ebsfs.server.sigv4 import Verifier
from tests.serverproc import LocalServer, list_blocks, upload_image, wait_state


def _client_error(code: str, status: int, reason: str = "", message: str = "m") -> Exception:
    response: dict = {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    if reason:
        response["Reason"] = reason
    return botocore.exceptions.ClientError(response, "Op")


@pytest.mark.parametrize(
    ("exc", "cls"),
    [
        (
            _client_error("AccessDeniedException", 403, "UNAUTHORIZED_ACCOUNT"),
            errors.AccessDeniedError,
        ),
        (_client_error("InvalidSignatureException", 403), errors.AccessDeniedError),
        (_client_error("AuthFailure", 401), errors.AccessDeniedError),
        (
            _client_error("ResourceNotFoundException", 404, "SNAPSHOT_NOT_FOUND"),
            errors.NotFoundError,
        ),
        (_client_error("InvalidSnapshot.NotFound", 400), errors.NotFoundError),
        (
            _client_error("ValidationException", 400, "INVALID_BLOCK_TOKEN"),
            errors.InvalidTokenError,
        ),
        (_client_error("ValidationException", 400, "INVALID_PAGE_TOKEN"), errors.InvalidTokenError),
        (_client_error("InternalServerException", 500), errors.ApiError),
        (
            _client_error(
                "InvalidSignatureException", 403, message="x-amz-Checksum does not match"
            ),
            errors.ChecksumError,
        ),
        (botocore.exceptions.NoCredentialsError(), errors.AccessDeniedError),
        (
            botocore.exceptions.EndpointConnectionError(endpoint_url="http://127.0.0.1:1"),
            errors.BackendUnavailableError,
        ),
        (
            botocore.exceptions.ReadTimeoutError(endpoint_url="http://127.0.0.1:1"),
            errors.BackendUnavailableError,
        ),
    ],
)
def test_conversion(exc: Exception, cls: type) -> None:
    converted = _convert(exc, "Op")
    assert type(converted) is cls
    assert str(converted).startswith("Op")


def test_token_error_keeps_code_and_reason() -> None:
    converted = _convert(_client_error("ValidationException", 400, "INVALID_BLOCK_TOKEN"), "Op")
    assert isinstance(converted, errors.InvalidTokenError)
    assert (converted.code, converted.reason, converted.status) == (
        "ValidationException",
        "INVALID_BLOCK_TOKEN",
        400,
    )


def _api() -> Api:
    return Api(AwsConfig(endpoint_url="http://127.0.0.1:9", region="us-east-1"))


def test_unreachable_endpoint_is_backend_unavailable() -> None:
    api = Api(AwsConfig(endpoint_url="http://127.0.0.1:9", region="us-east-1", max_attempts=1))
    with pytest.raises(errors.BackendUnavailableError):
        api.list_blocks("snap-0123456789abcdef0")


# ---- the lean block calls (ebsfs.aws.blockcalls) against real HTTP -------------------------------

SNAP = "snap-0123456789abcdef0"
#: Real AWS block tokens carry + / = (they must be percent-encoded in the query).
AWS_LIKE_TOKEN = "AAUBAf+Lq3c/mGZsWn8Ysm9yT1Q2=="


def _block(seed: int) -> bytes:
    return bytes([seed % 256]) * 4096 + os.urandom(BLOCK_SIZE - 4096)


@dataclass
class Seen:
    """One request as the scripted server received it."""

    method: str
    target: str
    headers: dict[str, str]
    body: bytes


#: What the scripted server does with a request: the bytes to answer (a tuple: then close),
#: SILENT (keep the connection open and say nothing) or CLOSE (close it without an answer).
Answer = Callable[[Seen], bytes | tuple[bytes] | str]
SILENT = "silent"
CLOSE = "close"


class ScriptedServer:
    """A loopback HTTP/1.1 server that records every request and answers from a script."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.seen: list[Seen] = []
        self.connections = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._stop = threading.Event()
        self._open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            self._open.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        f = conn.makefile("rb")
        try:
            while True:
                line = f.readline()
                if not line:
                    return
                method, target, _ = line.decode().split(" ", 2)
                headers: dict[str, str] = {}
                while (h := f.readline()) not in (b"\r\n", b""):
                    name, value = h.decode().split(":", 1)
                    headers[name.strip().lower()] = value.strip()
                body = f.read(int(headers.get("content-length", 0)))
                seen = Seen(method, target, headers, body)
                self.seen.append(seen)
                answer = self.answer(seen)
                if answer == SILENT:
                    self._stop.wait()
                    return
                if answer == CLOSE:
                    return
                if isinstance(answer, tuple):
                    conn.sendall(answer[0])
                    return
                assert isinstance(answer, bytes)
                conn.sendall(answer)
        except OSError:
            return
        finally:
            f.close()
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        for conn in self._open:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def scripted() -> Iterator[Callable[[Answer], ScriptedServer]]:
    servers: list[ScriptedServer] = []

    def make(answer: Answer) -> ScriptedServer:
        servers.append(ScriptedServer(answer))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def _http(status: str, headers: dict[str, str], body: bytes, length: int | None = None) -> bytes:
    head = [f"HTTP/1.1 {status}", f"Content-Length: {len(body) if length is None else length}"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def _block_answer(data: bytes, sum_b64: str | None = None, length: int | None = None,
                  algorithm: str = "SHA256") -> bytes:
    return _http(
        "200 OK",
        {
            "Content-Type": "application/octet-stream",
            "x-amz-Checksum": sum_b64 or checksum.block_checksum(data),
            "x-amz-Checksum-Algorithm": algorithm,
            "x-amz-Data-Length": str(len(data)),
        },
        data,
        length,
    )


def _error_answer(status: str, code: str, reason: str = "", message: str = "no") -> bytes:
    body: dict[str, str] = {"Message": message}
    if reason:
        body["Reason"] = reason
    return _http(
        status,
        {"Content-Type": "application/json", "x-amzn-ErrorType": f"{code}:http://internal/"},
        json.dumps(body).encode(),
    )


def _put_answer(seen: Seen) -> bytes:
    sent = seen.headers.get("x-amz-checksum", "")
    return _http(
        "201 Created",
        {"Content-Type": "application/json", "x-amz-Checksum": sent,
         "x-amz-Checksum-Algorithm": "SHA256"},
        json.dumps({"Checksum": sent, "ChecksumAlgorithm": "SHA256"}).encode(),
    )


def _lean_api(url: str, **config: Any) -> Api:
    return Api(AwsConfig(endpoint_url=url, region="us-east-1", **config))


def _verify_signature(seen: Seen) -> None:
    path, _, query = seen.target.partition("?")
    Verifier(DEV_ACCESS_KEY_ID, DEV_SECRET_ACCESS_KEY).verify(
        seen.method, path, query, seen.headers,
        lambda: hashlib.sha256(seen.body).hexdigest(), "ebs",
    )


def test_lean_requests_are_what_boto3_sends(
    scripted: Callable[[Answer], ScriptedServer],
) -> None:
    """Same target, headers, signed headers and body as the ebs client's, validly signed."""
    data = _block(1)

    def answer(seen: Seen) -> bytes:
        return _put_answer(seen) if seen.method == "PUT" else _block_answer(data)

    srv = scripted(answer)
    api = _lean_api(srv.url)
    assert api.get_block(SNAP, 7, AWS_LIKE_TOKEN) == data
    api.ebs.get_snapshot_block(SnapshotId=SNAP, BlockIndex=7, BlockToken=AWS_LIKE_TOKEN)[
        "BlockData"
    ].read()
    sum_b64 = checksum.block_checksum(data)
    api.put_block(SNAP, 9, memoryview(data), sum_b64)
    api.ebs.put_snapshot_block(
        SnapshotId=SNAP, BlockIndex=9, BlockData=data, DataLength=BLOCK_SIZE,
        Checksum=sum_b64, ChecksumAlgorithm="SHA256",
    )
    lean_get, boto_get, lean_put, boto_put = srv.seen
    encoded = "AAUBAf%2BLq3c%2FmGZsWn8Ysm9yT1Q2%3D%3D"
    assert lean_get.target == f"/snapshots/{SNAP}/blocks/7?blockToken={encoded}"
    assert lean_put.target == f"/snapshots/{SNAP}/blocks/9"
    sdk_only = {"amz-sdk-invocation-id", "amz-sdk-request"}
    for lean, boto in ((lean_get, boto_get), (lean_put, boto_put)):
        assert (lean.method, lean.target, lean.body) == (boto.method, boto.target, boto.body)
        assert set(lean.headers) == set(boto.headers) - sdk_only
        for name in set(lean.headers) - {"authorization", "x-amz-date", "user-agent"}:
            assert lean.headers[name] == boto.headers[name], name
        signed = lean.headers["authorization"].split("SignedHeaders=")[1].split(",")[0]
        assert signed == boto.headers["authorization"].split("SignedHeaders=")[1].split(",")[0]
        _verify_signature(lean)
    assert lean_put.headers["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD"
    assert lean_put.body == data


class _EndpointWithoutSession:
    """A client's endpoint as a botocore that renamed ``http_session`` would have it."""

    def __init__(self, real: Any) -> None:
        self._real = real

    def __getattr__(self, name: str) -> Any:
        if name == "http_session":
            raise AttributeError(name)
        return getattr(self._real, name)


def _without_http_session(monkeypatch: pytest.MonkeyPatch) -> None:
    """ebs clients made from now on have an ``_endpoint`` without ``http_session``."""
    real = boto3.session.Session.client

    def client(self: boto3.session.Session, service: str, *args: Any, **kw: Any) -> Any:
        made = real(self, service, *args, **kw)
        if service == "ebs":
            made._endpoint = _EndpointWithoutSession(made._endpoint)
        return made

    monkeypatch.setattr(boto3.session.Session, "client", client)


@pytest.fixture(params=["lean", "client"])
def block_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test twice: with the lean block calls, and with the ebs client's ``_endpoint``
    lacking ``http_session`` (the fallback to the client's own calls)."""
    if request.param == "client":
        _without_http_session(monkeypatch)
    return str(request.param)


def _api_on(url: str, block_path: str, **config: Any) -> Api:
    api = _lean_api(url, **config)
    wanted = ClientBlockCalls if block_path == "client" else BlockCalls
    assert type(api.blocks) is wanted
    return api


def test_without_http_session_the_clients_own_calls_are_used(
    server: LocalServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _without_http_session(monkeypatch)
    with caplog.at_level(logging.INFO, logger="ebsfs.aws.blockcalls"):
        api = _api_on(server.endpoint_url, "client")
    lines = [r.getMessage() for r in caplog.records if r.name == "ebsfs.aws.blockcalls"]
    assert len(lines) == 1, lines
    assert "client's own calls" in lines[0] and "http_session" in lines[0]
    sid, tokens, image = _completed(server, 2)
    assert api.get_block(sid, 1, tokens[1]) == image[BLOCK_SIZE:]


def test_lean_round_trip_through_the_local_server(server: LocalServer, block_path: str) -> None:
    api = _api_on(server.endpoint_url, block_path)
    info = api.start_snapshot(1, client_token=str(uuid.uuid4()))
    blocks = {0: _block(0), 5: _block(5), 2047: _block(7)}
    for index, data in blocks.items():
        view: bytes | memoryview = data
        if index == 5:
            view = memoryview(bytearray(data))
        elif index == 2047:
            view = memoryview(data).cast("Q")  # items of 8 bytes: lengths still in bytes
        api.put_block(info.snapshot_id, index, view, checksum.block_checksum(data))
    api.complete_snapshot(
        info.snapshot_id,
        len(blocks),
        checksum.linear_aggregate(checksum.digest(blocks[i]) for i in sorted(blocks)),
    )
    wait_state(server.ec2(), info.snapshot_id)
    page = api.list_blocks(info.snapshot_id)
    assert [i for i, _ in page.blocks] == sorted(blocks)
    for index, token in page.blocks:
        assert api.get_block(info.snapshot_id, index, token) == blocks[index]


def _completed(server: LocalServer, nblocks: int = 2) -> tuple[str, dict[int, str], bytes]:
    image = b"".join(_block(i) for i in range(nblocks))
    sid = upload_image(server.ebs(), server.ec2(), image)
    tokens, _ = list_blocks(server.ebs(), sid)
    return sid, tokens, image


def test_lean_error_answers_map_to_the_same_errors(server: LocalServer, block_path: str) -> None:
    sid, tokens, _ = _completed(server)
    api = _api_on(server.endpoint_url, block_path)
    with pytest.raises(errors.InvalidTokenError) as bad_token:
        api.get_block(sid, 0, tokens[1])
    assert bad_token.value.reason == "INVALID_BLOCK_TOKEN"
    with pytest.raises(errors.NotFoundError, match="GetSnapshotBlock"):
        api.get_block("snap-00000000000000000", 0, tokens[0])
    with pytest.raises(errors.InvalidValueError):
        api.get_block(sid, -1, tokens[0])
    pending = api.start_snapshot(1, client_token=str(uuid.uuid4())).snapshot_id
    data = _block(3)
    with pytest.raises(errors.ChecksumError, match="PutSnapshotBlock"):
        api.put_block(pending, 0, data, checksum.block_checksum(data[::-1]))
    with pytest.raises(errors.NotFoundError):
        api.put_block("snap-00000000000000000", 0, data, checksum.block_checksum(data))
    with pytest.raises(errors.ApiError) as short:
        api.put_block(pending, 0, data[:1000], checksum.block_checksum(data[:1000]))
    assert short.value.code == "ValidationException"
    # Damaged bytes on the way, throttling past the attempts, a stopped endpoint.
    server.restart("--corrupt-rate", "1")
    with pytest.raises(errors.ChecksumError, match="GetSnapshotBlock"):
        api.get_block(sid, 0, tokens[0])
    server.restart("--throttle-rate", "1")
    with pytest.raises(errors.ApiError) as throttled:
        _api_on(server.endpoint_url, block_path, max_attempts=1).get_block(sid, 0, tokens[0])
    assert throttled.value.code == "RequestThrottledException"
    server.stop()
    with pytest.raises(errors.BackendUnavailableError, match="GetSnapshotBlock"):
        _api_on(server.endpoint_url, block_path, max_attempts=1).get_block(sid, 0, tokens[0])


def test_lean_wrong_secret_is_access_denied(
    server: LocalServer, monkeypatch: pytest.MonkeyPatch, block_path: str
) -> None:
    sid, tokens, _ = _completed(server, 1)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", DEV_ACCESS_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    api = _api_on(server.endpoint_url, block_path)
    with pytest.raises(errors.AccessDeniedError, match="GetSnapshotBlock"):
        api.get_block(sid, 0, tokens[0])
    data = _block(1)
    with pytest.raises(errors.AccessDeniedError, match="PutSnapshotBlock"):
        api.put_block(sid, 0, data, checksum.block_checksum(data))


def test_lean_calls_sign_with_refreshed_credentials(server: LocalServer) -> None:
    """Refreshable credentials are refreshed when due, not captured once."""
    sid, tokens, _ = _completed(server, 1)
    refreshed: list[str] = []

    def refresh() -> dict[str, str]:
        refreshed.append("yes")
        later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
        return {
            "access_key": DEV_ACCESS_KEY_ID,
            "secret_key": DEV_SECRET_ACCESS_KEY,
            "token": "",
            "expiry_time": later.isoformat(),
        }

    # Expiring within botocore's refresh margin, and with a secret the server refuses.
    soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=1)
    credentials = RefreshableCredentials.create_from_metadata(
        {
            "access_key": DEV_ACCESS_KEY_ID,
            "secret_key": "stale",
            "token": "",
            "expiry_time": soon.isoformat(),
        },
        refresh_using=refresh,
        method="test",
    )
    api = _lean_api(server.endpoint_url)
    api.blocks = BlockCalls(api.ebs, credentials)
    assert len(api.get_block(sid, 0, tokens[0])) == BLOCK_SIZE
    assert refreshed


def test_lean_get_checks_what_the_answer_carries(
    scripted: Callable[[Answer], ScriptedServer],
) -> None:
    good = _block(2)
    answers: Iterator[bytes | tuple[bytes]] = iter([
        _block_answer(b"\1" + good[1:], checksum.block_checksum(good)),
        _block_answer(good[:100]),
        _block_answer(good, algorithm="CRC32"),
        (_block_answer(good[: BLOCK_SIZE // 2], length=BLOCK_SIZE),),  # half, then closed
        _block_answer(good),
    ])
    srv = scripted(lambda seen: next(answers))
    api = _lean_api(srv.url, max_attempts=0)
    with pytest.raises(errors.ChecksumError, match="block 3"):
        api.get_block(SNAP, 3, "t")
    with pytest.raises(errors.ChecksumError, match="100 bytes"):
        api.get_block(SNAP, 3, "t")
    with pytest.raises(errors.ChecksumError, match="CRC32"):
        api.get_block(SNAP, 3, "t")
    with pytest.raises(errors.ApiError) as cut:
        api.get_block(SNAP, 3, "t")
    assert cut.value.code == "IncompleteBody"
    assert api.get_block(SNAP, 3, "t") == good
    assert len(srv.seen) == 5  # body problems are not retried here (the layer above does)


def test_lean_retries_are_bounded_and_botocores(
    scripted: Callable[[Answer], ScriptedServer],
) -> None:
    """500s, throttling and dropped connections: max_attempts + 1 requests, then the error."""
    cases: list[tuple[bytes | str, int, type[errors.EbsfsError], str]] = [
        (_error_answer("500 Internal Server Error", "InternalServerException"), 2,
         errors.ApiError, "InternalServerException"),
        # throttling backs off from 1 s (botocore's scale for it): one retry keeps this short
        (_error_answer("400 Bad Request", "RequestThrottledException", "ACCOUNT_THROTTLED"), 1,
         errors.ApiError, "RequestThrottledException"),
        (CLOSE, 2, errors.BackendUnavailableError, ""),
    ]
    for answer, retries, cls, code in cases:
        srv = scripted(lambda seen, answer=answer: answer)  # type: ignore[misc]
        api = _lean_api(srv.url, max_attempts=retries)
        with pytest.raises(cls) as got:
            api.get_block(SNAP, 1, "t")
        if code:
            assert getattr(got.value, "code", "") == code
        assert len(srv.seen) == retries + 1
        data = _block(4)
        with pytest.raises(cls):
            api.put_block(SNAP, 1, data, checksum.block_checksum(data))
        assert len(srv.seen) == 2 * (retries + 1)
        assert all(s.body == data for s in srv.seen[retries + 1 :])
    # Not retried, as botocore does not retry them: 403, 404, a validation error.
    for answer in (
        _error_answer("403 Forbidden", "AccessDeniedException", "UNAUTHORIZED_ACCOUNT"),
        _error_answer("404 Not Found", "ResourceNotFoundException", "SNAPSHOT_NOT_FOUND"),
        _error_answer("400 Bad Request", "ValidationException", "INVALID_BLOCK_TOKEN"),
    ):
        srv = scripted(lambda seen, answer=answer: answer)  # type: ignore[misc]
        with pytest.raises(errors.EbsfsError):
            _lean_api(srv.url, max_attempts=5).get_block(SNAP, 1, "t")
        assert len(srv.seen) == 1


def test_lean_recovers_from_transient_failures(
    scripted: Callable[[Answer], ScriptedServer],
) -> None:
    good = _block(5)
    script: Iterator[bytes | str] = iter([
        CLOSE,
        _error_answer("503 Service Unavailable", "InternalServerException"),
        _block_answer(good),
        _error_answer("500 Internal Server Error", "InternalServerException"),
        CLOSE,
    ])
    srv = scripted(lambda seen: next(script, b"") or _put_answer(seen))
    api = _lean_api(srv.url, max_attempts=3)
    assert api.get_block(SNAP, 1, "t") == good
    api.put_block(SNAP, 1, good, checksum.block_checksum(good))
    assert [s.method for s in srv.seen] == ["GET"] * 3 + ["PUT"] * 3


def test_lean_calls_time_out(scripted: Callable[[Answer], ScriptedServer]) -> None:
    """A server that accepts and never answers: each attempt ends at the read timeout."""
    srv = scripted(lambda seen: SILENT)
    api = _lean_api(srv.url, max_attempts=1, connect_timeout=0.5, read_timeout=0.5)
    data = _block(6)
    for call in (
        lambda: api.get_block(SNAP, 1, "t"),
        lambda: api.put_block(SNAP, 1, data, checksum.block_checksum(data)),
    ):
        before = len(srv.seen)
        started = time.monotonic()
        with pytest.raises(errors.BackendUnavailableError, match="timeout"):
            call()
        # two attempts of 0.5 s and a back-off of at most 0.1 s; the rest is slack
        assert time.monotonic() - started < 2 * 0.5 + 0.1 + 3.0
        assert len(srv.seen) - before == 2


def test_lean_calls_under_the_servers_faults(server_factory: Callable[..., LocalServer]) -> None:
    """Throttling, 500s and dropped connections from the real server: puts all land, reads
    return the right bytes or a retryable error, never wrong bytes."""
    srv = server_factory("--throttle-rate", "0.05", "--error-rate", "0.2", "--drop-rate", "0.2")
    api = _lean_api(srv.endpoint_url, max_attempts=10)
    info = api.start_snapshot(1, client_token=str(uuid.uuid4()))
    blocks = {i: _block(i) for i in range(8)}
    for index, data in blocks.items():
        api.put_block(info.snapshot_id, index, data, checksum.block_checksum(data))
    api.complete_snapshot(
        info.snapshot_id,
        len(blocks),
        checksum.linear_aggregate(checksum.digest(blocks[i]) for i in sorted(blocks)),
    )
    wait_state(srv.ec2(max_attempts=10), info.snapshot_id)
    tokens, _ = list_blocks(srv.ebs(max_attempts=10), info.snapshot_id)
    ok = 0
    for index, data in blocks.items():
        try:
            assert api.get_block(info.snapshot_id, index, tokens[index]) == data
            ok += 1
        except errors.ApiError as exc:
            assert exc.code == "IncompleteBody"  # a body cut off: the read layer retries it
    assert ok >= 1
    srv.restart("--throttle-rate", "1")
    with pytest.raises(errors.ApiError) as throttled:
        _lean_api(srv.endpoint_url, max_attempts=1).get_block(info.snapshot_id, 0, tokens[0])
    assert throttled.value.code == "RequestThrottledException"


def _pinned(package: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The ``>=X.Y,<X.Z`` range pyproject.toml pins ``package`` to."""
    root = os.path.join(os.path.dirname(__file__), "..", "..", "pyproject.toml")
    with open(root, "rb") as f:
        deps = tomllib.load(f)["project"]["dependencies"]
    spec = next(d for d in deps if d.startswith(package + ">="))
    low, high = spec[len(package) + 2 :].split(",<")
    return tuple(map(int, low.split("."))), tuple(map(int, high.split(".")))


def test_botocore_has_every_part_the_block_calls_use(
    scripted: Callable[[Answer], ScriptedServer], caplog: pytest.LogCaptureFixture
) -> None:
    """Fails loudly, naming the part, where the mount would fall back to the client's calls in
    silence (one INFO line): a botocore outside the pin, or one that moved a part
    ``blockcalls`` is made of (its imports, the client's http_session, error parser and model,
    the standard retry objects, ``exceptions.from_code``). Run it before widening the pin."""
    version = tuple(int(p) for p in botocore.__version__.split(".")[:2])
    low, high = _pinned("botocore")
    assert low <= version < high, f"botocore {botocore.__version__} is outside the pin"
    assert blockcalls._MISSING is None, f"botocore lacks an import: {blockcalls._MISSING}"
    data = _block(8)
    script: Iterator[bytes] = iter([
        _error_answer("503 Service Unavailable", "InternalServerException"),
        _block_answer(data),
        _error_answer("400 Bad Request", "ValidationException", "INVALID_BLOCK_TOKEN"),
    ])
    srv = scripted(lambda seen: next(script, b"") or _put_answer(seen))
    api = _lean_api(srv.url, max_attempts=2)
    credentials = botocore.credentials.Credentials(DEV_ACCESS_KEY_ID, DEV_SECRET_ACCESS_KEY)
    # Made directly, not through block_calls(): a missing part raises here, named.
    calls = BlockCalls(api.ebs, credentials)
    heard: list[tuple[int, str]] = []
    calls.heard = lambda status, code: heard.append((status, code))
    body, headers = calls.get(SNAP, 1, AWS_LIKE_TOKEN)  # retried once by botocore's objects
    assert body.read() == data
    assert headers["x-amz-Checksum"] == checksum.block_checksum(data)
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        calls.get(SNAP, 1, AWS_LIKE_TOKEN)
    assert type(refused.value) is api.ebs.exceptions.ValidationException
    assert refused.value.response.get("Reason") == "INVALID_BLOCK_TOKEN"  # the second parse
    assert calls.put(SNAP, 2, data, checksum.block_checksum(data))["x-amz-Checksum"]
    assert heard == [(503, "InternalServerException"), (200, ""), (400, "ValidationException"),
                     (201, "")]
    for seen in srv.seen:
        _verify_signature(seen)
    with caplog.at_level(logging.INFO, logger="ebsfs.aws.blockcalls"):
        assert type(block_calls(api.ebs, credentials)) is BlockCalls
    assert not caplog.records
