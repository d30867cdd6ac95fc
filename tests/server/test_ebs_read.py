"""ListSnapshotBlocks, ListChangedBlocks and GetSnapshotBlock: paging, tokens, lineage."""

import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from botocore.exceptions import ClientError

from ebsfs.core import checksum
from ebsfs.core.blocks import BLOCK_SIZE
from tests.server.conftest import Shared
from tests.serverproc import complete, get_block, list_blocks, put_block, wait_state

MANY = 2050
SAME = os.urandom(BLOCK_SIZE)


def _reason(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return str(exc.value.response.get("Reason", ""))


def _snapshot(shared: Shared, blocks: dict[int, bytes], size: int = 1,
              parent: str | None = None) -> str:
    kwargs: dict[str, Any] = {"VolumeSize": size}
    if parent:
        kwargs["ParentSnapshotId"] = parent
    sid = str(shared.ebs.start_snapshot(**kwargs)["SnapshotId"])
    for index, data in blocks.items():
        put_block(shared.ebs, sid, index, data)
    complete(shared.ebs, sid, {i: checksum.digest(d) for i, d in blocks.items()})
    assert wait_state(shared.ec2, sid)["State"] == "completed"
    return sid


@pytest.fixture(scope="module")
def many(shared: Shared) -> str:
    """A 3 GiB snapshot holding MANY blocks at the even indexes."""
    sid = str(shared.ebs.start_snapshot(VolumeSize=3)["SnapshotId"])
    indexes = [2 * i for i in range(MANY)]
    clients = [shared.server.ebs() for _ in range(6)]

    def upload(n: int) -> None:
        for index in indexes[n::6]:
            put_block(clients[n], sid, index, SAME)

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(upload, range(6)))
    complete(shared.ebs, sid, dict.fromkeys(indexes, checksum.digest(SAME)))
    assert wait_state(shared.ec2, sid)["State"] == "completed"
    return sid


def test_list_pages_through_thousands_of_blocks(shared: Shared, many: str) -> None:
    pages: list[list[int]] = []
    kwargs: dict[str, Any] = {"SnapshotId": many, "MaxResults": 100}
    while True:
        page = shared.ebs.list_snapshot_blocks(**kwargs)
        assert page["BlockSize"] == BLOCK_SIZE and page["VolumeSize"] == 3
        assert page["ExpiryTime"].timestamp() > time.time() + 6 * 86400
        pages.append([b["BlockIndex"] for b in page["Blocks"]])
        if "NextToken" not in page:
            break
        kwargs["NextToken"] = page["NextToken"]
    assert [len(p) for p in pages] == [100] * 20 + [50]
    flat = [i for p in pages for i in p]
    assert flat == [2 * i for i in range(MANY)]


def test_starting_block_index_skips_holes(shared: Shared, many: str) -> None:
    page = shared.ebs.list_snapshot_blocks(SnapshotId=many, StartingBlockIndex=1, MaxResults=100)
    assert page["Blocks"][0]["BlockIndex"] == 2
    beyond = shared.ebs.list_snapshot_blocks(SnapshotId=many, StartingBlockIndex=6144)
    assert beyond["Blocks"] == [] and "NextToken" not in beyond
    # A page token wins over StartingBlockIndex.
    token = shared.ebs.list_snapshot_blocks(SnapshotId=many, MaxResults=100)["NextToken"]
    cont = shared.ebs.list_snapshot_blocks(SnapshotId=many, MaxResults=100, NextToken=token,
                                           StartingBlockIndex=4000)
    assert cont["Blocks"][0]["BlockIndex"] == 200


@pytest.mark.parametrize(("value", "text"), [
    (99, "greater than or equal to 100"), (10001, "less than or equal to 10000")])
def test_max_results_bounds(shared: Shared, many: str, value: int, text: str) -> None:
    for call in (
        lambda: shared.ebs_raw.list_snapshot_blocks(SnapshotId=many, MaxResults=value),
        lambda: shared.ebs_raw.list_changed_blocks(
            FirstSnapshotId=many, SecondSnapshotId=many, MaxResults=value),
    ):
        with pytest.raises(shared.ebs_raw.exceptions.ValidationException) as exc:
            call()
        assert f"at 'maxResults' failed to satisfy constraint: Member must have value {text}" \
            in exc.value.response["Error"]["Message"]
        assert _reason(exc) == ""


def test_page_tokens_are_bound_to_snapshot_and_operation(shared: Shared, many: str) -> None:
    other = _snapshot(shared, {i: SAME for i in range(101)})
    list_token = shared.ebs.list_snapshot_blocks(SnapshotId=many, MaxResults=100)["NextToken"]
    changed_token = shared.ebs.list_changed_blocks(
        FirstSnapshotId=many, SecondSnapshotId=many, MaxResults=100)["NextToken"]
    block_token = shared.ebs.list_snapshot_blocks(SnapshotId=many)["Blocks"][0]["BlockToken"]
    bad = [("garbage", many), (list_token, other), (changed_token, many), (block_token, many)]
    for token, sid in bad:
        with pytest.raises(shared.ebs.exceptions.ValidationException) as exc:
            shared.ebs.list_snapshot_blocks(SnapshotId=sid, NextToken=token)
        assert _reason(exc) == "INVALID_PAGE_TOKEN"
        assert exc.value.response["Error"]["Message"] == (
            f"The pagination token {token} is invalid.")
    with pytest.raises(shared.ebs.exceptions.ValidationException) as exc:
        shared.ebs.list_changed_blocks(FirstSnapshotId=many, SecondSnapshotId=many,
                                       NextToken=list_token)
    assert _reason(exc) == "INVALID_PAGE_TOKEN"


