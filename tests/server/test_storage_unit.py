"""The store on its own: sealing and deletion against puts racing them."""

import errno
import fcntl
import hashlib
import mmap
import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from ebsfs.core.blocks import BLOCK_SIZE
from ebsfs.server.records import RECORD_SIZE
from ebsfs.server.storage import COMPLETED, Refused, Snapshot, Store


def _snapshot(store: Store, sid: str) -> Snapshot:
    snap = Snapshot(sid, 1, "000000000000", 0.0, 60, 0.0, root_id=sid)
    store.create(snap, None, "", "{}")
    return snap


def _stored(store: Store) -> tuple[int, int]:
    stats = store.stats()
    return stats["objects"], stats["allocated"]


def test_puts_racing_a_seal_are_counted_or_refused(tmp_path: Path) -> None:
    store = Store(tmp_path)
    snap = _snapshot(store, "snap-00000000000000001")
    acked: set[int] = set()
    refused: set[int] = set()
    lock = threading.Lock()
    sealed_with: list[set[int]] = []

    def writer(n: int) -> None:
        for index in range(n, 2048, 4):
            data = os.urandom(BLOCK_SIZE)
            try:
                store.put_block(snap, index, data, hashlib.sha256(data).digest())
            except Refused as exc:
                assert exc.why == "sealed"
                with lock:
                    refused.add(index)
                return
            with lock:
                acked.add(index)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    while len(acked) < 20:
        time.sleep(0.005)

    def decide(rows: list[tuple[int, bytes]]) -> tuple[str, str]:
        sealed_with.append({i for i, _ in rows})
        return COMPLETED, ""

    assert store.seal(snap, decide, 0.0)
    with lock:
        acked_at_seal = set(acked)
    for t in threads:
        t.join()
    assert acked_at_seal <= sealed_with[0]
    assert sealed_with[0] == acked  # nothing was acknowledged after the seal
    assert refused  # every writer that went on was refused
    assert not store.seal(snap, decide, 0.0)
    store.close()


def test_put_to_a_deleted_snapshot_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path)
    snap = _snapshot(store, "snap-00000000000000002")
    store.delete(snap)
    data = os.urandom(BLOCK_SIZE)
    with pytest.raises(Refused):
        store.put_block(snap, 0, data, hashlib.sha256(data).digest())
    assert _stored(store) == (0, 0)
    assert store.stats()["rows"] == 0
    store.close()


def _put(store: Store, snap: Snapshot, index: int, data: bytes) -> None:
    store.put_block(snap, index, data, hashlib.sha256(data).digest())


def test_segments_fill_up_and_go_when_nothing_lives_in_them(tmp_path: Path) -> None:
    store = Store(tmp_path, segment_blocks=4)
    first = _snapshot(store, "snap-00000000000000003")
    blocks = [os.urandom(BLOCK_SIZE) for _ in range(10)]
    for i, data in enumerate(blocks):
        _put(store, first, i, data)
    _put(store, first, 10, blocks[0])  # same content: stored once
    assert store.stats()["objects"] == 10
    assert store.stats()["segments"] == 3
    assert store.stats()["allocated"] == 10 * RECORD_SIZE
    for data in blocks:
        located = store.locate(hashlib.sha256(data).digest())
        assert located is not None
        path, offset = located
        with open(path, "rb") as f:
            f.seek(offset)
            assert f.read(BLOCK_SIZE) == data
    # Rewriting indexes 1-3 frees their old contents: punched in a segment still in use.
    for i in (1, 2, 3):
        _put(store, first, i, blocks[0])
    assert store.stats()["objects"] == 7
    assert store.stats()["allocated"] == 7 * RECORD_SIZE
    # Rewriting 4-7 leaves the second segment with nothing: it is removed.
    assert store.segments.path(2).exists()
    for i in (4, 5, 6, 7):
        _put(store, first, i, blocks[0])
    store.flush()  # collection follows indexing
    assert not store.segments.path(2).exists()
    assert store.stats()["objects"] == 3
    assert store.stats()["allocated"] == 3 * RECORD_SIZE
    store.delete(first)
    assert store.stats()["objects"] == 0
    assert store.stats()["allocated"] == 0
    store.close()


