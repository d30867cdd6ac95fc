"""The ``BlockReader`` Protocol: every layer offers every capability, nothing probes for one."""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

import pytest
import trio

import ebsfs.read
from ebsfs.aws.runner import Calls
from ebsfs.core import errors
from ebsfs.core.blocks import BLOCK_SIZE, BlockIndex
from ebsfs.read.base import BlockReader
from ebsfs.read.cache import BlockCache, CachedBlocks
from ebsfs.read.diskcache import DiskCache, DiskCachedBlocks
from ebsfs.read.ranges import read_range
from ebsfs.read.readahead import ReadAhead
from ebsfs.read.remote import RemoteBlocks, RemoteTuning
from tests.read.fakes import FakeBlockApi, block_of

pytestmark = pytest.mark.timeout(60)
SNAP = "snap-0123456789abcdef0"
B = BlockIndex
CAPABILITIES = ("read_block", "read_verified", "cached", "read_blocks", "stats")


class _Plain(BlockReader):
    """A layer that offers ``read_block`` only: the Protocol gives it the rest."""

    def __init__(self) -> None:
        self.reads: list[int] = []
        self.running = 0
        self.most = 0

    async def read_block(self, index: BlockIndex) -> bytes | None:
        self.reads.append(index)
        self.running += 1
        self.most = max(self.most, self.running)
        await trio.sleep(0.001)
        self.running -= 1
        if index == 13:
            raise errors.ChecksumError("block 13: checksum mismatch")
        return None if index % 2 else block_of(index)


def test_every_layer_offers_every_capability(tmp_path: Path) -> None:
    api = FakeBlockApi({0: block_of(0), 4: block_of(4)})

    async def main() -> None:
        async with trio.open_nursery() as n:
            remote = RemoteBlocks(
                api, Calls(trio.CapacityLimiter(4)), SNAP, 2048, tuning=RemoteTuning()
            )
            disk = DiskCache(tmp_path / "blocks", 4 * BLOCK_SIZE)
            n.start_soon(disk.run)
            on_disk = DiskCachedBlocks(remote, disk, SNAP)
            cached = CachedBlocks(on_disk, BlockCache(8 * BLOCK_SIZE), SNAP)
            ahead = ReadAhead(cached, n, 4, 2048)
            for layer in (remote, on_disk, cached, ahead, _Plain()):
                assert BlockReader in type(layer).__mro__  # subclassed: the defaults are taken
                for name in CAPABILITIES:
                    assert callable(getattr(layer, name)), (type(layer).__name__, name)
                assert isinstance(layer.stats(), dict)
            # Through the whole stack: the block, holes as None, and the digest where the
            # layer verified it (the remote layer) or None (layers that only pass blocks on).
            assert await remote.read_verified(B(0)) == (
                block_of(0),
                hashlib.sha256(block_of(0)).digest(),
            )
            assert await ahead.read_verified(B(4)) == (block_of(4), None)
            assert await ahead.read_blocks(B(3), 3) == [None, block_of(4), None]
            assert ahead.cached(B(4)) and cached.cached(B(4)) and not ahead.cached(B(7))
            assert not on_disk.cached(B(4)) and not remote.cached(B(4))  # they cannot tell
            n.cancel_scope.cancel()

    trio.run(main)


def test_default_read_blocks_overlaps_fetches_and_raises_the_first_error() -> None:
    async def main() -> None:
        plain = _Plain()
        assert await plain.read_blocks(B(4), 4) == [block_of(4), None, block_of(6), None]
        assert sorted(plain.reads) == [4, 5, 6, 7]
        assert plain.most == 4  # nothing reported cached: the four were fetched at once
        with pytest.raises(errors.ChecksumError):  # not an exception group
            await plain.read_blocks(B(12), 3)
        assert await plain.read_verified(B(2)) == (block_of(2), None)
        assert not plain.cached(B(2)) and plain.stats() == {}

    trio.run(main)


def test_read_blocks_awaits_in_turn_what_is_already_underway() -> None:
    class Underway(_Plain):
        def cached(self, index: BlockIndex) -> bool:
            return index != 20

    async def main() -> None:
        layer = Underway()
        assert await layer.read_blocks(B(20), 3) == [block_of(20), None, block_of(22)]
        assert layer.reads == [20, 21, 22] and layer.most == 1

    trio.run(main)


def test_read_range_asks_the_reader_for_its_blocks_and_nothing_else() -> None:
    # read_range does the byte arithmetic; how the blocks are fetched is the reader's own
    # business (read_blocks), not something it steers by asking what a lower layer holds.
    class Strict(_Plain):
        def __init__(self) -> None:
            super().__init__()
            self.asked: list[tuple[int, int]] = []

        def cached(self, index: BlockIndex) -> bool:
            raise AssertionError("read_range asked a layer what it holds")

        async def read_blocks(self, first: BlockIndex, count: int) -> list[bytes | None]:
            self.asked.append((first, count))
            return [await self.read_block(B(first + k)) for k in range(count)]

    async def main() -> None:
        layer = Strict()
        got = await read_range(layer, BLOCK_SIZE - 10, BLOCK_SIZE + 20, 8 * BLOCK_SIZE)
        assert bytes(got) == block_of(0)[-10:] + bytes(BLOCK_SIZE) + block_of(2)[:10]
        assert layer.asked == [(0, 3)]
        assert bytes(await read_range(layer, 2 * BLOCK_SIZE, 5, 8 * BLOCK_SIZE)) == block_of(2)[:5]
        assert layer.asked == [(0, 3), (2, 1)]

    trio.run(main)


def _probes(tree: ast.AST) -> list[str]:
    """getattr/hasattr calls on anything but a module (``os``), as source text."""
    found = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "hasattr")
            and not (isinstance(node.args[0], ast.Name) and node.args[0].id in ("os", "errno"))
        ):
            found.append(ast.unparse(node))
    return found


@pytest.mark.parametrize(
    "module", ["base.py", "cache.py", "diskcache.py", "ranges.py", "readahead.py", "stack.py"]
)
def test_no_layer_is_probed_for_a_capability(module: str) -> None:
    path = Path(ebsfs.read.__file__).parent / module
    probes = _probes(ast.parse(path.read_text()))
    assert probes == [], f"{module} probes with getattr/hasattr: {probes}"
