"""Nobody let in, nothing exhausted (issue 12, items 10 and 11): the signature is checked
before a body is read, bodies are capped, connections are capped and slow heads dropped;
guessable key pairs are refused off loopback, and on loopback only loopback Host names are
answered (DNS rebinding). Requests are made over raw sockets."""

import json
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from ebsfs.core.blocks import BLOCK_SIZE
from ebsfs.server.connection import HEAD_TIMEOUT
from ebsfs.server.httpd import MAX_CONNECTIONS
from tests.server.conftest import Shared
from tests.server.raw import send, sign, signed
from tests.serverproc import LocalServer, free_port

FORM = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
DESCRIBE = b"Action=DescribeSnapshots&Version=2016-11-15&Owner.1=self"


def rss(pid: int) -> int:
    """Resident memory of a process, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def read_answer(sock: socket.socket) -> bytes:
    """Whatever the server sends until it closes (or the socket's timeout)."""
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return out


def signed_for_host(server: LocalServer, host: str, method: str, path: str, body: bytes,
                    headers: dict[str, str], service: str) -> bytes:
    """A request signed by botocore for ``http://HOST``, as a page rebinding HOST to
    127.0.0.1 would send it (the development pair is published)."""
    req = AWSRequest(method=method, url=f"http://{host}{path}", data=body, headers=headers)
    SigV4Auth(Credentials(server.access_key_id, server.secret_access_key), service,
              server.region).add_auth(req)
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}",
             "Connection: close"]
    lines += [f"{k}: {v}" for k, v in req.headers.items() if k.lower() != "host"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def ask(port: int, data: bytes) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        answer = read_answer(s)
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    return int(answer.split(b" ", 2)[1]), answer


# -- item 11: Host allowlist on loopback ------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "[::1]:{port}"])
def test_loopback_hosts_are_answered(shared: Shared, host: str) -> None:
    port = shared.server.port
    data = signed_for_host(shared.server, host.format(port=port), "POST", "/", DESCRIBE, FORM,
                           "ec2")
    status, answer = ask(port, data)
    assert status == 200, answer[:400]


@pytest.mark.parametrize("host", ["evil.example:{port}", "attacker.test", "127.0.0.1:{other}",
                                  "127.0.0.1", "localhost.evil.example:{port}", "10.0.0.1:{port}"])
def test_other_hosts_are_refused(shared: Shared, host: str) -> None:
    port = shared.server.port
    host = host.format(port=port, other=port + 1)
    status, answer = ask(port, signed_for_host(shared.server, host, "POST", "/", DESCRIBE, FORM,
                                               "ec2"))
    assert status == 403 and b"<Code>UnauthorizedOperation</Code>" in answer, answer[:400]
    body = json.dumps({"VolumeSize": 1}).encode()
    status, answer = ask(port, signed_for_host(shared.server, host, "POST", "/snapshots", body,
                                               {"Content-Type": "application/json"}, "ebs"))
    assert status == 403 and b"x-amzn-ErrorType: AccessDeniedException" in answer
    assert b'"Reason":"UNAUTHORIZED_ACCOUNT"' in answer
    # Nothing was started.
    assert shared.ec2.describe_snapshots(
        OwnerIds=["self"], Filters=[{"Name": "volume-size", "Values": ["1"]}]) is not None


def test_botocore_and_awscli_hosts_still_pass(shared: Shared) -> None:
    # boto3 sends Host: 127.0.0.1:PORT.
    assert shared.ec2.describe_snapshots(OwnerIds=["self"])["ResponseMetadata"][
        "HTTPStatusCode"] == 200
    localhost = LocalServer.__new__(LocalServer)
    localhost.__dict__.update(shared.server.__dict__)
    localhost.endpoint_url = f"http://localhost:{shared.server.port}"
    assert localhost.ec2().describe_snapshots(OwnerIds=["self"])["Snapshots"] is not None


# -- item 11: key pairs off loopback ----------------------------------------------------------


def _refused(tmp_path: Path, flags: list[str], env_pair: tuple[str, str] | None) -> str:
    env = {k: v for k, v in os.environ.items()
           if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    if env_pair:
        env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"] = env_pair
    cmd = [sys.executable, "-m", "ebsfs", "server", "--data-dir", str(tmp_path / "d"),
           "--listen", f"0.0.0.0:{free_port()}", *flags]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    return proc.stderr


def test_development_pair_refused_off_loopback_even_when_explicit(tmp_path: Path) -> None:
    from ebsfs.options.config import DEV_ACCESS_KEY_ID, DEV_SECRET_ACCESS_KEY

    flags = ["--access-key-id", DEV_ACCESS_KEY_ID, "--secret-access-key", DEV_SECRET_ACCESS_KEY]
    assert "published development key pair" in _refused(tmp_path, flags, None)
    pair = (DEV_ACCESS_KEY_ID, DEV_SECRET_ACCESS_KEY)
    assert "published development key pair" in _refused(tmp_path, [], pair)
    # Half of it is as public as all of it.
    flags = ["--access-key-id", "AKIAOTHER00000000000", "--secret-access-key",
             DEV_SECRET_ACCESS_KEY]
    assert "published development key pair" in _refused(tmp_path, flags, None)


def test_short_secret_refused_off_loopback(tmp_path: Path) -> None:
    flags = ["--access-key-id", "AKIAOTHER00000000000", "--secret-access-key", "abc"]
    assert "secret access key of 3 characters" in _refused(tmp_path, flags, None)
    assert "of 15 characters" in _refused(tmp_path, [], ("AKIAOTHER00000000000", "x" * 15))


# -- item 10: nothing allocated or kept for unauthenticated heads ------------------------------


def _raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))


