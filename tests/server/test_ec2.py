"""The EC2 side: DescribeSnapshots with owners, ids, filters and paging; DeleteSnapshot;
CreateTags and DeleteTags; EC2's XML errors."""

import uuid
from typing import Any

import pytest
from botocore.exceptions import ClientError

from ebsfs.core.blocks import BLOCK_SIZE
from tests.server.conftest import Shared
from tests.serverproc import LocalServer, put_block, upload_image


def _code(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return str(exc.value.response["Error"]["Code"])


def _ids(snaps: list[dict[str, Any]]) -> list[str]:
    return [s["SnapshotId"] for s in snaps]


def test_describe_shows_every_field(shared: Shared) -> None:
    image = b"x" * BLOCK_SIZE
    sid = upload_image(shared.ebs, shared.ec2, image, 2, name="web", description="the web root")
    snap = shared.ec2.describe_snapshots(OwnerIds=["self"], SnapshotIds=[sid])["Snapshots"][0]
    assert snap["State"] == "completed" and snap["Progress"] == "100%"
    assert snap["VolumeSize"] == 2 and snap["VolumeId"] == "vol-ffffffff"
    assert snap["Description"] == "the web root" and snap["Encrypted"] is False
    assert snap["Tags"] == [{"Key": "Name", "Value": "web"}]
    assert snap["OwnerId"] == "000000000000" and snap["StartTime"].tzinfo is not None
    assert snap["FullSnapshotSizeInBytes"] == BLOCK_SIZE and "CompletionTime" in snap
    assert "StateMessage" not in snap
    pending = shared.ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    p = shared.ec2.describe_snapshots(SnapshotIds=[pending])["Snapshots"][0]
    assert (p["State"], p["Progress"]) == ("pending", "0%")
    assert "CompletionTime" not in p and "FullSnapshotSizeInBytes" not in p


def test_owners(shared: Shared) -> None:
    sid = shared.ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    assert sid in _ids(shared.ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"])
    assert sid in _ids(shared.ec2.describe_snapshots(OwnerIds=["000000000000"])["Snapshots"])
    assert sid in _ids(shared.ec2.describe_snapshots()["Snapshots"])
    assert shared.ec2.describe_snapshots(OwnerIds=["amazon"])["Snapshots"] == []
    assert shared.ec2.describe_snapshots(OwnerIds=["123456789012"])["Snapshots"] == []


def test_filters(shared: Shared) -> None:
    mark = uuid.uuid4().hex
    a = shared.ebs.start_snapshot(VolumeSize=1, Description=f"{mark} alpha",
                                  Tags=[{"Key": "team", "Value": "red"},
                                        {"Key": mark, "Value": ""}])["SnapshotId"]
    b = upload_image(shared.ebs, shared.ec2, b"y" * 10, 1, name=mark,
                     description=f"{mark} beta")

    def find(*filters: tuple[str, list[str]]) -> list[str]:
        resp = shared.ec2.describe_snapshots(
            OwnerIds=["self"], Filters=[{"Name": n, "Values": v} for n, v in filters])
        return sorted(_ids(resp["Snapshots"]))

    assert find(("description", [f"{mark}*"])) == sorted([a, b])
    assert find(("description", [f"{mark} ?lpha"])) == [a]
    assert find(("description", [f"{mark} beta", f"{mark} alpha"])) == sorted([a, b])
    assert find(("description", [f"{mark}*"]), ("status", ["completed"])) == [b]
    assert find(("description", [f"{mark}*"]), ("status", ["pending"])) == [a]
    assert find(("tag:Name", [mark])) == [b]
    assert find(("tag-key", [mark])) == [a]
    assert find(("tag:team", ["red"]), ("snapshot-id", [a, b])) == [a]
    assert find(("snapshot-id", [b])) == [b]
    assert find(("description", [mark.upper() + "*"])) == []  # case-sensitive
    with pytest.raises(ClientError) as exc:
        find(("no-such-filter", ["x"]))
    assert _code(exc) == "InvalidParameterValue"


def test_paging(server: LocalServer) -> None:
    ebs, ec2 = server.ebs(), server.ec2()
    made = [ebs.start_snapshot(VolumeSize=1, Description=f"s{i}")["SnapshotId"]
            for i in range(12)]
    seen: list[str] = []
    pages = 0
    kwargs: dict[str, Any] = {"OwnerIds": ["self"], "MaxResults": 5}
    while True:
        page = ec2.describe_snapshots(**kwargs)
        pages += 1
        assert len(page["Snapshots"]) <= 5
        seen += _ids(page["Snapshots"])
        if not page.get("NextToken"):
            break
        kwargs["NextToken"] = page["NextToken"]
    assert pages == 3 and sorted(seen) == sorted(made)
    paginated = ec2.get_paginator("describe_snapshots").paginate(
        OwnerIds=["self"], PaginationConfig={"PageSize": 5})
    assert sorted(s["SnapshotId"] for p in paginated for s in p["Snapshots"]) == sorted(made)
    assert len(ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]) == 12
    assert "NextToken" not in ec2.describe_snapshots(OwnerIds=["self"])
    # A filtered page scans MaxResults snapshots: it may hold fewer matches, yet go on.
    first = ec2.describe_snapshots(OwnerIds=["self"], MaxResults=5,
                                   Filters=[{"Name": "description", "Values": ["s11"]}])
    assert first["Snapshots"] == [] and first["NextToken"]
    for bad in ({"MaxResults": 4}, {"NextToken": "garbage"}):
        with pytest.raises(ClientError) as exc:
            ec2.describe_snapshots(OwnerIds=["self"], **bad)
        assert _code(exc) == "InvalidParameterValue"
    with pytest.raises(ClientError) as exc:
        ec2.describe_snapshots(SnapshotIds=made[:1], MaxResults=5)
    assert _code(exc) == "InvalidParameterCombination"


def test_snapshot_ids_must_exist_and_be_well_formed(shared: Shared) -> None:
    sid = shared.ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    with pytest.raises(ClientError) as exc:
        shared.ec2.describe_snapshots(SnapshotIds=[sid, "snap-0123456789abcdef0"])
    assert _code(exc) == "InvalidSnapshot.NotFound"
    assert exc.value.response["Error"]["Message"] == (
        "The snapshot 'snap-0123456789abcdef0' does not exist.")
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    with pytest.raises(ClientError) as exc:
        shared.ec2.describe_snapshots(SnapshotIds=["snap-0400DC0055E85B9BF"])
    assert _code(exc) == "InvalidParameterValue"
    assert "Expected: 'snap-...'" in exc.value.response["Error"]["Message"]


def test_delete_snapshot(shared: Shared) -> None:
    sid = shared.ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    put_block(shared.ebs, sid, 0, b"z" * BLOCK_SIZE)
    shared.ec2.delete_snapshot(SnapshotId=sid)  # pending snapshots can be deleted
    with pytest.raises(ClientError) as exc:
        shared.ec2.describe_snapshots(SnapshotIds=[sid])
    assert _code(exc) == "InvalidSnapshot.NotFound"
    with pytest.raises(shared.ebs.exceptions.ResourceNotFoundException):
        put_block(shared.ebs, sid, 1, b"z" * BLOCK_SIZE)
    with pytest.raises(ClientError) as exc:
        shared.ec2.delete_snapshot(SnapshotId=sid)
    assert _code(exc) == "InvalidSnapshot.NotFound"
    with pytest.raises(ClientError) as exc:
        shared.ec2.delete_snapshot(SnapshotId="vol-1234")
    assert _code(exc) == "InvalidParameterValue"
    with pytest.raises(ClientError) as exc:
        shared.ec2.delete_snapshot(SnapshotId=sid, DryRun=True)
    assert _code(exc) == "InvalidSnapshot.NotFound"


def test_create_and_delete_tags(shared: Shared) -> None:
    sid = shared.ebs.start_snapshot(VolumeSize=1, Tags=[{"Key": "a", "Value": "1"}])["SnapshotId"]

    def tags() -> dict[str, str]:
        snap = shared.ec2.describe_snapshots(SnapshotIds=[sid])["Snapshots"][0]
        return {t["Key"]: t["Value"] for t in snap.get("Tags", [])}

    shared.ec2.create_tags(Resources=[sid], Tags=[{"Key": "a", "Value": "2"},
                                                  {"Key": "b", "Value": ""}])
    assert tags() == {"a": "2", "b": ""}
    shared.ec2.delete_tags(Resources=[sid], Tags=[{"Key": "a", "Value": "wrong"}])
    assert tags() == {"a": "2", "b": ""}
    shared.ec2.delete_tags(Resources=[sid], Tags=[{"Key": "a"}])
    assert tags() == {"b": ""}
    for bad, code in [([{"Key": "aws:x", "Value": "1"}], "InvalidParameterValue"),
                      ([{"Key": "k" * 129, "Value": "1"}], "InvalidParameterValue"),
                      ([{"Key": f"k{i}", "Value": "1"} for i in range(50)], "TagLimitExceeded")]:
        with pytest.raises(ClientError) as exc:
            shared.ec2.create_tags(Resources=[sid], Tags=bad)
        assert _code(exc) == code
    assert tags() == {"b": ""}
    with pytest.raises(ClientError) as exc:
        shared.ec2.create_tags(Resources=["snap-0123456789abcdef0"], Tags=[{"Key": "x",
                                                                           "Value": "y"}])
    assert _code(exc) == "InvalidSnapshot.NotFound"
    with pytest.raises(ClientError) as exc:
        shared.ec2.create_tags(Resources=[sid], Tags=[{"Key": "x", "Value": "y"}], DryRun=True)
    assert _code(exc) == "DryRunOperation"
    assert tags() == {"b": ""}
    shared.ec2.delete_tags(Resources=[sid])
    assert tags() == {}


def test_unknown_action(shared: Shared) -> None:
    with pytest.raises(ClientError) as exc:
        shared.ec2.describe_volumes()
    assert _code(exc) == "InvalidAction"
    # The server goes on serving.
    shared.ec2.describe_snapshots(OwnerIds=["self"])
