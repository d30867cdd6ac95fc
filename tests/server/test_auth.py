"""SigV4: only requests signed with the server's key pair, for the right service and time,
are served; every other request gets AWS's 403 and changes nothing."""

import datetime
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import botocore.auth
import botocore.config
import pytest
from botocore import UNSIGNED
from botocore.exceptions import ClientError

from ebsfs.core import checksum
from ebsfs.core.blocks import BLOCK_SIZE
from tests.server.conftest import Shared
from tests.server.raw import send, sign, signed, store_state
from tests.serverproc import LocalServer, free_port

BLOCK = os.urandom(BLOCK_SIZE)


def _client(server: LocalServer, service: str, **kwargs: Any) -> Any:
    config = botocore.config.Config(retries={"max_attempts": 1}, **kwargs.pop("config", {}))
    params = {
        "endpoint_url": server.endpoint_url, "region_name": server.region,
        "aws_access_key_id": server.access_key_id,
        "aws_secret_access_key": server.secret_access_key, "config": config, **kwargs,
    }
    return boto3.session.Session().client(service, **params)


def _error(exc: pytest.ExceptionInfo[ClientError]) -> tuple[str, int]:
    r = exc.value.response
    return r["Error"]["Code"], r["ResponseMetadata"]["HTTPStatusCode"]


def _attempts(shared: Shared, ebs: Any, ec2: Any) -> list[tuple[str, int]]:
    """A write and a read through each API; returns each error (code, status)."""
    sid = shared.ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    before = store_state(shared.data_dir)
    calls = [
        lambda: ebs.start_snapshot(VolumeSize=1),
        lambda: ebs.put_snapshot_block(
            SnapshotId=sid, BlockIndex=0, BlockData=BLOCK, DataLength=BLOCK_SIZE,
            Checksum=checksum.block_checksum(BLOCK), ChecksumAlgorithm="SHA256"),
        lambda: ebs.complete_snapshot(SnapshotId=sid, ChangedBlocksCount=0),
        lambda: ec2.describe_snapshots(OwnerIds=["self"]),
        lambda: ec2.delete_snapshot(SnapshotId=sid),
    ]
    errors = []
    for call in calls:
        with pytest.raises(ClientError) as exc:
            call()
        errors.append(_error(exc))
    assert store_state(shared.data_dir) == before, "a rejected request changed the store"
    return errors


def test_wrong_secret(shared: Shared) -> None:
    ebs = _client(shared.server, "ebs", aws_secret_access_key="wrong")
    ec2 = _client(shared.server, "ec2", aws_secret_access_key="wrong")
    assert _attempts(shared, ebs, ec2) == [("InvalidSignatureException", 403)] * 3 + [
        ("SignatureDoesNotMatch", 403)] * 2


def test_unknown_access_key(shared: Shared) -> None:
    ebs = _client(shared.server, "ebs", aws_access_key_id="AKIAOTHER")
    ec2 = _client(shared.server, "ec2", aws_access_key_id="AKIAOTHER")
    assert _attempts(shared, ebs, ec2) == [("UnrecognizedClientException", 403)] * 3 + [
        ("AuthFailure", 403)] * 2


def test_unsigned(shared: Shared) -> None:
    sid = shared.ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    before = store_state(shared.data_dir)
    ebs_requests = [
        ("POST", "/snapshots", b'{"VolumeSize": 1}', {"Content-Type": "application/json"}),
        ("PUT", f"/snapshots/{sid}/blocks/0", BLOCK, {
            "x-amz-Data-Length": str(BLOCK_SIZE), "x-amz-Checksum-Algorithm": "SHA256",
            "x-amz-Checksum": checksum.block_checksum(BLOCK)}),
        ("POST", f"/snapshots/completion/{sid}", b"", {"x-amz-ChangedBlocksCount": "0"}),
    ]
    for method, path, body, headers in ebs_requests:
        answer = send(shared.server, method, path, body, headers)
        assert answer.status == 403
        assert answer.error_type == "MissingAuthenticationTokenException"
        assert answer.json() == {"message": "Missing Authentication Token"}
    answer = send(shared.server, "POST", "/", b"Action=DeleteSnapshot&SnapshotId=" + sid.encode(),
                  {"Content-Type": "application/x-www-form-urlencoded"})
    assert answer.status == 403 and b"<Code>MissingAuthenticationToken</Code>" in answer.body
    assert store_state(shared.data_dir) == before
    # botocore's unsigned mode is refused the same way.
    ec2 = _client(shared.server, "ec2", config={"signature_version": UNSIGNED})
    with pytest.raises(ClientError) as exc:
        ec2.describe_snapshots(OwnerIds=["self"])
    assert _error(exc) == ("MissingAuthenticationToken", 403)


