"""Property tests of the range arithmetic of the read path.

``read_range`` against slicing a bytearray image of the file (a fake reader serves a random
volume, some blocks holes, some cached; a reply kept by a caller must still hold its bytes
after later reads reuse the pooled reply buffers); ``block_spans`` against the interval it
cuts; ``ReplyBuffers`` against ``b"".join``; the Protocol's default ``read_blocks`` against
reading each block alone.
"""

from __future__ import annotations

import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from ebsfs.core import errors
from ebsfs.core.blocks import BLOCK_SIZE, BlockIndex
from ebsfs.read.base import BlockReader
from ebsfs.read.ranges import REPLY_BUFFER_SIZE, ReplyBuffers, block_spans, read_range

BLOCKS = 6


class _Reader(BlockReader):
    """Blocks from a dict (absent: a hole); ``cached`` says yes for the given indexes."""

    def __init__(self, blocks: dict[int, bytes], cached: set[int]) -> None:
        self.blocks = blocks
        self._cached = cached
        self.reads: list[int] = []

    async def read_block(self, index: BlockIndex) -> bytes | None:
        self.reads.append(index)
        await trio.lowlevel.checkpoint()
        return self.blocks.get(index)

    def cached(self, index: BlockIndex) -> bool:
        return index in self._cached

    def stats(self) -> dict[str, int]:
        return {}


def _block(seed: int) -> bytes:
    pattern = bytes((seed * 7 + i) % 256 for i in range(257))
    return (pattern * (BLOCK_SIZE // 257 + 1))[:BLOCK_SIZE]


_VOLUME = st.fixed_dictionaries(
    {
        "present": st.sets(st.integers(0, BLOCKS - 1)),
        "cached": st.sets(st.integers(0, BLOCKS - 1)),
        # The file may end inside the last block, or before the blocks end.
        "size": st.integers(0, BLOCKS * BLOCK_SIZE),
    }
)
_READ = st.tuples(
    st.integers(0, BLOCKS * BLOCK_SIZE + 10),
    st.one_of(st.integers(0, 300), st.integers(0, 2 * BLOCK_SIZE + 5), st.just(BLOCK_SIZE)),
    st.booleans(),  # keep the reply (a caller that holds on to it)
)


@given(_VOLUME, st.lists(_READ, min_size=1, max_size=10))
@settings(max_examples=150, deadline=None)
def test_read_range_equals_the_image(volume: dict, reads: list[tuple[int, int, bool]]) -> None:
    blocks = {i: _block(i + 1) for i in volume["present"]}
    size = volume["size"]
    image = bytearray(BLOCKS * BLOCK_SIZE)
    for i, data in blocks.items():
        image[i * BLOCK_SIZE : (i + 1) * BLOCK_SIZE] = data
    reader = _Reader(blocks, volume["cached"])
    kept: list[tuple[object, bytes]] = []

    async def run() -> None:
        for offset, length, keep in reads:
            del reader.reads[:]
            got = await read_range(reader, offset, length, size)
            want = bytes(image[offset : min(offset + length, size)])
            assert bytes(got) == want, (offset, length, size)
            end = min(offset + length, size)
            if offset < end:
                # Exactly the blocks of the range, each once.
                wanted = list(range(offset // BLOCK_SIZE, (end - 1) // BLOCK_SIZE + 1))
                assert sorted(reader.reads) == wanted
            else:
                assert reader.reads == []
            if keep:
                kept.append((got, want))
            del got

    trio.run(run)
    for got, want in kept:
        assert bytes(got) == want  # type: ignore[arg-type]


_BIG = 1 << 45  # 32 TiB: offsets far past a small volume, within a large one


@given(st.integers(0, _BIG), st.integers(0, 4 * BLOCK_SIZE), st.integers(0, _BIG))
def test_block_spans_cut_exactly_the_interval(offset: int, length: int, size: int) -> None:
    spans = block_spans(offset, length, size)
    end = min(offset + length, size)
    if offset >= end:
        assert spans == []
        return
    # Consecutive blocks, each a non-empty piece within the block, that together are
    # exactly [offset, end): the first starts at offset, each next where the last ended.
    assert spans[0][0] == offset // BLOCK_SIZE
    pos = offset
    for k, (index, lo, hi) in enumerate(spans):
        assert index == spans[0][0] + k
        assert 0 <= lo < hi <= BLOCK_SIZE
        assert index * BLOCK_SIZE + lo == pos
        pos = index * BLOCK_SIZE + hi
        if 0 < k < len(spans) - 1:
            assert (lo, hi) == (0, BLOCK_SIZE)  # only the ends are cut
    assert pos == end
    assert sum(hi - lo for _, lo, hi in spans) == end - offset


_PARTS = st.lists(
    st.tuples(st.integers(0, 255), st.integers(0, BLOCK_SIZE), st.booleans()),
    min_size=1,
    max_size=5,
)


@given(st.lists(st.tuples(_PARTS, st.booleans()), min_size=1, max_size=12))
@settings(deadline=None)
def test_reply_buffers_join_like_bytes_and_never_overwrite_a_kept_reply(
    joins: list[tuple[list[tuple[int, int, bool]], bool]],
) -> None:
    replies = ReplyBuffers()
    kept: list[tuple[bytes | memoryview, bytes]] = []
    for parts_spec, keep in joins:
        parts: list[bytes | memoryview] = []
        for fill, length, as_view in parts_spec:
            data = bytes([fill]) * BLOCK_SIZE
            parts.append(memoryview(data)[:length] if as_view else data[:length])
        want = b"".join(parts)
        got = replies.join(parts, len(want))
        assert bytes(got) == want
        if len(want) <= REPLY_BUFFER_SIZE:
            assert isinstance(got, memoryview)  # pooled, not a fresh join
        if keep:
            kept.append((got, want))
        del got
        for old, old_want in kept:
            assert bytes(old) == old_want


class _Blocks(BlockReader):
    """Block i is ``_block(i)``, a hole when i is odd; the ``failing`` indexes fail."""

    def __init__(self, cached: set[int], failing: set[int]) -> None:
        self._cached = cached
        self.failing = failing
        self.reads: list[int] = []

    async def read_block(self, index: BlockIndex) -> bytes | None:
        self.reads.append(index)
        await trio.lowlevel.checkpoint()
        if index in self.failing:
            raise errors.ChecksumError(f"block {index}")
        return None if index % 2 else _block(index)

    def cached(self, index: BlockIndex) -> bool:
        return index in self._cached


@given(
    st.integers(0, 40),
    st.integers(1, 8),
    st.sets(st.integers(0, 50)),
    st.sets(st.integers(0, 50), max_size=2),
)
@settings(max_examples=150, deadline=None)
def test_default_read_blocks_equals_reading_each_block(
    first: int, count: int, cached: set[int], failing: set[int]
) -> None:
    reader = _Blocks(cached, failing)
    indexes = range(first, first + count)

    async def run() -> None:
        if failing & set(indexes):
            try:
                await reader.read_blocks(BlockIndex(first), count)
            except errors.ChecksumError as exc:  # the error itself, never a group
                assert int(str(exc).split()[1]) in failing
            else:
                raise AssertionError("a failed block went unnoticed")
            return
        got = await reader.read_blocks(BlockIndex(first), count)
        assert got == [None if i % 2 else _block(i) for i in indexes]
        assert sorted(reader.reads) == list(indexes)  # each block read once

    trio.run(run)
