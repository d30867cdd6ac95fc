"""The store on its own: sealing and deletion against puts racing them."""

import hashlib
import os
import threading
import time
from pathlib import Path

import pytest

from ebsfs.server.storage import COMPLETED, Refused, Snapshot, Store
from ebsfs.types import BLOCK_SIZE


def _snapshot(store: Store, sid: str) -> Snapshot:
    snap = Snapshot(sid, 1, "000000000000", 0.0, 60, 0.0, root_id=sid)
    store.create(snap, None, "", "{}")
    return snap


def _files(root: Path) -> int:
    return sum(1 for p in (root / "blocks").rglob("*") if p.is_file())


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
    assert _files(tmp_path) == 0
    assert store.stats()["rows"] == 0
    store.close()