def test_scope_for_another_service(shared: Shared) -> None:
    before = store_state(shared.data_dir)
    body = b'{"VolumeSize": 1}'
    answer = signed(shared.server, "POST", "/snapshots", body,
                    {"Content-Type": "application/json"}, service="ec2")
    assert answer.status == 403 and answer.error_type == "InvalidSignatureException"
    assert answer.json() == {"message": "Credential should be scoped to correct service: 'ebs'."}
    form = b"Action=DescribeSnapshots&Version=2016-11-15"
    answer = signed(shared.server, "POST", "/", form,
                    {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
                    service="ebs")
    assert answer.status == 403 and b"<Code>SignatureDoesNotMatch</Code>" in answer.body
    assert store_state(shared.data_dir) == before


def test_tampered_request(shared: Shared) -> None:
    body = b'{"VolumeSize": 1}'
    headers = sign(shared.server, "POST", "/snapshots", body, {"Content-Type": "application/json"})
    answer = send(shared.server, "POST", "/snapshots", b'{"VolumeSize": 2}', headers)
    assert answer.status == 403 and answer.error_type == "InvalidSignatureException"
    assert send(shared.server, "POST", "/snapshots", body, headers).status == 201


def test_each_signature_is_checked_though_the_header_is_remembered(shared: Shared) -> None:
    # The server remembers a checked Authorization header up to its signature; requests
    # that differ only in the signature must still be checked in full.
    body = b'{"VolumeSize": 1}'
    headers = sign(shared.server, "POST", "/snapshots", body, {"Content-Type": "application/json"})
    assert send(shared.server, "POST", "/snapshots", body, headers).status == 201
    auth = headers["Authorization"]
    before = store_state(shared.data_dir)
    other = auth[:-1] + ("0" if auth[-1] != "0" else "1")
    answer = send(shared.server, "POST", "/snapshots", body, {**headers, "Authorization": other})
    assert answer.status == 403 and answer.error_type == "InvalidSignatureException"
    assert "signature we calculated does not match" in answer.json()["message"]
    upper = auth[:-64] + auth[-64:].upper()
    answer = send(shared.server, "POST", "/snapshots", body, {**headers, "Authorization": upper})
    assert answer.status == 403 and answer.error_type == "IncompleteSignatureException"
    form = b"Action=DescribeSnapshots&Version=2016-11-15"
    answer = send(shared.server, "POST", "/", form, {**headers, "Content-Type":
                  "application/x-www-form-urlencoded; charset=utf-8"})
    assert answer.status == 403 and b"<Code>SignatureDoesNotMatch</Code>" in answer.body
    assert store_state(shared.data_dir) == before
    assert send(shared.server, "POST", "/snapshots", body, headers).status == 201


def test_stale_signature(shared: Shared, monkeypatch: pytest.MonkeyPatch) -> None:
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=20)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: past)
    answer = signed(shared.server, "GET", "/snapshots/snap-0123456789abcdef0/blocks")
    assert answer.status == 403 and answer.error_type == "InvalidSignatureException"
    assert "Signature expired" in answer.json()["message"]


def test_non_loopback_needs_an_explicit_key_pair(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items()
           if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    port = free_port()
    cmd = [sys.executable, "-m", "ebsfs", "server", "--data-dir", str(tmp_path / "d"),
           "--listen", f"0.0.0.0:{port}"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert proc.stderr.startswith("ebsfs: refusing to listen on non-loopback 0.0.0.0")
    assert "Traceback" not in proc.stderr
    srv = LocalServer(tmp_path / "d2", port=port)
    srv.access_key_id = "AKIAOWNKEYPAIR000001"
    srv.secret_access_key = "a-secret-of-our-own-0123456789"
    srv.command = lambda: [*cmd[:-1], f"0.0.0.0:{port}",  # type: ignore[method-assign]
                           "--access-key-id", srv.access_key_id,
                           "--secret-access-key", srv.secret_access_key]
    with srv:
        assert srv.ec2().describe_snapshots(OwnerIds=["self"])["Snapshots"] == []


def test_scope_date_must_match_the_request_date(shared: Shared) -> None:
    headers = sign(shared.server, "GET", "/snapshots/snap-0123456789abcdef0/blocks")
    auth = headers["Authorization"]
    date = headers["X-Amz-Date"][:8]
    other = (datetime.date.fromisoformat(f"{date[:4]}-{date[4:6]}-{date[6:]}")
             - datetime.timedelta(days=1)).strftime("%Y%m%d")
    headers["Authorization"] = auth.replace(f"/{date}/", f"/{other}/")
    answer = send(shared.server, "GET", "/snapshots/snap-0123456789abcdef0/blocks", b"", headers)
    assert answer.status == 403 and answer.error_type == "InvalidSignatureException"
    assert "Date in Credential scope does not match" in answer.json()["message"]
