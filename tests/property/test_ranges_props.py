"""Property tests of ``read_range`` against slicing a bytearray image of the file.

A fake block reader serves a random volume (some blocks holes, some cached); every read must
equal the image's bytes, and every reply kept by a caller must still hold its bytes after
later reads reuse the pooled reply buffers.
"""

from __future__ import annotations

import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from ebsfs.core.blocks import BLOCK_SIZE, BlockIndex
from ebsfs.read.base import BlockReader
from ebsfs.read.ranges import read_range

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
