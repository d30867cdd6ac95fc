"""The server's durable store: SQLite (WAL) for metadata, pack files ("segments") for blocks.

Layout of the data directory (docs/server.md):

    meta.sqlite3        snapshots, their own block maps, where each distinct block content
                        lives, ClientTokens (WAL mode, synchronous=FULL)
    token.key           the HMAC key of block and page tokens
    segments/N.seg      append-only block data, one block per 512 KiB slot (segments.py)
    tmp/                files being written; emptied at start-up

A put appends its block to a segment, then joins a group commit: one fdatasync per segment
touched covers every block of the batch, then one SQLite transaction records the batch's
rows. A block is acknowledged only after both, so what was acknowledged is on disk, and a
write torn by a crash is at most an uncommitted tail, cut off at the next start; it never
shows up as a block. A child snapshot stores only its own writes; its view is the parent's
view with its writes overlaid, so inherited blocks are never copied. Block contents are
stored once (keyed by SHA256) and their space is given back (a hole punched, or the whole
segment removed) when the last row referencing them goes.

Snapshot metadata is small and kept in memory as well; every change is written through.
"""

import contextlib
import fcntl
import json
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ebsfs.server.segments import SEGMENT_BLOCKS, Segments
from ebsfs.types import BLOCKS_PER_GIB

log = logging.getLogger(__name__)

PENDING, COMPLETED, ERROR = "pending", "completed", "error"


@dataclass
class _RowWrite:
    """A put's row on its way into the database, and what became of it."""

    snap: "Snapshot"
    index: int
    digest: bytes
    #: (segment, offset) this put wrote its data to, if the content was not stored yet.
    extent: tuple[int, int] | None = None
    #: Whether the extent became the stored copy of the content (else it is freed).
    extent_used: bool = False
    done: bool = False
    refused: str | None = None
    replaced: bytes | None = None
    error: Exception | None = None


class DataDirBusy(Exception):
    """Another server process holds the data directory."""


class Refused(Exception):
    """A put to a snapshot that was sealed or deleted while the put was under way."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why  # "sealed" | "deleted"
TIMED_OUT_MESSAGE = "Snapshot timed out"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshots (
    id TEXT PRIMARY KEY,
    doc TEXT NOT NULL,
    last_activity REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS blocks (
    snapshot_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    digest BLOB NOT NULL,
    PRIMARY KEY (snapshot_id, idx)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS blocks_by_digest ON blocks (digest);
CREATE TABLE IF NOT EXISTS objects (
    digest BLOB PRIMARY KEY,
    segment INTEGER NOT NULL,
    offset INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS objects_by_segment ON objects (segment);
CREATE TABLE IF NOT EXISTS client_tokens (
    token TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    response TEXT NOT NULL
);
"""


@dataclass
class Snapshot:
    """One snapshot's metadata; ``status`` is derived from it and the clock."""

    snapshot_id: str
    volume_size: int
    owner_id: str
    start_time: float
    timeout_minutes: int
    last_activity: float
    description: str | None = None
    tags: list[tuple[str, str]] = field(default_factory=list)
    parent_id: str | None = None
    root_id: str = ""
    encrypted: bool = False
    kms_key_arn: str | None = None
    sealed_at: float | None = None
    complete_at: float | None = None
    final_status: str | None = None
    final_message: str = ""
    full_blocks: int = 0
    failed_status_message: str | None = None
    blocks_dropped: bool = False
    deleted: bool = False

    @property
    def block_count(self) -> int:
        """How many block indexes the volume has."""
        return self.volume_size * BLOCKS_PER_GIB

    @property
    def sealed(self) -> bool:
        return self.sealed_at is not None

    def state(self, now: float, minute: float) -> tuple[str, str]:
        """(status, state message) at time ``now``; one Timeout minute lasts ``minute`` s."""
        if self.failed_status_message is not None:
            return ERROR, self.failed_status_message
        if self.sealed_at is not None:
            assert self.complete_at is not None and self.final_status is not None
            if now >= self.complete_at:
                return self.final_status, self.final_message
            return PENDING, ""
        if now - self.last_activity > self.timeout_minutes * minute:
            return ERROR, TIMED_OUT_MESSAGE
        return PENDING, ""

    def completion_time(self) -> float | None:
        return self.complete_at if self.final_status == COMPLETED else None

    def to_doc(self) -> str:
        doc = dict(self.__dict__)
        doc["tags"] = [list(t) for t in self.tags]
        return json.dumps(doc)

    @classmethod
    def from_doc(cls, text: str) -> "Snapshot":
        doc = json.loads(text)
        doc["tags"] = [tuple(t) for t in doc["tags"]]
        return cls(**doc)


