"""The data directory: what was acknowledged survives ``kill -9``, a torn write never shows up
as a block, and blocks shared by snapshots are stored once and freed with the last user."""

import hashlib
import os
import threading
import time
from pathlib import Path
from typing import Any

from ebsfs.core import checksum
from ebsfs.core.blocks import BLOCK_SIZE
from ebsfs.server.records import HEADER_SIZE, RECORD_SIZE, Record, encode_header
from tests.server.raw import allocated, stored
from tests.serverproc import (
    LocalServer,
    complete,
    download_image,
    get_block,
    list_blocks,
    put_block,
    upload_image,
    wait_state,
)

WRITERS = 6


def test_kill_9_keeps_every_acknowledged_block(server: LocalServer) -> None:
    ebs, ec2 = server.ebs(), server.ec2()
    done = upload_image(ebs, ec2, os.urandom(BLOCK_SIZE), 1, name="before-crash")
    sid = ebs.start_snapshot(VolumeSize=1, Description="in flight")["SnapshotId"]
    acked: dict[int, bytes] = {}
    in_flight: dict[int, int] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def writer(n: int) -> None:
        client = server.ebs()
        index = n
        while not stop.is_set() and index < 2048:
            data = os.urandom(BLOCK_SIZE)
            with lock:
                in_flight[n] = index
            try:
                put_block(client, sid, index, data)
            except Exception:
                return
            with lock:
                acked[index] = data
                del in_flight[n]
            index += WRITERS

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(WRITERS)]
    for t in threads:
        t.start()
    while len(acked) < 40:
        time.sleep(0.01)
    server.kill()  # SIGKILL while puts are under way
    stop.set()
    for t in threads:
        t.join()
    assert len(acked) >= 40

    server.start()
    ebs, ec2 = server.ebs(), server.ec2()
    # A put that was cut off may or may not have been stored: write those again, so that
    # the snapshot's contents are known exactly.
    final = dict(acked)
    for index in in_flight.values():
        final[index] = os.urandom(BLOCK_SIZE)
        put_block(ebs, sid, index, final[index])
    assert complete(ebs, sid, {i: checksum.digest(d) for i, d in final.items()}) == "pending"
    state = wait_state(ec2, sid)
    assert state["State"] == "completed", state.get("StateMessage")
    assert state["Description"] == "in flight"
    tokens, _ = list_blocks(ebs, sid)
    assert sorted(tokens) == sorted(final)
    for index, token in tokens.items():
        assert get_block(ebs, sid, index, token) == final[index]
    named = ec2.describe_snapshots(SnapshotIds=[done])["Snapshots"][0]
    assert named["State"] == "completed"
    assert named["Tags"] == [{"Key": "Name", "Value": "before-crash"}]


def test_restart_keeps_snapshots_and_tokens(server: LocalServer) -> None:
    ebs, ec2 = server.ebs(), server.ec2()
    image = os.urandom(2 * BLOCK_SIZE)
    sid = upload_image(ebs, ec2, image, 1)
    pending = ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    put_block(ebs, pending, 3, image[:BLOCK_SIZE])
    tokens, _ = list_blocks(ebs, sid)
    server.restart()
    ebs = server.ebs()
    assert get_block(ebs, sid, 1, tokens[1]) == image[BLOCK_SIZE:]
    assert complete(ebs, pending, {3: checksum.digest(image[:BLOCK_SIZE])}) == "pending"
    assert wait_state(server.ec2(), pending)["State"] == "completed"


def _segments(data_dir: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in (data_dir / "segments").iterdir()}


def _record(snapshot_id: str, index: int, data: bytes, digest: bytes | None = None) -> bytes:
    """A segment record as a put writes it (``digest`` other than the data's: a torn one)."""
    header = encode_header(
        Record(snapshot_id, index, 10**15 + index, digest or hashlib.sha256(data).digest())
    )
    return header.ljust(HEADER_SIZE, b"\0") + data