def test_block_files_of_an_older_data_dir_move_into_segments(tmp_path: Path) -> None:
    store = Store(tmp_path)
    snap = _snapshot(store, "snap-00000000000000004")
    data = os.urandom(BLOCK_SIZE)
    _put(store, snap, 0, data)
    store.close()
    # Make the directory look as the previous layout left it: one file per content.
    digest = hashlib.sha256(data).digest()
    for seg in (tmp_path / "segments").iterdir():
        seg.unlink()
    with sqlite3.connect(tmp_path / "meta.sqlite3") as db:
        db.execute("DELETE FROM objects")
    legacy = tmp_path / "blocks" / digest.hex()[:2]
    legacy.mkdir(parents=True)
    (legacy / digest.hex()).write_bytes(data)

    store = Store(tmp_path)
    assert not (tmp_path / "blocks").exists()
    located = store.locate(digest)
    assert located is not None
    with open(located[0], "rb") as f:
        f.seek(located[1])
        assert f.read(BLOCK_SIZE) == data
    store.close()


def _rows(store: Store, snap: Snapshot) -> dict[int, bytes]:
    seen: dict[int, bytes] = {}

    def decide(rows: list[tuple[int, bytes]]) -> tuple[str, str]:
        seen.update(rows)
        return COMPLETED, ""

    assert store.seal(snap, decide, 0.0)
    return seen


def test_acknowledged_puts_not_yet_indexed_survive_a_crash(tmp_path: Path) -> None:
    # An index delay longer than the test: every put is acknowledged from its record alone.
    store = Store(tmp_path, index_delay=3600)
    snap = _snapshot(store, "snap-00000000000000005")
    sealed = _snapshot(store, "snap-00000000000000006")
    blocks = [os.urandom(BLOCK_SIZE) for _ in range(7)]
    _put(store, sealed, 0, blocks[6])
    assert _rows(store, sealed) == {0: hashlib.sha256(blocks[6]).digest()}
    with pytest.raises(Refused):
        _put(store, sealed, 1, blocks[6])
    for i in range(5):
        _put(store, snap, i, blocks[i])
    _put(store, snap, 1, blocks[5])  # the later put of an index wins
    _put(store, snap, 5, blocks[0])  # a content already written: stored once
    store.close(index=False)  # as kill -9 would leave it: nothing more indexed
    with sqlite3.connect(tmp_path / "meta.sqlite3") as db:
        assert db.execute(
            "SELECT COUNT(*) FROM blocks WHERE snapshot_id = ?", (snap.snapshot_id,)
        ).fetchone()[0] == 0

    store = Store(tmp_path, index_delay=3600)
    snap = store.snapshots[snap.snapshot_id]
    # A put after the restart is later than every put before it.
    _put(store, snap, 2, blocks[6])
    store.close(index=False)

    store = Store(tmp_path, index_delay=3600)
    snap = store.snapshots[snap.snapshot_id]
    expected = {0: blocks[0], 1: blocks[5], 2: blocks[6], 3: blocks[3], 4: blocks[4],
                5: blocks[0]}
    assert _rows(store, snap) == {i: hashlib.sha256(d).digest() for i, d in expected.items()}
    # Distinct contents stored once each; replaced ones and copies given back.
    stats = store.stats()
    assert stats["objects"] == 5  # blocks 0, 3, 4, 5, 6 (6 also in the sealed snapshot)
    assert stats["allocated"] == 5 * RECORD_SIZE
    for i, data in expected.items():
        located = store.locate(hashlib.sha256(data).digest())
        assert located is not None
        with open(located[0], "rb") as f:
            f.seek(located[1])
            assert f.read(BLOCK_SIZE) == data, i
    store.close()


