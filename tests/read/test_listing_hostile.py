"""The background listing (issue 13, large accounts) attacked: a listing longer than
--io-timeout while every page answers, pages whose NextToken loops, a listing the endpoint
stops answering midway, an unmount while it runs."""

from __future__ import annotations

import datetime
import errno
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from ebsfs.aws.api import Api
from ebsfs.commands.stats import read_stats
from ebsfs.core.errors import ApiError
from ebsfs.options.config import AwsConfig
from tests.mounting import MountProc
from tests.serverproc import LocalServer, complete
from tests.write.helpers import seal, sh

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


def _populated(data: Path, count: int) -> tuple[set[str], int]:
    """``count`` completed snapshots stored in ``data`` by a server stopped again: their ids
    and its port (a slow server started on the same data answers the mount there)."""
    quick = LocalServer(data)
    quick.start()
    try:
        return _populate(quick, count), quick.port
    finally:
        quick.stop()


def test_a_listing_longer_than_io_timeout_whose_pages_all_answer_is_not_given_up(
    tmp_path: Path,
) -> None:
    # Each page answers well within --io-timeout, the whole listing does not: the endpoint
    # is at work all along, so the listing must not be abandoned as "no answer" (it was:
    # the mount then showed no snapshot at all, and every refresh failed the same way).
    data = tmp_path / "data"
    made, _ = _populated(data, COUNT)
    # A page: 3 s of the 6 s bound (half of it left for a loaded machine); all three: 9 s.
    slow = LocalServer(data, "--latency-ms", "3000")
    slow.start()
    try:
        with MountProc(slow, tmp_path / "mnt", "--io-timeout", "6") as m:
            names = set(os.listdir(m.path))
            assert made <= names, (len(made - names), m.log_text()[-2000:])
            assert os.listdir(m.path / "by-name") == ["same"]
            assert "listing snapshots failed" not in m.log_text()
    finally:
        slow.stop()


class _LoopingPages:
    """A DescribeSnapshots paginator whose pages come round again: A, B, C, A, B, C..."""

    def __init__(self) -> None:
        self.pages = 0

    def get_paginator(self, _: str) -> _LoopingPages:
        return self

    def paginate(self, **_: object) -> Iterator[dict[str, Any]]:
        tokens = ["A", "B", "C"]
        while self.pages < 10_000:  # a hang guard: the loop is infinite on its own
            token = tokens[self.pages % 3]
            self.pages += 1
            yield {
                "Snapshots": [
                    {
                        "SnapshotId": f"snap-{self.pages:017x}",
                        "State": "completed",
                        "VolumeSize": 1,
                        "StartTime": datetime.datetime.now(datetime.UTC),
                    }
                ],
                "NextToken": token,
            }
        raise AssertionError("the listing followed 10,000 looping pages")


def test_a_listing_whose_page_tokens_loop_fails_with_a_clear_error() -> None:
    api = Api(AwsConfig(endpoint_url="http://127.0.0.1:9", region="us-east-1"))
    pages = _LoopingPages()
    api._ec2 = pages
    with pytest.raises(ApiError, match="loops"):
        api.describe_snapshots()
    assert pages.pages <= 4


def test_a_first_listing_cut_short_is_an_error_then_retried_not_an_empty_mount(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    made, port = _populated(data, 1100)
    slow = LocalServer(data, "--latency-ms", "1500", port=port)
    slow.start()
    try:
        with MountProc(slow, tmp_path / "mnt", "--io-timeout", "3") as m:
            slow.stop()  # during the first page of the full listing
            with pytest.raises(OSError) as info:
                os.listdir(m.path)  # not an empty root: it would say "no snapshots"
            assert info.value.errno == errno.EIO, info.value
            assert "listing snapshots failed" in m.log_text()
            # The drafts do not depend on the listing.
            assert os.listdir(m.path / "new") == []
            back = LocalServer(data, port=port)
            back.start()
            try:
                deadline = time.monotonic() + 120  # a hang guard; retried within seconds
                while True:
                    try:
                        names = set(os.listdir(m.path))
                        break
                    except OSError:
                        assert time.monotonic() < deadline, m.log_text()[-2000:]
                        time.sleep(0.5)
                assert made <= names
            finally:
                back.stop()
    finally:
        slow.stop()


def test_a_snapshot_sealed_here_then_deleted_elsewhere_leaves_the_listing(
    tmp_path: Path,
) -> None:
    with LocalServer(tmp_path / "data") as server, MountProc(
        server, tmp_path / "mnt", "--refresh", "1"
    ) as m:
        target = m.path / "new" / "img"
        sh("truncate", "-s", "1G", target)
        target.write_bytes(os.urandom(4096))
        snapshot_id = seal(target, server)
        assert snapshot_id in os.listdir(m.path)
        deadline = time.monotonic() + 60  # a hang guard: a refresh a second
        refreshes = read_stats(str(m.path))["listing"].get("refreshes", 0)
        while read_stats(str(m.path))["listing"].get("refreshes", 0) < refreshes + 2:
            assert time.monotonic() < deadline  # a refresh after the seal listed it
            time.sleep(0.2)
        server.ec2().delete_snapshot(SnapshotId=snapshot_id)
        while snapshot_id in os.listdir(m.path) or "img" in os.listdir(m.path / "by-name"):
            assert time.monotonic() < deadline, "a deleted snapshot stays listed"
            time.sleep(0.5)
