"""Encrypted snapshots written through a mount: every written block is stored, zeros too.

A never-written block of an encrypted snapshot does not read as zeros, so a whole-zero chunk
may be skipped only for an unencrypted snapshot with no parent (SPEC.md). Whether a snapshot
is encrypted is what StartSnapshot answers (the server's --encryption-by-default)."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.mounting import MountProc
from tests.serverproc import LocalServer, list_blocks, upload_image
from tests.write.helpers import download, seal, sh

BS = 524288
MountFactory = Callable[..., MountProc]


def _write_blocks(path: Path, blocks: dict[int, bytes], fsync: bool = True) -> None:
    with open(path, "r+b") as f:
        for index, data in sorted(blocks.items()):
            f.seek(index * BS)
            f.write(data)
        f.flush()
        if fsync:
            os.fsync(f.fileno())


@pytest.fixture
def encrypting_server(server_factory: Callable[..., LocalServer]) -> LocalServer:
    return server_factory("--encryption-by-default")


def test_zero_blocks_of_an_encrypted_snapshot_are_stored(
    encrypting_server: LocalServer, mount_factory: MountFactory
) -> None:
    server = encrypting_server
    m = mount_factory(server)
    target = m.path / "new" / "enc"
    sh("truncate", "-s", "1G", target)
    data = os.urandom(BS)
    written = {0: data, 1: bytes(BS), 2: bytes(BS), 5: bytes(BS), 7: data}
    _write_blocks(target, written)
    assert os.getxattr(target, "user.ebsfs.encrypted") == b"true"
    snapshot_id = seal(target, server)
    ec2 = server.ec2()
    assert ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"][0]["Encrypted"]
    blocks, _ = list_blocks(server.ebs(), snapshot_id)
    assert sorted(blocks) == sorted(written)
    assert download(server, snapshot_id, 8 * BS)[7 * BS :] == data


def test_a_remount_keeps_the_snapshot_encrypted(
    encrypting_server: LocalServer, mount_factory: MountFactory, tmp_path: Path
) -> None:
    server = encrypting_server
    spool = tmp_path / "spool"
    m = mount_factory(server, spool_dir=spool, name="first")
    target = m.path / "new" / "enc"
    sh("truncate", "-s", "1G", target)
    _write_blocks(target, {0: os.urandom(BS)})  # fsync: started, encrypted
    m.stop()
    again = mount_factory(server, spool_dir=spool, name="again")
    target = again.path / "new" / "enc"
    _write_blocks(target, {3: bytes(BS)}, fsync=False)
    snapshot_id = seal(target, server)
    blocks, _ = list_blocks(server.ebs(), snapshot_id)
    assert sorted(blocks) == [0, 3]


def test_zeros_over_an_encrypted_parents_holes_are_stored(
    encrypting_server: LocalServer, mount_factory: MountFactory, tmp_path: Path
) -> None:
    server = encrypting_server
    image = bytearray(os.urandom(4 * BS))
    image[BS : 3 * BS] = bytes(2 * BS)  # blocks 1 and 2: holes of the parent
    parent = upload_image(server.ebs(), server.ec2(), bytes(image), 1)
    assert sorted(list_blocks(server.ebs(), parent)[0]) == [0, 3]
    m = mount_factory(server)
    target = m.path / "new" / "child"
    target.touch()
    os.setxattr(target, "user.ebsfs.parent", parent.encode())
    _write_blocks(target, {1: bytes(BS), 4: bytes(BS)})
    snapshot_id = seal(target, server)
    blocks, _ = list_blocks(server.ebs(), snapshot_id)
    assert sorted(blocks) == [0, 1, 3, 4]


def test_encrypted_xattr_makes_an_encrypted_snapshot_without_a_parent(
    server: LocalServer, mount_factory: MountFactory
) -> None:
    m = mount_factory(server)
    target = m.path / "new" / "asked"
    target.touch()
    with pytest.raises(OSError) as bad:
        os.setxattr(target, "user.ebsfs.encrypted", b"perhaps")
    assert bad.value.errno == errno.EINVAL
    with pytest.raises(OSError) as bad:
        os.setxattr(target, "user.ebsfs.kms_key_arn", b"not-an-arn")
    assert bad.value.errno == errno.EINVAL
    os.setxattr(target, "user.ebsfs.encrypted", b"1")
    sh("truncate", "-s", "1G", target)
    _write_blocks(target, {0: bytes(BS), 2: b"x" * BS})
    snapshot_id = seal(target, server)
    info = server.ec2().describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"][0]
    assert info["Encrypted"]
    assert sorted(list_blocks(server.ebs(), snapshot_id)[0]) == [0, 2]
    # Without the attribute, on this server, a zero block is not stored (nothing to hide).
    plain = m.path / "new" / "plain"
    sh("truncate", "-s", "1G", plain)
    _write_blocks(plain, {0: bytes(BS), 2: b"x" * BS})
    plain_id = seal(plain, server)
    assert sorted(list_blocks(server.ebs(), plain_id)[0]) == [2]
