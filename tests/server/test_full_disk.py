"""A full disk under the data directory: every answer the server gave holds after a restart.

The data directory is a small loop-mounted ext4 filesystem that a filler file fills up. A
call that failed must have changed nothing, neither before the restart nor after; a call
that succeeded must still show after it (issue 12.1: a CompleteSnapshot that failed on its
COMMIT answered ``completed`` to its retry and was ``pending`` again after a restart).
"""

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from ebsfs.core import checksum
from ebsfs.core.blocks import BLOCK_SIZE
from tests.server.smallfs import SmallFs
from tests.serverproc import (
    LocalServer,
    complete,
    get_block,
    list_blocks,
    put_block,
    upload_image,
    wait_state,
)


@pytest.fixture
def small(tmp_path: Path) -> Iterator[tuple[LocalServer, SmallFs]]:
    fs = SmallFs(tmp_path, 32)
    with fs.mounted():
        # The data directory is the filesystem's root, so the server's log (next to it)
        # is not on the full disk.
        srv = LocalServer(fs.mountpoint)
        srv.start()
        try:
            yield srv, fs
        finally:
            srv.stop()


def _view(ebs: Any, ec2: Any) -> list[tuple[Any, ...]]:
    """What the server says about every snapshot: state, tags, blocks of completed ones."""
    out = []
    for s in ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]:
        tags = sorted((t["Key"], t["Value"]) for t in s.get("Tags", []))
        blocks: list[int] = []
        if s["State"] == "completed" and s["StorageTier"] == "standard":
            blocks = sorted(list_blocks(ebs, s["SnapshotId"])[0])
        shared = ec2.describe_snapshot_attribute(
            SnapshotId=s["SnapshotId"], Attribute="createVolumePermission"
        )["CreateVolumePermissions"]
        out.append((s["SnapshotId"], s["State"], tags, blocks, s["StorageTier"],
                    s.get("RestoreExpiryTime"), str(shared)))
    return sorted(out)


def _restart(srv: LocalServer, fs: SmallFs) -> None:
    """Make room and restart the server the hard way (kill -9)."""
    fs.unfill()
    srv.kill()
    srv.start()


def _attempt(call: Callable[[], Any]) -> bool:
    """Whether the call succeeded; a failure must be the server's 500."""
    try:
        call()
    except ClientError as exc:
        assert exc.response["ResponseMetadata"]["HTTPStatusCode"] == 500, exc.response
        return False
    return True


CALLS = ["StartSnapshot", "PutSnapshotBlock", "CreateTags", "DeleteTags", "CompleteSnapshot",
         "DeleteSnapshot", "ModifySnapshotTier", "RestoreSnapshotTier",
         "ModifySnapshotAttribute"]


@pytest.mark.parametrize("name", CALLS)
def test_a_call_on_a_full_disk_shows_the_same_after_a_restart(
    small: tuple[LocalServer, SmallFs], name: str,
) -> None:
    srv, fs = small
    ebs, ec2 = srv.ebs(max_attempts=0), srv.ec2(max_attempts=0)
    pending = ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    digests = {}
    for i in range(3):
        data = os.urandom(BLOCK_SIZE)
        put_block(ebs, pending, i, data)
        digests[i] = checksum.digest(data)
    done = upload_image(ebs, ec2, os.urandom(BLOCK_SIZE), 1)
    ec2.create_tags(Resources=[done], Tags=[{"Key": "keep", "Value": "me"}])
    cold = upload_image(ebs, ec2, os.urandom(BLOCK_SIZE), 1)
    ec2.modify_snapshot_tier(SnapshotId=cold, StorageTier="archive")

    def complete_twice() -> None:
        # The retry must not answer what the first attempt failed to store.
        if _attempt(lambda: complete(ebs, pending, digests)):
            return
        answers: list[str] = []
        _attempt(lambda: answers.append(complete(ebs, pending, digests)))
        assert answers in ([], ["pending"])
        state = ec2.describe_snapshots(SnapshotIds=[pending])["Snapshots"][0]["State"]
        assert state == "pending"
        raise ClientError({"ResponseMetadata": {"HTTPStatusCode": 500}}, "CompleteSnapshot")

    calls: dict[str, Callable[[], Any]] = {
        "StartSnapshot": lambda: ebs.start_snapshot(VolumeSize=1, Description="x" * 200),
        "PutSnapshotBlock": lambda: put_block(ebs, pending, 7, os.urandom(BLOCK_SIZE)),
        "CreateTags": lambda: ec2.create_tags(
            Resources=[pending, done],
            Tags=[{"Key": f"k{n}", "Value": "v" * 200} for n in range(20)],
        ),
        "DeleteTags": lambda: ec2.delete_tags(Resources=[done]),
        "CompleteSnapshot": complete_twice,
        "DeleteSnapshot": lambda: ec2.delete_snapshot(SnapshotId=done),
        "ModifySnapshotTier": lambda: ec2.modify_snapshot_tier(
            SnapshotId=done, StorageTier="archive"),
        "RestoreSnapshotTier": lambda: ec2.restore_snapshot_tier(
            SnapshotId=cold, TemporaryRestoreDays=3),
        "ModifySnapshotAttribute": lambda: ec2.modify_snapshot_attribute(
            SnapshotId=done, Attribute="createVolumePermission",
            CreateVolumePermission={"Add": [{"UserId": "111122223333"}]}),
    }
    before = _view(ebs, ec2)
    fs.fill()
    # The call really meets the full disk (else this test proves nothing).
    assert not _attempt(calls[name])
    assert _view(ebs, ec2) == before, f"{name} failed but changed what the server shows"
    _restart(srv, fs)
    assert _view(ebs, ec2) == before, f"{name}: the restart changed what the server showed"
    # With room again the same call succeeds, and that survives a restart too.
    if name == "PutSnapshotBlock":
        data = os.urandom(BLOCK_SIZE)
        put_block(ebs, pending, 7, data)
        digests[7] = checksum.digest(data)
    if name in ("PutSnapshotBlock", "CompleteSnapshot"):
        assert complete(ebs, pending, digests) == "pending"
        assert wait_state(ec2, pending)["State"] == "completed"
    else:
        calls[name]()
    after = _view(ebs, ec2)
    assert after != before
    srv.kill()
    srv.start()
    assert _view(ebs, ec2) == after


