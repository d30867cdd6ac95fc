"""``ebsfs server --encryption-by-default``: an account with EBS encryption by default."""

import os
from pathlib import Path
from typing import Any

import pytest

from ebsfs.commands.server import build_config
from ebsfs.core.blocks import BLOCK_SIZE
from ebsfs.server.ebs import DEFAULT_KMS_KEY_ARN
from tests.serverproc import upload_image

OTHER_KEY = "arn:aws:kms:us-east-1:000000000000:key/11111111-2222-4333-8444-555555555555"


def _describe(ec2: Any, sid: str) -> dict[str, Any]:
    snap: dict[str, Any] = ec2.describe_snapshots(SnapshotIds=[sid])["Snapshots"][0]
    return snap


def test_every_new_snapshot_is_encrypted(server_factory: Any) -> None:
    srv = server_factory("--encryption-by-default")
    ebs, ec2 = srv.ebs(), srv.ec2()
    plain = ebs.start_snapshot(VolumeSize=1)
    assert plain["KmsKeyArn"] == DEFAULT_KMS_KEY_ARN and plain["SseType"] == "sse-kms"
    described = _describe(ec2, plain["SnapshotId"])
    assert described["Encrypted"] is True and described["KmsKeyId"] == DEFAULT_KMS_KEY_ARN
    # Encrypted=false cannot opt out; a named key is used instead of the default one.
    refused = ebs.start_snapshot(VolumeSize=1, Encrypted=False)
    assert refused["KmsKeyArn"] == DEFAULT_KMS_KEY_ARN and refused["SseType"] == "sse-kms"
    named = ebs.start_snapshot(VolumeSize=1, KmsKeyArn=OTHER_KEY)
    assert named["KmsKeyArn"] == OTHER_KEY and named["SseType"] == "sse-kms"
    # A child of an encrypted parent inherits its key.
    parent = upload_image(ebs, ec2, os.urandom(BLOCK_SIZE))
    child = ebs.start_snapshot(VolumeSize=1, ParentSnapshotId=parent)
    assert child["KmsKeyArn"] == DEFAULT_KMS_KEY_ARN and child["SseType"] == "sse-kms"
    assert _describe(ec2, child["SnapshotId"])["Encrypted"] is True


def test_unencrypted_parent_is_refused(server_factory: Any) -> None:
    srv = server_factory()
    ebs, ec2 = srv.ebs(), srv.ec2()
    parent = upload_image(ebs, ec2, os.urandom(BLOCK_SIZE))
    assert "KmsKeyArn" not in ebs.start_snapshot(VolumeSize=1)
    srv.restart("--encryption-by-default")
    ebs, ec2 = srv.ebs(), srv.ec2()
    with pytest.raises(ebs.exceptions.ValidationException) as exc:
        ebs.start_snapshot(VolumeSize=1, ParentSnapshotId=parent)
    assert exc.value.response["Reason"] == "INVALID_PARAMETER_VALUE"
    assert "not encrypted" in exc.value.response["Error"]["Message"]
    # Snapshots made before keep what they were.
    assert _describe(ec2, parent)["Encrypted"] is False


def test_encrypted_without_a_key_uses_the_default_key(server_factory: Any) -> None:
    ebs = server_factory().ebs()
    r = ebs.start_snapshot(VolumeSize=1, Encrypted=True)
    assert r["KmsKeyArn"] == DEFAULT_KMS_KEY_ARN and r["SseType"] == "sse-kms"


def test_setting_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "empty.toml").write_text("")
    monkeypatch.setenv("EBSFS_CONFIG", str(tmp_path / "empty.toml"))
    monkeypatch.delenv("EBSFS_SERVER_ENCRYPTION_BY_DEFAULT", raising=False)
    assert build_config({}).encryption_by_default is False
    monkeypatch.setenv("EBSFS_SERVER_ENCRYPTION_BY_DEFAULT", "true")
    assert build_config({}).encryption_by_default is True
    assert build_config({"encryption_by_default": True}).encryption_by_default is True
