"""What the chaos bench found, each reduced to one deterministic scenario."""

from __future__ import annotations

import errno
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bench.chaos import SpoolDisk
from tests.mounting import MountProc, ebsfs
from tests.serverproc import LocalServer, download_image

MIB = 1 << 20


def test_seal_after_a_failed_complete_snapshot_completes(
    server: LocalServer, mount_factory: Callable[..., MountProc]
) -> None:
    m = mount_factory(server, "--io-timeout", "5")
    path = m.path / "new" / "x"
    data = bytes(range(256)) * (3 * MIB // 256)
    subprocess.run(["truncate", "-s", "1G", str(path)], check=True)
    with open(path, "r+b") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    """A CompleteSnapshot that failed (endpoint down) is sent again by the next seal.

    It was not: the manifest's ``complete_called`` stayed set, so every later seal only
    waited for a snapshot that AWS had never been asked to complete (found by bench/chaos.py,
    a server-kill landing on a seal)."""
    # The endpoint goes away just as the operator seals: CompleteSnapshot cannot be sent.
    server.kill()
    first = ebsfs("complete", "--timeout", "30", str(path), env=server.env(), timeout=120)
    assert first.returncode != 0
    # It comes back; sealing again, as `ebsfs complete`'s help says, must complete.
    server.start()
    second = ebsfs("complete", "--timeout", "30", str(path), env=server.env(), timeout=120)
    assert second.returncode == 0, second.stderr
    snapshot_id = second.stdout.strip()
    got = download_image(server.ebs(max_attempts=3), snapshot_id, length=len(data))
    assert got == data


def test_seal_resumed_after_a_crash_before_complete_snapshot_completes(
    server: LocalServer, mount_factory: Callable[..., MountProc]
) -> None:
    """The mount dies between recording ``complete_called`` and AWS receiving the call.

    Here the endpoint is down while the seal starts (CompleteSnapshot is being retried) and
    the daemon is killed meanwhile; after a remount with the same spool the seal is resumed
    but only waits for a snapshot AWS was never asked to complete."""
    m = mount_factory(server, "--io-timeout", "5", name="m1")
    m_spool = m.spool_dir
    path = m.path / "new" / "y"
    data = bytes(range(251)) * (2 * MIB // 251)
    subprocess.run(["truncate", "-s", "1G", str(path)], check=True)
    with open(path, "r+b") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    server.kill()
    os.chmod(path, 0o444)  # chmod a-w: seal, without waiting
    time.sleep(1.0)  # the flush is done (nothing dirty); CompleteSnapshot is being retried
    m.kill()
    server.start()
    m2 = mount_factory(server, "--io-timeout", "5", name="m1", spool_dir=m_spool)
    # The resumed seal sends CompleteSnapshot again (only an answer records it as accepted),
    # so the file may have completed and left new/ before anyone asks.
    deadline = time.monotonic() + 60
    while not (m2.path / "by-name" / "y").exists():
        assert time.monotonic() < deadline, "the resumed seal did not complete"
        if (m2.path / "new" / "y").exists():
            ebsfs("complete", "--timeout", "15", str(m2.path / "new" / "y"), env=server.env(),
                  timeout=120)
        time.sleep(0.5)
    snapshot_id = os.readlink(m2.path / "by-name" / "y").removeprefix("../")
    got = download_image(server.ebs(max_attempts=3), snapshot_id, length=len(data))
    assert got == data


def test_seal_on_a_full_spool_disk_fails_with_enospc_and_can_be_retried(
    server: LocalServer, mount_factory: Callable[..., MountProc], tmp_path: Path
) -> None:
    """A seal whose manifest cannot be saved (the spool's disk is full) is refused, cleanly.

    It answered EIO (a traceback in the log) and left the draft "sealing" in memory with
    nothing to finish it: every later `ebsfs complete` only waited, until a remount (found by
    bench/chaos.py, a `spool-full` landing on a seal)."""
    disk = SpoolDisk(tmp_path, 64)
    disk.setup()
    m = None
    try:
        m = mount_factory(server, "--io-timeout", "5", spool_dir=disk.path / "spool")
        path = m.path / "new" / "z"
        data = bytes(range(253)) * (2 * MIB // 253)
        subprocess.run(["truncate", "-s", "1G", str(path)], check=True)
        with open(path, "r+b") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        disk.fill()
        with pytest.raises(OSError) as refused:
            os.chmod(path, 0o444)
        assert refused.value.errno == errno.ENOSPC
        disk.free()
        done = ebsfs("complete", "--timeout", "30", str(path), env=server.env(), timeout=120)
        assert done.returncode == 0, done.stderr
        got = download_image(server.ebs(max_attempts=3), done.stdout.strip(), length=len(data))
        assert got == data
    finally:
        if m is not None:
            m.stop()
        disk.teardown()
