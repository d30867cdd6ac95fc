"""Background block counts (du) against an endpoint whose ListSnapshotBlocks pages never
end or repeat themselves."""

from __future__ import annotations

from typing import Any

import trio

from ebsfs.aws.api import BlockPage
from ebsfs.aws.runner import Calls
from ebsfs.fs.blockcount import BlockCounts

SNAP = "snap-0123456789abcdef0"


class _LoopingApi:
    """Every page lists blocks 0-9 again and names the same next token."""

    def __init__(self, pages: int) -> None:
        self.calls = 0
        self.pages = pages

    def list_blocks(self, snapshot_id: str, start: int, limit: int, token: Any) -> BlockPage:
        self.calls += 1
        last = self.calls >= self.pages
        return BlockPage([(i, "t") for i in range(10)], 0.0, None if last else "same", 1)


def _count(api: _LoopingApi) -> int | None:
    async def main() -> int | None:
        async with trio.open_nursery() as nursery:
            counts = BlockCounts(api, Calls(trio.CapacityLimiter(2)), nursery, lambda s: None)
            assert counts.get(SNAP) is None
            while SNAP in counts._queued:
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
        return counts._counts.get(SNAP)

    return trio.run(main)


def test_a_page_token_answered_twice_ends_the_count() -> None:
    """The same NextToken again was followed as a new page: one call after another for as
    long as the endpoint kept answering it (forever, for a looping one), adding the same
    blocks each time, and no other snapshot counted meanwhile."""
    api = _LoopingApi(pages=1000)
    count = _count(api)
    assert api.calls <= 3
    assert count is None  # not counted: du keeps showing the full size


def test_blocks_listed_twice_are_not_counted_twice() -> None:
    """Two pages (distinct tokens) listing the same indexes: at most the volume's blocks."""

    class _Repeating(_LoopingApi):
        def list_blocks(self, snapshot_id: str, start: int, limit: int, token: Any) -> BlockPage:
            self.calls += 1
            nxt = None if self.calls >= 3 else f"token-{self.calls}"
            return BlockPage([(i, "t") for i in range(10)], 0.0, nxt, 1)

    api = _Repeating(pages=3)
    count = _count(api)
    assert count in (None, 10)


def test_empty_pages_cycling_between_two_tokens_end_the_count() -> None:
    class _Cycling(_LoopingApi):
        def list_blocks(self, snapshot_id: str, start: int, limit: int, token: Any) -> BlockPage:
            self.calls += 1
            if self.calls >= self.pages:
                return BlockPage([], 0.0, None, 1)
            return BlockPage([], 0.0, "A" if token != "A" else "B", 1)

    api = _Cycling(pages=1000)
    assert _count(api) is None
    assert api.calls <= 4
