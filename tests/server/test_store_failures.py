"""The store when the disk misbehaves: a put that failed never comes back at a restart, and a
hole punch that failed once does not stop space from coming back."""

import errno
import hashlib
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from ebsfs.core.blocks import BLOCK_SIZE
from ebsfs.server import segments as segments_mod
from ebsfs.server.ec2 import Ec2Service
from ebsfs.server.storage import COMPLETED, Snapshot, Store


def _snapshot(store: Store, sid: str) -> Snapshot:
    snap = Snapshot(sid, 1, "000000000000", 0.0, 60, 0.0, root_id=sid)
    store.create(snap, None, "", "{}")
    return snap


def _put(store: Store, snap: Snapshot, index: int, data: bytes) -> None:
    store.put_block(snap, index, data, hashlib.sha256(data).digest())


def _rows(store: Store, snap: Snapshot) -> dict[int, bytes]:
    seen: dict[int, bytes] = {}

    def decide(rows: list[tuple[int, bytes]]) -> tuple[str, str]:
        seen.update(rows)
        return COMPLETED, ""

    assert store.seal(snap, decide, 0.0)
    return seen


def _failing_punch(result: int, err: int) -> Any:
    def punch(fd: int, offset: int, length: int) -> int:
        return err if result else 0
    return punch


@pytest.mark.parametrize("alone", [True, False], ids=["dsync-write", "group-sync"])
def test_a_failed_put_stays_failed_where_holes_cannot_be_punched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, alone: bool
) -> None:
    # The record reaches the file whole, making it durable fails (EIO), and the filesystem
    # punches no holes (or no longer has room to: ENOSPC). The put was answered with an
    # error, so a restart must not find it.
    store = Store(tmp_path, index_delay=3600)
    snap = _snapshot(store, "snap-0000000000000000a")
    data = os.urandom(BLOCK_SIZE)
    pwritev, fdatasync = os.pwritev, os.fdatasync

    def write_then_fail(fd: int, buffers: list[memoryview], offset: int, flags: int = 0) -> int:
        done = pwritev(fd, buffers, offset)
        fdatasync(fd)
        if flags:
            raise OSError(errno.EIO, "simulated failure of a synchronous write")
        return done

    def fail_sync(fd: int) -> None:
        raise OSError(errno.EIO, "simulated failure of fdatasync")

    monkeypatch.setattr(os, "pwritev", write_then_fail)
    monkeypatch.setattr(os, "fdatasync", fail_sync)
    monkeypatch.setattr(segments_mod, "punch_hole", _failing_punch(-1, errno.ENOSPC))
    if not alone:
        store._writing += 1
    with pytest.raises(OSError):
        _put(store, snap, 3, data)
    monkeypatch.undo()
    if not alone:
        store._writing -= 1
    store.close(index=False)

    store = Store(tmp_path, index_delay=3600)
    assert _rows(store, store.snapshots[snap.snapshot_id]) == {}
    store.close()


def test_a_punch_that_failed_once_does_not_stop_space_coming_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(tmp_path)
    snap = _snapshot(store, "snap-0000000000000000b")
    for i in range(3):
        _put(store, snap, i, os.urandom(BLOCK_SIZE))
    store.flush()
    before = store.stats()["allocated"]
    real = segments_mod.punch_hole
    monkeypatch.setattr(segments_mod, "punch_hole", _failing_punch(-1, errno.ENOSPC))
    _put(store, snap, 0, os.urandom(BLOCK_SIZE))  # replaces a content: its space goes
    store.flush()
    monkeypatch.setattr(segments_mod, "punch_hole", real)
    # A full disk for a moment; a later rewrite gives space back again.
    _put(store, snap, 1, os.urandom(BLOCK_SIZE))
    store.flush()
    assert store.stats()["allocated"] <= before + 2 * (BLOCK_SIZE + 4096) - BLOCK_SIZE
    store.close()


