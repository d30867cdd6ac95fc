"""Each classification against the real server's ``--fault``: quota, WRITE_REQUEST_TIMEOUT,
CONFLICTING_BLOCK_UPDATE and EC2's RequestLimitExceeded are retried and the data is right;
a missing KMS key (DEPENDENCY_RESOURCE_NOT_FOUND) fails the fsync, clearly, and starts no new
snapshot."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from tests.mounting import MountProc, ebsfs
from tests.serverproc import LocalServer
from tests.write.helpers import download, seal, sh

BS = 524288


def _mount(server: LocalServer, where: Path) -> MountProc:
    # botocore tries each call once: what is retried is what ebsfs's classification retries.
    env = {**server.env(), "EBSFS_MAX_ATTEMPTS": "1"}
    return MountProc(server, where, env=env).start()


def test_quota_write_timeouts_conflicts_and_ec2_throttling_are_retried(tmp_path: Path) -> None:
    server = LocalServer(tmp_path / "data")
    with server:
        m = _mount(server, tmp_path / "mnt")
        try:
            # The faults from here on (the mount's first listing is another area's).
            server.restart(
                "--fault", "DEPENDENCY_SERVICE_QUOTA_EXCEEDED:0.2",
                "--fault", "WRITE_REQUEST_TIMEOUT:0.15",
                "--fault", "CONFLICTING_BLOCK_UPDATE:0.15",
                "--fault", "RequestLimitExceeded:0.4",
                "--fault-seed", "7",
            )
            data = os.urandom(12 * BS + 999)
            target = m.path / "new" / "img"
            sh("truncate", "-s", "1G", target)
            target.write_bytes(data)
            snapshot_id = seal(target, server)
        finally:
            m.stop()
        server.restart("--fault-seed", "1")  # checked without faults
        padded = data + bytes(-len(data) % BS)
        assert download(server, snapshot_id, len(padded)) == padded
        mount_log = m.log_text()
        for reason in ("DEPENDENCY_SERVICE_QUOTA_EXCEEDED", "WRITE_REQUEST_TIMEOUT",
                       "CONFLICTING_BLOCK_UPDATE"):
            assert f"{reason}" in mount_log, mount_log[-3000:]


def test_a_missing_kms_key_fails_the_fsync_and_starts_no_new_snapshot(tmp_path: Path) -> None:
    server = LocalServer(tmp_path / "data")
    with server:
        m = _mount(server, tmp_path / "mnt")
        try:
            target = m.path / "new" / "img"
            sh("truncate", "-s", "1G", target)
            fd = os.open(target, os.O_WRONLY)
            try:
                os.write(fd, os.urandom(BS))
                os.fsync(fd)
                server.restart("--fault", "DEPENDENCY_RESOURCE_NOT_FOUND:1")
                os.pwrite(fd, os.urandom(BS), 4 * BS)
                with pytest.raises(OSError) as info:
                    os.fsync(fd)
                assert info.value.errno == errno.EIO
            finally:
                os.close(fd)
            # The seal fails too, saying why, and does not start over in a new snapshot.
            done = ebsfs("complete", str(target), env=server.env(), timeout=120)
            assert done.returncode != 0
            assert "KMS key" in done.stderr and "Traceback" not in done.stderr, done.stderr
            assert "is gone" not in done.stderr, done.stderr
        finally:
            m.stop()
        assert "DEPENDENCY_RESOURCE_NOT_FOUND" in m.log_text()
        assert "KMS key" in m.log_text()
        server.restart("--fault-seed", "1")  # no faults
        snaps = server.ec2().describe_snapshots(OwnerIds=["self"])["Snapshots"]
        assert len(snaps) == 1, snaps
