"""Issue 14: throttling alone never fails an ``fsync``, however long the calls of a draft
wait for their lane behind others (a quota far below what the mount asks for, a short
``--io-timeout``): the bound on throttling counts the time a call is throttled, not the
time nothing of the mount went through, not the time a call queued or lost to others. A real
mount against the server's ``--rate-limit``; no timing asserted. ``--max-attempts 1``: the
throttled answers come back to ebsfs's own retries at once (botocore's back-off, up to 16 s a
pause, is longer than so short an --io-timeout: silence, as far as the mount can tell)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.mounting import MountProc, ebsfs
from tests.serverproc import LocalServer

BS = 512 * 1024
#: PutSnapshotBlock calls a second the server allows the snapshot; the draft's 32 uploads
#: at once queue for ~8 s behind each other, twice --io-timeout x 4.
RATE = 4
IO_TIMEOUT = 1
BLOCKS = 40

pytestmark = pytest.mark.timeout(240)


def test_fsync_under_a_low_quota_is_slow_not_failed(
    server_factory: Callable[..., LocalServer],
    mount_factory: Callable[..., MountProc],
    tmp_path: Path,
) -> None:
    srv = server_factory("--rate-limit", str(RATE))
    m = mount_factory(srv, "--io-timeout", str(IO_TIMEOUT), "--max-attempts", "1")
    data = os.urandom(BLOCKS * BS)
    target = m.path / "new" / "queued"
    fd = os.open(target, os.O_WRONLY | os.O_CREAT)
    try:
        os.ftruncate(fd, 1 << 30)
        os.pwrite(fd, data, 0)
        try:
            # EIO on main: a put throttled 4 x io_timeout after it began (queued behind the
            # others for most of it) failed, though the others went through meanwhile.
            os.fsync(fd)
        except OSError as exc:
            raise AssertionError(f"fsync: {exc}\n{m.log_text()[-4000:]}") from None
    finally:
        os.close(fd)
    stats = json.loads(ebsfs("stats", "--json", str(m.path), env=m.env, check=True).stdout)
    write = stats["write"]
    assert write.get("puts_throttled", 0) > 0, write  # the quota was met
    assert write.get("put_failures", 0) == 0, write
    with open(target, "rb") as f:
        assert f.read(len(data)) == data
