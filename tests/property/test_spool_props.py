"""Property tests of the spool's written-range bookkeeping against a plain reference.

The reference is what the spool promises: a bytearray image of the volume, the set of byte
offsets ever written, which blocks are dirty and what digest each stored block had. Random
sequences of writes, stores, restarts (``reset_stored``), orderly reopenings and crashes
(reopening without ``close``) must leave the spool saying the same as the reference.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from ebsfs.core.blocks import BLOCK_SIZE
from ebsfs.write import spool as spool_mod
from ebsfs.write.spool import Interval, Spool, _add_interval

BLOCKS = 4
VOLUME = BLOCKS * BLOCK_SIZE


def _intervals(offsets: set[int]) -> list[Interval]:
    """Sorted maximal runs of ``offsets`` as half-open intervals."""
    out: list[Interval] = []
    for x in sorted(offsets):
        if out and out[-1][1] == x:
            out[-1] = (out[-1][0], x + 1)
        else:
            out.append((x, x + 1))
    return out


_SPANS = st.lists(
    st.tuples(st.integers(0, 64), st.integers(1, 64)).map(lambda t: (t[0], t[0] + t[1])),
    max_size=12,
)


@given(_SPANS)
@settings(max_examples=500, deadline=None)
def test_add_interval_matches_a_set_of_offsets(spans: list[Interval]) -> None:
    intervals: list[Interval] = []
    offsets: set[int] = set()
    for s, e in spans:
        intervals = _add_interval(intervals, s, e)
        offsets |= set(range(s, e))
        # Sorted, disjoint, maximal (touching ones merged): exactly the runs of the set.
        assert intervals == _intervals(offsets)


class SpoolMachine(RuleBasedStateMachine):
    """A real Spool on disk against a bytearray and a set of written offsets."""

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.TemporaryDirectory(prefix="spool-prop-")
        self.spool = Spool.create(Path(self.tmp.name), {"name": "prop"})
        self.image = bytearray(VOLUME)
        #: One byte per volume byte: 1 where it was written (the set of written offsets).
        self.written = bytearray(VOLUME)
        self.max_end = 0
        self.dirty: set[int] = set()
        self.stored: dict[int, bytes] = {}

    def teardown(self) -> None:
        self.spool.close()
        self.tmp.cleanup()

    # ---- operations ----------------------------------------------------------------------

    @rule(
        offset=st.integers(0, VOLUME - 1),
        length=st.one_of(
            st.integers(0, 64), st.integers(0, 2 * BLOCK_SIZE), st.just(BLOCK_SIZE)
        ),
        fill=st.integers(1, 255),
        aligned=st.booleans(),
    )
    def write(self, offset: int, length: int, fill: int, aligned: bool) -> None:
        if aligned:
            offset -= offset % BLOCK_SIZE
        length = min(length, VOLUME - offset)
        # Distinct bytes per position, so a misplaced copy shows.
        data = bytes((fill + i) % 251 + 1 for i in range(min(length, 251))) * (
            length // 251 + 1
        )
        data = data[:length]
        touched = self.spool.write(offset, data)
        self.image[offset : offset + length] = data
        self.written[offset : offset + length] = b"\1" * length
        self.max_end = max(self.max_end, offset + length)
        last = -(-(offset + length) // BLOCK_SIZE)
        blocks = set(range(offset // BLOCK_SIZE, last)) if length else set()
        assert set(touched) == blocks
        self.dirty |= blocks

    @precondition(lambda self: bool(self.spool.coverage))
    @rule(pick=st.integers(0, BLOCKS - 1), current=st.booleans())
    def store(self, pick: int, current: bool) -> None:
        indexes = sorted(self.spool.coverage)
        index = indexes[pick % len(indexes)]
        digest = hashlib.sha256(self._block(index)).digest()
        self.spool.mark_stored(index, digest, current)
        self.stored[index] = digest
        if current:
            self.dirty.discard(index)

    @rule()
    def restart_snapshot(self) -> None:
        self.spool.reset_stored()
        self.stored.clear()
        self.dirty = {i for i in range(BLOCKS) if self._runs(i)}

    @rule()
    def reopen(self) -> None:
        self.spool.close()
        self.spool = Spool.load(self.spool.directory)

    @rule()
    def crash(self) -> None:
        # kill -9: the files stay as the kernel has them; records kept back are lost.
        old = self.spool
        self.spool = Spool.load(old.directory)
        os.close(old._data_fd)
        os.close(old._journal_fd)
        old._data_fd = old._journal_fd = -1
        # Blocks whose P record was lost are dirty again (stored again later), never the
        # other way round; a block still clean was stored with its current bytes.
        assert self.dirty <= self.spool.dirty
        for index in range(BLOCKS):
            if index in self.spool.coverage and index not in self.spool.dirty:
                digest = hashlib.sha256(self._block(index)).digest()
                assert self.spool.stored.get(index) == digest
        self.dirty = set(self.spool.dirty)
        self.stored = dict(self.spool.stored)

    @rule()
    def compact(self) -> None:
        state = self.spool._state_records()
        self.spool._compact(state)

    # ---- what must hold ------------------------------------------------------------------

    def _runs(self, index: int) -> list[Interval]:
        """The written runs of block ``index``, offsets within the block."""
        mask = bytes(self.written[index * BLOCK_SIZE : (index + 1) * BLOCK_SIZE])
        runs: list[Interval] = []
        pos = mask.find(1)
        while pos >= 0:
            stop = mask.find(0, pos)
            stop = BLOCK_SIZE if stop < 0 else stop
            runs.append((pos, stop))
            pos = mask.find(1, stop)
        return runs

    def _block(self, index: int) -> bytes:
        return bytes(self.image[index * BLOCK_SIZE : (index + 1) * BLOCK_SIZE])

    @invariant()
    def coverage_matches(self) -> None:
        for index in range(BLOCKS):
            want = self._runs(index)
            got = [iv for iv in self.spool.coverage.get(index, []) if iv[0] < iv[1]]
            assert got == want, f"block {index}"
            assert self.spool.is_full(index) == (want == [(0, BLOCK_SIZE)])
        assert self.spool.max_end == self.max_end

    @invariant()
    def bytes_match(self) -> None:
        for index in range(BLOCKS):
            base = bytes([0xEE]) * BLOCK_SIZE
            got = self.spool.read_block(index, base)
            runs = self._runs(index)
            if not runs:
                assert got is base
                assert self.spool.read_block(index, None) is None
                continue
            want = bytearray(base)
            for a, b in runs:
                want[a:b] = self.image[index * BLOCK_SIZE + a : index * BLOCK_SIZE + b]
            assert got == bytes(want), f"block {index} over a base"
            assert self.spool.read_block(index, None) == self._block(index), f"block {index}"

    @invariant()
    def dirty_and_stored_match(self) -> None:
        assert self.spool.dirty == self.dirty
        assert self.spool.stored == self.stored


SpoolMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_spool_machine = SpoolMachine.TestCase


def test_compaction_thresholds_small(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the compaction thresholds tiny, compaction runs inside the sequences too."""
    monkeypatch.setattr(spool_mod, "COMPACT_MIN", 56 * 8)
    monkeypatch.setattr(spool_mod, "COMPACT_RATIO", 2)
    machine = SpoolMachine.TestCase("runTest")
    machine.settings = settings(
        max_examples=30,
        stateful_step_count=25,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    machine.runTest()
