"""Issue 14's acceptance: a mount against a server that throttles (``--rate-limit``, far
below what the mount would ask for) reads a snapshot and writes one through new/ correctly,
with no error: throttling slows calls down, never fails them. ``ebsfs stats`` shows that
throttling was met. No timing is asserted (docs/benchmarks.md has the figures)."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.mounting import MountProc, ebsfs
from tests.serverproc import LocalServer, upload_image
from tests.write.helpers import seal, sh

MIB = 1 << 20
#: Calls a second per snapshot, reads and writes apart: the token bucket holds one second's
#: worth, and the image is three seconds' worth of blocks, so the burst cannot cover it.
RATE = 10
IMAGE = 15 * MIB

pytestmark = pytest.mark.timeout(240)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _stats(m: MountProc) -> dict[str, Any]:
    done = ebsfs("stats", "--json", str(m.path), env=m.env, check=True)
    stats: dict[str, Any] = json.loads(done.stdout)
    return stats


def _throttled(server: LocalServer, operation: str) -> int:
    """Calls of ``operation`` the server answered with throttling (its debug log has a line
    per request)."""
    return len(re.findall(rf" {operation} \S+ \S+ -> 400 ", server.log_text()))


def test_a_throttled_mount_reads_and_writes_correctly(
    server_factory: Callable[..., LocalServer],
    mount_factory: Callable[..., MountProc],
    tmp_path: Path,
) -> None:
    image = os.urandom(IMAGE)
    # Stored before the quota is set: the upload is plain boto3 with no retries.
    srv = server_factory()
    sid = upload_image(srv.ebs(), srv.ec2(), image)
    srv.restart("--rate-limit", str(RATE), "--log-level", "debug")

    m = mount_factory(srv)
    with open(m.path / sid, "rb") as f:
        read = f.read(IMAGE)
    assert _sha(read) == _sha(image), "a throttled read returned wrong data"
    read_stats = _stats(m)
    assert read_stats["read"].get("throttled_share_pct", 0) > 0, read_stats["read"]
    assert _throttled(srv, "GetSnapshotBlock") > 0

    # Flow A under the same quota: dd into new/, fsync, seal, read the result back.
    src = tmp_path / "new.bin"
    written = os.urandom(IMAGE)
    src.write_bytes(written)
    target = m.path / "new" / "throttled"
    sh("truncate", "-s", "1G", target)
    sh("dd", f"if={src}", f"of={target}", "bs=1M", "conv=notrunc,fsync")
    new_sid = seal(target, srv)
    assert new_sid.startswith("snap-"), new_sid
    with open(m.path / new_sid, "rb") as f:
        back = f.read(IMAGE)
    assert _sha(back) == _sha(written), "a snapshot written under throttling reads back wrong"

    stats = _stats(m)
    # ENOENT: the lookups of names not there yet (truncate's, the new snapshot's).
    assert set(stats.get("errors", {})) <= {"ENOENT"}, f"errors: {stats['errors']}"
    assert _throttled(srv, "PutSnapshotBlock") > 0, "the writes never met throttling"
