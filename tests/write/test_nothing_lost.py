"""Nothing lost, nothing hung, nobody let in: the write path through real mounts.

rm never deletes a completed snapshot, a declared size does not need the endpoint to accept
writes, drafts are private (0600)."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

from ebsfs.core import checksum
from tests.mounting import MountProc, ebsfs
from tests.serverproc import LocalServer, complete, upload_image, wait_state
from tests.write.helpers import download, seal, sh

BS = 524288
MountFactory = Callable[..., MountProc]


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def test_rm_of_a_draft_whose_snapshot_completed_elsewhere_keeps_the_snapshot(
    server: LocalServer, mount_factory: MountFactory
) -> None:
    m = mount_factory(server)
    target = m.path / "new" / "done"
    block = os.urandom(BS)
    target.write_bytes(block)
    _fsync(target)  # started, and the block is stored
    snapshot_id = os.getxattr(target, "user.ebsfs.snapshot_id").decode()
    # Sealed by someone else (another mount, a script): the draft still says pending.
    complete(server.ebs(), snapshot_id, {0: checksum.digest(block)})
    assert wait_state(server.ec2(), snapshot_id)["State"] == "completed"
    os.unlink(target)
    assert not target.exists()
    assert wait_state(server.ec2(), snapshot_id)["State"] == "completed"
    assert download(server, snapshot_id, BS) == block
    assert "is completed: it is kept" in m.log_text()


def test_drafts_are_private(server: LocalServer, mount_factory: MountFactory) -> None:
    m = mount_factory(server, "--allow-other")
    target = m.path / "new" / "secret"
    target.write_bytes(b"disk images may hold secrets")
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(m.path / "new" / "secret").st_mode) & 0o077 == 0


def test_a_declared_size_draft_is_spooled_while_the_endpoint_is_down(
    server: LocalServer, mount_factory: MountFactory, tmp_path: Path
) -> None:
    data = os.urandom(3 * BS + 1000)
    image = tmp_path / "image"
    image.write_bytes(data)
    spool = tmp_path / "spool"
    m = mount_factory(server, spool_dir=spool, name="offline")
    target = m.path / "new" / "img"
    server.stop()  # the endpoint is down: its port refuses every connection
    sh("truncate", "-s", "1G", target)
    sh("dd", f"if={image}", f"of={target}", "bs=1M", "conv=notrunc", "status=none")
    with open(target, "rb") as f:
        assert f.read(len(data)) == data
    m.kill()  # the daemon dies with nothing stored: the spool must keep it all
    server.start()
    again = mount_factory(server, spool_dir=spool, name="again")
    target = again.path / "new" / "img"
    with open(target, "rb") as f:
        assert f.read(len(data)) == data
    snapshot_id = seal(target, server)
    assert download(server, snapshot_id, len(data)) == data


def test_complete_with_the_endpoint_down_is_not_reported_as_a_failed_snapshot(
    server: LocalServer, mount_factory: MountFactory
) -> None:
    m = mount_factory(server, "--max-attempts", "1")
    target = m.path / "new" / "img"
    data = os.urandom(2 * BS)
    target.write_bytes(data)
    _fsync(target)  # started and stored
    server.stop()
    done = ebsfs("complete", str(target), env=server.env(), timeout=240)
    # Not 7 ("AWS failed the snapshot: store it all again"): it is still pending, resumable.
    assert done.returncode == 1, (done.returncode, done.stderr)
    # The progress lines (stderr is not a terminal), then one error line.
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("ebsfs: ")
    assert all(x.startswith("img snap-") for x in lines[:-1]), lines
    assert os.getxattr(target, "user.ebsfs.state") == b"pending"
    server.start()
    snapshot_id = seal(target, server)
    assert download(server, snapshot_id, len(data)) == data


def test_complete_waits_for_the_snapshot_to_show(
    server_factory: Callable[..., LocalServer], mount_factory: MountFactory
) -> None:
    # The file leaves new/ at once; the mount shows snap-ID after a DescribeSnapshots (with
    # --snapshot: once AWS lets it be read, up to a minute later): ebsfs complete must not
    # call that "disappeared before it was completed".
    server = server_factory("--latency-ms", "400")
    listed = upload_image(server.ebs(), server.ec2(), os.urandom(BS), 1)
    m = mount_factory(server, "--snapshot", listed)
    target = m.path / "new" / "img"
    data = os.urandom(BS)
    target.write_bytes(data)
    done = ebsfs("complete", str(target), env=server.env(), timeout=240)
    assert done.returncode == 0, done.stderr
    snapshot_id = done.stdout.strip()
    with open(m.path / snapshot_id, "rb") as f:
        assert f.read(BS) == data
