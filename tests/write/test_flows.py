"""Flows A, B, C and D of SPEC.md through the kernel: a real mount, the real server, then the
completed snapshot read back with plain boto3 and checked with e2fsck and a loop mount."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.mounting import MountProc
from tests.serverproc import LocalServer, upload_image
from tests.write.helpers import (
    MIB,
    check_filesystem,
    download,
    make_ext4,
    make_tree,
    seal,
    sh,
)

BS = 524288
GIB = 1 << 30
MountFactory = Callable[..., MountProc]


def check_through_fresh_mount(
    server: LocalServer, mount_factory: MountFactory, snapshot_id: str, tree: Path, tmp: Path
) -> None:
    fresh = mount_factory(server, "--read-only", name="fresh")
    image = fresh.path / snapshot_id
    assert image.stat().st_mode & 0o777 == 0o444
    check_filesystem(image, tree, tmp / "loop")


def test_flow_a_plain_dd_on_a_presized_file(
    server: LocalServer, mount_factory: MountFactory, tmp_path: Path
) -> None:
    tree = make_tree(tmp_path / "tree")
    image = make_ext4(tmp_path / "disk.img", 24, tree)
    m = mount_factory(server)
    target = m.path / "new" / "backup"
    sh("truncate", "-s", "1G", target)
    # No conv=notrunc: the O_TRUNC of the pre-sized file must keep its size.
    sh("dd", f"if={image}", f"of={target}", "bs=1M", "conv=fsync", "status=none")
    assert target.stat().st_size == GIB
    assert os.getxattr(target, "user.ebsfs.state") == b"pending"
    snapshot_id = seal(target, server)
    assert not target.exists()
    assert (m.path / snapshot_id).stat().st_size == GIB
    assert os.readlink(m.path / "by-name" / "backup") == f"../{snapshot_id}"
    data = image.read_bytes()
    assert download(server, snapshot_id, GIB // 16) == data + bytes(GIB // 16 - len(data))
    check_through_fresh_mount(server, mount_factory, snapshot_id, tree, tmp_path)


def test_flow_b_size_taken_from_the_data(
    server: LocalServer, mount_factory: MountFactory, tmp_path: Path
) -> None:
    tree = make_tree(tmp_path / "tree")
    image = make_ext4(tmp_path / "disk.img", 20, tree)
    with open(image, "ab") as f:
        f.write(os.urandom(12345))  # neither a multiple of 512 KiB nor of 1 GiB
    size = image.stat().st_size
    assert size % BS and size % GIB
    m = mount_factory(server)
    target = m.path / "new" / "img"
    sh("dd", f"if={image}", f"of={target}", "bs=1M", "conv=fsync", "status=none")
    assert target.stat().st_size == GIB  # fixed at fsync: rounded up to a GiB
    # Sealed with chmod a-w instead of ebsfs complete: the file leaves new/ once completed.
    snapshot_id = os.getxattr(target, "user.ebsfs.snapshot_id").decode()
    sh("chmod", "a-w", target)
    deadline = time.monotonic() + 60
    while target.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not target.exists()
    assert os.readlink(m.path / "by-name" / "img") == f"../{snapshot_id}"
    ec2 = server.ec2()
    snap = ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"][0]
    assert snap["VolumeSize"] == 1
    assert {"Key": "Name", "Value": "img"} in snap["Tags"]
    assert download(server, snapshot_id, size + BS) == image.read_bytes() + bytes(BS)
    check_through_fresh_mount(server, mount_factory, snapshot_id, tree, tmp_path)


def test_flow_c_a_filesystem_built_inside(
    server: LocalServer, mount_factory: MountFactory, tmp_path: Path
) -> None:
    tree = make_tree(tmp_path / "tree", files=60, big=6 * MIB)
    m = mount_factory(server)
    target = m.path / "new" / "data"
    sh("truncate", "-s", "1G", target)
    sh("mkfs.ext4", "-q", target)
    loop = tmp_path / "x"
    loop.mkdir()
    sh("mount", "-o", "loop", target, loop)
    try:
        sh("cp", "-a", f"{tree}/.", loop)
    finally:
        sh("umount", loop)
    # Reads of the pending file come from the spool: the filesystem checks out before sealing.
    fsck = sh("e2fsck", "-fn", target, check=False)
    assert fsck.returncode == 0, fsck.stdout
    with open(target, "rb") as f:
        before = f.read(64 * MIB)
    snapshot_id = seal(target, server)
    assert download(server, snapshot_id, 64 * MIB) == before
    check_through_fresh_mount(server, mount_factory, snapshot_id, tree, tmp_path)


def _changed_blocks(server: LocalServer, first: str, second: str) -> list[int]:
    ebs = server.ebs()
    out: list[int] = []
    kwargs = {"FirstSnapshotId": first, "SecondSnapshotId": second, "MaxResults": 1000}
    while True:
        page = ebs.list_changed_blocks(**kwargs)
        out += [b["BlockIndex"] for b in page.get("ChangedBlocks", [])]
        if not page.get("NextToken"):
            return out
        kwargs["NextToken"] = page["NextToken"]


def test_flow_d_incremental_child(
    server: LocalServer, mount_factory: MountFactory, tmp_path: Path
) -> None:
    tree = make_tree(tmp_path / "tree")
    base = make_ext4(tmp_path / "base.img", 16, tree)
    parent = upload_image(server.ebs(), server.ec2(), base, 1)
    original = base.read_bytes()
    changed = bytearray(original)
    blocks = range(len(changed) // BS)
    clear = next(i for i in blocks if i > 10 and any(original[i * BS : (i + 1) * BS]))
    changed[3 * BS + 100 : 3 * BS + 200] = os.urandom(100)
    changed[8 * BS - 10 : 8 * BS + 10] = os.urandom(20)  # across a block boundary
    changed[clear * BS : (clear + 1) * BS] = bytes(BS)  # clearing a block stores zeros
    (tmp_path / "changed.img").write_bytes(changed)

    m = mount_factory(server)
    target = m.path / "new" / "next"
    sh("touch", target)
    sh("setfattr", "-n", "user.ebsfs.parent", "-v", parent, target)
    assert target.stat().st_size == GIB  # inherited
    # Write only the changed ranges, as an incremental tool would.
    fd = os.open(target, os.O_WRONLY)
    try:
        os.pwrite(fd, bytes(changed[3 * BS + 100 : 3 * BS + 200]), 3 * BS + 100)
        os.pwrite(fd, bytes(changed[8 * BS - 10 : 8 * BS + 10]), 8 * BS - 10)
        os.pwrite(fd, bytes(BS), clear * BS)
        os.fsync(fd)
    finally:
        os.close(fd)
    # The pending child reads as the parent with the writes over it.
    with open(target, "rb") as f:
        assert f.read(len(changed)) == bytes(changed)
    snapshot_id = seal(target, server)
    touched = {  # the blocks whose bytes the writes changed
        i for i in blocks if changed[i * BS : (i + 1) * BS] != original[i * BS : (i + 1) * BS]
    }
    assert touched == {3, 7, 8, clear}
    assert sorted(_changed_blocks(server, parent, snapshot_id)) == sorted(touched)
    assert download(server, snapshot_id, len(changed)) == bytes(changed)
    snap = server.ec2().describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"][0]
    assert snap["State"] == "completed"


def test_flow_d_dd_of_a_whole_image_stores_only_the_changed_blocks(
    server: LocalServer, mount_factory: MountFactory, tmp_path: Path
) -> None:
    base = os.urandom(6 * BS)
    parent = upload_image(server.ebs(), server.ec2(), base, 1)
    changed = bytearray(base)
    changed[BS + 5 : BS + 9] = b"EBSF"
    (tmp_path / "changed.img").write_bytes(changed)
    m = mount_factory(server)
    target = m.path / "new" / "next"
    sh("touch", target)
    sh("setfattr", "-n", "user.ebsfs.parent", "-v", parent, target)
    sh("dd", f"if={tmp_path / 'changed.img'}", f"of={target}", "bs=1M",
       "conv=notrunc,fsync", "status=none")
    snapshot_id = seal(target, server)
    # dd rewrote six blocks; the five the parent holds unchanged are not stored again.
    assert _changed_blocks(server, parent, snapshot_id) == [1]
    assert download(server, snapshot_id, len(changed)) == bytes(changed)


@pytest.mark.parametrize("where", ["fresh", "child"])
def test_unaligned_writes_give_exactly_the_right_bytes(
    server: LocalServer, mount_factory: MountFactory, tmp_path: Path, where: str
) -> None:
    expected = bytearray(os.urandom(4 * BS)) if where == "child" else bytearray(4 * BS)
    m = mount_factory(server)
    target = m.path / "new" / "odd"
    if where == "child":
        parent = upload_image(server.ebs(), server.ec2(), bytes(expected), 1)
        sh("touch", target)
        sh("setfattr", "-n", "user.ebsfs.parent", "-v", parent, target)
    else:
        sh("truncate", "-s", "1G", target)
    fd = os.open(target, os.O_RDWR)
    try:
        writes = [(BS - 1, b"X"), (BS, b"Y"), (3, b"abc"), (2 * BS - 2, b"1234"),
                  (BS + 777, os.urandom(999)), (3 * BS + 1, b"inherited?")]
        for off, data in writes:
            assert os.pwrite(fd, data, off) == len(data)
            expected[off : off + len(data)] = data
        assert os.pread(fd, 4 * BS, 0) == bytes(expected)
    finally:
        os.close(fd)
    snapshot_id = seal(target, server)
    assert download(server, snapshot_id, 4 * BS) == bytes(expected)