def test_a_thousand_heads_cost_little_memory(server: LocalServer) -> None:
    _raise_fd_limit(4096)
    ec2 = server.client("ec2", max_attempts=5)
    ec2.describe_snapshots(OwnerIds=["self"])  # everything the server imports is loaded
    assert server.proc is not None
    pid = server.proc.pid
    before = rss(pid)
    heads = [
        # A body announced at the largest size accepted, never sent, with no signature or
        # a signature by an unknown key.
        f"POST / HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
        f"Content-Length: {2 << 20}\r\n\r\n".encode(),
        (f"PUT /snapshots/snap-0123456789abcdef0/blocks/0 HTTP/1.1\r\n"
         f"Host: 127.0.0.1:{server.port}\r\nContent-Length: {BLOCK_SIZE}\r\n"
         "Authorization: AWS4-HMAC-SHA256 Credential=AKIAUNKNOWN/20260101/us-east-1/ebs/"
         "aws4_request, SignedHeaders=host, Signature=" + "0" * 64 + "\r\n\r\n").encode(),
    ]
    socks: list[socket.socket] = []
    peak = before
    try:
        for n in range(1000):
            s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            socks.append(s)
            s.sendall(heads[n % 2])
            if n % 100 == 99:
                peak = max(peak, rss(pid))
        for _ in range(10):
            peak = max(peak, rss(pid))
            time.sleep(0.2)
        # Answered from the head: 403 (or 503 when more than MAX_CONNECTIONS were in
        # flight at once), not a wait for the body.
        statuses = set()
        for s in socks[:50]:
            s.settimeout(10)
            first = s.recv(100)
            statuses.add(first[:12])
        assert statuses <= {b"HTTP/1.1 403", b"HTTP/1.1 503"}, statuses
        # A normal request is answered while the thousand are still open on our side.
        answer = ec2.describe_snapshots(OwnerIds=["self"])
        assert answer["ResponseMetadata"]["HTTPStatusCode"] == 200
        peak = max(peak, rss(pid))
    finally:
        for s in socks:
            s.close()
    assert peak - before < 100 << 20, f"RSS grew by {(peak - before) >> 20} MiB"


def test_unauthenticated_body_is_answered_not_reset(shared: Shared) -> None:
    # The answer comes from the head; the body still on its way is read and discarded, so
    # the client (which sends it all before reading) gets the 403, not a reset.
    answer = send(shared.server, "PUT", "/snapshots/snap-0123456789abcdef0/blocks/0",
                  os.urandom(BLOCK_SIZE))
    assert answer.status == 403 and answer.error_type == "MissingAuthenticationTokenException"


def test_small_requests_are_capped_at_64_kib(shared: Shared) -> None:
    body = json.dumps({"VolumeSize": 1, "Description": "x" * (70 << 10)}).encode()
    answer = signed(shared.server, "POST", "/snapshots", body,
                    {"Content-Type": "application/json"})
    assert answer.status == 413 and answer.error_type == "RequestEntityTooLargeException"
    form = DESCRIBE + b"&Filter.1.Name=description&Filter.1.Value.1=" + b"x" * (70 << 10)
    answer = signed(shared.server, "POST", "/", form, FORM, service="ec2")
    assert answer.status == 413 and b"<Code>RequestEntityTooLarge</Code>" in answer.body
    # Just under the cap is read and answered on its merits.
    form = DESCRIBE + b"&Filter.1.Name=description&Filter.1.Value.1=" + b"x" * 1000
    assert signed(shared.server, "POST", "/", form, FORM, service="ec2").status == 200


def _busy(server: LocalServer) -> list[socket.socket]:
    """MAX_CONNECTIONS connections each in the middle of a request head (not idle: none
    of them is closed to make room)."""
    socks = [socket.create_connection(("127.0.0.1", server.port), timeout=10)
             for _ in range(MAX_CONNECTIONS)]
    for s in socks:
        s.sendall(b"POST / HTTP/1.1\r\n")
    time.sleep(0.5)  # every one of them has its thread, and its first bytes
    return socks