def test_torn_writes_never_show_up(server: LocalServer) -> None:
    ebs, ec2 = server.ebs(), server.ec2()
    first = os.urandom(BLOCK_SIZE)
    sid = upload_image(ebs, ec2, first, 1)
    pending = ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    server.kill()
    data_dir = server.data_dir
    (seg, size), = _segments(data_dir).items()
    assert size == RECORD_SIZE
    # What a crash mid-put leaves: records of puts to the pending snapshot whose data is
    # torn (it does not hash to the header's digest), cut short, or whose header is torn; an
    # intact record of a put to the completed snapshot (refused, its hole not yet durable);
    # a segment whose first record was acknowledged but not indexed yet, followed by a torn
    # one; a half-written temporary file.
    stray, acked = os.urandom(BLOCK_SIZE), os.urandom(BLOCK_SIZE)
    torn = _record(pending, 1, stray[: BLOCK_SIZE // 2] + bytes(BLOCK_SIZE // 2),
                   hashlib.sha256(stray).digest())
    bad_header = bytearray(_record(pending, 2, stray))
    bad_header[20] ^= 0xFF
    with open(data_dir / "segments" / seg, "ab") as f:
        f.write(torn + bytes(bad_header) + _record(sid, 1, stray)
                + _record(pending, 3, stray)[: RECORD_SIZE // 2])
    (data_dir / "segments" / "99999999.rec").write_bytes(
        _record(pending, 4, acked) + _record(pending, 5, stray, hashlib.sha256(acked).digest())
    )
    (data_dir / "tmp" / "123-456").write_bytes(b"half a block")
    server.start()
    assert list(data_dir.joinpath("tmp").iterdir()) == []
    # The torn and refused parts are cut off; the acknowledged record is indexed.
    assert _segments(data_dir) == {seg: RECORD_SIZE, "99999999.rec": RECORD_SIZE}
    assert stored(data_dir) == {checksum.digest(first).hex(), checksum.digest(acked).hex()}
    assert allocated(data_dir) == 2 * RECORD_SIZE
    ebs = server.ebs()
    tokens, _ = list_blocks(ebs, sid)
    assert sorted(tokens) == [0]
    assert get_block(ebs, sid, 0, tokens[0]) == first
    assert complete(ebs, pending, {4: checksum.digest(acked)}) == "pending"
    assert wait_state(server.ec2(), pending)["State"] == "completed"
    tokens, _ = list_blocks(ebs, pending)
    assert sorted(tokens) == [4]
    assert get_block(ebs, pending, 4, tokens[4]) == acked
    # The store goes on working: the content that never made it can be written again.
    again = upload_image(ebs, server.ec2(), first + stray, 1)
    tokens, _ = list_blocks(ebs, again)
    assert get_block(ebs, again, 1, tokens[1]) == stray
    assert allocated(data_dir) == 3 * RECORD_SIZE


def test_shared_blocks_are_stored_once(server: LocalServer) -> None:
    ebs, ec2 = server.ebs(), server.ec2()
    base = os.urandom(8 * BLOCK_SIZE)
    parent = upload_image(ebs, ec2, base, 1)
    assert len(stored(server.data_dir)) == 8
    assert allocated(server.data_dir) == 8 * RECORD_SIZE
    changed = os.urandom(BLOCK_SIZE)
    child = ebs.start_snapshot(VolumeSize=1, ParentSnapshotId=parent)["SnapshotId"]
    put_block(ebs, child, 2, changed)
    complete(ebs, child, {2: checksum.digest(changed)})
    wait_state(ec2, child)
    assert len(stored(server.data_dir)) == 9  # inherited blocks are not copied
    copy = upload_image(ebs, ec2, base, 1)  # same contents, unrelated snapshot
    assert len(stored(server.data_dir)) == 9
    assert allocated(server.data_dir) == 9 * RECORD_SIZE  # each content on disk once

    ec2.delete_snapshot(SnapshotId=parent)
    ec2.delete_snapshot(SnapshotId=copy)
    assert len(stored(server.data_dir)) == 9  # the child still inherits them
    expected = base[: 2 * BLOCK_SIZE] + changed + base[3 * BLOCK_SIZE:]
    assert download_image(ebs, child, length=8 * BLOCK_SIZE) == expected
    ec2.delete_snapshot(SnapshotId=child)
    assert stored(server.data_dir) == set()
    assert allocated(server.data_dir) == 0  # the space went back to the filesystem


def test_failed_snapshots_free_their_blocks(server_factory: Any) -> None:
    srv = server_factory()
    ebs, ec2 = srv.ebs(), srv.ec2()
    sid = ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    put_block(ebs, sid, 0, os.urandom(BLOCK_SIZE))
    ebs.complete_snapshot(SnapshotId=sid, ChangedBlocksCount=7)
    assert wait_state(ec2, sid)["State"] == "error"
    deadline = time.monotonic() + 15
    while stored(srv.data_dir) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert stored(srv.data_dir) == set()
    assert allocated(srv.data_dir) == 0
    assert ec2.describe_snapshots(SnapshotIds=[sid])["Snapshots"][0]["State"] == "error"
