"""Bad input: each request gets AWS's error, nothing stored changes, and the server goes on
serving. Requests are signed with botocore's signer and sent by hand, since boto3 refuses to
send most of them."""

import json
import os
from collections.abc import Callable

import pytest

from ebsfs.core import checksum
from ebsfs.core.blocks import BLOCK_SIZE
from tests.server.conftest import Shared
from tests.server.raw import Answer, send, sign, signed, store_state
from tests.serverproc import complete, put_block, wait_state

BLOCK = os.urandom(BLOCK_SIZE)
GOOD = checksum.block_checksum(BLOCK)
JSON = {"Content-Type": "application/json"}
FORM = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}


@pytest.fixture(scope="module")
def snaps(shared: Shared) -> tuple[str, str]:
    """(a pending snapshot with one block, a completed one)."""
    pending = shared.ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    put_block(shared.ebs, pending, 0, BLOCK)
    done = shared.ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    put_block(shared.ebs, done, 0, BLOCK)
    complete(shared.ebs, done, {0: checksum.digest(BLOCK)})
    wait_state(shared.ec2, done)
    return pending, done


def _put(shared: Shared, sid: str, index: str, body: bytes, headers: dict[str, str],
         **kwargs: object) -> Answer:
    path = f"/snapshots/{sid}/blocks/{index}"
    h = sign(shared.server, "PUT", path, b"", headers, unsigned_payload=True)
    return send(shared.server, "PUT", path, body, h, **kwargs)  # type: ignore[arg-type]


def _put_headers(length: int = BLOCK_SIZE, digest: str | None = GOOD) -> dict[str, str]:
    h = {"x-amz-Data-Length": str(length), "x-amz-Checksum-Algorithm": "SHA256"}
    if digest is not None:
        h["x-amz-Checksum"] = digest
    return h