def test_segments_of_the_previous_layout_are_still_read(tmp_path: Path) -> None:
    store = Store(tmp_path)
    snap = _snapshot(store, "snap-00000000000000007")
    blocks = [os.urandom(BLOCK_SIZE) for _ in range(2)]
    for i, data in enumerate(blocks):
        _put(store, snap, i, data)
    assert store.seal(snap, lambda rows: (COMPLETED, ""), 0.0)
    store.close()
    # Rewrite the directory as the previous layout left it: bare blocks in N.seg, rows
    # without sequence numbers, and an unindexed tail.
    segments = tmp_path / "segments"
    for rec in segments.iterdir():
        rec.unlink()
    with sqlite3.connect(tmp_path / "meta.sqlite3") as db:
        db.execute("ALTER TABLE blocks DROP COLUMN seq")
        db.execute("DELETE FROM objects")
        for k, data in enumerate(blocks):
            db.execute("INSERT INTO objects (digest, segment, offset) VALUES (?, 1, ?)",
                       (hashlib.sha256(data).digest(), k * BLOCK_SIZE))
    (segments / "00000001.seg").write_bytes(b"".join(blocks) + os.urandom(BLOCK_SIZE // 2))

    store = Store(tmp_path)
    assert (segments / "00000001.seg").stat().st_size == 2 * BLOCK_SIZE  # tail cut off
    snap = store.snapshots[snap.snapshot_id]
    for i, data in enumerate(blocks):
        found = store.lookup(snap, i)
        assert found is not None and found[1] is not None
        with open(found[1], "rb") as f:
            f.seek(found[2])
            assert f.read(BLOCK_SIZE) == data
    # New puts go to record segments; the old segment goes with its last content.
    child = _snapshot(store, "snap-00000000000000008")
    _put(store, child, 0, blocks[0])
    assert store.stats()["objects"] == 2
    assert [p.suffix for p in sorted(segments.iterdir())] == [".seg", ".rec"]
    store.delete(snap)
    assert store.stats()["objects"] == 1
    store.delete(child)
    assert store.stats()["allocated"] == 0
    assert not (segments / "00000001.seg").exists()
    store.close()


@pytest.mark.parametrize("alone", [True, False])
def test_a_put_whose_sync_fails_leaves_no_record_to_replay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, alone: bool
) -> None:
    # The record reaches the file but making it durable fails (EIO): the put is not
    # acknowledged, so a restart must not find it. A lone put syncs within its write
    # (RWF_DSYNC); one among others by a group fdatasync.
    store = Store(tmp_path, index_delay=3600)
    snap = _snapshot(store, "snap-00000000000000009")
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
    if not alone:
        store._writing += 1  # another put under way: this one shares a group sync
    with pytest.raises(OSError):
        _put(store, snap, 3, data)
    monkeypatch.undo()
    if not alone:
        store._writing -= 1
    _put(store, snap, 4, data)
    store.close(index=False)

    store = Store(tmp_path, index_delay=3600)
    assert _rows(store, store.snapshots[snap.snapshot_id]) == {
        4: hashlib.sha256(data).digest()
    }
    store.close()


@pytest.mark.parametrize("alone", [True, False])
@pytest.mark.parametrize("short", [4096 + 65536, 4096 + 100_003])
@pytest.mark.parametrize("direct", [True, False])
def test_a_short_record_write_is_finished_and_made_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, direct: bool, short: int, alone: bool
) -> None:
    # pwritev may write less than asked. The rest must reach the file (with O_DIRECT on,
    # not through the direct descriptor, which refuses an unaligned buffer or offset), and
    # the put acknowledged only once all of it is durable: a lone put's RWF_DSYNC covered
    # only the first part. Short by a multiple of the block size (as O_DIRECT stops) or not.
    store = Store(tmp_path, index_delay=3600)
    store.segments._direct = direct
    snap = _snapshot(store, "snap-00000000000000010")
    data = os.urandom(BLOCK_SIZE)
    pwritev, fdatasync = os.pwritev, os.fdatasync
    # (inode, O_DIRECT set, RWF_DSYNC asked, bytes written) per write; in ``events`` with
    # ("sync", inode) per fdatasync, in order.
    writes: list[tuple[int, bool, bool, int]] = []
    events: list[tuple[object, ...]] = []

    def short_write(fd: int, buffers: list[memoryview], offset: int, flags: int = 0) -> int:
        is_direct = bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)
        if writes:
            done = pwritev(fd, buffers, offset, flags)
        else:
            head = b"".join(bytes(b) for b in buffers)[:short]
            # An O_DIRECT write stops at a block boundary; a part of a block can only
            # have been written through the page cache.
            out = fd if short % 4096 == 0 else os.open(f"/proc/self/fd/{fd}", os.O_WRONLY)
            try:
                done = pwritev(out, [memoryview(_aligned_copy(head))[:short]], offset)
            finally:
                if out != fd:
                    os.close(out)
            assert done == short
        writes.append((os.fstat(fd).st_ino, is_direct, bool(flags), done))
        events.append(("write", *writes[-1]))
        return done

    def recorded_sync(fd: int) -> None:
        fdatasync(fd)
        events.append(("sync", os.fstat(fd).st_ino))

    monkeypatch.setattr(os, "pwritev", short_write)
    monkeypatch.setattr(os, "fdatasync", recorded_sync)
    if not alone:
        store._writing += 1  # another put under way: this one shares a group sync
    _put(store, snap, 7, data)  # acknowledged: returns without an error
    monkeypatch.undo()
    if not alone:
        store._writing -= 1
    assert store.segments._direct is direct  # no fallback to buffered writes on the way
    inode = writes[0][0]
    assert {w[0] for w in writes} == {inode}
    assert writes[0][1] is direct and writes[0][2] is alone
    # The rest went through a buffered descriptor, and a sync of the file came after it.
    assert not any(w[1] for w in writes[1:])
    assert events[-1] == ("sync", inode) and events.count(("sync", inode)) == 1
    store.close(index=False)  # as kill -9 would leave it: only the record says the put was

    store = Store(tmp_path, index_delay=3600)
    snap = store.snapshots[snap.snapshot_id]
    digest = hashlib.sha256(data).digest()
    assert _rows(store, snap) == {7: digest}
    located = store.locate(digest)
    assert located is not None
    with open(located[0], "rb") as f:
        f.seek(located[1] - 4096)
        record = f.read(RECORD_SIZE)
    assert record[4096:] == data
    assert record[:8] == b"EBSFSREC"
    store.close()