def test_block_tokens_are_bound_to_snapshot_and_index(shared: Shared) -> None:
    a = os.urandom(BLOCK_SIZE)
    parent = _snapshot(shared, {0: a, 1: SAME})
    child = _snapshot(shared, {}, parent=parent)
    tokens, _ = list_blocks(shared.ebs, parent)
    assert get_block(shared.ebs, parent, 0, tokens[0]) == a
    # Tokens from an earlier listing keep working after a re-list.
    list_blocks(shared.ebs, parent)
    assert get_block(shared.ebs, parent, 0, tokens[0]) == a
    for sid, index, token in [(parent, 1, tokens[0]), (child, 0, tokens[0]),
                              (parent, 5, tokens[0]), (parent, 9999, tokens[0]),
                              (parent, 0, "AAAA")]:
        with pytest.raises(shared.ebs.exceptions.ValidationException) as exc:
            shared.ebs.get_snapshot_block(SnapshotId=sid, BlockIndex=index, BlockToken=token)
        assert _reason(exc) == "INVALID_BLOCK_TOKEN"
        assert exc.value.response["Error"]["Message"] == f"The block token {token} is invalid."


def test_get_returns_data_and_checksum_headers(shared: Shared) -> None:
    data = os.urandom(BLOCK_SIZE)
    sid = _snapshot(shared, {7: data})
    tokens, _ = list_blocks(shared.ebs, sid)
    r = shared.ebs.get_snapshot_block(SnapshotId=sid, BlockIndex=7, BlockToken=tokens[7])
    assert r["DataLength"] == BLOCK_SIZE
    assert r["Checksum"] == checksum.block_checksum(data) and r["ChecksumAlgorithm"] == "SHA256"
    assert r["ResponseMetadata"]["HTTPHeaders"]["content-type"] == "application/octet-stream"
    assert r["BlockData"].read() == data


def test_reads_of_pending_or_failed_snapshots_are_404(shared: Shared) -> None:
    pending = shared.ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    put_block(shared.ebs, pending, 0, SAME)
    failed = shared.ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    put_block(shared.ebs, failed, 0, SAME)
    shared.ebs.complete_snapshot(SnapshotId=failed, ChangedBlocksCount=2)
    assert wait_state(shared.ec2, failed)["State"] == "error"
    for sid in (pending, failed, "snap-0123456789abcdef0"):
        calls = [
            lambda sid=sid: shared.ebs.list_snapshot_blocks(SnapshotId=sid),
            lambda sid=sid: shared.ebs.get_snapshot_block(
                SnapshotId=sid, BlockIndex=0, BlockToken="garbage"),
            lambda sid=sid: shared.ebs.list_changed_blocks(SecondSnapshotId=sid,
                                                           FirstSnapshotId=sid),
        ]
        for call in calls:
            with pytest.raises(shared.ebs.exceptions.ResourceNotFoundException) as exc:
                call()
            assert _reason(exc) == "SNAPSHOT_NOT_FOUND"
            assert exc.value.response["Error"]["Message"] == f"The snapshot '{sid}' does not exist."


