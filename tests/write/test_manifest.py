"""The draft's manifest: typed, the same JSON on disk, and spools of earlier versions load."""

import json
import logging
import os
from pathlib import Path

import pytest
import trio

from ebsfs.core.blocks import BLOCK_SIZE
from ebsfs.write.drafts import Drafts
from ebsfs.write.seal import SealTuning
from ebsfs.write.spool import Spool
from ebsfs.write.state import TRANSITIONS, DraftState, Manifest
from ebsfs.write.writeback import WriteTuning

from .fakes import DictReader, FakeApi

GIB = 1 << 30

#: As the dict-based drafts of earlier versions wrote it: a started draft whose seal failed,
#: with a parent, tags, the legacy "complete_called" and no word on encryption.
OLD = {
    "version": 1,
    "name": "img",
    "state": "pending",
    "size": 2 * GIB,
    "mtime_ns": 1_700_000_000_000_000_000,
    "written": True,
    "client_token": "ab" * 16,
    "parent": "snap-0123456789abcdef0",
    "parent_gib": 1,
    "parent_encrypted": False,
    "description": "nightly",
    "tags": {"team": "infra"},
    "snapshot_id": "snap-00000000000000001",
    "started_at": 1_700_000_000.5,
    "state_message": "sealing failed, seal again to retry: timeout",
    "complete_called": True,
    "from_a_later_version": [1, 2],
}


def test_an_old_manifest_reads_as_it_was_written_and_writes_back_alike() -> None:
    m = Manifest.from_json(json.loads(json.dumps(OLD)))
    assert m.state is DraftState.PENDING and m.size == 2 * GIB and m.written
    assert m.tags == {"team": "infra"} and m.complete_called and m.encrypted is None
    assert m.extra == {"from_a_later_version": [1, 2]}
    # The same keys and values, but for the ones that only said "false".
    assert m.to_json() == {k: v for k, v in OLD.items() if v is not False}
    assert Manifest.from_json(m.to_json()) == m


def test_a_new_draft_writes_the_manifest_earlier_versions_wrote() -> None:
    m = Manifest(name="x", mtime_ns=5)
    assert m.to_json() == {"version": 1, "name": "x", "state": "draft", "size": None,
                           "mtime_ns": 5}
    m.encrypted = False  # StartSnapshot answered: not encrypted; that is kept
    assert m.to_json()["encrypted"] is False


@pytest.mark.parametrize("bad", [{}, {"name": 3}, {"name": "x", "state": "gone"},
                                 {"name": "x", "size": "big"}, {"name": "x", "tags": [1]}])
def test_a_manifest_that_is_not_one_is_refused(bad: dict[str, object]) -> None:
    with pytest.raises((KeyError, ValueError, TypeError)):
        Manifest.from_json(bad)


def test_every_state_has_its_moves_and_a_move_outside_them_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert set(TRANSITIONS) == set(DraftState)
    m = Manifest(name="x", state=DraftState.COMPLETED)
    with caplog.at_level(logging.ERROR, logger="ebsfs.write.state"):
        m.move(DraftState.PENDING)
    assert "not a transition" in caplog.text


def test_a_spool_of_an_earlier_version_is_brought_back_and_sealed(tmp_path: Path) -> None:
    api = FakeApi()
    data = os.urandom(BLOCK_SIZE)
    root = tmp_path / "spool"
    old = {"version": 1, "name": "old", "state": "draft", "size": GIB,
           "mtime_ns": 1_700_000_000_000_000_000, "written": True, "tags": {"k": "v"},
           "state_message": ""}
    spool = Spool.create(root, old)
    spool.write(0, data)
    spool.close()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            drafts = await Drafts.open(
                api, root, nursery, trio.CapacityLimiter(8),
                lambda sid, gib: DictReader(api, sid),
                tuning=WriteTuning(delay=0.01),
                seal_tuning=SealTuning(first_pause=0.01, max_pause=0.02),
            )
            d = drafts.get("old")
            assert d is not None and d.size() == GIB
            assert d.xattrs()["user.ebsfs.tag.k"] == b"v"
            done: list[str] = []
            drafts.on_completed(lambda name, sid: done.append(sid))
            await d.seal()
            with trio.fail_after(10):
                while not done:
                    await trio.sleep(0.01)
            assert api.image(done[0], BLOCK_SIZE) == data
            assert api.snaps[done[0]].tags == {"Name": "old", "k": "v"}
            nursery.cancel_scope.cancel()

    trio.run(main)
