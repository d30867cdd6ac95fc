"""Keep-alive concurrency, encryption flags, the debug request log, command-line errors."""

import base64
import hashlib
import itertools
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from ebsfs.core.blocks import BLOCK_SIZE
from tests.server.conftest import Shared
from tests.server.raw import sign
from tests.serverproc import put_block

FORM = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
BODY = b"Action=DescribeSnapshots&Version=2016-11-15&Owner.1=self"


def _request(shared: Shared) -> bytes:
    headers = sign(shared.server, "POST", "/", BODY, FORM, service="ec2")
    lines = ["POST / HTTP/1.1", f"Host: 127.0.0.1:{shared.server.port}",
             *(f"{k}: {v}" for k, v in headers.items()),
             f"Content-Length: {len(BODY)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + BODY


def _answer(f: Any) -> int:
    status = int(f.readline().split()[1])
    length = 0
    while (line := f.readline()) not in (b"\r\n", b""):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    f.read(length)
    return status


def test_seventy_concurrent_keep_alive_connections(shared: Shared) -> None:
    conns = [socket.create_connection(("127.0.0.1", shared.server.port), timeout=20)
             for _ in range(70)]
    try:
        files = [c.makefile("rb") for c in conns]
        for _ in range(2):  # the second round reuses every connection
            for c in conns:
                c.sendall(_request(shared))
            assert [_answer(f) for f in files] == [200] * 70
    finally:
        for c in conns:
            c.close()


def test_encrypted_snapshots(shared: Shared) -> None:
    arn = "arn:aws:kms:us-east-1:000000000000:key/1234"
    r = shared.ebs.start_snapshot(VolumeSize=1, Encrypted=True, KmsKeyArn=arn)
    assert r["KmsKeyArn"] == arn and r["SseType"] == "sse-kms"
    snap = shared.ec2.describe_snapshots(SnapshotIds=[r["SnapshotId"]])["Snapshots"][0]
    assert snap["Encrypted"] is True and snap["KmsKeyId"] == arn
    other = shared.ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    with pytest.raises(shared.ebs.exceptions.ValidationException) as exc:
        shared.ebs.start_snapshot(VolumeSize=1, ParentSnapshotId=other, Encrypted=True)
    assert exc.value.response["Reason"] == "INVALID_PARAMETER_VALUE"
    with pytest.raises(shared.ebs.exceptions.ValidationException, match="kmsKeyArn"):
        shared.ebs.start_snapshot(VolumeSize=1, Encrypted=True, KmsKeyArn="not-an-arn")


def test_debug_logs_one_line_per_request(server_factory: Any) -> None:
    srv = server_factory("--log-level", "debug")
    ebs = srv.ebs()
    sid = ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    put_block(ebs, sid, 0, os.urandom(BLOCK_SIZE))
    srv.ec2().describe_snapshots(OwnerIds=["self"])
    srv.stop()
    lines = [line for line in srv.log_text().splitlines() if "ebsfs.server.requests" in line]
    assert len(lines) == 3
    assert "StartSnapshot POST /snapshots -> 201" in lines[0]
    assert f"PutSnapshotBlock PUT /snapshots/{sid}/blocks/0 -> 201" in lines[1]
    assert "DescribeSnapshots POST / -> 200" in lines[2]


@pytest.mark.parametrize("args", [
    ["--listen", "nonsense"], ["--throttle-rate", "2"], ["--latency-ms", "-1"],
    ["--access-key-id", "only-the-id", "--listen", "127.0.0.1:0"],
])
def test_bad_command_lines(tmp_path: Path, args: list[str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "ebsfs", "server", "--data-dir", str(tmp_path / "d"), *args],
        capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.strip()


def test_port_in_use_is_one_line(shared: Shared, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "ebsfs", "server", "--data-dir", str(tmp_path / "d"),
         "--listen", f"127.0.0.1:{shared.server.port}"],
        capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert proc.stderr.startswith("ebsfs: cannot listen on 127.0.0.1:")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_one_server_per_data_directory(shared: Shared) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "ebsfs", "server", "--data-dir", str(shared.data_dir),
         "--listen", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "is in use by another server" in proc.stderr
    shared.ec2.describe_snapshots(OwnerIds=["self"])


def test_settings_from_the_configuration_file(server_factory: Any, tmp_path: Path) -> None:
    config = tmp_path / "ebsfs.toml"
    config.write_text('[server]\nlog_level = "debug"\ncomplete_delay = 30\n')
    srv = server_factory("--config", str(config), "--complete-delay", "0")
    ebs = srv.ebs()
    sid = ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    ebs.complete_snapshot(SnapshotId=sid, ChangedBlocksCount=0)
    # The flag beat the file's complete_delay; the file's log level applied.
    state = srv.ec2().describe_snapshots(SnapshotIds=[sid])["Snapshots"][0]["State"]
    assert state == "completed"
    srv.stop()
    assert "StartSnapshot POST /snapshots -> 201" in srv.log_text()


def test_a_block_arriving_in_pieces_is_answered_at_once(shared: Shared) -> None:
    """A body that trickles in (part with the head, more queued before the server reads
    it, the rest later) is answered as soon as its last byte is there."""
    ebs = shared.ebs
    sid = ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    block = os.urandom(BLOCK_SIZE)
    path = f"/snapshots/{sid}/blocks/3"
    headers = sign(shared.server, "PUT", path, b"", {
        "x-amz-Data-Length": str(BLOCK_SIZE),
        "x-amz-Checksum": base64.b64encode(hashlib.sha256(block).digest()).decode(),
        "x-amz-Checksum-Algorithm": "SHA256",
        "Content-Type": "application/octet-stream",
    }, unsigned_payload=True)
    lines = [f"PUT {path} HTTP/1.1", f"Host: 127.0.0.1:{shared.server.port}",
             *(f"{k}: {v}" for k, v in headers.items()), f"Content-Length: {BLOCK_SIZE}"]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode()
    cuts = [100_000, 300_000, BLOCK_SIZE]
    with socket.create_connection(("127.0.0.1", shared.server.port), timeout=10) as s:
        s.sendall(head + block[: cuts[0]])
        for start, end in itertools.pairwise(cuts):
            time.sleep(0.3)
            s.sendall(block[start:end])
        started = time.monotonic()
        assert _answer(s.makefile("rb")) == 201
        assert time.monotonic() - started < 5