def test_a_tag_change_racing_a_seal_loses_neither(tmp_path: Path) -> None:
    # CreateTags builds its change while CompleteSnapshot seals the same snapshot: the
    # tag change must not write back the snapshot as it was before the seal.
    store = Store(tmp_path)
    snap = _snapshot(store, "snap-0000000000000000c")
    ec2 = Ec2Service(store, "000000000000", lambda s: ("pending", ""), None)  # type: ignore[arg-type]
    original = Snapshot.copy
    sealers: list[threading.Thread] = []

    def copy_then_let_a_seal_in(self: Snapshot, **changes: Any) -> Snapshot:
        new = original(self, **changes)
        if threading.current_thread().name == "tagger" and not sealers:
            sealer = threading.Thread(
                target=store.seal, args=(snap, lambda rows: (COMPLETED, ""), 0.0)
            )
            sealers.append(sealer)
            sealer.start()
            sealer.join(0.5)  # done by now unless it has to wait for the tag change
        return new

    Snapshot.copy = copy_then_let_a_seal_in  # type: ignore[method-assign]
    try:
        tagger = threading.Thread(
            target=ec2.op_CreateTags,
            args=({"ResourceId.1": snap.snapshot_id, "Tag.1.Key": "k", "Tag.1.Value": "v"},),
            name="tagger",
        )
        tagger.start()
        tagger.join(10)
        for sealer in sealers:
            sealer.join(10)
    finally:
        Snapshot.copy = original  # type: ignore[method-assign]
    assert sealers
    shown = store.snapshots[snap.snapshot_id]
    assert shown.sealed and shown.tags == [("k", "v")], shown
    store.close()
    store = Store(tmp_path)
    stored = store.snapshots[snap.snapshot_id]
    assert stored.sealed and stored.tags == [("k", "v")], stored
    store.close()


def test_a_replayed_put_counts_as_activity(tmp_path: Path) -> None:
    # A put acknowledged but not yet indexed when the server died keeps its snapshot from
    # timing out as a put does: after the restart the snapshot's last activity is no older
    # than that put (else a snapshot shown pending with minutes to go could be in error
    # right after a restart).
    store = Store(tmp_path, index_delay=3600)
    snap = _snapshot(store, "snap-0000000000000000d")
    idle_since = snap.last_activity
    _put(store, snap, 0, os.urandom(BLOCK_SIZE))
    acted = snap.last_activity
    assert acted > idle_since
    store.close(index=False)
    store = Store(tmp_path)
    assert store.snapshots[snap.snapshot_id].last_activity >= acted - 5
    store.close()
    store = Store(tmp_path)  # and it was written down, not only worked out
    assert store.snapshots[snap.snapshot_id].last_activity >= acted - 5
    store.close()


_TIER_AND_SHARING = {
    "ModifySnapshotTier": ({"StorageTier": "archive"}, lambda s: s.archived),
    "RestoreSnapshotTier": ({"PermanentRestore": "true"}, lambda s: not s.archived),
    "ModifySnapshotAttribute": (
        {"CreateVolumePermission.Add.1.UserId": "111122223333"},
        lambda s: s.shared_with == ["111122223333"],
    ),
}


@pytest.mark.parametrize("action", sorted(_TIER_AND_SHARING))
def test_a_tier_or_sharing_change_whose_commit_fails_is_not_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, action: str
) -> None:
    # The tier and sharing calls changed the snapshot in place before their commit: a
    # CreateTags committed meanwhile wrote the uncommitted change along with its tag, so a
    # call answered with an error (its own commit failed: a full disk) was kept anyway,
    # in memory and after a restart.
    store = Store(tmp_path)
    snap = _snapshot(store, "snap-0000000000000000d")
    assert store.seal(snap, lambda rows: (COMPLETED, ""), 0.0)
    if action == "RestoreSnapshotTier":
        store.update([snap], lambda s: setattr(s, "archived", True))
    ec2 = Ec2Service(store, "000000000000", lambda s: (COMPLETED, ""), None)  # type: ignore[arg-type]
    extra, changed = _TIER_AND_SHARING[action]
    real = store._index_pending
    calls: list[int] = []

    def tag_then_fail() -> None:
        # Under the write lock, right before the call's own transaction: another change
        # to the same snapshot gets in first, then the call's commit fails.
        real()
        calls.append(1)
        if len(calls) == 1:
            ec2.op_CreateTags({"ResourceId.1": snap.snapshot_id, "Tag.1.Key": "k",
                               "Tag.1.Value": "v"})
            raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(store, "_index_pending", tag_then_fail)
    with pytest.raises(sqlite3.OperationalError):
        getattr(ec2, "op_" + action)({"SnapshotId": snap.snapshot_id, **extra})
    monkeypatch.undo()
    shown = store.snapshots[snap.snapshot_id]
    assert shown.tags == [("k", "v")] and not changed(shown), shown
    store.close()
    store = Store(tmp_path)
    stored = store.snapshots[snap.snapshot_id]
    assert stored.tags == [("k", "v")] and not changed(stored), stored
    store.close()
