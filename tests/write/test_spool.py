"""The spool keeps every accepted byte and replays to the same state after a crash."""

import errno
import os
import subprocess
from pathlib import Path

import pytest

from ebsfs.core.blocks import BLOCK_SIZE
from ebsfs.write import spool as spool_module
from ebsfs.write.spool import JOURNAL, Spool

BS = BLOCK_SIZE


def test_writes_read_back_over_a_base_and_replay(tmp_path: Path) -> None:
    spool = Spool.create(tmp_path, {"name": "x"})
    spool.write(BS - 1, b"ab")  # one byte each side of a block boundary
    spool.write(5 * BS, b"z" * BS)  # a whole block
    spool.write(7 * BS + 10, b"q" * 5)
    base = bytes([7]) * BS
    b0 = spool.read_block(0, base)
    assert b0 is not None and b0[:-1] == base[:-1] and b0[-1:] == b"a"
    b1 = spool.read_block(1, None)
    assert b1 == b"b" + bytes(BS - 1)
    assert spool.read_block(5, base) == b"z" * BS
    assert spool.read_block(3, base) is base
    assert spool.is_full(5) and not spool.is_full(7)
    assert spool.max_end == 7 * BS + 15
    spool.mark_stored(5, b"d" * 32, True)
    spool.mark_stored(7, b"e" * 32, False)
    b7 = spool.read_block(7, base)
    spool.close()

    again = Spool.load(spool.directory)
    assert again.manifest == {"name": "x"}
    assert again.coverage == spool.coverage
    assert again.slots == spool.slots
    assert again.stored == {5: b"d" * 32, 7: b"e" * 32}
    assert again.dirty == {0, 1, 7}
    assert again.max_end == spool.max_end
    assert again.read_block(7, base) == b7
    assert b7 is not None and b7[10:15] == b"qqqqq" and b7[:10] == base[:10]
    again.close()


def test_a_torn_journal_tail_is_dropped(tmp_path: Path) -> None:
    spool = Spool.create(tmp_path, {"name": "x"})
    spool.write(0, b"1" * 100)
    spool.write(200, b"2" * 100)
    spool.close()
    journal = spool.directory / JOURNAL
    size = journal.stat().st_size
    with open(journal, "ab") as f:
        f.write(b"garbage-half-record")
    again = Spool.load(spool.directory)
    assert journal.stat().st_size == size
    assert again.coverage == {0: [(0, 100), (200, 300)]}
    again.write(300, b"3")  # appends after the good records
    again.close()
    assert Spool.load(spool.directory).coverage == {0: [(0, 100), (200, 301)]}


def test_a_corrupt_record_ends_replay(tmp_path: Path) -> None:
    spool = Spool.create(tmp_path, {"name": "x"})
    spool.write(0, b"1")
    spool.write(BS, b"2")
    spool.close()
    journal = spool.directory / JOURNAL
    raw = bytearray(journal.read_bytes())
    raw[-20] ^= 0xFF  # damage the last record
    journal.write_bytes(bytes(raw))
    again = Spool.load(spool.directory)
    assert set(again.coverage) == {0}


def test_restart_makes_every_written_block_dirty(tmp_path: Path) -> None:
    spool = Spool.create(tmp_path, {"name": "x"})
    spool.write(0, b"x" * BS)
    spool.mark_stored(0, b"d" * 32, True)
    assert spool.dirty == set()
    spool.reset_stored()
    assert spool.stored == {} and spool.dirty == {0}
    spool.close()
    again = Spool.load(spool.directory)
    assert again.stored == {} and again.dirty == {0}


