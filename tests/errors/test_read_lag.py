"""AWS's read lag (ebs-direct-api.md §4.4): a snapshot that just completed answers 404
SNAPSHOT_NOT_FOUND for a while. The server's ``--read-lag``, and ebsfs waiting it out (reads,
``ebsfs diff``) for a grace counted from the completion, not from first sight."""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import botocore.exceptions
import pytest
import trio

from ebsfs.commands import diff
from ebsfs.core.blocks import BlockIndex
from ebsfs.core.errors import EbsfsError, NotFoundError
from ebsfs.read.remote import (
    READ_LAG_GRACE,
    Calls,
    RemoteBlocks,
    RemoteTuning,
    seen_completed,
    since_completion,
)
from tests.mounting import MountProc, ebsfs
from tests.read.fakes import FakeBlockApi, block_of
from tests.serverproc import LocalServer, list_blocks, upload_image
from tests.write.helpers import seal, sh

BS = 524288


def test_the_server_answers_404_for_read_lag_seconds_after_completed(tmp_path: Path) -> None:
    with LocalServer(tmp_path / "data", "--read-lag", "8") as server:
        data = os.urandom(2 * BS)
        snapshot_id = upload_image(server.ebs(), server.ec2(), data)
        ebs = server.ebs()
        with pytest.raises(botocore.exceptions.ClientError) as info:
            ebs.list_snapshot_blocks(SnapshotId=snapshot_id)
        assert info.value.response["Error"]["Code"] == "ResourceNotFoundException"
        assert info.value.response.get("Reason") == "SNAPSHOT_NOT_FOUND"
        deadline = time.monotonic() + 60
        while True:
            try:
                blocks, _ = list_blocks(ebs, snapshot_id)
                break
            except botocore.exceptions.ClientError:
                assert time.monotonic() < deadline, "still 404 a minute after --read-lag 8"
                time.sleep(0.5)
        assert sorted(blocks) == [0, 1]


def test_a_snapshot_sealed_through_new_is_read_and_diffed_through_the_lag(
    tmp_path: Path,
) -> None:
    # The grace (3 minutes from completion) is far longer than the lag.
    with LocalServer(tmp_path / "data", "--read-lag", "5") as server:
        m = MountProc(server, tmp_path / "mnt").start()
        try:
            data = os.urandom(3 * BS + 5)
            target = m.path / "new" / "img"
            sh("truncate", "-s", "1G", target)
            target.write_bytes(data)
            snapshot_id = seal(target, server)
            # Read at once, in the lag: the read waits; no EIO.
            with open(m.path / snapshot_id, "rb") as f:
                assert f.read(len(data)) == data
            other = m.path / "new" / "other"
            sh("truncate", "-s", "1G", other)
            other.write_bytes(data[:BS])
            second = seal(other, server)
            # At once after the seal, in the lag: ebsfs diff waits too.
            done = ebsfs("diff", second, second, env=server.env(), timeout=120)
            assert done.returncode == 0, done.stderr
            assert "no changed blocks" in done.stdout
        finally:
            m.stop()
        assert "EIO" not in m.log_text() and "unreadable" not in m.log_text()


class _LaggingApi:
    """ListChangedBlocks always 404; DescribeSnapshots says completed at ``completed``."""

    def __init__(self, completed: float) -> None:
        self.completed = completed
        self.lists = 0

    def list_changed_blocks(self, *args: Any, **kwargs: Any) -> Any:
        self.lists += 1
        raise NotFoundError("The snapshot does not exist.")

    def describe_snapshot(self, snapshot_id: str) -> Any:
        return SimpleNamespace(state="completed", completion_time=self.completed)


def test_diff_counts_the_grace_from_the_completion() -> None:
    # Completed an hour ago: a 404 is an answer, not the lag; no waiting.
    api = _LaggingApi(time.time() - 3600)
    slept: list[float] = []
    with pytest.raises(NotFoundError):
        list(diff.changed_indexes(api, "snap-0aaa", "snap-0aab", sleep=slept.append))
    assert slept == []
    # Completed just now: waited (the fake sleep returns at once; a few rounds show it).
    fresh = _LaggingApi(time.time())
    rounds: list[float] = []

    def sleep(seconds: float) -> None:
        rounds.append(seconds)
        if len(rounds) >= 3:
            raise RuntimeError("waited")

    with pytest.raises(RuntimeError, match="waited"):
        list(diff.changed_indexes(fresh, "snap-0bba", "snap-0bbb", sleep=sleep))


def test_the_grace_is_at_least_three_minutes_and_counts_from_completion() -> None:
    assert READ_LAG_GRACE >= 180
    assert since_completion("snap-0ccc", 7.0) == 7.0  # unknown: from first sight
    seen_completed("snap-0ccc", time.time() - 100)
    assert 99 <= since_completion("snap-0ccc", 7.0) <= 200
    seen_completed("snap-0ccc")  # seen later: the earliest stays
    assert since_completion("snap-0ccc", 7.0) >= 99


def _remote(api: FakeBlockApi, snapshot_id: str) -> RemoteBlocks:
    return RemoteBlocks(api, Calls(trio.CapacityLimiter(4)), snapshot_id, api.volume_gib * 2048,
                        tuning=RemoteTuning(backoff=0.01))


def test_reads_count_the_grace_from_the_completion() -> None:
    # Completed an hour ago: a 404 is an answer at once, not 3 minutes later.
    old = FakeBlockApi({0: block_of(0)})
    old.not_found_until = time.time() + 1000
    seen_completed("snap-0ddd", time.time() - 3600)
    # Completed just now: the 404s of the lag are waited out.
    fresh = FakeBlockApi({0: block_of(0)})
    fresh.not_found_until = time.time() + 0.5
    seen_completed("snap-0dde")

    async def main() -> None:
        with trio.fail_after(30):
            with pytest.raises(EbsfsError, match="not readable"):
                await _remote(old, "snap-0ddd").read_block(BlockIndex(0))
            assert await _remote(fresh, "snap-0dde").read_block(BlockIndex(0)) == block_of(0)

    trio.run(main)