class Store:
    """Snapshots and their blocks on disk; safe to use from many threads."""

    def __init__(self, data_dir: str | Path, segment_blocks: int = SEGMENT_BLOCKS) -> None:
        self.root = Path(data_dir)
        self.root.mkdir(parents=True, exist_ok=True)
        # One server per data directory: a second one would keep its own picture of the
        # snapshots in memory. The lock goes with the process, kill -9 included.
        self._lock_fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise DataDirBusy(f"data directory {self.root} is in use by another server") from None
        self._tmp_dir = self.root / "tmp"
        self._tmp_dir.mkdir(exist_ok=True)
        self.segments = Segments(self.root / "segments", segment_blocks)
        for stale in self._tmp_dir.iterdir():
            stale.unlink()
        self._db_path = self.root / "meta.sqlite3"
        self._wlock = threading.Lock()
        self._prune_lock = threading.Lock()
        self._pending_lock = threading.Lock()
        self._pending: list[_RowWrite] = []
        self._readers: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._writer = self._connect()
        self._writer.executescript(_SCHEMA)
        self.snapshots: dict[str, Snapshot] = {}
        for sid, doc, active in self._writer.execute(
            "SELECT id, doc, last_activity FROM snapshots"
        ):
            self.snapshots[sid] = Snapshot.from_doc(doc)
            self.snapshots[sid].last_activity = active
        self.token_key = self._load_token_key()
        self._recover()
        self._import_block_files()
        self.prune()  # finishes a deletion a crash interrupted

    # -- plumbing ---------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self._db_path, timeout=30, isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL: the WAL is fsynced at every commit, so an acknowledged write survives power
        # loss as well as kill -9.
        conn.execute("PRAGMA synchronous=FULL")
        return conn

    @contextlib.contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection]:
        try:
            conn = self._readers.get_nowait()
        except queue.Empty:
            conn = self._connect()
        try:
            yield conn
        finally:
            self._readers.put(conn)

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._wlock:
            self._writer.execute("BEGIN IMMEDIATE")
            try:
                yield self._writer
            except BaseException:
                self._writer.execute("ROLLBACK")
                raise
            self._writer.execute("COMMIT")

    def _load_token_key(self) -> bytes:
        path = self.root / "token.key"
        if not path.exists():
            tmp = self._tmp_dir / "token.key"
            tmp.write_bytes(os.urandom(32))
            _fsync_path(tmp)
            os.replace(tmp, path)
            _fsync_path(self.root)
        return path.read_bytes()

    def close(self) -> None:
        with self._wlock:
            self._writer.close()
        self.segments.close()
        while True:
            try:
                self._readers.get_nowait().close()
            except queue.Empty:
                break
        os.close(self._lock_fd)

    # -- snapshots ----------------------------------------------------------------------------

    def get(self, snapshot_id: str) -> Snapshot | None:
        """The snapshot, or None if it does not exist or was deleted."""
        snap = self.snapshots.get(snapshot_id)
        return None if snap is None or snap.deleted else snap

    def live(self) -> list[Snapshot]:
        return [s for s in list(self.snapshots.values()) if not s.deleted]

    def save(self, snap: Snapshot) -> None:
        """Write a changed snapshot record through to the database."""
        with self._write() as db:
            db.execute(
                "UPDATE snapshots SET doc = ? WHERE id = ?", (snap.to_doc(), snap.snapshot_id)
            )

    def client_token(self, token: str) -> tuple[str, str] | None:
        """(fingerprint, response JSON) stored with a StartSnapshot ClientToken."""
        with self._reader() as db:
            row = db.execute(
                "SELECT fingerprint, response FROM client_tokens WHERE token = ?", (token,)
            ).fetchone()
        return None if row is None else (row[0], row[1])

    def create(self, snap: Snapshot, token: str | None, fingerprint: str, response: str) -> None:
        """Store a new snapshot and, atomically with it, its ClientToken's answer."""
        with self._write() as db:
            db.execute(
                "INSERT INTO snapshots (id, doc, last_activity) VALUES (?, ?, ?)",
                (snap.snapshot_id, snap.to_doc(), snap.last_activity),
            )
            if token is not None:
                db.execute(
                    "INSERT INTO client_tokens (token, fingerprint, response) VALUES (?, ?, ?)",
                    (token, fingerprint, response),
                )
            self.snapshots[snap.snapshot_id] = snap

    def chain(self, snap: Snapshot) -> list[str]:
        """The snapshot's id followed by its ancestors' ids, nearest first."""
        out = [snap.snapshot_id]
        parent = snap.parent_id
        while parent is not None:
            out.append(parent)
            parent = self.snapshots[parent].parent_id
        return out

    # -- blocks -------------------------------------------------------------------------------

    def locate(self, digest: bytes) -> tuple[Path, int] | None:
        """(segment file, offset) where this content's 512 KiB are stored."""
        with self._reader() as db:
            row = db.execute(
                "SELECT segment, offset FROM objects WHERE digest = ?", (digest,)
            ).fetchone()
        return None if row is None else (self.segments.path(row[0]), int(row[1]))

    def put_block(
        self, snap: Snapshot, index: int, data: bytes | memoryview, digest: bytes
    ) -> None:
        """Durably store one block of a pending snapshot; returns once it is committed.

        The data is always appended: whether the content is stored already is settled in
        the commit (under the write lock, so a collection cannot race it), and a copy that
        turns out to be a duplicate is punched out at once. That costs a write for repeated
        contents but saves every put a lookup.
        """
        write = _RowWrite(snap, index, digest, self.segments.append(data))
        assert write.extent is not None
        try:
            self._commit_row(write)
        finally:
            if not write.extent_used:
                # Refused, failed, or the content was stored already.
                self.segments.free(*write.extent)
            self.segments.release(write.extent[0])
        if write.error is not None:
            raise write.error
        if write.refused is not None:
            raise Refused(write.refused)
        if write.replaced is not None and write.replaced != digest:
            self._collect([write.replaced])

    def _commit_row(self, write: "_RowWrite") -> None:
        """Commit a put's row, in one transaction with every other put waiting for it.

        Group commit: whichever put gets the write lock commits all rows queued by then, so
        concurrent puts share one WAL fsync. Sealing and deletion are checked under the same
        lock: a put racing a CompleteSnapshot or a DeleteSnapshot commits before it or is
        refused.
        """
        with self._pending_lock:
            self._pending.append(write)
        with self._wlock:
            if write.done:
                return
            with self._pending_lock:
                batch, self._pending = self._pending, []
            try:
                self._commit_batch(batch)
            except Exception as exc:
                for w in batch:
                    w.error = exc
            finally:
                for w in batch:
                    w.done = True

    def _commit_batch(self, batch: list[_RowWrite]) -> None:
        # One fdatasync per segment makes the data of the whole batch durable before any
        # of its rows can commit.
        self.segments.sync({w.extent[0] for w in batch if w.extent is not None})
        live: list[_RowWrite] = []
        for w in batch:
            if w.snap.deleted or w.snap.sealed:
                w.refused = "deleted" if w.snap.deleted else "sealed"
            else:
                live.append(w)
        if not live:
            return
        db = self._writer
        now = time.time()
        by_snap: dict[str, list[_RowWrite]] = {}
        for w in live:
            by_snap.setdefault(w.snap.snapshot_id, []).append(w)
        db.execute("BEGIN IMMEDIATE")
        try:
            # What each index held before, so that contents left unreferenced are freed.
            current: dict[tuple[str, int], bytes] = {}
            for sid, writes in by_snap.items():
                indexes = sorted({w.index for w in writes})
                marks = ",".join("?" * len(indexes))
                for idx, old in db.execute(
                    f"SELECT idx, digest FROM blocks WHERE snapshot_id = ? AND idx IN ({marks})",
                    (sid, *indexes),
                ):
                    current[sid, idx] = bytes(old)
            for w in live:
                key = (w.snap.snapshot_id, w.index)
                w.replaced = current.get(key)
                current[key] = w.digest
            db.executemany(
                "INSERT OR IGNORE INTO objects (digest, segment, offset) VALUES (?, ?, ?)",
                [(w.digest, *w.extent) for w in live if w.extent is not None],
            )
            db.executemany(
                "INSERT OR REPLACE INTO blocks (snapshot_id, idx, digest) VALUES (?, ?, ?)",
                [(w.snap.snapshot_id, w.index, w.digest) for w in live],
            )
            db.executemany(
                "UPDATE snapshots SET last_activity = ? WHERE id = ?",
                [(now, sid) for sid in by_snap],
            )
            digests = sorted({w.digest for w in live})
            marks = ",".join("?" * len(digests))
            stored = {
                bytes(d): (int(seg), int(off))
                for d, seg, off in db.execute(
                    f"SELECT digest, segment, offset FROM objects WHERE digest IN ({marks})",
                    digests,
                )
            }
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        for w in live:
            w.extent_used = w.extent is not None and stored.get(w.digest) == w.extent
            w.snap.last_activity = now

    def seal(
        self,
        snap: Snapshot,
        decide: Callable[[list[tuple[int, bytes]]], tuple[str, str]],
        complete_at: float,
    ) -> bool:
        """Seal a pending snapshot; ``decide`` gets its own blocks and names the outcome.

        Atomic with respect to puts: every put either committed before (and is among the
        blocks ``decide`` sees) or is refused. False if it was already sealed.
        """
        with self._write() as db:
            if snap.sealed:
                return False
            rows = db.execute(
                "SELECT idx, digest FROM blocks WHERE snapshot_id = ? ORDER BY idx",
                (snap.snapshot_id,),
            ).fetchall()
            final, message = decide([(i, bytes(d)) for i, d in rows])
            snap.full_blocks = self._count_view(db, snap) if final == COMPLETED else 0
            snap.final_status, snap.final_message = final, message
            snap.complete_at = complete_at
            snap.sealed_at = time.time()
            db.execute("UPDATE snapshots SET doc = ? WHERE id = ?",
                       (snap.to_doc(), snap.snapshot_id))
        return True

    def lookup(self, snap: Snapshot, index: int) -> tuple[bytes, Path | None, int] | None:
        """(digest, segment file, offset) of block ``index`` in the snapshot's full view;
        the file is None if the content is not stored (a damaged data directory)."""
        with self._reader() as db:
            for sid in self.chain(snap):
                row = db.execute(
                    "SELECT b.digest, o.segment, o.offset FROM blocks b "
                    "LEFT JOIN objects o ON o.digest = b.digest "
                    "WHERE b.snapshot_id = ? AND b.idx = ?",
                    (sid, index),
                ).fetchone()
                if row is not None:
                    if row[1] is None:
                        return bytes(row[0]), None, 0
                    return bytes(row[0]), self.segments.path(row[1]), int(row[2])
        return None

    def view(self, snap: Snapshot, start: int, limit: int) -> list[tuple[int, str, bytes]]:
        """The first ``limit`` blocks at or after ``start`` of the snapshot's full view.

        Each is (index, owning snapshot id, digest); the nearest ancestor's row wins. The
        owning id identifies the block *version*: ListChangedBlocks compares these.
        """
        end = snap.block_count
        merged: dict[int, tuple[str, bytes]] = {}
        with self._reader() as db:
            for sid in self.chain(snap):
                rows = db.execute(
                    "SELECT idx, digest FROM blocks WHERE snapshot_id = ? AND idx >= ? "
                    "AND idx < ? ORDER BY idx LIMIT ?",
                    (sid, start, end, limit),
                ).fetchall()
                for i, d in rows:
                    if i not in merged:
                        merged[i] = (sid, bytes(d))
        return [(i, *merged[i]) for i in sorted(merged)[:limit]]

    def _count_view(self, db: sqlite3.Connection, snap: Snapshot) -> int:
        """How many blocks the snapshot's full view holds."""
        chain = self.chain(snap)
        marks = ",".join("?" * len(chain))
        row = db.execute(
            f"SELECT COUNT(DISTINCT idx) FROM blocks WHERE snapshot_id IN ({marks}) AND idx < ?",
            (*chain, snap.block_count),
        ).fetchone()
        return int(row[0])

    # -- deletion and garbage -----------------------------------------------------------------

    def delete(self, snap: Snapshot) -> None:
        """Delete a snapshot; its blocks stay while a live descendant inherits them."""
        snap.deleted = True
        self.save(snap)
        self.prune()

    def drop_blocks(self, snapshot_id: str) -> None:
        """Forget a snapshot's own blocks (an errored snapshot can never be read)."""
        with self._write() as db:
            digests = [
                bytes(r[0])
                for r in db.execute(
                    "SELECT DISTINCT digest FROM blocks WHERE snapshot_id = ?", (snapshot_id,)
                )
            ]
            db.execute("DELETE FROM blocks WHERE snapshot_id = ?", (snapshot_id,))
        self._collect(digests)

    def prune(self) -> None:
        """Remove deleted snapshots nothing inherits from, with their blocks."""
        with self._prune_lock:
            while True:
                needed: set[str] = set()
                for s in list(self.snapshots.values()):
                    if not s.deleted and s.parent_id is not None:
                        needed.update(self.chain(s)[1:])
                gone = [
                    s
                    for s in list(self.snapshots.values())
                    if s.deleted and s.snapshot_id not in needed
                ]
                if not gone:
                    return
                for s in gone:
                    self.drop_blocks(s.snapshot_id)
                    with self._write() as db:
                        db.execute("DELETE FROM snapshots WHERE id = ?", (s.snapshot_id,))
                    del self.snapshots[s.snapshot_id]

    def _collect(self, digests: list[bytes]) -> None:
        """Give back the space of the contents among these that no row references any more."""
        freed: list[tuple[int, int]] = []
        with self._write() as db:
            for digest in set(digests):
                if db.execute(
                    "SELECT 1 FROM blocks WHERE digest = ? LIMIT 1", (digest,)
                ).fetchone():
                    continue
                row = db.execute(
                    "DELETE FROM objects WHERE digest = ? RETURNING segment, offset", (digest,)
                ).fetchone()
                if row is not None:
                    freed.append((int(row[0]), int(row[1])))
        for segment, offset in freed:
            self.segments.free(segment, offset)
        for segment in {seg for seg, _ in freed}:
            # Under the write lock: no commit can put a block into it meanwhile.
            with self._wlock:
                if not self._writer.execute(
                    "SELECT 1 FROM objects WHERE segment = ? LIMIT 1", (segment,)
                ).fetchone():
                    self.segments.drop(segment)

    def _recover(self) -> None:
        """Start-up: forget contents no row references (a crash cut a collection short),
        then cut uncommitted tails off the segments and give back unreferenced space."""
        with self._write() as db:
            db.execute("DELETE FROM objects WHERE digest NOT IN (SELECT digest FROM blocks)")
            live: dict[int, set[int]] = {}
            for segment, offset in db.execute("SELECT segment, offset FROM objects"):
                live.setdefault(int(segment), set()).add(int(offset))
        self.segments.recover(live, max(live, default=0))

    def _import_block_files(self) -> None:
        """Move the block files of an older data directory (blocks/ab/<sha256>) into
        segments, once; a file is removed only after its copy was committed."""
        old = self.root / "blocks"
        if not old.is_dir():
            return
        with self._reader() as db:
            wanted = [
                bytes(r[0])
                for r in db.execute(
                    "SELECT DISTINCT digest FROM blocks "
                    "WHERE digest NOT IN (SELECT digest FROM objects)"
                )
            ]
        log.info("moving %d block files into segments", len(wanted))
        for digest in wanted:
            path = old / digest.hex()[:2] / digest.hex()
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                log.error("block file %s is missing; its blocks cannot be read", path)
                continue
            segment, offset = self.segments.append(data)
            try:
                self.segments.sync({segment})
                with self._write() as db:
                    db.execute(
                        "INSERT INTO objects (digest, segment, offset) VALUES (?, ?, ?)",
                        (digest, segment, offset),
                    )
            finally:
                self.segments.release(segment)
        for sub in sorted(old.iterdir()):
            if sub.is_dir():
                for f in sub.iterdir():
                    f.unlink()
                sub.rmdir()
        old.rmdir()
        _fsync_path(self.root)

    def stats(self) -> dict[str, int]:
        """Rows, stored contents, segment files and their disk use, for tests."""
        with self._reader() as db:
            rows = db.execute("SELECT COUNT(*) FROM blocks").fetchone()[0]
            objects = db.execute("SELECT COUNT(*) FROM objects").fetchone()[0]
        return {
            "rows": int(rows),
            "objects": int(objects),
            "segments": len(self.segments.on_disk()),
            "allocated": self.segments.allocated(),
            "snapshots": len(self.snapshots),
        }


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
