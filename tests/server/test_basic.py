"""The server's happy path, through the helpers every other test package uses."""

import os

from ebsfs.core import checksum
from ebsfs.core.blocks import BLOCK_SIZE
from tests.serverproc import (
    LocalServer,
    complete,
    download_image,
    put_block,
    upload_image,
    wait_state,
)


def test_upload_and_download_round_trip(server: LocalServer) -> None:
    ebs, ec2 = server.ebs(), server.ec2()
    image = bytearray(3 * BLOCK_SIZE + 1000)
    image[5:10] = b"hello"
    image[2 * BLOCK_SIZE:2 * BLOCK_SIZE + BLOCK_SIZE] = os.urandom(BLOCK_SIZE)
    image[-10:] = b"0123456789"
    sid = upload_image(ebs, ec2, bytes(image), 1, name="web", description="round trip")
    snap = ec2.describe_snapshots(OwnerIds=["self"], SnapshotIds=[sid])["Snapshots"][0]
    assert snap["State"] == "completed"
    assert snap["Progress"] == "100%"
    assert snap["VolumeId"] == "vol-ffffffff"
    assert snap["Description"] == "round trip"
    assert snap["Tags"] == [{"Key": "Name", "Value": "web"}]
    back = download_image(ebs, sid, length=len(image))
    assert back == bytes(image)


def test_child_sees_parent_blocks(server: LocalServer) -> None:
    ebs, ec2 = server.ebs(), server.ec2()
    base = os.urandom(2 * BLOCK_SIZE)
    parent = upload_image(ebs, ec2, base, 1)
    change = os.urandom(BLOCK_SIZE)
    child_image = base[:BLOCK_SIZE] + change
    # Rewrite only block 1 of the child: block 0 is inherited.
    sid = ebs.start_snapshot(VolumeSize=1, ParentSnapshotId=parent)["SnapshotId"]
    put_block(ebs, sid, 1, change)
    complete(ebs, sid, {1: checksum.digest(change)})
    assert wait_state(ec2, sid)["State"] == "completed"
    assert download_image(ebs, sid, length=2 * BLOCK_SIZE) == child_image