def test_slots_keep_the_data_file_dense_for_far_blocks(tmp_path: Path) -> None:
    spool = Spool.create(tmp_path, {"name": "x"})
    far = (64 << 40) - BS  # the last block of a 64 TiB volume
    spool.write(far, b"end")
    assert os.path.getsize(spool.directory / "data") <= BS
    assert spool.read_block(far // BS, None) == b"end" + bytes(BS - 3)


def test_manifest_replacement_is_atomic(tmp_path: Path) -> None:
    spool = Spool.create(tmp_path, {"name": "x", "n": 1})
    spool.save_manifest({"name": "x", "n": 2})
    assert Spool.load(spool.directory).manifest["n"] == 2
    assert not list(spool.directory.glob("*.tmp"))
    assert Spool.find(tmp_path) == [spool.directory]


def test_a_failed_write_records_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool.create(tmp_path, {"name": "x"})
    spool.write(0, b"kept")
    real_write = os.write

    def full_disk(fd: int, data: bytes) -> int:
        real_write(fd, bytes(data)[:10])  # a torn record, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(OSError):
        spool.write(3 * BS, b"lost")
    monkeypatch.undo()
    assert 3 not in spool.slots and 3 not in spool.coverage
    spool.write(BS, b"after")  # later records follow the good ones
    spool.close()
    again = Spool.load(spool.directory)
    assert set(again.coverage) == {0, 1}
    assert again.read_block(1, None) == b"after" + bytes(BS - 5)


def test_a_write_over_many_blocks_lands_in_their_slots(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = Spool.create(tmp_path, {"name": "x"})
    spool.write(9 * BS, b"f" * 10)  # block 9 gets slot 0: blocks 2..5 below are not after it
    calls: list[int] = []
    real = os.pwrite

    def counting(fd: int, data: bytes, at: int) -> int:
        calls.append(len(data))
        return real(fd, data, at)

    monkeypatch.setattr(os, "pwrite", counting)
    data = bytes(range(256)) * (3 * BS // 256)
    spool.write(2 * BS + BS // 2, data)  # half of 2, all of 3 and 4, half of 5: new slots 1..4
    assert calls == [len(data)]  # consecutive slots: one pwrite
    calls.clear()
    spool.write(8 * BS + BS - 4, b"g" * 8)  # end of 8 (new slot 5) and start of 9 (slot 0)
    assert calls == [4, 4]
    monkeypatch.undo()
    spool.close()
    again = Spool.load(spool.directory)
    for index in (2, 3, 4, 5):
        start = max(index * BS, 2 * BS + BS // 2) - (2 * BS + BS // 2)
        block = again.read_block(index, None)
        assert block is not None
        within = max(0, 2 * BS + BS // 2 - index * BS)
        n = min(BS - within, len(data) - start)
        assert block[within : within + n] == data[start : start + n]
    assert again.read_block(9, None) == b"gggg" + b"f" * 6 + bytes(BS - 10)
    assert again.read_block(8, None) == bytes(BS - 4) + b"gggg"
    again.close()


def test_stored_records_are_kept_back_until_a_write_or_a_sync(tmp_path: Path) -> None:
    spool = Spool.create(tmp_path, {"name": "x"})
    spool.write(0, b"a" * (3 * BS))
    journal = spool.directory / JOURNAL
    size = journal.stat().st_size
    spool.mark_stored(0, b"d" * 32, True)
    assert journal.stat().st_size == size  # no write of its own
    spool.write(5 * BS, b"b")  # carries it
    assert Spool.load(spool.directory).stored == {0: b"d" * 32}
    spool.mark_stored(1, b"e" * 32, True)
    spool.commit_records()
    spool.sync()
    assert Spool.load(spool.directory).stored == {0: b"d" * 32, 1: b"e" * 32}
    spool.mark_stored(2, b"f" * 32, False)
    spool.close()  # appends what is left
    again = Spool.load(spool.directory)
    assert again.stored == {0: b"d" * 32, 1: b"e" * 32, 2: b"f" * 32}
    assert again.dirty == {2, 5}
    again.close()


def test_a_crash_loses_only_stored_records_kept_back(tmp_path: Path) -> None:
    spool = Spool.create(tmp_path, {"name": "x"})
    spool.write(0, b"a" * (2 * BS))
    spool.mark_stored(0, b"d" * 32, True)
    # Killed here (the files are not closed): block 0 is simply stored again after restart.
    again = Spool.load(spool.directory)
    assert again.stored == {} and again.dirty == {0, 1}
    assert again.read_block(0, None) == b"a" * BS
    again.close()
    spool._stored_records.clear()  # the dead daemon's memory
    spool.close()


def _resident(path: Path) -> int:
    out = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
        check=True, capture_output=True, text=True,
    ).stdout
    return int(out.split()[0])


def test_a_background_flush_drops_the_pages_of_forgotten_slots_only(tmp_path: Path) -> None:
    spool = Spool.create(tmp_path, {"name": "x"})
    blocks = [bytes([65 + i]) * BLOCK_SIZE for i in range(3)]
    for index, block in enumerate(blocks):
        spool.write(index * BLOCK_SIZE, block)
    data = spool.directory / "data"
    assert _resident(data) == 3 * BLOCK_SIZE
    spool.sync_data(forget=[spool.slots[0], spool.slots[2]])
    assert _resident(data) <= BLOCK_SIZE  # slot 1 may stay; 0 and 2 are gone
    # Nothing is lost: the dropped slots read back from the disk.
    for index, block in enumerate(blocks):
        assert spool.read_block(index, None) == block
    spool.close()


def _state(spool: Spool) -> tuple[object, ...]:
    return (spool.slots, spool.coverage, spool.stored, spool.dirty, spool.max_end)


def _many_writes(spool: Spool, count: int) -> None:
    # The same few small ranges over three blocks rewritten again and again, as a
    # filesystem's metadata is.
    for i in range(count):
        offset = (i % 40) * 40_000 + (i % 7)
        spool.write(offset, bytes([i % 251]) * 300)
        if i % 50 == 0:
            spool.mark_stored((offset // BS) % 3, bytes([i % 256]) * 32, current=i % 100 == 0)


def test_a_long_journal_is_compacted_to_the_same_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spool_module, "COMPACT_MIN", 64 * 1024)
    spool = Spool.create(tmp_path, {"name": "x"})
    _many_writes(spool, 5000)  # about 5000 records of 56 bytes: several compactions
    spool.write(6 * BS, b"")  # an empty write past the data still moves the end
    journal = spool.directory / JOURNAL
    assert journal.stat().st_size < 64 * 1024 + 1000
    blocks = [spool.read_block(i, None) for i in range(3)]
    before = _state(spool)
    spool.commit_records()
    # Nothing is lost by a crash (no close) after compactions.
    again = Spool.load(spool.directory)
    assert _state(again) == before
    assert [again.read_block(i, None) for i in range(3)] == blocks
    assert not (spool.directory / (JOURNAL + ".tmp")).exists()
    # It goes on appending to the compacted journal.
    again.write(BS, b"new")
    again.commit_records()
    third = Spool.load(spool.directory)
    assert third.read_block(1, None)[:3] == b"new"  # type: ignore[index]
    for s in (spool, again, third):
        s.close()


def test_compaction_happens_at_load_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool.create(tmp_path, {"name": "x"})
    _many_writes(spool, 3000)  # under the default threshold: not compacted
    spool.close()
    size = (spool.directory / JOURNAL).stat().st_size
    monkeypatch.setattr(spool_module, "COMPACT_MIN", 4096)
    again = Spool.load(spool.directory)
    assert (spool.directory / JOURNAL).stat().st_size < size // 4
    assert _state(Spool.load(spool.directory)) == _state(again)
    again.close()


def test_a_failed_compaction_keeps_the_old_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(spool_module, "COMPACT_MIN", 64 * 1024)

    def no_rename(src: object, dst: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    spool = Spool.create(tmp_path, {"name": "x"})
    monkeypatch.setattr(spool_module.os, "replace", no_rename)
    with caplog.at_level("WARNING", logger="ebsfs.write.spool"):
        _many_writes(spool, 3000)  # every write is still accepted
    assert "journal not compacted" in caplog.text
    assert (spool.directory / JOURNAL).stat().st_size > 64 * 1024
    assert not (spool.directory / (JOURNAL + ".tmp")).exists()
    spool.commit_records()
    monkeypatch.undo()
    assert _state(Spool.load(spool.directory)) == _state(spool)
    spool.close()


def test_whole_zero_blocks_take_no_room_and_read_as_zeros(tmp_path: Path) -> None:
    spool = Spool.create(tmp_path, {"name": "x"})
    data = os.urandom(BS)
    image = data + bytes(6 * BS) + data  # a dd of an image: 8 blocks, 6 of them zeros
    spool.write(0, image)
    used = os.stat(spool.data_path).st_blocks * 512
    assert used <= 2 * BS + 64 * 1024, used  # 2.0 blocks, not 8
    # Zeros over data that was there give its room back too.
    spool.write(7 * BS, bytes(BS))
    assert os.stat(spool.data_path).st_blocks * 512 <= BS + 64 * 1024
    for index in range(8):
        block = spool.read_block(index, os.urandom(BS))  # a base is not shown through
        assert block == (data if index == 0 else bytes(BS)), index
        assert spool.is_full(index)
    spool.close()
    again = Spool.load(spool.directory)
    assert [again.read_block(i, None) for i in range(8)] == [data] + [bytes(BS)] * 7
    again.close()


def test_zeros_over_a_crashed_write_are_zeros(tmp_path: Path) -> None:
    # A write whose bytes reached the data file but whose records did not (kill -9): the
    # slot is handed out again, and zeros written there must not show the old bytes.
    spool = Spool.create(tmp_path, {"name": "x"})
    spool.write(0, os.urandom(BS))
    slot = spool.slots[0]
    spool.close()
    with open(spool.data_path, "r+b") as f:  # what the lost write left
        f.seek((slot + 1) * BS)
        f.write(os.urandom(BS))
    again = Spool.load(spool.directory)
    again.write(9 * BS, bytes(BS))  # gets the next slot, where those bytes are
    assert again.slots[9] == slot + 1
    assert again.read_block(9, None) == bytes(BS)
    again.close()
