"""ebsfs diff's paging and merging, over a fake ListChangedBlocks (one layer, no network)."""

import io
import json
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from ebsfs.commands import diff
from ebsfs.core.blocks import BLOCK_SIZE
from ebsfs.core.errors import ApiError, InvalidTokenError, NotFoundError


@dataclass
class Page:
    changed: list[tuple[int, str | None, str | None]]
    next_token: str | None
    expiry: float = 0.0


@dataclass
class FakeApi:
    """Pages of at most ``per_page`` candidates, empty pages included, like AWS."""

    changed: list[int]
    candidates: list[int]
    per_page: int = 3
    states: dict[str, str] = field(default_factory=dict)
    not_found_times: int = 0
    expire_token_once: bool = False
    calls: list[tuple[int, str | None]] = field(default_factory=list)

    def list_changed_blocks(
        self, first_id: str, second_id: str, start_index: int = 0, next_token: str | None = None
    ) -> Page:
        self.calls.append((start_index, next_token))
        if self.not_found_times:
            self.not_found_times -= 1
            raise NotFoundError(f"The snapshot '{second_id}' does not exist.")
        if next_token and self.expire_token_once and len(self.calls) > 2:
            self.expire_token_once = False
            raise InvalidTokenError("The pagination token is invalid", reason="INVALID_PAGE_TOKEN")
        pos = (
            int(next_token)
            if next_token
            else next(
                (i for i, c in enumerate(self.candidates) if c >= start_index), len(self.candidates)
            )
        )
        scanned = self.candidates[pos : pos + self.per_page]
        end = pos + len(scanned)
        return Page(
            changed=[(i, "t1", "t2") for i in scanned if i in self.changed],
            next_token=str(end) if end < len(self.candidates) else None,
        )

    def describe_snapshot(self, snapshot_id: str) -> Any:
        if snapshot_id not in self.states:
            raise NotFoundError(f"no such snapshot {snapshot_id}")
        return SimpleNamespace(state=self.states[snapshot_id])


def test_merge_runs() -> None:
    ranges = list(diff.merge_runs([0, 1, 2, 5, 7, 8, 100]))
    assert [(r.first, r.last) for r in ranges] == [(0, 2), (5, 5), (7, 8), (100, 100)]
    assert ranges[0].size == 3 * BLOCK_SIZE
    assert ranges[3].offset == 100 * BLOCK_SIZE
    assert ranges[1].label() == "5" and ranges[0].label() == "0-2"
    assert list(diff.merge_runs([])) == []


def test_out_of_order_answer_is_an_error() -> None:
    with pytest.raises(ApiError, match="block 3 after block 5"):
        list(diff.merge_runs([5, 3]))


def test_follows_tokens_through_empty_pages() -> None:
    # Changes only at the far end: the first pages are empty but carry a NextToken.
    api = FakeApi(changed=[40, 41], candidates=list(range(42)))
    assert list(diff.changed_indexes(api, "snap-a", "snap-b")) == [40, 41]
    assert len(api.calls) == 14


def test_expired_page_token_resumes_after_the_last_index() -> None:
    api = FakeApi(changed=[1, 2, 4, 8, 9], candidates=list(range(10)), expire_token_once=True)
    assert list(diff.changed_indexes(api, "snap-a", "snap-b")) == [1, 2, 4, 8, 9]
    # The third call was refused; it restarted at 5, one past the last index reported.
    assert api.calls[3] == (5, None)


def test_read_lag_after_completion_is_waited_out() -> None:
    api = FakeApi(
        changed=[0],
        candidates=[0],
        states={"snap-a": "completed", "snap-b": "completed"},
        not_found_times=2,
    )
    slept: list[float] = []
    assert list(diff.changed_indexes(api, "snap-a", "snap-b", sleep=slept.append)) == [0]
    assert slept == [2.0, 4.0]


@pytest.mark.parametrize(
    ("states", "message"),
    [
        ({"snap-a": "completed"}, "no such snapshot: snap-b"),
        ({"snap-a": "completed", "snap-b": "pending"}, "snap-b is pending: only completed"),
    ],
)
def test_missing_or_pending_snapshot_is_named(states: dict[str, str], message: str) -> None:
    api = FakeApi(changed=[], candidates=[], states=states, not_found_times=1)
    with pytest.raises(NotFoundError, match=message):
        list(diff.changed_indexes(api, "snap-a", "snap-b", sleep=lambda _: None))


def test_table_and_json_output() -> None:
    ranges = list(diff.merge_runs([0, 1, 2, 2048]))
    out = io.StringIO()
    diff._print_table(ranges, out)
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["BLOCKS", "OFFSET", "SIZE"]
    assert lines[1].split() == ["0-2", "0", "B", "1.5", "MiB"]
    assert lines[2].split() == ["2048", "1", "GiB", "512", "KiB"]
    assert lines[3] == "total: 4 blocks (2 MiB) in 2 ranges"
    out = io.StringIO()
    diff._print_json("snap-a", "snap-b", ranges, out)
    doc = json.loads(out.getvalue())
    assert doc["changed_blocks"] == 4
    assert doc["changed_bytes"] == 4 * BLOCK_SIZE
    assert doc["ranges"][1] == {
        "first_block": 2048,
        "last_block": 2048,
        "blocks": 1,
        "offset": 1 << 30,
        "size": BLOCK_SIZE,
    }
    out = io.StringIO()
    diff._print_table([], out)
    assert out.getvalue() == "no changed blocks\n"