def _aligned_copy(data: bytes) -> mmap.mmap:
    """``data`` in a page-aligned buffer, as O_DIRECT wants it."""
    buf = mmap.mmap(-1, -(-len(data) // mmap.PAGESIZE) * mmap.PAGESIZE)
    buf[: len(data)] = data
    return buf


@pytest.mark.parametrize("race", [False, True])
def test_a_filesystem_refusing_direct_writes_gets_buffered_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, race: bool
) -> None:
    # Some filesystems accept an O_DIRECT open and refuse the writes (EINVAL). The put
    # must still be stored durably, through a buffered descriptor, and later puts too.
    # With ``race``, another put met the EINVAL first and made the shared descriptor
    # buffered while this one's write was failing: this one retries instead of failing.
    store = Store(tmp_path, index_delay=3600)
    segments = store.segments
    assert segments._direct  # this machine's filesystem takes O_DIRECT
    snap = _snapshot(store, "snap-00000000000000011")
    blocks = [os.urandom(BLOCK_SIZE) for _ in range(3)]
    pwritev = os.pwritev
    refused: list[int] = []

    def refusing_direct(fd: int, buffers: list[memoryview], offset: int, flags: int = 0) -> int:
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            refused.append(fd)
            if race:
                # What the other put's fallback did in the meantime.
                segments._direct = False
                buffered = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY)
                os.dup2(buffered, fd)
                os.close(buffered)
            raise OSError(errno.EINVAL, "Invalid argument")
        return pwritev(fd, buffers, offset, flags)

    monkeypatch.setattr(os, "pwritev", refusing_direct)
    for i, data in enumerate(blocks):
        _put(store, snap, i, data)  # acknowledged: no error
    monkeypatch.undo()
    assert len(refused) == 1  # once buffered, the descriptor stays so
    assert not segments._direct
    store.close(index=False)  # as kill -9 leaves it: only the records say the puts were

    store = Store(tmp_path, index_delay=3600)
    assert _rows(store, store.snapshots[snap.snapshot_id]) == {
        i: hashlib.sha256(data).digest() for i, data in enumerate(blocks)
    }
    for data in blocks:
        located = store.locate(hashlib.sha256(data).digest())
        assert located is not None
        with open(located[0], "rb") as f:
            f.seek(located[1])
            assert f.read(BLOCK_SIZE) == data
    store.close()


def test_a_buffered_write_refused_with_einval_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The retry above is for a descriptor made buffered under a write, once; an EINVAL
    # from a buffered write is an error of its own, reported, never retried for ever.
    store = Store(tmp_path, index_delay=3600)
    store.segments._direct = False
    snap = _snapshot(store, "snap-00000000000000012")
    calls: list[int] = []

    def refusing(fd: int, buffers: list[memoryview], offset: int, flags: int = 0) -> int:
        calls.append(fd)
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(os, "pwritev", refusing)
    with pytest.raises(OSError) as caught:
        _put(store, snap, 0, os.urandom(BLOCK_SIZE))
    monkeypatch.undo()
    assert caught.value.errno == errno.EINVAL
    assert len(calls) == 2
    store.close()
