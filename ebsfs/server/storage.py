"""The server's durable store: SQLite (WAL) for snapshots, block rows and where each content
lives; segments (segments.py) for block records. A put is acknowledged once its record is on
disk and indexed afterwards in batches; start-up replays what the index missed. Changes are
committed before they are published in memory (docs/server.md, "Storage")."""

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import itertools
import json
import logging
import os
import queue
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ebsfs.core.blocks import BLOCKS_PER_GIB
from ebsfs.server.records import Record, encode_header, header_bytes
from ebsfs.server.segments import SEGMENT_BLOCKS, Segments, fsync_path

log = logging.getLogger(__name__)

PENDING, COMPLETED, ERROR = "pending", "completed", "error"

#: Seconds an acknowledged put may wait to be indexed (its record is on disk meanwhile).
INDEX_DELAY = 0.25
#: Index at once when this many acknowledged puts wait.
INDEX_BATCH = 1024


@dataclass(slots=True)
class _Acked:
    """An acknowledged put waiting to be indexed, and what indexing made of it."""

    snap: "Snapshot"
    index: int
    digest: bytes
    seq: int
    segment: int
    offset: int
    #: Whether this put's record became the stored copy of its content (else it is freed).
    used: bool = False
    replaced: bytes | None = None


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
    seq INTEGER NOT NULL DEFAULT 0,
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
    #: Storage tier (ModifySnapshotTier / RestoreSnapshotTier): archived, when the archive
    #: move started, and a temporary restore's start and expiry (None: none, or permanent).
    archived: bool = False
    tiering_start: float | None = None
    restore_start: float | None = None
    restore_expiry: float | None = None
    #: createVolumePermission: the account ids it is shared with, and group ``all``.
    shared_with: list[str] = field(default_factory=list)
    public: bool = False

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

    def storage_tier(self, now: float) -> str:
        """``archive`` or ``standard``; a temporary restore reads ``standard`` until it
        expires, then the snapshot is archived again."""
        if not self.archived:
            return "standard"
        if self.restore_expiry is not None and now < self.restore_expiry:
            return "standard"
        return "archive"

    def may_read(self, account_id: str) -> bool:
        """Whether that account may read it through the EBS direct APIs: its owner, or an
        account it was shared with (public snapshots cannot be read that way)."""
        return self.owner_id == account_id or account_id in self.shared_with

    def completion_time(self) -> float | None:
        return self.complete_at if self.final_status == COMPLETED else None

    def copy(self, **changes: Any) -> "Snapshot":
        """A copy to build a change on (``Store.update`` publishes it)."""
        new = dataclasses.replace(self, **changes)
        new.tags = list(new.tags)
        new.shared_with = list(new.shared_with)
        return new

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

    def __init__(
        self,
        data_dir: str | Path,
        segment_blocks: int = SEGMENT_BLOCKS,
        index_delay: float = INDEX_DELAY,
    ) -> None:
        self.root = Path(data_dir)
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        _check_data_dir(self.root)
        _make_private(self.root)
        # One server per data directory: a second one would keep its own picture of the
        # snapshots in memory. The lock goes with the process, kill -9 included.
        self._lock_fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise DataDirBusy(f"data directory {self.root} is in use by another server") from None
        self._tmp_dir = self.root / "tmp"
        self._tmp_dir.mkdir(mode=0o700, exist_ok=True)
        self.segments = Segments(self.root / "segments", segment_blocks)
        for stale in self._tmp_dir.iterdir():
            stale.unlink()
        self._db_path = self.root / "meta.sqlite3"
        # SQLite creates its files 0644 (less the umask), its -wal and -shm files with the
        # database's mode: create the database 0600 first.
        os.close(os.open(self._db_path, os.O_RDWR | os.O_CREAT, 0o600))
        # Reentrant: a transaction first indexes the acknowledged puts, which may collect.
        self._wlock = threading.RLock()
        self._prune_lock = threading.Lock()
        # Acknowledged puts not indexed yet, and snapshots being sealed: a put is added
        # (or refused) under this lock, so a seal sees it or it is refused.
        self._index_lock = threading.Lock()
        self._acked: list[_Acked] = []
        self._closing: set[str] = set()
        # Group fdatasync: puts count their writes; whoever syncs covers all counted so far.
        self._sync_lock = threading.Lock()
        self._dirty_lock = threading.Lock()
        self._dirty: set[int] = set()
        self._written = 0
        self._synced = 0
        #: Puts between the start of their write and its being durable.
        self._writing = 0
        self._index_delay = index_delay
        self._kick = threading.Event()
        self._hurry = threading.Event()
        self._stopping = False
        self._readers: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._writer = self._connect()
        self._writer.executescript(_SCHEMA)
        columns = {r[1] for r in self._writer.execute("PRAGMA table_info(blocks)")}
        if "seq" not in columns:
            self._writer.execute(
                "ALTER TABLE blocks ADD COLUMN seq INTEGER NOT NULL DEFAULT 0"
            )
        self.snapshots: dict[str, Snapshot] = {}
        for sid, doc, active in self._writer.execute(
            "SELECT id, doc, last_activity FROM snapshots"
        ):
            self.snapshots[sid] = Snapshot.from_doc(doc)
            self.snapshots[sid].last_activity = active
        self.token_key = self._load_token_key()
        self._seq = itertools.count(self._recover() + 1)
        self._import_block_files()
        self.prune()  # finishes a deletion a crash interrupted
        self._indexer = threading.Thread(target=self._index_loop, name="indexer", daemon=True)
        self._indexer.start()

    # -- plumbing ---------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self._db_path, timeout=30, isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL: the WAL is fsynced at every commit, so what was committed survives power
        # loss as well as kill -9 (duplicate records are punched only after that).
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
    def _write(self, index_first: bool = True) -> Iterator[sqlite3.Connection]:
        with self._wlock:
            if index_first:
                self._index_pending()
            with _transaction(self._writer) as db:
                yield db

    def _load_token_key(self) -> bytes:
        path = self.root / "token.key"
        if not path.exists():
            tmp = self._tmp_dir / "token.key"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, os.urandom(32))
            finally:
                os.close(fd)
            fsync_path(tmp)
            os.replace(tmp, path)
            fsync_path(self.root)
        return path.read_bytes()

    def close(self, index: bool = True) -> None:
        """Stop; ``index=False`` leaves acknowledged puts to the next start's recovery (as
        a crash would)."""
        self._stopping = True
        self._kick.set()
        self._hurry.set()
        self._indexer.join()
        with self._wlock:
            if index:
                self._index_pending()
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

    def update(self, snaps: Sequence[Snapshot], change: Callable[[Snapshot], None]) -> None:
        """Change snapshots in one transaction: ``change`` edits a copy of each, the copies
        are committed, and only then published into the in-memory records; on any error
        nothing changes. Copying, committing and publishing all hold the write lock, so a
        change never writes back a snapshot as it was before another one (a seal)."""
        with self._wlock:
            new = {}
            for snap in snaps:
                new[snap.snapshot_id] = copy = snap.copy()
                change(copy)
            with self._write() as db:
                db.executemany(
                    "UPDATE snapshots SET doc = ? WHERE id = ?",
                    [(c.to_doc(), sid) for sid, c in new.items()],
                )
            with self._index_lock:
                for snap in snaps:
                    _publish(snap, new[snap.snapshot_id])

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
        """Durably store one block of a pending snapshot; returns once it is on disk.

        The block is always appended as a record naming this put; whether the content is
        stored already is settled when the put is indexed, and a duplicate copy is punched
        out then. That costs a write for repeated contents but saves every put a lookup.
        """
        seq = next(self._seq)
        header = header_bytes(snap.snapshot_id, index, seq, digest)
        # A put with no other under way writes its record synchronously (RWF_DSYNC): one
        # system call and one wake-up less than a write and an fdatasync, and there is no
        # one to share a sync with. Concurrent puts write plainly and share group syncs.
        with self._dirty_lock:
            self._writing += 1
            alone = self._writing == 1
        try:
            segment, offset = self.segments.append(header, data, durable=alone)
            if not alone:
                try:
                    self._sync(segment)
                except BaseException:
                    with contextlib.suppress(OSError):
                        self.segments.discard(segment, offset)
                    self.segments.release(segment)
                    raise
        finally:
            with self._dirty_lock:
                self._writing -= 1
        with self._index_lock:
            why = self._refusal(snap)
            if why is None:
                self._acked.append(_Acked(snap, index, digest, seq, segment, offset))
                snap.last_activity = time.time()
                waiting = len(self._acked)
        if why is None:
            if not self._kick.is_set():
                self._kick.set()
            if waiting >= INDEX_BATCH:
                self._hurry.set()
            return
        # The record is on disk: make its hole durable too, or a restart would find it.
        try:
            self.segments.discard(segment, offset)
        finally:
            self.segments.release(segment)
        raise Refused(why)

    def _refusal(self, snap: Snapshot) -> str | None:
        if snap.deleted or snap.blocks_dropped:
            return "deleted"
        if snap.sealed or snap.snapshot_id in self._closing:
            return "sealed"
        return None

    def _sync(self, segment: int) -> None:
        """Return once this thread's append to ``segment`` is durable. Group commit: one
        fdatasync per segment covers every append counted before it started."""
        with self._dirty_lock:
            self._written += 1
            ticket = self._written
            self._dirty.add(segment)
        with self._sync_lock:
            if self._synced >= ticket:
                return
            with self._dirty_lock:
                target, segments = self._written, self._dirty
                self._dirty = set()
            try:
                self.segments.sync(segments)
            except BaseException:
                with self._dirty_lock:
                    self._dirty |= segments
                raise
            self._synced = target

    def flush(self) -> None:
        """Index every acknowledged put now."""
        with self._wlock:
            self._index_pending()

    def _index_loop(self) -> None:
        while not self._stopping:
            self._kick.wait()
            # Let a batch gather: one transaction (and one WAL fsync) for all of it.
            self._hurry.wait(self._index_delay)
            self._kick.clear()
            self._hurry.clear()
            if self._stopping:
                return
            try:
                self.flush()
            except (OSError, sqlite3.OperationalError) as exc:
                # A full disk, typically: one line a second, not a traceback.
                log.error("indexing %d acknowledged puts failed (%s); their records are on "
                          "disk; retrying in a second", len(self._acked), exc)
                time.sleep(1.0)
                self._kick.set()
            except Exception:
                log.exception("indexing acknowledged blocks failed; retrying in a second")
                time.sleep(1.0)
                self._kick.set()

    def _index_pending(self) -> None:
        """Index the acknowledged puts (under the write lock). Their rows commit in one
        transaction; copies of contents already stored are freed only after it."""
        with self._index_lock:
            batch, self._acked = self._acked, []
        if not batch:
            return
        try:
            self._index_batch(batch)
        except BaseException:
            with self._index_lock:
                self._acked[:0] = batch
            raise
        for w in batch:
            if not w.used:
                self.segments.free(w.segment, w.offset)
            self.segments.release(w.segment)
        replaced = [w.replaced for w in batch if w.replaced is not None and w.replaced != w.digest]
        if replaced:
            self._collect(replaced)

    def _index_batch(self, batch: list[_Acked]) -> None:
        db = self._writer
        by_snap: dict[str, list[_Acked]] = {}
        for w in batch:
            by_snap.setdefault(w.snap.snapshot_id, []).append(w)
        with _transaction(db):
            # What each index held before, so that contents left unreferenced are freed.
            current: dict[tuple[str, int], bytes] = {}
            for sid, writes in by_snap.items():
                indexes = sorted({w.index for w in writes})
                for chunk in range(0, len(indexes), 500):
                    part = indexes[chunk:chunk + 500]
                    marks = ",".join("?" * len(part))
                    for idx, old in db.execute(
                        "SELECT idx, digest FROM blocks WHERE snapshot_id = ? "
                        f"AND idx IN ({marks})",
                        (sid, *part),
                    ):
                        current[sid, idx] = bytes(old)
            # In acknowledgement order: the later put of an index wins.
            for w in sorted(batch, key=lambda w: w.seq):
                key = (w.snap.snapshot_id, w.index)
                w.replaced = current.get(key)
                current[key] = w.digest
            db.executemany(
                "INSERT OR IGNORE INTO objects (digest, segment, offset) VALUES (?, ?, ?)",
                [(w.digest, w.segment, w.offset) for w in batch],
            )
            db.executemany(
                "INSERT OR REPLACE INTO blocks (snapshot_id, idx, digest, seq) "
                "VALUES (?, ?, ?, ?)",
                [(w.snap.snapshot_id, w.index, w.digest, w.seq)
                 for w in sorted(batch, key=lambda w: w.seq)],
            )
            db.executemany(
                "UPDATE snapshots SET last_activity = ? WHERE id = ?",
                [(writes[0].snap.last_activity, sid) for sid, writes in by_snap.items()],
            )
            stored: dict[bytes, tuple[int, int]] = {}
            digests = sorted({w.digest for w in batch})
            for chunk in range(0, len(digests), 500):
                some = digests[chunk:chunk + 500]
                marks = ",".join("?" * len(some))
                for d, seg, off in db.execute(
                    f"SELECT digest, segment, offset FROM objects WHERE digest IN ({marks})",
                    some,
                ):
                    stored[bytes(d)] = (int(seg), int(off))
        for w in batch:
            w.used = stored.get(w.digest) == (w.segment, w.offset)

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
        with self._wlock:
            with self._index_lock:
                if snap.sealed or snap.snapshot_id in self._closing:
                    return False
                # From here on puts to it are refused; those acknowledged before are
                # indexed by the transaction below.
                self._closing.add(snap.snapshot_id)
            try:
                self._seal(snap, decide, complete_at)
            finally:
                with self._index_lock:
                    self._closing.discard(snap.snapshot_id)
        return True

    def _seal(
        self,
        snap: Snapshot,
        decide: Callable[[list[tuple[int, bytes]]], tuple[str, str]],
        complete_at: float,
    ) -> None:
        new = snap.copy()
        with self._write() as db:
            rows = db.execute(
                "SELECT idx, digest FROM blocks WHERE snapshot_id = ? ORDER BY idx",
                (snap.snapshot_id,),
            ).fetchall()
            final, message = decide([(i, bytes(d)) for i, d in rows])
            new.full_blocks = self._count_view(db, snap) if final == COMPLETED else 0
            new.final_status, new.final_message = final, message
            new.complete_at = complete_at
            new.sealed_at = time.time()
            db.execute("UPDATE snapshots SET doc = ? WHERE id = ?",
                       (new.to_doc(), snap.snapshot_id))
        # Puts stay refused meanwhile: the seal holds the snapshot in ``_closing``.
        with self._index_lock:
            _publish(snap, new)

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
        self.update([snap], _mark_deleted)
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
        with self._write(index_first=False) as db:
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

    def _recover(self) -> int:
        """Start-up: index the acknowledged puts that were not indexed yet (their records),
        forget contents no row references (a crash cut a collection short), then cut
        unindexed tails off the segments and give back unreferenced space. Returns the
        highest sequence number in use."""
        with self._write(index_first=False) as db:
            live = self._live(db)
            highest = int(db.execute("SELECT COALESCE(MAX(seq), 0) FROM blocks").fetchone()[0])
            found = sorted(self.segments.scan(live), key=lambda r: r[2].seq)
            replayed = 0
            # A replayed put was activity the index never saw: its segment's last write is
            # when it happened at the latest (a Timeout counts from it).
            active: dict[str, float] = {}
            for segment, offset, record in found:
                highest = max(highest, record.seq)
                if self._replay(db, segment, offset, record):
                    replayed += 1
                    written = self.segments.path(segment).stat().st_mtime
                    active[record.snapshot_id] = max(
                        written, active.get(record.snapshot_id, 0.0)
                    )
            if found:
                log.info("found %d unindexed records in the segments; indexed %d",
                         len(found), replayed)
            for sid, when in active.items():
                snap = self.snapshots[sid]
                if when > snap.last_activity:
                    db.execute("UPDATE snapshots SET last_activity = ? WHERE id = ?",
                               (when, sid))
                    snap.last_activity = when
            db.execute("DELETE FROM objects WHERE digest NOT IN (SELECT digest FROM blocks)")
            live = self._live(db)
        self.segments.recover(live, max(live, default=0))
        return highest

    @staticmethod
    def _live(db: sqlite3.Connection) -> dict[int, set[int]]:
        live: dict[int, set[int]] = {}
        for segment, offset in db.execute("SELECT segment, offset FROM objects"):
            live.setdefault(int(segment), set()).add(int(offset))
        return live

    def _replay(self, db: sqlite3.Connection, segment: int, offset: int, record: Record) -> bool:
        """Index the put a record found at start-up describes, if it counts: its snapshot
        still takes puts (a record of a sealed or deleted one is a refused put), its data
        is whole, and no later put of the same index was indexed."""
        snap = self.snapshots.get(record.snapshot_id)
        if snap is None or self._refusal(snap) is not None or record.index >= snap.block_count:
            return False
        row = db.execute(
            "SELECT seq FROM blocks WHERE snapshot_id = ? AND idx = ?",
            (record.snapshot_id, record.index),
        ).fetchone()
        if row is not None and int(row[0]) >= record.seq:
            return False
        if hashlib.sha256(self.segments.read(segment, offset)).digest() != record.digest:
            log.info("record at %s:%d is torn; dropping it", segment, offset)
            return False
        db.execute(
            "INSERT OR IGNORE INTO objects (digest, segment, offset) VALUES (?, ?, ?)",
            (record.digest, segment, offset),
        )
        db.execute(
            "INSERT OR REPLACE INTO blocks (snapshot_id, idx, digest, seq) VALUES (?, ?, ?, ?)",
            (record.snapshot_id, record.index, record.digest, record.seq),
        )
        return True

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
            # Not a put of any snapshot: a record header that recovery never replays.
            header = encode_header(Record("", 0, 0, digest))
            segment, offset = self.segments.append(header, data)
            try:
                self.segments.sync({segment})
                with self._write(index_first=False) as db:
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
        fsync_path(self.root)

    def stats(self) -> dict[str, int]:
        """Rows, stored contents, segment files and their disk use, for tests."""
        self.flush()
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


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction; rolled back on any error, its COMMIT's included (SQLite may
    leave a transaction open after a COMMIT that failed, e.g. on a full disk)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
        raise