def test_acknowledged_puts_survive_and_failed_ones_never_show(
    small: tuple[LocalServer, SmallFs],
) -> None:
    srv, fs = small
    ebs, ec2 = srv.ebs(max_attempts=0), srv.ec2(max_attempts=0)
    sid = ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    fs.fill(leave=3 << 20)  # room for a few records, then not even for the index
    acked: dict[int, bytes] = {}
    failures = 0
    for index in range(40):
        data = os.urandom(BLOCK_SIZE)
        if _attempt(lambda: put_block(ebs, sid, index, data)):  # noqa: B023
            acked[index] = data
        else:
            failures += 1
    assert acked and failures, (len(acked), failures)
    srv.kill()
    srv.start()  # still full
    fs.unfill()
    digests = {i: checksum.digest(d) for i, d in acked.items()}
    assert complete(ebs, sid, digests) == "pending"
    assert wait_state(ec2, sid)["State"] == "completed"
    tokens, _ = list_blocks(ebs, sid)
    assert sorted(tokens) == sorted(acked)
    for index, token in tokens.items():
        assert get_block(ebs, sid, index, token) == acked[index]


def test_the_server_takes_changes_again_once_there_is_room(
    small: tuple[LocalServer, SmallFs],
) -> None:
    srv, fs = small
    ebs, ec2 = srv.ebs(max_attempts=0), srv.ec2(max_attempts=0)
    sid = ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    fs.fill()
    for n in range(3):
        tags = [{"Key": f"k{n}", "Value": "v" * 250}]
        assert not _attempt(lambda t=tags: ec2.create_tags(Resources=[sid], Tags=t))
    fs.unfill()  # no restart: the failed transactions must not linger
    ec2.create_tags(Resources=[sid], Tags=[{"Key": "after", "Value": "room"}])
    other = ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    shown = _view(ebs, ec2)
    assert [(s[0], s[2]) for s in shown] == sorted(
        [(sid, [("after", "room")]), (other, [])])
    srv.kill()
    srv.start()
    assert _view(ebs, ec2) == shown


def test_a_sweep_on_a_full_disk_logs_a_line_not_a_traceback(tmp_path: Path) -> None:
    # A snapshot that went to error while the disk was full: the sweep that drops its
    # blocks failed every 2 s, each time with a 25-line traceback.
    fs = SmallFs(tmp_path, 32)
    with fs.mounted():
        srv = LocalServer(fs.mountpoint, "--timeout-unit", "0.05")
        srv.start()
        try:
            ebs = srv.ebs()
            sid = ebs.start_snapshot(VolumeSize=1, Timeout=10)["SnapshotId"]
            put_block(ebs, sid, 0, os.urandom(BLOCK_SIZE))
            fs.fill()
            deadline = time.monotonic() + 60  # a hang guard: the sweep runs every 2 s
            while srv.log_text().count("sweep failed") < 2 and time.monotonic() < deadline:
                time.sleep(0.2)
            log = srv.log_text()
            assert log.count("sweep failed") >= 2, log[-2000:]
            assert "Traceback" not in log, log[-3000:]
        finally:
            fs.unfill()
            srv.stop()
