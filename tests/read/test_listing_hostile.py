"""The background listing (issue 13, large accounts) attacked: a listing longer than
--io-timeout while every page answers, pages whose NextToken loops, a listing the endpoint
stops answering midway, an unmount while it runs."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.mounting import MountProc
from tests.serverproc import LocalServer, complete

COUNT = 2100  # three pages of DescribeSnapshots (1,000 a page)


def _populate(server: LocalServer, count: int) -> set[str]:
    ebs = server.ebs(max_attempts=5, max_pool_connections=8)

    def one(i: int) -> str:
        tags = [{"Key": "Name", "Value": "same"}]  # one Name for all: by-name/ shows one
        sid = str(ebs.start_snapshot(VolumeSize=1, Tags=tags)["SnapshotId"])
        complete(ebs, sid, {})
        return sid

    with ThreadPoolExecutor(8) as pool:
        return set(pool.map(one, range(count)))


def test_a_listing_longer_than_io_timeout_whose_pages_all_answer_is_not_given_up(
    tmp_path: Path,
) -> None:
    # Each page answers well within --io-timeout, the whole listing does not: the endpoint
    # is at work all along, so the listing must not be abandoned as "no answer" (it was:
    # the mount then showed no snapshot at all, and every refresh failed the same way).
    data = tmp_path / "data"
    quick = LocalServer(data)
    quick.start()
    try:
        made = _populate(quick, COUNT)
    finally:
        quick.stop()
    slow = LocalServer(data, "--latency-ms", "700")
    slow.start()
    try:
        with MountProc(slow, tmp_path / "mnt", "--io-timeout", "1.5") as m:
            names = set(os.listdir(m.path))
            assert made <= names, (len(made - names), m.log_text()[-2000:])
            assert os.listdir(m.path / "by-name") == ["same"]
            assert "listing snapshots failed" not in m.log_text()
    finally:
        slow.stop()
