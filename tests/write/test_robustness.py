"""Durability, crash recovery, a faulty backend, failed sealing, and bad input through the
kernel: nothing accepted is lost, and every refusal has SPEC.md's errno and changes nothing."""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ebsfs.core import checksum
from tests.mounting import MountProc, ebsfs
from tests.serverproc import LocalServer, complete, put_block, upload_image, wait_state
from tests.write.helpers import download, seal, sh

BS = 524288
GIB = 1 << 30
MountFactory = Callable[..., MountProc]


def _oserror(fn: Callable[[], object]) -> int:
    with pytest.raises(OSError) as info:
        fn()
    return info.value.errno or 0


def test_after_fsync_the_server_holds_every_block_even_if_the_daemon_dies(
    server: LocalServer, mount_factory: MountFactory, tmp_path: Path
) -> None:
    data = os.urandom(5 * BS + 777)
    m = mount_factory(server)
    target = m.path / "new" / "durable"
    sh("truncate", "-s", "1G", target)
    fd = os.open(target, os.O_WRONLY)
    os.write(fd, data)
    os.fsync(fd)
    snapshot_id = os.getxattr(target, "user.ebsfs.snapshot_id").decode()
    m.kill()  # kill -9 right after fsync returned
    with contextlib.suppress(OSError):
        os.close(fd)  # the dead mount answers ENOTCONN
    # Seal it by hand with plain boto3: it completes only if the server holds every block.
    padded = data + bytes(-len(data) % BS)
    digests = {i: checksum.digest(padded[i * BS : (i + 1) * BS]) for i in range(len(padded) // BS)}
    complete(server.ebs(), snapshot_id, digests)
    assert wait_state(server.ec2(), snapshot_id)["State"] == "completed"
    assert download(server, snapshot_id, len(padded)) == padded


def _drafts_in(spool: Path) -> list[Path]:
    """The draft directories of a spool (not its lock file, nor scratch/)."""
    return [p for p in spool.iterdir() if (p / "manifest.json").is_file()]


def test_a_daemon_killed_mid_dd_comes_back_with_every_accepted_byte(
    server: LocalServer, mount_factory: MountFactory, tmp_path: Path
) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(12 * BS + 4321))
    data = image.read_bytes()
    spool = tmp_path / "spool"
    m = mount_factory(server, spool_dir=spool, name="before")
    target = m.path / "new" / "crash"
    sh("truncate", "-s", "1G", target)
    fd = os.open(target, os.O_WRONLY)
    half = 7 * BS + 1000
    for off in range(0, half, 64 << 10):  # as dd would, no fsync
        os.pwrite(fd, data[off : min(half, off + (64 << 10))], off)
    m.kill()
    with contextlib.suppress(OSError):
        os.close(fd)

    again = mount_factory(server, spool_dir=spool, name="after")
    target = again.path / "new" / "crash"
    assert target.exists()
    # Pending, or still a draft if the daemon died before StartSnapshot (writes never wait
    # for it): started again at the remount.
    assert os.getxattr(target, "user.ebsfs.state") in (b"draft", b"pending")
    with open(target, "rb") as f:
        assert f.read(half) == data[:half]
    sh("dd", f"if={image}", f"of={target}", "bs=1M", "conv=notrunc", "status=none")
    snapshot_id = seal(target, server)
    assert download(server, snapshot_id, len(data) + 100) == data + bytes(100)
    deadline = time.monotonic() + 10  # the spool is emptied once the snapshot completed
    while _drafts_in(spool) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _drafts_in(spool)


def test_a_faulty_backend_still_yields_an_identical_snapshot(
    server_factory: Callable[..., LocalServer], mount_factory: MountFactory, tmp_path: Path
) -> None:
    srv = server_factory("--throttle-rate", "0.3", "--error-rate", "0.05", "--drop-rate", "0.02")
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(24 * BS + 99))
    m = mount_factory(srv)
    target = m.path / "new" / "faulty"
    sh("truncate", "-s", "1G", target)
    sh("dd", f"if={image}", f"of={target}", "bs=1M", "conv=notrunc,fsync", "status=none")
    snapshot_id = seal(target, srv)
    data = image.read_bytes()
    m.stop()
    srv.restart("--latency-ms", "0")  # without faults: the check's own reads must not fail
    assert download(srv, snapshot_id, len(data)) == data


def test_sealing_waits_for_a_slow_completion(
    server_factory: Callable[..., LocalServer], mount_factory: MountFactory
) -> None:
    srv = server_factory("--complete-delay", "5")
    m = mount_factory(srv)
    target = m.path / "new" / "slow"
    sh("truncate", "-s", "1G", target)
    fd = os.open(target, os.O_WRONLY)
    os.write(fd, b"slow but sure")
    os.close(fd)
    snapshot_id = seal(target, srv)
    assert download(srv, snapshot_id, 13) == b"slow but sure"


