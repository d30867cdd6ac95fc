"""Sealing against the fake API: a CompleteSnapshot that failed is sent again, and state is
recorded only once the action it records succeeded."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
import trio

from ebsfs.core.errors import (
    AccessDeniedError,
    ApiError,
    BackendUnavailableError,
    EbsfsError,
    InvalidValueError,
    NoSpaceError,
)
from ebsfs.write.drafts import Drafts
from ebsfs.write.state import DraftState

from .fakes import FakeApi
from .test_drafts import BS, run, sealed


class RefusingApi(FakeApi):
    """CompleteSnapshot fails its first ``refusals`` calls (an IAM policy without
    ebs:CompleteSnapshot, fixed meanwhile)."""

    def __init__(self, refusals: int = 1) -> None:
        super().__init__()
        self.refusals = refusals

    def complete_snapshot(self, snapshot_id, changed_blocks_count, aggregate_b64):
        if self.refusals:
            self.refusals -= 1
            self.calls["complete_refused"] += 1
            raise AccessDeniedError("CompleteSnapshot: not authorized")
        return super().complete_snapshot(snapshot_id, changed_blocks_count, aggregate_b64)


async def _settled(draft) -> None:
    with trio.fail_after(10):
        while draft.state == "sealing":
            await trio.sleep(0.01)


def test_a_refused_complete_snapshot_is_sent_again_by_the_next_seal(tmp_path: Path) -> None:
    api = RefusingApi()
    data = os.urandom(2 * BS)

    async def body(drafts: Drafts, api: FakeApi) -> None:
        d = await drafts.create("img")
        await d.write(0, data)
        await d.seal()
        await _settled(d)
        assert d.state == "pending", d.m
        assert "not authorized" in d.xattrs()["user.ebsfs.state_message"].decode()
        sid = await sealed(drafts, d)
        assert api.calls["complete"] == 1 and api.calls["complete_refused"] == 1
        assert api.snaps[sid].state == "completed" and api.image(sid, len(data)) == data

    run(tmp_path, body, api=api)


def test_a_restart_after_a_refused_complete_sends_it_again(tmp_path: Path) -> None:
    api = RefusingApi()
    data = os.urandom(BS)

    async def first(drafts: Drafts, api: FakeApi) -> None:
        d = await drafts.create("img")
        await d.write(0, data)
        await d.seal()
        await _settled(d)
        # As if the daemon had died right after the refused call, while still sealing.
        d.m.state = DraftState.SEALING
        d._save()

    async def second(drafts: Drafts, api: FakeApi) -> None:
        done: list[str] = []
        drafts.on_completed(lambda name, sid: done.append(sid))
        with trio.fail_after(10):
            while not done:
                await trio.sleep(0.01)
        assert api.image(done[0], BS) == data

    run(tmp_path, first, api=api)
    run(tmp_path, second, api=api)


def test_a_complete_sent_again_to_a_completed_snapshot_is_success(tmp_path: Path) -> None:
    class AnsweredOnce(FakeApi):
        """AWS completed the snapshot, but the answer was lost; sent again, it is refused."""

        def complete_snapshot(self, snapshot_id, changed_blocks_count, aggregate_b64):
            status = super().complete_snapshot(snapshot_id, changed_blocks_count, aggregate_b64)
            if self.calls["complete"] == 1:
                raise ApiError("connection reset", "RequestTimeout", "", 0)
            raise ApiError("snapshot is not pending", "ValidationException",
                           "INVALID_SNAPSHOT_ID", 400) if status == "completed" else ApiError(
                               "?", "X", "", 400)

    api = AnsweredOnce()

    async def body(drafts: Drafts, api: FakeApi) -> None:
        d = await drafts.create("img")
        await d.write(0, os.urandom(BS))
        await d.seal()
        await _settled(d)
        if d.state == "pending":  # the lost answer made this seal fail: the next one succeeds
            await sealed(drafts, d)
        assert d.state == "completed", d.m

    run(tmp_path, body, api=api)


def test_the_manifest_says_accepted_only_after_the_answer(tmp_path: Path) -> None:
    api = RefusingApi(refusals=1)

    async def body(drafts: Drafts, api: FakeApi) -> None:
        d = await drafts.create("img")
        await d.write(0, os.urandom(BS))
        await d.seal()
        await _settled(d)
        manifest = json.loads((d.spool.directory / "manifest.json").read_text())
        assert not manifest.get("complete_accepted") and not manifest.get("complete_called")

    run(tmp_path, body, api=api)


class AnswerLost(FakeApi):
    """CompleteSnapshot reaches AWS (the snapshot is sealed) but no answer comes back, until
    ``lost`` calls have been made."""

    def __init__(self, lost: int) -> None:
        super().__init__()
        self.lost = lost
        self.final: dict[str, str] = {}  # the outcome, shown once an answer got through

    def complete_snapshot(self, snapshot_id, changed_blocks_count, aggregate_b64):
        if snapshot_id in self.final:
            self.snaps[snapshot_id].state = self.final.pop(snapshot_id)
        status = super().complete_snapshot(snapshot_id, changed_blocks_count, aggregate_b64)
        if self.lost:
            self.lost -= 1
            snap = self.snaps[snapshot_id]
            self.final[snapshot_id], snap.state = snap.state, "pending"
            raise AccessDeniedError("CompleteSnapshot: the answer was lost")
        return status


def test_a_crash_after_an_unanswered_complete_does_not_store_blocks_again(
    tmp_path: Path,
) -> None:
    api = AnswerLost(lost=1)
    data = os.urandom(3 * BS)

    async def first(drafts: Drafts, api: FakeApi) -> None:
        d = await drafts.create("img")
        await d.write(0, data)
        await d.seal()
        await _settled(d)
        assert d.state == "pending"  # sealing failed: no answer
        # The daemon dies here: what it kept only in memory is lost.

    async def second(drafts: Drafts, api: FakeApi) -> None:
        d = drafts.get("img")
        assert d is not None and d.wb.dirty_blocks == 0  # every stored block is on record
        puts = len(api.puts)
        sid = await sealed(drafts, d)
        assert len(api.puts) == puts and api.image(sid, len(data)) == data

    run(tmp_path, first, api=api)
    run(tmp_path, second, api=api)


class Unreachable(FakeApi):
    """EC2 calls fail while ``down`` (the endpoint went away)."""

    down = False

    def describe_snapshot(self, snapshot_id):
        if self.down:
            raise BackendUnavailableError("DescribeSnapshots: connection refused")
        return super().describe_snapshot(snapshot_id)

    def delete_snapshot(self, snapshot_id):
        if self.down:
            raise BackendUnavailableError("DeleteSnapshot: connection refused")
        return super().delete_snapshot(snapshot_id)


def test_an_rm_that_fails_while_sealing_leaves_a_draft_that_can_be_sealed(
    tmp_path: Path,
) -> None:
    api = Unreachable()
    api.put_delay = 0.2
    data = os.urandom(3 * BS)

    async def body(drafts: Drafts, api: FakeApi) -> None:
        d = await drafts.create("img")
        await d.write(0, data)
        await d.seal()
        assert d.state == "sealing"
        api.down = True
        with pytest.raises(EbsfsError):
            await drafts.remove("img")
        assert drafts.get("img") is d
        assert d.state == "pending", d.m  # not "sealing" with nobody sealing it
        assert "rm" in d.xattrs()["user.ebsfs.state_message"].decode()
        api.down = False
        api.put_delay = 0
        sid = await sealed(drafts, d)
        assert api.image(sid, len(data)) == data

    run(tmp_path, body, api=api)


def test_sealing_again_after_aws_failed_the_snapshot_deletes_the_failed_one(
    tmp_path: Path,
) -> None:
    data = os.urandom(2 * BS)

    async def body(drafts: Drafts, api: FakeApi) -> None:
        d = await drafts.create("x")
        await d.write(0, data)
        await d.seal()
        await _settled(d)
        assert d.state == "error"
        failed = d.snapshot_id
        api.complete_fault = ""
        sid = await sealed(drafts, d)
        assert failed not in api.snaps  # one snapshot named x, not a useless second one
        assert [s.snapshot_id for s in api.snaps.values()] == [sid]
        assert api.image(sid, len(data)) == data

    run(tmp_path, body, fault="checksum")


def test_a_first_write_the_spool_refuses_leaves_the_draft_unwritten(tmp_path: Path) -> None:
    async def body(drafts: Drafts, api: FakeApi) -> None:
        d = await drafts.create("x")

        def full(offset: int, data: bytes) -> list[int]:
            raise OSError(errno.ENOSPC, "No space left on device")

        real, d.spool.write = d.spool.write, full
        with pytest.raises(NoSpaceError):
            await d.write(0, b"x" * BS)
        d.spool.write = real
        # Nothing was accepted: attributes can still be set, and there is nothing to seal.
        await d.setxattr("user.ebsfs.description", b"still a draft")
        with pytest.raises(InvalidValueError):
            await d.seal()
        await d.fsync()
        assert d.snapshot_id is None and api.calls["start"] == 0

    run(tmp_path, body)


def test_rm_of_a_draft_completed_elsewhere_keeps_it_and_shows_it(tmp_path: Path) -> None:
    data = os.urandom(BS)

    async def body(drafts: Drafts, api: FakeApi) -> None:
        shown: list[tuple[str, str]] = []
        drafts.on_completed(lambda name, sid: shown.append((name, sid)))
        d = await drafts.create("img")
        await d.write(0, data)
        await d.fsync()
        sid = d.snapshot_id
        assert sid is not None
        count, aggregate = d.wb.summary()
        api.complete_snapshot(sid, count, aggregate)  # sealed by someone else
        await drafts.remove("img")
        assert drafts.names() == [] and api.snaps[sid].state == "completed"
        assert shown == [("img", sid)]

    run(tmp_path, body)


def test_a_draft_started_by_an_earlier_version_stores_the_zero_blocks_it_skipped(
    tmp_path: Path,
) -> None:
    api = FakeApi()
    data = os.urandom(BS)

    async def first(drafts: Drafts, api: FakeApi) -> None:
        d = await drafts.create("img")
        await d.truncate(1 << 30)
        await d.write(0, bytes(BS) + data)
        await d.fsync()
        assert api.puts == [1]  # the zero block was skipped (not encrypted, as answered)
        # As an earlier version left it: no word on encryption.
        d.m.encrypted = None
        d._save()

    async def second(drafts: Drafts, api: FakeApi) -> None:
        d = drafts.get("img")
        assert d is not None
        sid = await sealed(drafts, d)
        assert sorted(api.snaps[sid].own) == [0, 1]

    run(tmp_path, first, api=api)
    run(tmp_path, second, api=api)