CASES: dict[str, tuple[Callable[[Shared, tuple[str, str]], Answer], int, str, str]] = {
    "malformed json": (
        lambda s, p: signed(s.server, "POST", "/snapshots", b'{"VolumeSize": 1,', JSON),
        400, "SerializationException", ""),
    "json of the wrong type": (
        lambda s, p: signed(s.server, "POST", "/snapshots", b'{"VolumeSize": "big"}', JSON),
        400, "SerializationException", ""),
    "volume size 0": (
        lambda s, p: signed(s.server, "POST", "/snapshots", b'{"VolumeSize": 0}', JSON),
        400, "ValidationException", "greater than or equal to 1"),
    "volume size over 65536": (
        lambda s, p: signed(s.server, "POST", "/snapshots", b'{"VolumeSize": 65537}', JSON),
        400, "ValidationException", "INVALID_VOLUME_SIZE"),
    "volume size missing": (
        lambda s, p: signed(s.server, "POST", "/snapshots", b"{}", JSON),
        400, "ValidationException", "Value null at 'volumeSize'"),
    "body shorter than its content-length": (
        lambda s, p: _put(s, p[0], "1", BLOCK[:1000], _put_headers(),
                          content_length=BLOCK_SIZE, shut_write=True),
        400, "ValidationException", "Failed to read block data"),
    "index beyond the volume": (
        lambda s, p: _put(s, p[0], "2048", BLOCK, _put_headers()),
        400, "ValidationException", "INVALID_BLOCK"),
    "index not a number": (
        lambda s, p: _put(s, p[0], "abc", BLOCK, _put_headers()),
        400, "SerializationException", ""),
    "data length other than 524288": (
        lambda s, p: _put(s, p[0], "1", BLOCK, _put_headers(length=4096)),
        400, "ValidationException", "Block data length 4096 is not valid"),
    "checksum missing": (
        lambda s, p: _put(s, p[0], "1", BLOCK, _put_headers(digest=None)),
        400, "ValidationException", "Value null at 'checksum'"),
    "checksum wrong": (
        lambda s, p: _put(s, p[0], "1", BLOCK, _put_headers(digest=checksum.block_checksum(b"x"))),
        403, "InvalidSignatureException", "does not match the computed checksum"),
    "checksum not base64": (
        lambda s, p: _put(s, p[0], "1", BLOCK, _put_headers(digest="not*base64")),
        400, "ValidationException", "regular expression pattern"),
    "snapshot id breaking the pattern": (
        lambda s, p: _put(s, "snap-XYZ", "1", BLOCK, _put_headers()),
        400, "ValidationException", "^snap-[0-9a-f]+$"),
    "max results too small": (
        lambda s, p: signed(s.server, "GET", f"/snapshots/{p[1]}/blocks?maxResults=99"),
        400, "ValidationException", "greater than or equal to 100"),
    "max results too large": (
        lambda s, p: signed(s.server, "GET", f"/snapshots/{p[1]}/blocks?maxResults=10001"),
        400, "ValidationException", "less than or equal to 10000"),
    "negative starting index": (
        lambda s, p: signed(s.server, "GET", f"/snapshots/{p[1]}/blocks?startingBlockIndex=-1"),
        400, "ValidationException", "'startingBlockIndex'"),
    "block token missing": (
        lambda s, p: signed(s.server, "GET", f"/snapshots/{p[1]}/blocks/0"),
        400, "ValidationException", "Value null at 'blockToken'"),
    "count missing on completion": (
        lambda s, p: signed(s.server, "POST", f"/snapshots/completion/{p[0]}"),
        400, "ValidationException", "Value null at 'changedBlocksCount'"),
    "negative count on completion": (
        lambda s, p: signed(s.server, "POST", f"/snapshots/completion/{p[0]}", b"",
                            {"x-amz-ChangedBlocksCount": "-1"}),
        400, "ValidationException", "greater than or equal to 0"),
    "unknown path": (
        lambda s, p: signed(s.server, "GET", "/volumes/vol-1"),
        404, "UnknownOperationException", ""),
    "unknown method on a known path": (
        lambda s, p: signed(s.server, "DELETE", f"/snapshots/{p[0]}/blocks/0"),
        404, "UnknownOperationException", ""),
    "unknown ec2 action": (
        lambda s, p: signed(s.server, "POST", "/", b"Action=RunInstances&Version=2016-11-15",
                            FORM, service="ec2"),
        400, "InvalidAction", ""),
    "ec2 without action": (
        lambda s, p: signed(s.server, "POST", "/", b"Version=2016-11-15", FORM, service="ec2"),
        400, "MissingParameter", ""),
    "ec2 delete of a malformed id": (
        lambda s, p: signed(s.server, "POST", "/",
                            b"Action=DeleteSnapshot&Version=2016-11-15&SnapshotId=snap-ZZ",
                            FORM, service="ec2"),
        400, "InvalidParameterValue", "Expected: 'snap-...'"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_refused_and_changes_nothing(shared: Shared, snaps: tuple[str, str],
                                                  case: str) -> None:
    request, status, code, text = CASES[case]
    before = store_state(shared.data_dir)
    answer = request(shared, snaps)
    after = store_state(shared.data_dir)
    assert answer.status == status, answer.body
    if answer.headers.get("content-type", "").startswith("text/xml"):
        assert f"<Code>{code}</Code>".encode() in answer.body
        assert text.encode() in answer.body
    else:
        assert answer.error_type == code
        assert text in json.dumps(answer.json())
    assert after == before
    # Still serving, and the pending snapshot still takes writes.
    put_block(shared.ebs, snaps[0], 0, BLOCK)
    shared.ec2.describe_snapshots(SnapshotIds=list(snaps))


def test_oversized_body_is_refused_unread(shared: Shared, snaps: tuple[str, str]) -> None:
    before = store_state(shared.data_dir)
    answer = _put(shared, snaps[0], "1", b"", _put_headers(), content_length=64 << 20,
                  shut_write=True)
    assert answer.status == 400 and answer.error_type == "ValidationException"
    assert store_state(shared.data_dir) == before


def test_garbage_request_line(shared: Shared) -> None:
    import socket

    with socket.create_connection(("127.0.0.1", shared.server.port), timeout=5) as s:
        s.sendall(b"NONSENSE\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 400")
    shared.ec2.describe_snapshots(OwnerIds=["self"])