@pytest.mark.parametrize("index", [0, 100])
def test_a_failed_snapshot_reports_aws_message_and_keeps_the_data(
    server: LocalServer, mount_factory: MountFactory, tmp_path: Path, index: int
) -> None:
    """Another writer changed a block of the snapshot, or added one: AWS fails it (its
    checksum is checked first; the count mismatch: tests/write/test_drafts.py)."""
    spool = tmp_path / "spool"
    m = mount_factory(server, spool_dir=spool)
    target = m.path / "new" / "doomed"
    data = os.urandom(3 * BS)
    sh("truncate", "-s", "1G", target)
    with open(target, "r+b") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())  # every block stored
    snapshot_id = os.getxattr(target, "user.ebsfs.snapshot_id").decode()
    # Another writer of the same snapshot: the mount's count or aggregate no longer matches.
    other = os.urandom(BS)
    put_block(server.ebs(max_attempts=5), snapshot_id, index, other)
    done = ebsfs("complete", str(target), env=server.env(), timeout=120)
    assert done.returncode == 7, done.stderr
    last = done.stderr.strip().splitlines()[-1]  # after the progress lines
    assert "Checksum mismatch" in last and last.startswith("ebsfs: ")
    assert os.getxattr(target, "user.ebsfs.state") == b"error"
    with open(target, "rb") as f:
        assert f.read(len(data)) == data  # still served from the spool
    m.stop()
    # After a remount, sealing again stores it all into a new snapshot.
    m2 = mount_factory(server, spool_dir=spool)
    target = m2.path / "new" / "doomed"
    assert os.getxattr(target, "user.ebsfs.state") == b"error"
    sealed = seal(target, server)
    assert sealed != snapshot_id
    assert download(server, sealed, len(data)) == data


def test_bad_input_gets_its_errno_and_changes_nothing(
    server: LocalServer, mount_factory: MountFactory, tmp_path: Path
) -> None:
    m = mount_factory(server)
    new = m.path / "new"
    a = new / "a"
    sh("truncate", "-s", "1G", a)
    assert _oserror(lambda: os.truncate(a, (64 << 40) + 1)) == errno.EFBIG
    # sealing a draft with no data
    assert _oserror(lambda: os.chmod(a, 0o444)) == errno.EINVAL
    assert ebsfs("complete", str(a), env=server.env()).returncode == 1
    missing = ebsfs("complete", str(new / "missing"), env=server.env())
    assert missing.returncode == 3 and missing.stderr.startswith("ebsfs: ")
    fd = os.open(a, os.O_RDWR)
    try:
        assert _oserror(lambda: os.pwrite(fd, b"x", GIB)) == errno.EFBIG
        assert os.pwrite(fd, b"data", 0) == 4
        assert _oserror(lambda: os.ftruncate(fd, 4096)) == errno.EPERM
        assert _oserror(lambda: os.setxattr(a, "user.ebsfs.description", b"late")) == errno.EPERM
    finally:
        os.close(fd)
    assert a.stat().st_size == GIB
    assert _oserror(lambda: os.setxattr(new / "missing", "user.x", b"1")) == errno.ENOENT

    b = new / "b"
    sh("touch", b)
    bad = "snap-0123456789abcdef0"
    assert _oserror(lambda: os.setxattr(b, "user.ebsfs.parent", bad.encode())) == errno.EINVAL
    assert _oserror(lambda: os.setxattr(b, "user.ebsfs.parent", b"nonsense")) == errno.EINVAL
    assert b"user.ebsfs.parent" not in [n.encode() for n in os.listxattr(b)]

    snapshot_id = seal(a, server)
    again = ebsfs("complete", str(m.path / snapshot_id), env=server.env())
    # Sealing twice is nothing to do: a script running it again hears the id, exit 0.
    assert again.returncode == 0 and again.stdout.strip() == snapshot_id
    assert _oserror(lambda: os.open(m.path / snapshot_id, os.O_WRONLY)) == errno.EROFS
    assert download(server, snapshot_id, 4) == b"data"


def test_rm_abandons_a_pending_snapshot_and_the_draft(
    server: LocalServer, mount_factory: MountFactory
) -> None:
    m = mount_factory(server)
    target = m.path / "new" / "gone"
    sh("truncate", "-s", "1G", target)
    with open(target, "r+b") as f:
        f.write(b"soon gone")
        f.flush()
        os.fsync(f.fileno())  # started (StartSnapshot does not hold up the writes)
    snapshot_id = os.getxattr(target, "user.ebsfs.snapshot_id").decode()
    os.unlink(target)
    assert not target.exists()
    ec2 = server.ec2()
    with pytest.raises(Exception, match="NotFound"):
        ec2.describe_snapshots(SnapshotIds=[snapshot_id])


def test_a_child_of_an_unknown_size_parent_inherits_its_size(
    server: LocalServer, mount_factory: MountFactory
) -> None:
    parent = upload_image(server.ebs(), server.ec2(), os.urandom(BS), 2)
    m = mount_factory(server)
    target = m.path / "new" / "kid"
    sh("touch", target)
    sh("setfattr", "-n", "user.ebsfs.parent", "-v", parent, target)
    assert target.stat().st_size == 2 * GIB
    assert os.getxattr(target, "user.ebsfs.parent").decode() == parent