def test_connections_beyond_the_cap_get_503(server: LocalServer) -> None:
    _raise_fd_limit(4096)
    busy = _busy(server)
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as extra:
            assert read_answer(extra).startswith(b"HTTP/1.1 503")
    finally:
        for s in busy:
            s.close()
    # Their threads end when they close; then requests are served again.
    ec2 = server.client("ec2", max_attempts=5)
    assert ec2.describe_snapshots(OwnerIds=["self"])["ResponseMetadata"]["HTTPStatusCode"] == 200


def test_slow_and_silent_heads_are_dropped(shared: Shared) -> None:
    port = shared.server.port
    silent = socket.create_connection(("127.0.0.1", port), timeout=4 * HEAD_TIMEOUT)
    slow = socket.create_connection(("127.0.0.1", port), timeout=4 * HEAD_TIMEOUT)
    started = time.monotonic()
    try:
        slow.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        deadline = started + 2 * HEAD_TIMEOUT
        closed = {"silent": False, "slow": False}
        for name, s in (("silent", silent), ("slow", slow)):
            while time.monotonic() < deadline:
                # The slow one sends a byte a second: trickling keeps no head alive.
                s.settimeout(1.0 if name == "slow" else max(0.1, deadline - time.monotonic()))
                try:
                    if name == "slow":
                        s.sendall(b"X")
                    if s.recv(100) == b"":
                        closed[name] = True
                        break
                except TimeoutError:
                    continue
                except (BrokenPipeError, ConnectionResetError):
                    closed[name] = True
                    break
        assert closed == {"silent": True, "slow": True}
        assert time.monotonic() - started < 2 * HEAD_TIMEOUT
    finally:
        silent.close()
        slow.close()


def _keep_alive(server: LocalServer) -> socket.socket:
    """A connection that made one signed request, read its answer, and stays open: what a
    client's connection pool keeps between requests."""
    headers = sign(server, "POST", "/", DESCRIBE, FORM, service="ec2")
    host = f"127.0.0.1:{server.port}"
    lines = ["POST / HTTP/1.1", f"Host: {host}", f"Content-Length: {len(DESCRIBE)}"]
    lines += [f"{k}: {v}" for k, v in headers.items() if k.lower() != "host"]
    s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + DESCRIBE)
    f = s.makefile("rb")
    assert f.readline().startswith(b"HTTP/1.1 200"), "not answered"
    length = 0
    while (line := f.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        if name.lower() == "content-length":
            length = int(value)
    f.read(length)
    return s


def test_idle_keep_alive_connections_do_not_starve_a_new_client(server: LocalServer) -> None:
    # MAX_CONNECTIONS connections idle between requests (the pools of a few busy mounts,
    # or a local user's) kept every new client out with 503s for IDLE_TIMEOUT (60 s): more
    # than botocore's retries wait. An idle connection is now closed to make room.
    _raise_fd_limit(4096)
    pooled = [_keep_alive(server) for _ in range(MAX_CONNECTIONS)]
    try:
        ec2 = server.client("ec2", max_attempts=3)
        answer = ec2.describe_snapshots(OwnerIds=["self"])
        assert answer["ResponseMetadata"]["HTTPStatusCode"] == 200
    finally:
        for s in pooled:
            s.close()


@pytest.mark.parametrize("service", ["ec2", "ebs"])
def test_the_busy_answer_is_an_error_botocore_can_read(server: LocalServer, service: str) -> None:
    # The 503 was JSON: to an EC2 client (XML) an unparsable answer, ResponseParserError,
    # which botocore does not retry; an error it parses is retried like any 503.
    _raise_fd_limit(4096)
    busy = _busy(server)
    try:
        client = server.client(service, max_attempts=1)
        with pytest.raises(ClientError) as exc:
            if service == "ec2":
                client.describe_snapshots(OwnerIds=["self"])
            else:
                client.start_snapshot(VolumeSize=1)
        assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
        assert "Too many connections" in str(exc.value)
    finally:
        for s in busy:
            s.close()


def test_second_account_pair_is_held_to_the_same_rules_off_loopback(tmp_path: Path) -> None:
    # Only the main pair was checked: --second-account with the published development pair
    # (or a 1-character secret) served another account to the network.
    from ebsfs.options.config import DEV_ACCESS_KEY_ID, DEV_SECRET_ACCESS_KEY

    main = ["--access-key-id", "AKIAOTHER00000000000", "--secret-access-key", "s" * 40]
    dev = ["--second-account", f"{DEV_ACCESS_KEY_ID}:{DEV_SECRET_ACCESS_KEY}:111122223333"]
    assert "development key pair as --second-account" in _refused(tmp_path, main + dev, None)
    short = ["--second-account", "AKIASECOND0000000000:x:111122223333"]
    assert "--second-account secret of 1 characters" in _refused(tmp_path, main + short, None)
