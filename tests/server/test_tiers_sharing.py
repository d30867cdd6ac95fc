"""Archived snapshots (ModifySnapshotTier / RestoreSnapshotTier) and snapshots shared by a
second account (``--second-account``, ModifySnapshotAttribute), through plain boto3."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import pytest
from botocore.exceptions import ClientError

from ebsfs.core.blocks import BLOCK_SIZE
from tests.serverproc import LocalServer, get_block, list_blocks, upload_image

OTHER_KEY_ID = "AKIAEBSFSOTHERACCT00"
OTHER_SECRET = "ebsfs-second-account-secret-key"
OTHER_ACCOUNT = "111122223333"
SELF_ACCOUNT = "000000000000"


class Two:
    """One server holding two accounts, and boto3 clients of each."""

    def __init__(self, server: LocalServer) -> None:
        self.server = server
        self.ebs: Any = server.ebs()
        self.ec2: Any = server.ec2()
        self.other_ebs: Any = other_client(server, "ebs")
        self.other_ec2: Any = other_client(server, "ec2")


def other_client(server: LocalServer, service: str) -> Any:
    """A boto3 client of the second account."""
    return boto3.session.Session().client(
        service,
        endpoint_url=server.endpoint_url,
        region_name=server.region,
        aws_access_key_id=OTHER_KEY_ID,
        aws_secret_access_key=OTHER_SECRET,
        config=botocore.config.Config(retries={"mode": "standard", "max_attempts": 1}),
    )


def second_account_flag() -> tuple[str, str]:
    return "--second-account", f"{OTHER_KEY_ID}:{OTHER_SECRET}:{OTHER_ACCOUNT}"


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Two]:
    srv = LocalServer(tmp_path_factory.mktemp("two") / "data", *second_account_flag())
    srv.start()
    try:
        yield Two(srv)
    finally:
        srv.stop()


def _err(exc: pytest.ExceptionInfo[ClientError]) -> tuple[str, str]:
    resp = exc.value.response
    return str(resp["Error"]["Code"]), str(resp.get("Reason", ""))


def _ids(resp: dict[str, Any]) -> set[str]:
    return {s["SnapshotId"] for s in resp["Snapshots"]}


def _describe(ec2: Any, sid: str) -> dict[str, Any]:
    snap: dict[str, Any] = ec2.describe_snapshots(SnapshotIds=[sid])["Snapshots"][0]
    return snap


# -- archive tier -----------------------------------------------------------------------------


def test_archived_snapshot_is_refused_by_the_direct_apis(two: Two) -> None:
    image = b"a" * BLOCK_SIZE
    sid = upload_image(two.ebs, two.ec2, image, 1)
    other = upload_image(two.ebs, two.ec2, image, 1, parent=sid)
    tokens, _ = list_blocks(two.ebs, sid)
    assert _describe(two.ec2, sid)["StorageTier"] == "standard"

    resp = two.ec2.modify_snapshot_tier(SnapshotId=sid, StorageTier="archive")
    assert resp["SnapshotId"] == sid and resp["TieringStartTime"].tzinfo is not None
    snap = _describe(two.ec2, sid)
    assert snap["StorageTier"] == "archive" and snap["State"] == "completed"
    assert "RestoreExpiryTime" not in snap
    found = two.ec2.describe_snapshots(
        OwnerIds=["self"], Filters=[{"Name": "storage-tier", "Values": ["archive"]}])
    assert _ids(found) == {sid}

    for call in (
        lambda: two.ebs.list_snapshot_blocks(SnapshotId=sid),
        lambda: two.ebs.get_snapshot_block(SnapshotId=sid, BlockIndex=0, BlockToken=tokens[0]),
        lambda: two.ebs.list_changed_blocks(FirstSnapshotId=sid, SecondSnapshotId=other),
        lambda: two.ebs.list_changed_blocks(FirstSnapshotId=other, SecondSnapshotId=sid),
    ):
        with pytest.raises(ClientError) as exc:
            call()
        assert _err(exc) == ("ValidationException", "INVALID_SNAPSHOT_ID")
        assert "archive" in str(exc.value)
    # A child of an archived snapshot is still readable.
    assert list_blocks(two.ebs, other)[0]

    with pytest.raises(ClientError) as exc:
        two.ec2.modify_snapshot_tier(SnapshotId=sid, StorageTier="archive")
    assert _err(exc)[0] == "IncorrectState"


def test_temporary_and_permanent_restore(two: Two) -> None:
    image = b"t" * BLOCK_SIZE
    sid = upload_image(two.ebs, two.ec2, image, 1)
    with pytest.raises(ClientError) as exc:
        two.ec2.restore_snapshot_tier(SnapshotId=sid, PermanentRestore=True)
    assert _err(exc)[0] == "IncorrectState"
    two.ec2.modify_snapshot_tier(SnapshotId=sid)

    with pytest.raises(ClientError) as exc:
        two.ec2.restore_snapshot_tier(SnapshotId=sid)
    assert _err(exc)[0] == "InvalidParameterCombination"
    resp = two.ec2.restore_snapshot_tier(SnapshotId=sid, TemporaryRestoreDays=3)
    assert resp["SnapshotId"] == sid and resp["RestoreDuration"] == 3
    assert resp["IsPermanentRestore"] is False and "RestoreStartTime" in resp
    snap = _describe(two.ec2, sid)
    assert snap["StorageTier"] == "standard"
    expiry = snap["RestoreExpiryTime"] - resp["RestoreStartTime"]
    assert abs(expiry.total_seconds() - 3 * 86400) < 5
    tokens, _ = list_blocks(two.ebs, sid)
    assert get_block(two.ebs, sid, 0, tokens[0]) == image

    resp = two.ec2.restore_snapshot_tier(SnapshotId=sid, PermanentRestore=True)
    assert resp["IsPermanentRestore"] is True and "RestoreDuration" not in resp
    snap = _describe(two.ec2, sid)
    assert snap["StorageTier"] == "standard" and "RestoreExpiryTime" not in snap
    assert get_block(two.ebs, sid, 0, list_blocks(two.ebs, sid)[0][0]) == image


def test_only_completed_own_snapshots_are_archived(two: Two) -> None:
    pending = two.ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    with pytest.raises(ClientError) as exc:
        two.ec2.modify_snapshot_tier(SnapshotId=pending)
    assert _err(exc)[0] == "IncorrectState"
    theirs = upload_image(two.other_ebs, two.other_ec2, b"o" * 10, 1)
    two.other_ec2.modify_snapshot_attribute(
        SnapshotId=theirs, Attribute="createVolumePermission",
        CreateVolumePermission={"Add": [{"UserId": SELF_ACCOUNT}]})
    with pytest.raises(ClientError) as exc:
        two.ec2.modify_snapshot_tier(SnapshotId=theirs)
    assert _err(exc)[0] == "InvalidSnapshot.NotFound"


def test_archive_survives_a_restart(tmp_path: Path) -> None:
    with LocalServer(tmp_path / "data") as srv:
        ebs, ec2 = srv.ebs(), srv.ec2()
        sid = upload_image(ebs, ec2, b"r" * 10, 1)
        ec2.modify_snapshot_tier(SnapshotId=sid, StorageTier="archive")
        srv.restart()
        assert _describe(ec2, sid)["StorageTier"] == "archive"
        with pytest.raises(ClientError):
            ebs.list_snapshot_blocks(SnapshotId=sid)


# -- a second account and sharing ------------------------------------------------------------


def test_second_account_owns_its_snapshots(two: Two) -> None:
    theirs = upload_image(two.other_ebs, two.other_ec2, b"s" * 10, 1)
    mine = upload_image(two.ebs, two.ec2, b"m" * 10, 1)
    assert _describe(two.other_ec2, theirs)["OwnerId"] == OTHER_ACCOUNT
    assert theirs not in _ids(two.ec2.describe_snapshots(OwnerIds=["self"]))
    assert theirs not in _ids(two.ec2.describe_snapshots())
    assert mine not in _ids(two.other_ec2.describe_snapshots())
    with pytest.raises(ClientError) as exc:
        two.ec2.describe_snapshots(SnapshotIds=[theirs])
    assert _err(exc)[0] == "InvalidSnapshot.NotFound"
    # Not shared: the direct APIs know nothing of it, and it cannot be changed.
    tokens, _ = list_blocks(two.other_ebs, theirs)
    for call in (
        lambda: two.ebs.list_snapshot_blocks(SnapshotId=theirs),
        lambda: two.ebs.get_snapshot_block(SnapshotId=theirs, BlockIndex=0,
                                           BlockToken=tokens[0]),
        lambda: two.ebs.start_snapshot(VolumeSize=1, ParentSnapshotId=theirs),
    ):
        with pytest.raises(ClientError) as exc:
            call()
        assert _err(exc) == ("ResourceNotFoundException", "SNAPSHOT_NOT_FOUND")
    pending = two.other_ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    with pytest.raises(ClientError) as exc:
        two.ebs.put_snapshot_block(
            SnapshotId=pending, BlockIndex=0, BlockData=bytes(BLOCK_SIZE),
            DataLength=BLOCK_SIZE, Checksum="x" * 44, ChecksumAlgorithm="SHA256")
    assert _err(exc)[0] == "ResourceNotFoundException"
    with pytest.raises(ClientError) as exc:
        two.ec2.delete_snapshot(SnapshotId=theirs)
    assert _err(exc)[0] == "InvalidSnapshot.NotFound"


def test_shared_snapshot_is_listed_and_readable(two: Two) -> None:
    image = b"h" * BLOCK_SIZE
    shared = upload_image(two.other_ebs, two.other_ec2, image, 1)
    two.other_ec2.modify_snapshot_attribute(
        SnapshotId=shared, Attribute="createVolumePermission",
        CreateVolumePermission={"Add": [{"UserId": SELF_ACCOUNT}]})
    attr = two.other_ec2.describe_snapshot_attribute(
        SnapshotId=shared, Attribute="createVolumePermission")
    assert attr["CreateVolumePermissions"] == [{"UserId": SELF_ACCOUNT}]

    # OwnerIds=[self] leaves it out, even by id; RestorableBy self and a bare id find it.
    assert shared not in _ids(two.ec2.describe_snapshots(OwnerIds=["self"]))
    assert two.ec2.describe_snapshots(OwnerIds=["self"], SnapshotIds=[shared])["Snapshots"] == []
    assert shared in _ids(two.ec2.describe_snapshots(RestorableByUserIds=["self"]))
    assert _describe(two.ec2, shared)["OwnerId"] == OTHER_ACCOUNT
    tokens, _ = list_blocks(two.ebs, shared)
    assert get_block(two.ebs, shared, 0, tokens[0]) == image
    # The owner stops sharing (the other botocore form): gone again.
    two.other_ec2.modify_snapshot_attribute(
        SnapshotId=shared, Attribute="createVolumePermission", OperationType="remove",
        UserIds=[SELF_ACCOUNT])
    assert shared not in _ids(two.ec2.describe_snapshots(RestorableByUserIds=["self"]))
    with pytest.raises(ClientError) as exc:
        two.ebs.list_snapshot_blocks(SnapshotId=shared)
    assert _err(exc)[0] == "ResourceNotFoundException"


def test_public_snapshot_is_not_readable_directly(two: Two) -> None:
    public = upload_image(two.other_ebs, two.other_ec2, b"p" * 10, 1)
    two.other_ec2.modify_snapshot_attribute(
        SnapshotId=public, Attribute="createVolumePermission",
        CreateVolumePermission={"Add": [{"Group": "all"}]})
    assert public in _ids(two.ec2.describe_snapshots(RestorableByUserIds=["all"]))
    assert public not in _ids(two.ec2.describe_snapshots(RestorableByUserIds=["self"]))
    assert public not in _ids(two.ec2.describe_snapshots(OwnerIds=["self"]))
    with pytest.raises(ClientError) as exc:
        two.ebs.list_snapshot_blocks(SnapshotId=public)
    assert _err(exc)[0] == "ResourceNotFoundException"
    with pytest.raises(ClientError) as exc:
        two.other_ec2.modify_snapshot_attribute(
            SnapshotId=public, Attribute="createVolumePermission",
            CreateVolumePermission={"Add": [{"UserId": "not-an-id"}]})
    assert _err(exc)[0] == "InvalidParameterValue"


def test_second_account_flag_is_checked(tmp_path: Path) -> None:
    srv = LocalServer(tmp_path / "data", "--second-account", "only:two")
    with pytest.raises(RuntimeError, match="ACCOUNT_ID"):
        srv.start()
    srv = LocalServer(tmp_path / "data2", "--second-account",
                      f"{OTHER_KEY_ID}:{OTHER_SECRET}:{SELF_ACCOUNT}")
    with pytest.raises(RuntimeError, match="account id other than"):
        srv.start()


def test_what_a_share_does_not_give(two: Two) -> None:
    # The main account may read what the second shares with it, nothing more: no change to
    # it, no block token outliving the share, no ListChangedBlocks against an unshared one.
    image = b"s" * BLOCK_SIZE
    shared = upload_image(two.other_ebs, two.other_ec2, image, 1)
    private = upload_image(two.other_ebs, two.other_ec2, b"p" * BLOCK_SIZE, 1)
    two.other_ec2.modify_snapshot_attribute(
        SnapshotId=shared, Attribute="createVolumePermission",
        CreateVolumePermission={"Add": [{"UserId": SELF_ACCOUNT}]})
    calls = [
        lambda: two.ec2.delete_snapshot(SnapshotId=shared),
        lambda: two.ec2.create_tags(Resources=[shared], Tags=[{"Key": "k", "Value": "v"}]),
        lambda: two.ec2.delete_tags(Resources=[shared]),
        lambda: two.ec2.modify_snapshot_tier(SnapshotId=shared, StorageTier="archive"),
        lambda: two.ec2.restore_snapshot_tier(SnapshotId=shared, PermanentRestore=True),
        lambda: two.ec2.modify_snapshot_attribute(
            SnapshotId=shared, Attribute="createVolumePermission",
            CreateVolumePermission={"Add": [{"Group": "all"}]}),
        lambda: two.ec2.describe_snapshot_attribute(
            SnapshotId=shared, Attribute="createVolumePermission"),
    ]
    for call in calls:
        with pytest.raises(ClientError) as exc:
            call()
        assert _err(exc)[0] == "InvalidSnapshot.NotFound"
    for first, second in ((shared, private), (private, shared)):
        with pytest.raises(ClientError) as exc:
            two.ebs.list_changed_blocks(FirstSnapshotId=first, SecondSnapshotId=second)
        assert _err(exc)[0] == "ResourceNotFoundException"
    tokens, _ = list_blocks(two.ebs, shared)
    two.other_ec2.modify_snapshot_attribute(
        SnapshotId=shared, Attribute="createVolumePermission",
        CreateVolumePermission={"Remove": [{"UserId": SELF_ACCOUNT}]})
    with pytest.raises(ClientError) as exc:
        get_block(two.ebs, shared, 0, tokens[0])
    assert _err(exc)[0] == "ResourceNotFoundException"
    # Nothing changed for the owner.
    snap = _describe(two.other_ec2, shared)
    assert snap.get("Tags") is None and snap["StorageTier"] == "standard"
    assert get_block(two.other_ebs, shared, 0, tokens[0]) == image


def test_sharing_follows_awss_rules(two: Two) -> None:
    # AWS: a snapshot encrypted with the default KMS key cannot be shared with another
    # account; account ids are added or removed, not both, in one call; at most 500.
    share = {"Add": [{"UserId": OTHER_ACCOUNT}]}
    default_key = two.ebs.start_snapshot(VolumeSize=1, Encrypted=True)["SnapshotId"]
    with pytest.raises(ClientError) as exc:
        two.ec2.modify_snapshot_attribute(SnapshotId=default_key,
                                          Attribute="createVolumePermission",
                                          CreateVolumePermission=share)
    assert _err(exc)[0] == "InvalidParameterValue"
    assert two.ec2.describe_snapshot_attribute(
        SnapshotId=default_key, Attribute="createVolumePermission"
    )["CreateVolumePermissions"] == []
    own_key = two.ebs.start_snapshot(
        VolumeSize=1, Encrypted=True,
        KmsKeyArn=f"arn:aws:kms:us-east-1:{SELF_ACCOUNT}:key/0d0d0d0d-0000-4000-8000-0000000000aa",
    )["SnapshotId"]
    two.ec2.modify_snapshot_attribute(SnapshotId=own_key, Attribute="createVolumePermission",
                                      CreateVolumePermission=share)
    with pytest.raises(ClientError) as exc:
        two.ec2.modify_snapshot_attribute(
            SnapshotId=own_key, Attribute="createVolumePermission",
            CreateVolumePermission={"Add": [{"UserId": "444455556666"}],
                                    "Remove": [{"UserId": OTHER_ACCOUNT}]})
    assert _err(exc)[0] == "InvalidParameterCombination"
    with pytest.raises(ClientError) as exc:
        two.ec2.modify_snapshot_attribute(
            SnapshotId=own_key, Attribute="createVolumePermission",
            CreateVolumePermission={"Add": [{"UserId": f"{n:012d}"} for n in range(501)]})
    assert _err(exc)[0] == "InvalidParameterValue"
    assert two.ec2.describe_snapshot_attribute(
        SnapshotId=own_key, Attribute="createVolumePermission"
    )["CreateVolumePermissions"] == [{"UserId": OTHER_ACCOUNT}]
