"""An in-memory stand-in for the EBS write APIs, strict where AWS is strict.

It keeps each snapshot's blocks, refuses writes after CompleteSnapshot, checks
ChangedBlocksCount and the LINEAR aggregate as AWS does (moving the snapshot to ``error`` with
AWS's StateMessage), honours ClientToken idempotency, and can inject failures.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field

from ebsfs.core import checksum
from ebsfs.core.blocks import BLOCK_SIZE
from ebsfs.core.errors import ApiError, BackendUnavailableError, ChecksumError, NotFoundError


@dataclass(frozen=True)
class Info:
    snapshot_id: str
    state: str
    volume_size: int
    progress: str = ""
    state_message: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    description: str = ""
    parent: str = ""


@dataclass
class Snap:
    snapshot_id: str
    volume_size: int
    parent: str | None
    description: str | None
    tags: dict[str, str]
    state: str = "pending"
    sealed: bool = False
    message: str = ""
    own: dict[int, bytes] = field(default_factory=dict)


class FakeApi:
    """Thread-safe: the code under test calls it from worker threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.snaps: dict[str, Snap] = {}
        self.tokens: dict[str, tuple[str, tuple]] = {}
        self.calls: Counter[str] = Counter()
        self.puts: list[int] = []
        self.fail_puts: list[Exception] = []  # raised by the next PutSnapshotBlock calls
        self.not_found_puts = 0  # the next N puts answer 404 (a snapshot just started)
        self.inflight: set[tuple[str, int]] = set()
        self.overlap = False  # two puts of one index were ever in flight at once
        self.put_delay = 0.0
        #: "count" or "checksum": CompleteSnapshot is sent a wrong ChangedBlocksCount or
        #: aggregate (as another writer of the snapshot would cause), so AWS fails it.
        self.complete_fault = ""
        self._next = 0

    # -- helpers for tests --
    def add_completed(self, blocks: dict[int, bytes], volume_size: int = 1) -> str:
        with self.lock:
            sid = self._new_id()
            self.snaps[sid] = Snap(sid, volume_size, None, None, {}, "completed", True, "",
                                   dict(blocks))
            return sid

    def view(self, sid: str) -> dict[int, bytes]:
        """The snapshot's full view: the parent's blocks with its own written over them."""
        snap = self.snaps[sid]
        out = dict(self.view(snap.parent)) if snap.parent else {}
        out.update(snap.own)
        return out

    def image(self, sid: str, length: int) -> bytes:
        """The first ``length`` bytes of the snapshot's volume."""
        out = bytearray(length + BLOCK_SIZE)
        for i, data in self.view(sid).items():
            if i * BLOCK_SIZE < length:
                out[i * BLOCK_SIZE : (i + 1) * BLOCK_SIZE] = data
        return bytes(out[:length])

    def _new_id(self) -> str:
        self._next += 1
        return f"snap-{self._next:017x}"

    # -- the API --
    def start_snapshot(self, volume_size, *, parent=None, description=None, tags=None,
                       client_token, timeout_minutes=None, encrypted=False):
        self.calls["start"] += 1
        with self.lock:
            params = (volume_size, parent, description, tuple(sorted((tags or {}).items())))
            if client_token in self.tokens:
                sid, old = self.tokens[client_token]
                if old != params:
                    raise ApiError("conflict", "ConflictException", "", 409)
                return Info(sid, "pending", volume_size)
            if parent and (parent not in self.snaps or self.snaps[parent].state != "completed"):
                raise NotFoundError(f"parent {parent}")
            sid = self._new_id()
            self.snaps[sid] = Snap(sid, volume_size, parent, description, dict(tags or {}))
            self.tokens[client_token] = (sid, params)
            return Info(sid, "pending", volume_size)

    def put_block(self, snapshot_id, index, data, checksum_b64):
        import time

        self.calls["put"] += 1
        with self.lock:
            if self.fail_puts:
                raise self.fail_puts.pop(0)
            if self.not_found_puts:
                self.not_found_puts -= 1
                raise NotFoundError("not yet")
            snap = self.snaps.get(snapshot_id)
            if snap is None or snap.state == "error":
                raise NotFoundError(snapshot_id)
            if snap.sealed:
                raise ApiError("already completed", "ValidationException", "INVALID_SNAPSHOT_ID",
                               400)
            if len(data) != BLOCK_SIZE or not 0 <= index < snap.volume_size * 2048:
                raise ApiError("bad block", "ValidationException", "INVALID_BLOCK", 400)
            if checksum.block_checksum(data) != checksum_b64:
                raise ChecksumError("checksum")
            key = (snapshot_id, index)
            if key in self.inflight:
                self.overlap = True
            self.inflight.add(key)
        try:
            if self.put_delay:
                time.sleep(self.put_delay)
        finally:
            with self.lock:
                self.inflight.discard(key)
                snap.own[index] = bytes(data)
                self.puts.append(index)

    def complete_snapshot(self, snapshot_id, changed_blocks_count, aggregate_b64):
        self.calls["complete"] += 1
        if self.complete_fault == "count":
            changed_blocks_count += 1
        elif self.complete_fault == "checksum":
            aggregate_b64 = "A" * 43 + "="
        with self.lock:
            snap = self.snaps.get(snapshot_id)
            if snap is None:
                raise NotFoundError(snapshot_id)
            if snap.sealed:
                return snap.state
            snap.sealed = True
            own = snap.own
            agg = checksum.linear_aggregate(checksum.digest(own[i]) for i in sorted(own))
            if changed_blocks_count != len(own):
                snap.state, snap.message = "error", "Changed blocks count mismatch for snapshot"
            elif aggregate_b64 is not None and aggregate_b64 != agg:
                snap.state, snap.message = "error", "Checksum mismatch for snapshot"
            else:
                snap.state = "completed"
            return "pending"

    def describe_snapshot(self, snapshot_id):
        self.calls["describe"] += 1
        with self.lock:
            snap = self.snaps.get(snapshot_id)
            if snap is None:
                raise NotFoundError(snapshot_id)
            return Info(snap.snapshot_id, snap.state, snap.volume_size,
                        "100%" if snap.state == "completed" else "0%", snap.message,
                        dict(snap.tags), snap.description or "", snap.parent or "")

    def delete_snapshot(self, snapshot_id):
        self.calls["delete"] += 1
        with self.lock:
            if snapshot_id not in self.snaps:
                raise NotFoundError(snapshot_id)
            del self.snaps[snapshot_id]


class DictReader:
    """A completed snapshot's blocks read straight from the fake (the parent's read stack)."""

    def __init__(self, api: FakeApi, snapshot_id: str) -> None:
        self.api = api
        self.snapshot_id = snapshot_id
        self.reads = 0

    async def read_block(self, index):
        self.reads += 1
        return self.api.view(self.snapshot_id).get(int(index))

    def stats(self) -> dict[str, int]:
        return {"reads": self.reads}


def transient_error() -> Exception:
    return BackendUnavailableError("connection dropped")
