"""Every fault option of ``ebsfs server``, seen from boto3."""

import os
import time
from typing import Any

import pytest
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    IncompleteReadError,
    ResponseStreamingError,
)
from urllib3.exceptions import ProtocolError

from ebsfs.core import checksum
from ebsfs.core.blocks import BLOCK_SIZE
from tests.server.raw import store_state
from tests.serverproc import complete, download_image, list_blocks, put_block, upload_image

BLOCK = os.urandom(BLOCK_SIZE)


def _code(exc: pytest.ExceptionInfo[ClientError]) -> tuple[str, int, str]:
    r = exc.value.response
    return r["Error"]["Code"], r["ResponseMetadata"]["HTTPStatusCode"], r.get("Reason", "")


def test_latency(server_factory: Any) -> None:
    srv = server_factory("--latency-ms", "300")
    ec2 = srv.ec2()
    ec2.describe_snapshots(OwnerIds=["self"])  # connection set up
    started = time.monotonic()
    for _ in range(3):
        ec2.describe_snapshots(OwnerIds=["self"])
    assert time.monotonic() - started >= 3 * 0.27  # 300 ms less the 10% jitter


def test_throttling(server_factory: Any) -> None:
    srv = server_factory("--throttle-rate", "1")
    ebs, ec2 = srv.ebs(max_attempts=2), srv.ec2()
    with pytest.raises(ClientError) as exc:
        ebs.start_snapshot(VolumeSize=1)
    assert _code(exc) == ("RequestThrottledException", 400, "ACCOUNT_THROTTLED")
    assert exc.value.response["ResponseMetadata"]["RetryAttempts"] >= 1  # botocore retried it
    with pytest.raises(ClientError) as exc:
        ec2.describe_snapshots(OwnerIds=["self"])
    assert _code(exc)[:2] == ("RequestLimitExceeded", 503)
    assert store_state(srv.data_dir)[0] == []


def test_internal_errors(server_factory: Any) -> None:
    srv = server_factory("--error-rate", "1")
    ebs, ec2 = srv.ebs(), srv.ec2()
    with pytest.raises(ClientError) as exc:
        ebs.start_snapshot(VolumeSize=1)
    assert _code(exc)[:2] == ("InternalServerException", 500)
    with pytest.raises(ClientError) as exc:
        ec2.describe_snapshots(OwnerIds=["self"])
    assert _code(exc)[:2] == ("InternalError", 500)
    assert store_state(srv.data_dir)[0] == []


def test_partial_faults_are_survived_by_retries(server_factory: Any) -> None:
    srv = server_factory("--throttle-rate", "0.1", "--error-rate", "0.1", "--fault-seed", "7")
    ebs, ec2 = srv.ebs(max_attempts=10), srv.ec2(max_attempts=10)
    image = os.urandom(2 * BLOCK_SIZE)
    sid = upload_image(ebs, ec2, image, 1)
    assert download_image(ebs, sid, length=len(image)) == image


def test_dropped_connections(server_factory: Any) -> None:
    srv = server_factory("--drop-rate", "1")
    ebs, ec2 = srv.ebs(), srv.ec2()
    dropped = (ConnectionClosedError, ResponseStreamingError, ProtocolError)
    with pytest.raises(dropped):
        ec2.describe_snapshots(OwnerIds=["self"])
    # The request was carried out; only its answer was lost (the ambiguous case).
    with pytest.raises(dropped):
        ebs.start_snapshot(VolumeSize=1, ClientToken="drop-test")
    srv.restart("--drop-rate", "0")
    again = srv.ebs().start_snapshot(VolumeSize=1, ClientToken="drop-test")
    ids = [s["SnapshotId"] for s in srv.ec2().describe_snapshots(OwnerIds=["self"])["Snapshots"]]
    assert ids == [again["SnapshotId"]]


def test_some_drops_are_survived_by_retries(server_factory: Any) -> None:
    srv = server_factory("--drop-rate", "0.2", "--fault-seed", "3")
    ebs, ec2 = srv.ebs(max_attempts=10), srv.ec2(max_attempts=10)
    image = os.urandom(4 * BLOCK_SIZE)
    sid = upload_image(ebs, ec2, image, 1)
    tokens, _ = list_blocks(ebs, sid)
    cut = 0
    for index, token in tokens.items():
        while True:  # botocore does not retry a body cut short: the reader does
            try:
                r = ebs.get_snapshot_block(SnapshotId=sid, BlockIndex=index, BlockToken=token)
                data = r["BlockData"].read()
                break
            except (ResponseStreamingError, ProtocolError, IncompleteReadError):
                cut += 1
        assert data == image[index * BLOCK_SIZE:(index + 1) * BLOCK_SIZE]
    assert len(tokens) == 4


def test_corrupted_block_data(server_factory: Any) -> None:
    srv = server_factory("--corrupt-rate", "1")
    ebs, ec2 = srv.ebs(), srv.ec2()
    sid = ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    put_block(ebs, sid, 0, BLOCK)
    complete(ebs, sid, {0: checksum.digest(BLOCK)})
    tokens, _ = list_blocks(ebs, sid)
    r = ebs.get_snapshot_block(SnapshotId=sid, BlockIndex=0, BlockToken=tokens[0])
    data = r["BlockData"].read()
    assert len(data) == BLOCK_SIZE and data != BLOCK
    assert r["Checksum"] == checksum.block_checksum(BLOCK)  # header unchanged
    assert checksum.block_checksum(data) != r["Checksum"]
    # Only the answer is altered: with corruption off the stored block reads back intact.
    srv.restart("--corrupt-rate", "0")
    tokens, _ = list_blocks(srv.ebs(), sid)
    ok = srv.ebs().get_snapshot_block(SnapshotId=sid, BlockIndex=0, BlockToken=tokens[0])
    assert ok["BlockData"].read() == BLOCK
    assert ec2.describe_snapshots(SnapshotIds=[sid])["Snapshots"][0]["State"] == "completed"
