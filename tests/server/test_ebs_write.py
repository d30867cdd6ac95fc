"""StartSnapshot, PutSnapshotBlock and CompleteSnapshot against the server, with boto3."""

import base64
import hashlib
import time
import uuid
from typing import Any

import pytest
from botocore.exceptions import ClientError

from ebsfs.core import checksum
from ebsfs.core.blocks import BLOCK_SIZE
from tests.server.conftest import Shared
from tests.server.raw import store_state
from tests.serverproc import complete, put_block, wait_state


def _payload(name: str) -> bytes:
    line = f"stackd-ebs-synthetic-{name}\n".encode()
    return (line * (BLOCK_SIZE // len(line) + 1))[:BLOCK_SIZE]


A, B, C, ZERO = _payload("a"), _payload("b"), _payload("c"), bytes(BLOCK_SIZE)


def _error(exc: pytest.ExceptionInfo[ClientError]) -> tuple[str, str, int, str]:
    r = exc.value.response
    return (r["Error"]["Code"], r.get("Reason", ""), r["ResponseMetadata"]["HTTPStatusCode"],
            r["Error"]["Message"])


def _start(ebs: Any, **kwargs: Any) -> str:
    kwargs.setdefault("VolumeSize", 1)
    return str(ebs.start_snapshot(**kwargs)["SnapshotId"])


# -- StartSnapshot --------------------------------------------------------------------------

def test_start_snapshot_answers_like_aws(shared: Shared) -> None:
    ebs = shared.ebs
    r = ebs.start_snapshot(VolumeSize=8, Description="d", Tags=[{"Key": "k", "Value": "v"}])
    assert r["ResponseMetadata"]["HTTPStatusCode"] == 201
    assert r["SnapshotId"].startswith("snap-") and len(r["SnapshotId"]) == 22
    assert r["Status"] == "pending"
    assert r["BlockSize"] == 524288 and r["VolumeSize"] == 8
    assert r["Description"] == "d" and r["Tags"] == [{"Key": "k", "Value": "v"}]
    assert r["OwnerId"] and abs(r["StartTime"].timestamp() - time.time()) < 60
    bare = ebs.start_snapshot(VolumeSize=1)
    assert "Tags" not in bare and "ParentSnapshotId" not in bare


@pytest.mark.parametrize(
    ("size", "code", "reason"),
    [(0, "ValidationException", ""), (65537, "ValidationException", "INVALID_VOLUME_SIZE")],
)
def test_start_snapshot_volume_size_bounds(shared: Shared, size: int, code: str,
                                           reason: str) -> None:
    # botocore checks the minimum itself; the raw client lets 0 through to the server.
    before = store_state(shared.data_dir)
    with pytest.raises(ClientError) as exc:
        shared.ebs_raw.start_snapshot(VolumeSize=size)
    got = _error(exc)
    assert got[:3] == (code, reason, 400)
    assert store_state(shared.data_dir) == before


def test_start_snapshot_largest_volume_is_accepted(shared: Shared) -> None:
    assert shared.ebs.start_snapshot(VolumeSize=65536)["VolumeSize"] == 65536


@pytest.mark.parametrize(("timeout", "ok"), [(9, False), (10, True), (4320, True), (4321, False)])
def test_start_snapshot_timeout_bounds(shared: Shared, timeout: int, ok: bool) -> None:
    ebs = shared.ebs_raw
    if ok:
        assert ebs.start_snapshot(VolumeSize=1, Timeout=timeout)["Status"] == "pending"
    else:
        with pytest.raises(ebs.exceptions.ValidationException, match="'timeout'"):
            ebs.start_snapshot(VolumeSize=1, Timeout=timeout)


def test_client_token_replays_the_original_answer(shared: Shared) -> None:
    ebs, ec2 = shared.ebs, shared.ec2
    token = str(uuid.uuid4())
    first = ebs.start_snapshot(VolumeSize=1, ClientToken=token, Description=token)
    put_block(ebs, first["SnapshotId"], 0, A)
    complete(ebs, first["SnapshotId"], {0: checksum.digest(A)})
    wait_state(ec2, first["SnapshotId"])
    again = ebs.start_snapshot(VolumeSize=1, ClientToken=token, Description=token)
    assert again["SnapshotId"] == first["SnapshotId"]
    assert again["Status"] == "pending"  # the original answer, as AWS replays it
    assert again["StartTime"] == first["StartTime"]
    mine = ec2.describe_snapshots(
        OwnerIds=["self"], Filters=[{"Name": "description", "Values": [token]}])
    assert [s["SnapshotId"] for s in mine["Snapshots"]] == [first["SnapshotId"]]


def test_client_token_with_other_parameters_conflicts(shared: Shared) -> None:
    ebs = shared.ebs
    token = str(uuid.uuid4())
    ebs.start_snapshot(VolumeSize=1, ClientToken=token, Description="x")
    with pytest.raises(ebs.exceptions.ConflictException) as exc:
        ebs.start_snapshot(VolumeSize=1, ClientToken=token, Description="y")
    _code, reason, status, message = _error(exc)
    assert (status, reason) == (409, "")
    assert message == "Current request does not match request stored with this token."


def test_parent_must_be_completed(shared: Shared) -> None:
    ebs, ec2 = shared.ebs, shared.ec2
    pending = _start(ebs)
    with pytest.raises(ebs.exceptions.ValidationException) as exc:
        ebs.start_snapshot(VolumeSize=1, ParentSnapshotId=pending)
    assert _error(exc)[1] == "INVALID_SNAPSHOT_ID"
    assert f"Source snapshot ({pending}) is not complete." == _error(exc)[3]
    with pytest.raises(ebs.exceptions.ResourceNotFoundException) as exc2:
        ebs.start_snapshot(VolumeSize=1, ParentSnapshotId="snap-0123456789abcdef0")
    assert _error(exc2)[1:3] == ("SNAPSHOT_NOT_FOUND", 404)
    failed = _start(ebs)
    ebs.complete_snapshot(SnapshotId=failed, ChangedBlocksCount=5)
    assert wait_state(ec2, failed)["State"] == "error"
    with pytest.raises(ebs.exceptions.ResourceNotFoundException):
        ebs.start_snapshot(VolumeSize=1, ParentSnapshotId=failed)


def test_bad_tags_are_refused(shared: Shared) -> None:
    ebs = shared.ebs
    with pytest.raises(ebs.exceptions.ValidationException) as exc:
        ebs.start_snapshot(VolumeSize=1, Tags=[{"Key": "aws:x", "Value": "v"}])
    assert _error(exc)[1] == "INVALID_TAG"
    with pytest.raises(ebs.exceptions.ValidationException) as exc:
        ebs.start_snapshot(VolumeSize=1, Tags=[{"Key": f"k{i}", "Value": "v"} for i in range(51)])
    assert _error(exc)[1] == "INVALID_TAG"


# -- PutSnapshotBlock -----------------------------------------------------------------------

def test_put_returns_the_server_checksum(shared: Shared) -> None:
    ebs = shared.ebs
    sid = _start(ebs)
    r = ebs.put_snapshot_block(SnapshotId=sid, BlockIndex=2047, BlockData=A, DataLength=BLOCK_SIZE,
                               Checksum=checksum.block_checksum(A), ChecksumAlgorithm="SHA256",
                               Progress=50)
    assert r["ResponseMetadata"]["HTTPStatusCode"] == 201
    assert r["Checksum"] == checksum.block_checksum(A) and r["ChecksumAlgorithm"] == "SHA256"


def test_put_beyond_the_volume(shared: Shared) -> None:
    ebs = shared.ebs
    sid = _start(ebs)
    with pytest.raises(ebs.exceptions.ValidationException) as exc:
        put_block(ebs, sid, 2048, A)
    assert _error(exc)[1] == "INVALID_BLOCK"
    assert _error(exc)[3] == "Block index 2048 is beyond the volume size extent"


def test_put_with_wrong_checksum_is_403(shared: Shared) -> None:
    ebs = shared.ebs
    sid = _start(ebs)
    with pytest.raises(ClientError) as exc:
        ebs.put_snapshot_block(SnapshotId=sid, BlockIndex=0, BlockData=A, DataLength=BLOCK_SIZE,
                               Checksum=checksum.block_checksum(B), ChecksumAlgorithm="SHA256")
    code, _reason, status, message = _error(exc)
    assert (code, status) == ("InvalidSignatureException", 403)
    assert message == (
        "The value passed in as x-amz-Checksum does not match the computed checksum. "
        f"Computed checksum: {checksum.block_checksum(A)} expected checksum: "
        f"{checksum.block_checksum(B)}")


def test_put_with_other_algorithm(shared: Shared) -> None:
    ebs = shared.ebs_raw
    sid = _start(ebs)
    with pytest.raises(ebs.exceptions.ValidationException) as exc:
        ebs.put_snapshot_block(SnapshotId=sid, BlockIndex=0, BlockData=A, DataLength=BLOCK_SIZE,
                               Checksum=checksum.block_checksum(A), ChecksumAlgorithm="SHA1")
    assert _error(exc)[1] == "INVALID_PARAMETER_VALUE"
    assert "Unsupported Checksum Algorithm 'SHA1'" in _error(exc)[3]


def test_put_data_length_other_than_a_block(shared: Shared) -> None:
    ebs = shared.ebs
    sid = _start(ebs)
    with pytest.raises(ebs.exceptions.ValidationException) as exc:
        ebs.put_snapshot_block(SnapshotId=sid, BlockIndex=0, BlockData=A, DataLength=1,
                               Checksum=checksum.block_checksum(A), ChecksumAlgorithm="SHA256")
    assert _error(exc)[1] == "INVALID_BLOCK"
    assert _error(exc)[3] == "Block data length 1 is not valid, expected 524288"
    with pytest.raises(ebs.exceptions.ValidationException) as exc:
        ebs.put_snapshot_block(SnapshotId=sid, BlockIndex=0, BlockData=A[:1000], DataLength=1000,
                               Checksum=checksum.block_checksum(A[:1000]),
                               ChecksumAlgorithm="SHA256")
    assert _error(exc)[1:] == ("INVALID_PARAMETER_VALUE", 400, "Failed to read block data")


def test_put_progress_out_of_range(shared: Shared) -> None:
    ebs = shared.ebs_raw
    sid = _start(ebs)
    with pytest.raises(ebs.exceptions.ValidationException, match="'progress'"):
        ebs.put_snapshot_block(SnapshotId=sid, BlockIndex=0, BlockData=A, DataLength=BLOCK_SIZE,
                               Checksum=checksum.block_checksum(A), ChecksumAlgorithm="SHA256",
                               Progress=101)


def test_put_after_completion_and_to_unknown(shared: Shared) -> None:
    ebs = shared.ebs
    sid = _start(ebs)
    complete(ebs, sid, {})
    with pytest.raises(ebs.exceptions.ValidationException) as exc:
        put_block(ebs, sid, 0, A)
    assert _error(exc)[1:] == ("INVALID_SNAPSHOT_ID", 400, "Snapshot is already completed")
    with pytest.raises(ebs.exceptions.ResourceNotFoundException) as exc2:
        put_block(ebs, "snap-0123456789abcdef0", 0, A)
    assert _error(exc2)[1:3] == ("SNAPSHOT_NOT_FOUND", 404)


def test_put_with_malformed_snapshot_id(shared: Shared) -> None:
    ebs = shared.ebs
    with pytest.raises(ebs.exceptions.ValidationException) as exc:
        put_block(ebs, "snap-NOT-HEX", 0, A)
    assert _error(exc)[1] == ""  # a framework error carries no Reason
    assert "Member must satisfy regular expression pattern: ^snap-[0-9a-f]+$" in _error(exc)[3]


def test_last_write_wins(shared: Shared) -> None:
    ebs, ec2 = shared.ebs, shared.ec2
    sid = _start(ebs)
    put_block(ebs, sid, 5, A)
    put_block(ebs, sid, 5, B)
    assert complete(ebs, sid, {5: checksum.digest(B)}) == "pending"
    assert wait_state(ec2, sid)["State"] == "completed"
    page = ebs.list_snapshot_blocks(SnapshotId=sid)
    token = page["Blocks"][0]["BlockToken"]
    got = ebs.get_snapshot_block(SnapshotId=sid, BlockIndex=5, BlockToken=token)
    assert got["BlockData"].read() == B


# -- CompleteSnapshot -----------------------------------------------------------------------

def _complete_raw(ebs: Any, sid: str, count: int, aggregate: str) -> str:
    return str(ebs.complete_snapshot(
        SnapshotId=sid, ChangedBlocksCount=count, Checksum=aggregate,
        ChecksumAlgorithm="SHA256", ChecksumAggregationMethod="LINEAR")["Status"])


def test_aws_aggregate_vectors_complete(shared: Shared) -> None:
    """ebs-direct-api.md §4.3: the aggregates AWS accepted, reproduced on the server."""
    ebs, ec2 = shared.ebs, shared.ec2
    sid = _start(ebs)
    for index, data in {0: B, 3: A, 7: ZERO, 2047: C}.items():
        put_block(ebs, sid, index, data)
    assert _complete_raw(ebs, sid, 4, "Pq34jf4xh07iqiQpo/morRl/xL06mqy1ERimH+Hypi8=") == "pending"
    assert wait_state(ec2, sid)["State"] == "completed"
    one = _start(ebs)
    put_block(ebs, one, 0, A)
    _complete_raw(ebs, one, 1, "hm74cqkUPpcI9ua01PNSVN2PLTzQAAMPsYCbeHfLIX4=")
    snap = wait_state(ec2, one)
    assert snap["State"] == "completed" and snap["Progress"] == "100%"


def test_aggregate_over_base64_text_ends_in_error(shared: Shared) -> None:
    ebs, ec2 = shared.ebs, shared.ec2
    sid = _start(ebs)
    put_block(ebs, sid, 0, A)
    put_block(ebs, sid, 2, B)
    text = "".join(checksum.block_checksum(x) for x in (A, B)).encode()
    wrong = base64.b64encode(hashlib.sha256(text).digest()).decode()
    assert wrong == "xKsCRmgUxD/XwebcOgEG4QQ7TRElxCfHnSnsGQDz4pU="
    assert _complete_raw(ebs, sid, 2, wrong) == "pending"
    snap = wait_state(ec2, sid)
    assert snap["State"] == "error"
    assert snap["StateMessage"] == "Checksum mismatch for snapshot"
    assert ebs.complete_snapshot(SnapshotId=sid, ChangedBlocksCount=2)["Status"] == "error"
    with pytest.raises(ebs.exceptions.ResourceNotFoundException):
        ebs.list_snapshot_blocks(SnapshotId=sid)


def test_count_mismatch_ends_in_error(shared: Shared) -> None:
    ebs, ec2 = shared.ebs, shared.ec2
    sid = _start(ebs)
    for _ in range(3):
        put_block(ebs, sid, 1, A)  # three puts, one distinct index
    assert ebs.complete_snapshot(SnapshotId=sid, ChangedBlocksCount=3)["Status"] == "pending"
    snap = wait_state(ec2, sid)
    assert (snap["State"], snap["StateMessage"]) == (
        "error", "Changed blocks count mismatch for snapshot")


def test_repeat_completion_reports_the_state(shared: Shared) -> None:
    ebs, ec2 = shared.ebs, shared.ec2
    sid = _start(ebs)
    assert ebs.complete_snapshot(SnapshotId=sid, ChangedBlocksCount=0)["Status"] == "pending"
    assert wait_state(ec2, sid)["State"] == "completed"
    again = ebs.complete_snapshot(SnapshotId=sid, ChangedBlocksCount=99)
    assert again["Status"] == "completed"
    assert again["ResponseMetadata"]["HTTPStatusCode"] == 202
    with pytest.raises(ebs.exceptions.ResourceNotFoundException):
        ebs.complete_snapshot(SnapshotId="snap-0123456789abcdef0", ChangedBlocksCount=0)


def test_completion_parameter_combinations(shared: Shared) -> None:
    ebs = shared.ebs
    sid = _start(ebs)
    with pytest.raises(ebs.exceptions.ValidationException,
                       match="Checksum algorithm is missing"):
        ebs.complete_snapshot(SnapshotId=sid, ChangedBlocksCount=0, Checksum="abc=")
    with pytest.raises(ebs.exceptions.ValidationException, match="Snapshot checksum is missing"):
        ebs.complete_snapshot(SnapshotId=sid, ChangedBlocksCount=0, ChecksumAlgorithm="SHA256")
    with pytest.raises(ebs.exceptions.ValidationException, match="enum value set"):
        ebs.complete_snapshot(SnapshotId=sid, ChangedBlocksCount=0, Checksum="abc=",
                              ChecksumAlgorithm="SHA256", ChecksumAggregationMethod="TREE")
    # Still open for writes: none of these sealed it.
    put_block(ebs, sid, 0, A)


def test_complete_delay_keeps_the_snapshot_pending(server_factory: Any) -> None:
    srv = server_factory("--complete-delay", "1.5")
    ebs, ec2 = srv.ebs(), srv.ec2()
    sid = _start(ebs)
    put_block(ebs, sid, 0, A)
    complete(ebs, sid, {0: checksum.digest(A)})
    snap = ec2.describe_snapshots(OwnerIds=["self"], SnapshotIds=[sid])["Snapshots"][0]
    assert snap["State"] == "pending" and snap["Progress"] == "0%"
    with pytest.raises(ebs.exceptions.ValidationException, match="already completed"):
        put_block(ebs, sid, 1, A)  # sealed although EC2 still says pending
    with pytest.raises(ebs.exceptions.ResourceNotFoundException):
        ebs.list_snapshot_blocks(SnapshotId=sid)
    assert ebs.complete_snapshot(SnapshotId=sid, ChangedBlocksCount=1)["Status"] == "pending"
    assert wait_state(ec2, sid, timeout=10)["State"] == "completed"


def test_timeout_sends_a_stale_snapshot_to_error(server_factory: Any) -> None:
    srv = server_factory("--timeout-unit", "0.1")  # Timeout=10 lasts one second
    ebs, ec2 = srv.ebs(), srv.ec2()
    stale = _start(ebs, Timeout=10)
    busy = _start(ebs, Timeout=10)
    for i in range(6):
        put_block(ebs, busy, i, A)
        time.sleep(0.3)
    snap = ec2.describe_snapshots(OwnerIds=["self"], SnapshotIds=[stale])["Snapshots"][0]
    assert (snap["State"], snap["StateMessage"]) == ("error", "Snapshot timed out")
    with pytest.raises(ebs.exceptions.ResourceNotFoundException):
        put_block(ebs, stale, 0, A)
    assert ebs.complete_snapshot(SnapshotId=stale, ChangedBlocksCount=0)["Status"] == "error"
    assert complete(ebs, busy, {i: checksum.digest(A) for i in range(6)}) == "pending"
    assert wait_state(ec2, busy)["State"] == "completed"
