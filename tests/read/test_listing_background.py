"""A mount over many snapshots answers before its full listing is in (issue 13, large
accounts): one small DescribeSnapshots page at start-up carries the startup errors, the rest
is listed in the background, and lookups and listings wait for it instead of missing names."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.mounting import MountProc
from tests.serverproc import LocalServer, complete

COUNT = 1100  # two pages of DescribeSnapshots (1,000 a page)


def _populate(server: LocalServer) -> set[str]:
    ebs = server.ebs(max_attempts=5, max_pool_connections=8)

    def one(i: int) -> str:
        tags = [{"Key": "Name", "Value": f"vol-{i:05d}"}]
        sid = str(ebs.start_snapshot(VolumeSize=1, Tags=tags)["SnapshotId"])
        complete(ebs, sid, {})
        return sid

    with ThreadPoolExecutor(8) as pool:
        return set(pool.map(one, range(COUNT)))


def test_the_mount_answers_before_its_listing_and_misses_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    quick = LocalServer(data)
    quick.start()
    try:
        made = _populate(quick)
    finally:
        quick.stop()
    slow = LocalServer(data, "--latency-ms", "1000")  # each listing page takes a second
    slow.start()
    try:
        with MountProc(slow, tmp_path / "mnt") as m:
            names = set(os.listdir(m.path))  # waits for the listing, misses nothing
            assert made <= names, len(made - names)
            assert len(os.listdir(m.path / "by-name")) == COUNT
            log = m.log_text()
            mounted = log.index("mounted ")
            listed = log.index(f"listed {COUNT} snapshots")
            assert mounted < listed, log[-2000:]
    finally:
        slow.stop()
