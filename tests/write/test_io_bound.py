"""fsync in new/ obeys the read path's bound: on a stopped or dead endpoint it fails with EIO
within ``--io-timeout`` (not after botocore's attempts times the put layer's), the data stays
in the spool, and a later fsync stores it once the endpoint answers again."""

from __future__ import annotations

import errno
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.mounting import MountProc
from tests.serverproc import LocalServer
from tests.write.helpers import download, seal, sh

BS = 524288
IO_TIMEOUT = 4.0
BOUND = 2 * IO_TIMEOUT + 8

pytestmark = pytest.mark.timeout(240)


@pytest.mark.parametrize("kind", ["stopped", "killed"])
def test_fsync_on_a_dead_endpoint_is_eio_within_the_bound_and_keeps_the_data(
    server_factory: Callable[..., LocalServer],
    mount_factory: Callable[..., MountProc],
    tmp_path: Path,
    kind: str,
) -> None:
    srv = server_factory()
    m = mount_factory(srv, "--io-timeout", str(IO_TIMEOUT))
    target = m.path / "new" / "bounded"
    sh("truncate", "-s", "1G", target)
    first = os.urandom(2 * BS)
    later = os.urandom(3 * BS + 100)
    fd = os.open(target, os.O_RDWR)
    try:
        os.write(fd, first)
        os.fsync(fd)  # StartSnapshot and the first blocks, with the server up
        assert srv.proc is not None
        if kind == "stopped":
            srv.proc.send_signal(signal.SIGSTOP)
        else:
            srv.kill()
        try:
            os.pwrite(fd, later, 2 * BS)
            start = time.monotonic()
            with pytest.raises(OSError) as info:
                os.fsync(fd)
            took = time.monotonic() - start
            assert info.value.errno == errno.EIO
            assert took < BOUND, f"fsync failed after {took:.1f} s"
            # Nothing lost: still dirty, and read back from the spool.
            assert int(os.getxattr(target, "user.ebsfs.dirty_blocks")) >= 3
            assert os.pread(fd, len(later), 2 * BS) == later
        finally:
            if kind == "stopped":
                srv.proc.send_signal(signal.SIGCONT)
            else:
                srv.start()
        deadline = time.monotonic() + 60
        while True:
            try:
                os.fsync(fd)
                break
            except OSError as exc:
                assert exc.errno == errno.EIO
                assert time.monotonic() < deadline, "fsync never succeeded after the outage"
                time.sleep(0.5)
        assert int(os.getxattr(target, "user.ebsfs.dirty_blocks")) == 0
    finally:
        os.close(fd)
    snapshot_id = seal(target, srv)
    data = first + later
    padded = data + bytes(-len(data) % BS)
    assert download(srv, snapshot_id, len(padded)) == padded


def test_the_fsync_that_starts_the_snapshot_is_bounded_too(
    server_factory: Callable[..., LocalServer],
    mount_factory: Callable[..., MountProc],
) -> None:
    # Flow B: no size given, so the first fsync calls StartSnapshot, on a stopped server.
    srv = server_factory()
    m = mount_factory(srv, "--io-timeout", str(IO_TIMEOUT))
    target = m.path / "new" / "sized-at-fsync"
    data = os.urandom(3 * BS + 5)
    fd = os.open(target, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.write(fd, data)
        assert srv.proc is not None
        srv.proc.send_signal(signal.SIGSTOP)
        try:
            start = time.monotonic()
            with pytest.raises(OSError) as info:
                os.fsync(fd)
            took = time.monotonic() - start
            assert info.value.errno == errno.EIO
            assert took < BOUND, f"fsync failed after {took:.1f} s"
            assert os.pread(fd, len(data), 0) == data
        finally:
            srv.proc.send_signal(signal.SIGCONT)
        deadline = time.monotonic() + 60
        while True:
            try:
                os.fsync(fd)
                break
            except OSError as exc:
                assert exc.errno == errno.EIO
                assert time.monotonic() < deadline, "fsync never succeeded after the outage"
                time.sleep(0.5)
    finally:
        os.close(fd)
    snapshot_id = seal(target, srv)
    padded = data + bytes(-len(data) % BS)
    assert download(srv, snapshot_id, len(padded)) == padded
