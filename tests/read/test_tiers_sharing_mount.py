"""Archived snapshots and snapshots shared by another account, through real mounts and
``ebsfs ls`` against the local server (which holds a second account: --second-account)."""

from __future__ import annotations

import errno
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from tests.mounting import ebsfs
from tests.server.test_tiers_sharing import (
    OTHER_ACCOUNT,
    SELF_ACCOUNT,
    other_client,
    second_account_flag,
)
from tests.serverproc import upload_image

pytestmark = pytest.mark.timeout(180)
BLOCK = 512 * 1024
#: Far below the 404 grace a retry loop would spend (60 s), far above a plain answer.
PROMPT = 20.0


def _errno(fn: Any, *args: Any) -> int:
    with pytest.raises(OSError) as info:
        fn(*args)
    return int(info.value.errno)


def test_archived_snapshot_is_not_offered(server, mount_factory) -> None:  # type: ignore[no-untyped-def]
    ebs, ec2 = server.ebs(), server.ec2()
    keep_data, later_data = os.urandom(BLOCK), os.urandom(BLOCK)
    keep = upload_image(ebs, ec2, keep_data, name="keep")
    cold = upload_image(ebs, ec2, os.urandom(BLOCK), name="cold")
    later = upload_image(ebs, ec2, later_data)
    ec2.modify_snapshot_tier(SnapshotId=cold, StorageTier="archive")

    m = mount_factory(server)
    assert sorted(os.listdir(m.path)) == sorted(["by-name", "new", "parts", "scratch", keep, later])
    assert os.listdir(m.path / "by-name") == ["keep"]
    started = time.monotonic()
    assert _errno(os.stat, m.path / cold) == errno.ENOENT
    assert _errno(open, m.path / cold, "rb") == errno.ENOENT
    assert time.monotonic() - started < PROMPT
    assert f"{cold} is archived" in m.log_text()

    # Archived after the mount listed it: a read fails at once with EIO, no retry loop.
    ec2.modify_snapshot_tier(SnapshotId=later, StorageTier="archive")
    started = time.monotonic()
    with open(m.path / later, "rb") as f:
        assert _errno(f.read, BLOCK) == errno.EIO
    assert time.monotonic() - started < PROMPT
    assert "archive storage tier" in m.log_text()
    with open(m.path / keep, "rb") as f:
        assert f.read(BLOCK) == keep_data

    # A restored snapshot is offered again.
    # (once the kernel's negative entry and the catalog's lookup interval have passed).
    ec2.restore_snapshot_tier(SnapshotId=cold, TemporaryRestoreDays=1)
    deadline = time.monotonic() + 60
    while not (m.path / cold).exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert os.stat(m.path / cold).st_size == 1 << 30

    listed = json.loads(ebsfs("ls", "--json", env=server.env(), check=True).stdout)
    tiers = {i["snapshot_id"]: i["storage_tier"] for i in listed}
    assert tiers == {keep: "standard", cold: "standard", later: "archive"}
    table = ebsfs("ls", env=server.env(), check=True).stdout.splitlines()
    assert table[0].split()[:3] == ["SNAPSHOT", "STATE", "TIER"]
    assert any(line.split()[:3] == [later, "completed", "archive"] for line in table)


def test_snapshot_option_refuses_an_archived_snapshot(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ebs, ec2 = server.ebs(), server.ec2()
    cold = upload_image(ebs, ec2, os.urandom(BLOCK))
    ec2.modify_snapshot_tier(SnapshotId=cold)
    target = tmp_path / "mnt"
    target.mkdir()
    started = time.monotonic()
    proc = ebsfs("mount", str(target), "--snapshot", cold, "--spool-dir",
                 str(tmp_path / "spool"), env=server.env())
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and cold in lines[0] and "archive" in lines[0], proc.stderr
    assert time.monotonic() - started < PROMPT + 30
    assert not os.path.ismount(target)


def test_shared_snapshots(server_factory, mount_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory(*second_account_flag())
    other_ebs, other_ec2 = other_client(server, "ebs"), other_client(server, "ec2")
    shared_data = os.urandom(BLOCK)
    mine = upload_image(server.ebs(), server.ec2(), os.urandom(BLOCK))
    shared = upload_image(other_ebs, other_ec2, shared_data, name="theirs")
    private = upload_image(other_ebs, other_ec2, os.urandom(BLOCK))
    other_ec2.modify_snapshot_attribute(
        SnapshotId=shared, Attribute="createVolumePermission",
        CreateVolumePermission={"Add": [{"UserId": SELF_ACCOUNT}]})

    both = mount_factory(server, "--owner", "self,shared")
    fixed = ["by-name", "new", "parts", "scratch"]
    assert sorted(os.listdir(both.path)) == sorted([*fixed, mine, shared])
    with open(both.path / "by-name" / "theirs", "rb") as f:
        assert f.read(BLOCK) == shared_data
    assert _errno(os.stat, both.path / private) == errno.ENOENT

    plain = mount_factory(server)
    assert sorted(os.listdir(plain.path)) == sorted(["by-name", "new", "parts", "scratch", mine])
    with open(plain.path / shared, "rb") as f:  # by id: found without OwnerIds
        assert f.read(BLOCK) == shared_data
    assert os.getxattr(plain.path / shared, "user.ebsfs.snapshot_id") == shared.encode()
    assert _errno(os.stat, plain.path / private) == errno.ENOENT

    listed = json.loads(
        ebsfs("ls", "--json", "--owner", "self,shared", env=server.env(), check=True).stdout)
    owners = {i["snapshot_id"]: i["owner_id"] for i in listed}
    assert owners == {mine: SELF_ACCOUNT, shared: OTHER_ACCOUNT}
    one = json.loads(ebsfs("ls", "--json", "--snapshot", shared, env=server.env(),
                           check=True).stdout)
    assert [i["snapshot_id"] for i in one] == [shared]
    bad = ebsfs("ls", "--owner", "all", env=server.env())
    assert bad.returncode == 2 and bad.stderr.startswith("ebsfs: --owner")