def _publish(snap: Snapshot, new: Snapshot) -> None:
    """Make ``snap`` (the record everyone holds) say what ``new`` says, once it is stored.
    ``last_activity`` stays: puts move it on in memory, and the index writes it."""
    fresh = {k: v for k, v in new.__dict__.items() if k != "last_activity"}
    # One dict update: a reader never sees half of a change (sealed_at without complete_at).
    snap.__dict__.update(fresh)


#: What a data directory holds (``blocks``: the oldest layout); ``lost+found`` is allowed
#: too, for a data directory that is a file system of its own.
_DATA_DIR_NAMES = frozenset({
    "lock", "tmp", "segments", "token.key", "blocks",
    "meta.sqlite3", "meta.sqlite3-wal", "meta.sqlite3-shm", "meta.sqlite3-journal",
})


def _check_data_dir(root: Path) -> None:
    """Refuse a data directory another user owns (they could replace its files: token.key,
    the database, a symlink for the lock), and an existing directory that is not a data
    directory (a home, /etc through a symlink): the server would chmod, empty and add
    files among someone else's."""
    owner, me = root.stat().st_uid, os.geteuid()
    if owner != me:
        raise PermissionError(
            errno.EPERM,
            f"data directory {root} is owned by uid {owner}, not by this user (uid {me}): "
            "that user could replace its files; chown it or choose another",
        )
    if (root / "meta.sqlite3").exists():
        return
    others = sorted(set(os.listdir(root)) - _DATA_DIR_NAMES - {"lost+found"})
    if others:
        shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise OSError(
            errno.ENOTEMPTY,
            f"{root} is not an ebsfs data directory (it holds {shown}); give a new or "
            "empty directory",
        )


def _make_private(root: Path) -> None:
    """Close a data directory an older server (or an umask) left open to other users:
    directories 0700, files 0600; only the server's own. The blocks of the oldest layout
    are left to their move."""
    for top, dirs, files in os.walk(root):
        if Path(top) == root:
            dirs[:] = [d for d in dirs if d in ("segments", "tmp")]
            files = [f for f in files if f in _DATA_DIR_NAMES]
        for name, private in [(top, 0o700)] + [(os.path.join(top, f), 0o600) for f in files]:
            try:
                mode = os.lstat(name).st_mode
            except FileNotFoundError:
                continue
            if stat.S_ISLNK(mode) or not stat.S_IMODE(mode) & 0o077:
                continue
            log.info("%s was open to other users (%o); making it %o", name,
                     stat.S_IMODE(mode), private)
            os.chmod(name, private)


def _mark_deleted(snap: Snapshot) -> None:
    snap.deleted = True