def _changed(shared: Shared, first: str, second: str, **kwargs: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    args: dict[str, Any] = {"FirstSnapshotId": first, "SecondSnapshotId": second, **kwargs}
    while True:
        page = shared.ebs.list_changed_blocks(**args)
        out += page["ChangedBlocks"]
        if not page.get("NextToken"):
            return out
        args["NextToken"] = page["NextToken"]


def test_lineage_parent_child_sibling(shared: Shared) -> None:
    r = {i: os.urandom(BLOCK_SIZE) for i in (0, 1, 2, 3, 4, 5, 2047)}
    root = _snapshot(shared, r)
    new10, new4 = os.urandom(BLOCK_SIZE), os.urandom(BLOCK_SIZE)
    child = _snapshot(shared, {0: bytes(BLOCK_SIZE), 3: r[3], 10: new10}, parent=root)
    sibling = _snapshot(shared, {4: new4}, parent=root)

    # The child lists inherited blocks too, and reads them from the parent's versions.
    tokens, _ = list_blocks(shared.ebs, child)
    assert sorted(tokens) == [0, 1, 2, 3, 4, 5, 10, 2047]
    assert get_block(shared.ebs, child, 0, tokens[0]) == bytes(BLOCK_SIZE)
    assert get_block(shared.ebs, child, 1, tokens[1]) == r[1]
    assert get_block(shared.ebs, child, 2047, tokens[2047]) == r[2047]

    forward = _changed(shared, root, child)
    assert [c["BlockIndex"] for c in forward] == [0, 3, 10]  # versions, not contents
    assert "FirstBlockToken" in forward[0] and "SecondBlockToken" in forward[0]
    assert "FirstBlockToken" not in forward[2] and "SecondBlockToken" in forward[2]
    backward = _changed(shared, child, root)
    assert [c["BlockIndex"] for c in backward] == [0, 3, 10]
    assert "FirstBlockToken" in backward[2] and "SecondBlockToken" not in backward[2]
    got = shared.ebs.get_snapshot_block(SnapshotId=child, BlockIndex=10,
                                        BlockToken=forward[2]["SecondBlockToken"])
    assert got["BlockData"].read() == new10

    assert [c["BlockIndex"] for c in _changed(shared, child, sibling)] == [0, 3, 4, 10]
    assert _changed(shared, child, child) == []
    grandchild = _snapshot(shared, {5: new4}, parent=child)
    assert [c["BlockIndex"] for c in _changed(shared, root, grandchild)] == [0, 3, 5, 10]

    unrelated = _snapshot(shared, {0: new4})
    with pytest.raises(shared.ebs.exceptions.ValidationException) as exc:
        shared.ebs.list_changed_blocks(FirstSnapshotId=root, SecondSnapshotId=unrelated)
    assert _reason(exc) == "UNRELATED_SNAPSHOTS"
    with pytest.raises(shared.ebs.exceptions.ValidationException) as exc:
        shared.ebs.list_changed_blocks(SecondSnapshotId=root)
    assert _reason(exc) == "INVALID_SNAPSHOT_ID"
    assert exc.value.response["Error"]["Message"] == "First snapshot should not be empty or null"

    # Deleting the parent leaves the children whole, old tokens included.
    shared.ec2.delete_snapshot(SnapshotId=root)
    with pytest.raises(shared.ebs.exceptions.ResourceNotFoundException):
        shared.ebs.list_snapshot_blocks(SnapshotId=root)
    assert get_block(shared.ebs, child, 1, tokens[1]) == r[1]
    again, _ = list_blocks(shared.ebs, child)
    assert sorted(again) == [0, 1, 2, 3, 4, 5, 10, 2047]
    assert get_block(shared.ebs, grandchild, 2047, list_blocks(shared.ebs, grandchild)[0][2047]) \
        == r[2047]
    assert [c["BlockIndex"] for c in _changed(shared, child, sibling)] == [0, 3, 4, 10]


def test_changed_blocks_pages_may_be_empty(shared: Shared) -> None:
    parent = _snapshot(shared, {i: SAME for i in range(250)})
    changed = os.urandom(BLOCK_SIZE)
    child = _snapshot(shared, {249: changed}, parent=parent)
    pages = []
    args: dict[str, Any] = {"FirstSnapshotId": parent, "SecondSnapshotId": child,
                            "MaxResults": 100}
    while True:
        page = shared.ebs.list_changed_blocks(**args)
        pages.append(([c["BlockIndex"] for c in page["ChangedBlocks"]], "NextToken" in page))
        if "NextToken" not in page:
            break
        args["NextToken"] = page["NextToken"]
    assert pages == [([], True), ([], True), ([249], False)]
    start = shared.ebs.list_changed_blocks(FirstSnapshotId=parent, SecondSnapshotId=child,
                                           StartingBlockIndex=200)
    assert [c["BlockIndex"] for c in start["ChangedBlocks"]] == [249]


def test_tokens_expire(server_factory: Any) -> None:
    srv = server_factory("--token-ttl", "1")
    ebs, ec2 = srv.ebs(), srv.ec2()
    sid = ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    for i in range(101):
        put_block(ebs, sid, i, SAME)
    complete(ebs, sid, dict.fromkeys(range(101), checksum.digest(SAME)))
    wait_state(ec2, sid)
    page = ebs.list_snapshot_blocks(SnapshotId=sid, MaxResults=100)
    assert abs(page["ExpiryTime"].timestamp() - (time.time() + 1)) < 1
    token = page["Blocks"][0]["BlockToken"]
    assert get_block(ebs, sid, 0, token) == SAME
    time.sleep(1.5)
    with pytest.raises(ebs.exceptions.ValidationException) as exc:
        ebs.get_snapshot_block(SnapshotId=sid, BlockIndex=0, BlockToken=token)
    assert _reason(exc) == "INVALID_BLOCK_TOKEN"
    with pytest.raises(ebs.exceptions.ValidationException) as exc:
        ebs.list_snapshot_blocks(SnapshotId=sid, NextToken=page["NextToken"])
    assert _reason(exc) == "INVALID_PAGE_TOKEN"
    fresh = ebs.list_snapshot_blocks(SnapshotId=sid, MaxResults=100)["Blocks"][0]["BlockToken"]
    assert get_block(ebs, sid, 0, fresh) == SAME
