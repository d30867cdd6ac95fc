"""The ``new/`` directory: drafts of new snapshots, their rules and their life cycle.

A file created in ``new/`` is a *draft*. Its size is declared by ``truncate`` (rounded up to a
whole GiB, since snapshots are GiB-sized), inherited from a parent set with the
``user.ebsfs.parent`` attribute, or taken from the data: the end of the highest write, rounded
up to a GiB at the first ``fsync`` or ``close``. Writes always go to the spool first; StartSnapshot
is called in the background after a write once the size is known, and awaited by ``fsync``,
``close`` and sealing (so an endpoint that is down never fails a write), with the Name tag set
to the file's name, the parent, description and tags given as attributes before, and a
ClientToken kept in the spool, so a retried StartSnapshot, even after a crash, finds the same
snapshot.

States (``user.ebsfs.state``)::

    draft ──first write with a known size──▶ pending ──seal──▶ sealing ──▶ completed (leaves new/)
      │                                         ▲                  │
      └──────────────seal (fixes size)──────────┘                  └──▶ error (spool kept;
                                                                         seal again re-uploads)

A failure while sealing that leaves the snapshot pending (the network, say) puts the draft back
to ``pending`` with ``user.ebsfs.state_message`` saying why; sealing again resumes. If AWS moves
the snapshot to ``error``, sealing again starts a fresh snapshot and stores everything again
from the spool.

Errors (errno at the FUSE edge): a write or size past the fixed size or over 64 TiB is
FileTooLargeError; shrinking a started or written draft is NotPermittedError; a bad attribute
value is InvalidValueError; an attribute set after the first write, or sealing twice, is
NotPermittedError; sealing a draft nothing was written to is InvalidValueError; a write to a
draft that is being sealed, completed or failed is ReadOnlyError.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import logging
import math
import os
import re
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import trio

from ebsfs.core.blocks import BLOCK_SIZE, MAX_VOLUME_BYTES, SNAPSHOT_ID_RE, XATTR_PREFIX, BlockIndex
from ebsfs.core.errors import (
    ApiError,
    EbsfsError,
    FileTooLargeError,
    InvalidValueError,
    NoSpaceError,
    NotFoundError,
    NotPermittedError,
    ReadOnlyError,
    SnapshotFailedError,
)
from ebsfs.read.remote import Calls
from ebsfs.write.parent import ParentReaderFactory
from ebsfs.write.seal import SealTuning, complete_and_wait
from ebsfs.write.sink import PutTuning, RemoteWriter, retrying
from ebsfs.write.spool import Spool
from ebsfs.write.spooled import ThreadPuts
from ebsfs.write.spoollock import SpoolLock
from ebsfs.write.writeback import WriteBack, WriteTuning

if TYPE_CHECKING:
    from ebsfs.fs.newdir import NewDirectory
    from ebsfs.write.upload import PutProcess

log = logging.getLogger(__name__)

T = TypeVar("T")
GIB = 1 << 30
#: StartSnapshot Timeout: a draft may sit idle this long (a filesystem being built by hand).
TIMEOUT_MINUTES = 1440
#: Seconds between two background StartSnapshot attempts of a draft after one failed.
START_RETRY = 30.0
#: Environment variable of a test-only fault: "checksum" or "count" makes CompleteSnapshot
#: carry a wrong aggregate or ChangedBlocksCount, so the error path can be tested end to end.
SEAL_FAULT_ENV = "EBSFS_TEST_SEAL_FAULT"

DRAFT, PENDING, SEALING, COMPLETED, ERROR = "draft", "pending", "sealing", "completed", "error"
_MAX_TAGS = 50


class DraftApi(Protocol):
    """The part of ``ebsfs.aws.api.Api`` the drafts use."""

    def start_snapshot(
        self,
        volume_size: int,
        *,
        parent: str | None = None,
        description: str | None = None,
        tags: dict[str, str] | None = None,
        client_token: str,
        timeout_minutes: int | None = None,
        encrypted: bool = False,
        kms_key_arn: str | None = None,
    ) -> Any: ...

    def put_block(
        self, snapshot_id: str, index: int, data: bytes | memoryview, checksum_b64: str
    ) -> None: ...

    def complete_snapshot(
        self, snapshot_id: str, changed_blocks_count: int, aggregate_b64: str | None
    ) -> str: ...

    def describe_snapshot(self, snapshot_id: str) -> Any: ...

    def delete_snapshot(self, snapshot_id: str) -> None: ...



def _gib_ceil(size: int) -> int:
    return -(-size // GIB) * GIB


def _new_token() -> str:
    return os.urandom(16).hex()


class SnapshotDraft:
    """One file in ``new/`` (implements ``ebsfs.fs.newdir.Draft``)."""

    def __init__(self, owner: Drafts, spool: Spool) -> None:
        self.owner = owner
        self.spool = spool
        self.m: dict[str, Any] = dict(spool.manifest)
        self.name: str = self.m["name"]
        self.counters: Counter[str] = Counter()
        parent = self.m.get("parent") or None
        if self.m.get("snapshot_id") and "encrypted" not in self.m:
            # Started by an earlier version, which skipped zero blocks whatever the snapshot's
            # encryption: it may be encrypted (see ``_encrypted``), so every written block it
            # did not store is stored now.
            spool.dirty |= set(spool.coverage) - set(spool.stored)
        self.wb = WriteBack(
            spool,
            owner.parent_reader(parent, self.m["parent_gib"]) if parent else None,
            encrypted=self._encrypted(),
            tuning=owner.tuning,
            counters=self.counters,
        )
        self.progress = ""
        self._start_lock = trio.Lock()
        #: The background StartSnapshot under way (see ``_start_soon``), and when a failed
        #: one may be tried again.
        self._start_scope: trio.CancelScope | None = None
        self._start_retry_at = -math.inf
        #: Removed (``rm``): no snapshot may be started for it any more.
        self._gone = False
        self._wb_scope = trio.CancelScope()
        self._seal_scope: trio.CancelScope | None = None
        self._mtime_ns = int(self.m.get("mtime_ns") or time.time_ns())
        owner.nursery.start_soon(self._run_writeback)

    async def _run_writeback(self) -> None:
        with self._wb_scope:
            await self.wb.run()

    # ---- small accessors ---------------------------------------------------------------------

    @property
    def state(self) -> str:
        return str(self.m["state"])

    @property
    def snapshot_id(self) -> str | None:
        return self.m.get("snapshot_id") or None

    def _encrypted(self) -> bool:
        """Whether the snapshot is encrypted, as StartSnapshot answered. A started snapshot
        whose manifest does not say (written by an earlier version) counts as encrypted:
        storing zero blocks is only slower, skipping them over an encrypted hole is wrong."""
        if "encrypted" in self.m:
            return bool(self.m["encrypted"])
        return bool(self.m.get("snapshot_id"))

    def _save(self) -> None:
        self.m["mtime_ns"] = self._mtime_ns
        self.spool.save_manifest(self.m)

    def _save_or_undo(self, before: dict[str, Any]) -> None:
        """Save a change asked for by a request; if the manifest cannot be saved (a full
        spool disk), put ``before`` back and answer ENOSPC: the change was not made."""
        try:
            self._save()
        except OSError as exc:
            self.m = before
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise NoSpaceError(f"{self.name}: the spool's disk is full") from None
            raise EbsfsError(f"{self.name}: spool: {exc.strerror or exc}") from None

    def _touch(self) -> None:
        self._mtime_ns = time.time_ns()

    def size(self) -> int:
        declared = self.m.get("size")
        return int(declared) if declared is not None else self.spool.max_end

    def mode(self) -> int:
        # Owner only, like the spool (0700): disk images may hold secrets, and allow_other
        # lets every user of the machine into the mount.
        return 0o600 if self.state in (DRAFT, PENDING) else 0o400

    def mtime_ns(self) -> int:
        return self._mtime_ns

    def stats(self) -> dict[str, int]:
        return self.wb.stats()

    def _writable(self) -> None:
        if self.state not in (DRAFT, PENDING):
            raise ReadOnlyError(f"{self.name} is {self.state}: it can no longer be written")

    # ---- data --------------------------------------------------------------------------------

    async def read(self, offset: int, length: int) -> bytes:
        if self.state == COMPLETED:
            # Its spool is gone; the data is read as MOUNTPOINT/snap-ID now.
            raise NotFoundError(f"{self.name} was sealed as {self.snapshot_id}")
        size = self.size()
        end = min(offset + length, size)
        if offset >= end:
            return b""
        parts = []
        pos = offset
        while pos < end:
            index = pos // BLOCK_SIZE
            within = pos - index * BLOCK_SIZE
            n = min(end - pos, BLOCK_SIZE - within)
            block = await self.wb.read_block(BlockIndex(index))
            parts.append(bytes(n) if block is None else block[within : within + n])
            pos += n
        return b"".join(parts)

    async def write(self, offset: int, data: bytes) -> int:
        self._writable()
        end = offset + len(data)
        if end > MAX_VOLUME_BYTES:
            raise FileTooLargeError(f"{self.name}: a snapshot holds at most 64 TiB")
        declared = self.m.get("size")
        if declared is not None and end > declared:
            raise FileTooLargeError(
                f"{self.name}: write ends at {end}, past the size of {declared} bytes"
            )
        if not data:
            return 0
        first = not self.m.get("written")
        if first:
            # Recorded before the data: a crash between the two must not bring back data
            # with its attributes still settable (a parent set under written blocks).
            before = copy.deepcopy(self.m)
            self.m["written"] = True
            self._save_or_undo(before)
        try:
            await self.wb.write(offset, data)
        except OSError as exc:
            log.error("%s: the spool %s cannot keep a write: %s", self.name,
                      self.spool.directory, exc)
            if first and not self.spool.coverage and not self.spool.max_end:
                # Nothing was accepted: the draft is as unwritten as before.
                self.m["written"] = False
                with contextlib.suppress(OSError):
                    self._save()
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise NoSpaceError(f"{self.name}: the spool's disk is full") from None
            raise EbsfsError(f"{self.name}: spool: {exc.strerror or exc}") from None
        self._touch()
        if declared is not None and not self.snapshot_id:
            self._start_soon()
        return len(data)

    def kept(self) -> None:
        """The keep writing it is done: it is a draft like any other from now on."""
        if self.m.pop("kept_from", None) is not None:
            self._save()
        if self.m.get("size") is not None and self.m.get("written") and not self.snapshot_id:
            self._start_soon()

    def _start_soon(self) -> None:
        """Start the snapshot in the background, so uploads can begin while writes go on.

        The writes never wait for it: they are in the spool already, and an endpoint that is
        down only delays the StartSnapshot (tried again here at most every
        ``START_RETRY`` seconds, and by every fsync, close and seal). Not while a keep
        writes it: a restart must find nothing started for a keep cut short."""
        if self.m.get("kept_from"):
            return
        if self._start_scope is not None or trio.current_time() < self._start_retry_at:
            return
        self._start_scope = trio.CancelScope()
        self.owner.nursery.start_soon(self._start_in_background, self._start_scope)

    async def _start_in_background(self, scope: trio.CancelScope) -> None:
        with scope:
            try:
                await self._start()
            except (EbsfsError, OSError) as exc:
                self._start_retry_at = trio.current_time() + START_RETRY
                # Shown in user.ebsfs.state_message (not saved: it is tried again anyway).
                self.m["state_message"] = f"not started yet: {exc}"
                log.warning("%s: snapshot not started yet, the writes wait in the spool: %s",
                            self.name, exc)
            except Exception:  # a bug here must not take the mount down
                self._start_retry_at = trio.current_time() + START_RETRY
                log.exception("%s: starting the snapshot failed unexpectedly", self.name)
        self._start_scope = None

    async def truncate(self, size: int) -> None:
        if size > MAX_VOLUME_BYTES:
            raise FileTooLargeError(f"{self.name}: a snapshot holds at most 64 TiB")
        self._writable()
        declared = self.m.get("size")
        current = self.size()
        if size == current:
            return
        if self.snapshot_id or (self.m.get("written") and declared is not None):
            if size > current:
                raise FileTooLargeError(f"{self.name}: the size is fixed at {current} bytes")
            raise NotPermittedError(f"{self.name}: a started snapshot cannot shrink")
        if self.m.get("written"):
            if size < current:
                raise NotPermittedError(f"{self.name}: cannot shrink below what was written")
        elif size == 0:
            # O_TRUNC of a pre-sized, unwritten file (plain dd): the declared size stays.
            return
        new = _gib_ceil(size)
        if self.m.get("parent") and new < self.m["parent_gib"] * GIB:
            raise NotPermittedError(f"{self.name}: cannot be smaller than its parent")
        before = copy.deepcopy(self.m)
        self.m["size"] = new
        self.m["client_token"] = _new_token()
        self._touch()
        self._save_or_undo(before)

    async def fsync(self) -> None:
        if self.state in (DRAFT, PENDING):
            await self._fix_size()
        if self.snapshot_id and self.state in (PENDING, SEALING):
            await self.wb.flush()
        else:
            self.spool.commit_records()
            await trio.to_thread.run_sync(self.spool.sync)

    async def release(self) -> None:
        if self.state in (DRAFT, PENDING):
            try:
                await self._fix_size()
            except EbsfsError as exc:
                # The data is safe in the spool; fsync or sealing will try again.
                log.warning("%s: could not start the snapshot at close: %s", self.name, exc)

    async def _fix_size(self) -> None:
        """Flow B: the first fsync or close fixes the size from the data and starts."""
        if self.m.get("size") is None and self.m.get("written"):
            self.m["size"] = _gib_ceil(max(self.spool.max_end, 1))
            self.m["client_token"] = _new_token()
            self._save()
        if self.m.get("kept_from"):
            return  # a keep writes it: started once that is done (``kept``)
        if self.m.get("size") is not None and self.m.get("written") and not self.snapshot_id:
            await self._start()

    async def _start(self) -> None:
        async with self._start_lock:
            if self.snapshot_id or self._gone:
                return
            owner = self.owner
            if not self.m.get("client_token"):
                self.m["client_token"] = _new_token()
                self._save()
            tags = {"Name": self.name, **self.m.get("tags", {})}
            kwargs: dict[str, Any] = dict(
                parent=self.m.get("parent") or None,
                description=self.m.get("description") or None,
                tags=tags,
                timeout_minutes=TIMEOUT_MINUTES,
            )
            if self.m.get("encrypt") and not self.m.get("parent"):
                # With a parent AWS refuses Encrypted: the child takes the parent's encryption.
                kwargs["encrypted"] = True
                if self.m.get("kms_key_arn"):
                    kwargs["kms_key_arn"] = self.m["kms_key_arn"]
            gib = int(self.m["size"]) // GIB
            try:
                # The ClientToken makes a repeated StartSnapshot return the same snapshot.
                info = await retrying(
                    owner.call,
                    partial(
                        owner.api.start_snapshot, gib, client_token=self.m["client_token"], **kwargs
                    ),
                )
            except ApiError as exc:
                if exc.code != "ConflictException":
                    raise
                # The token was used with other settings (before a crash): take a new one.
                self.m["client_token"] = _new_token()
                self._save()
                info = await owner.call(
                    partial(
                        owner.api.start_snapshot, gib, client_token=self.m["client_token"], **kwargs
                    )
                )
            self.m["snapshot_id"] = info.snapshot_id
            self.m["started_at"] = time.time()
            # What AWS did, not what was asked (encryption by default, an encrypted parent):
            # it decides whether zero blocks may be skipped, so it is kept across remounts.
            self.m["encrypted"] = bool(getattr(info, "encrypted", False)) or bool(
                self.m.get("parent_encrypted"))
            self.wb.encrypted = self.m["encrypted"]
            if self.state == DRAFT:
                self.m["state"] = PENDING
            if str(self.m.get("state_message", "")).startswith("not started yet"):
                self.m["state_message"] = ""
            self._save()
            log.info("%s: started snapshot %s (%d GiB)", self.name, info.snapshot_id, gib)
            self._attach()

    def _attach(self) -> None:
        snapshot_id = self.snapshot_id
        assert snapshot_id is not None
        age = max(0.0, time.time() - float(self.m.get("started_at") or time.time()))
        self.wb.attach(
            RemoteWriter(
                self.owner.put_api or ThreadPuts(self.owner.api),
                snapshot_id,
                self.owner.limiter,
                started_at=trio.current_time() - age,
                counters=self.counters,
                tuning=self.owner.put_tuning,
            )
        )

    # ---- attributes --------------------------------------------------------------------------

    def xattrs(self) -> dict[str, bytes]:
        out: dict[str, str] = {"state": self.state}
        if self.snapshot_id:
            out["snapshot_id"] = self.snapshot_id
        if self.m.get("size") is not None:
            out["volume_size"] = str(int(self.m["size"]) // GIB)
        if self.m.get("description"):
            out["description"] = self.m["description"]
        if self.m.get("parent"):
            out["parent"] = self.m["parent"]
        if "encrypted" in self.m or self.m.get("encrypt"):
            out["encrypted"] = "true" if self.m.get("encrypted", self.m.get("encrypt")) else "false"
        if self.m.get("kms_key_arn"):
            out["kms_key_arn"] = self.m["kms_key_arn"]
        if self.m.get("state_message"):
            out["state_message"] = self.m["state_message"]
        if self.state == SEALING and self.progress:
            out["progress"] = self.progress
        out["dirty_blocks"] = str(self.wb.dirty_blocks)
        out["stored_blocks"] = str(self.wb.stored_blocks)
        for key, value in {"Name": self.name, **self.m.get("tags", {})}.items():
            out[f"tag.{key}"] = value
        return {XATTR_PREFIX + k: v.encode() for k, v in out.items()}

    async def setxattr(self, name: str, value: bytes) -> None:
        if not name.startswith(XATTR_PREFIX):
            raise NotPermittedError(f"{self.name}: only user.ebsfs.* attributes can be set")
        key = name[len(XATTR_PREFIX) :]
        if key not in ("parent", "description", "encrypted", "kms_key_arn") and not (
            key.startswith("tag.")
        ):
            raise NotPermittedError(f"{self.name}: {name} cannot be set")
        if self.state != DRAFT or self.m.get("written"):
            raise NotPermittedError(f"{self.name}: {name} can only be set before the first write")
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidValueError(f"{name}: not UTF-8 text") from None
        before, parent_reader = copy.deepcopy(self.m), self.wb.parent
        if key == "parent":
            await self._set_parent(text.strip())
        elif key == "encrypted":
            self._set_encrypted(text.strip().lower())
        elif key == "kms_key_arn":
            arn = text.strip()
            if not re.match(r"^arn:aws[\w-]*:kms:[^:]*:\d*:\S+$", arn) or len(arn) > 2048:
                raise InvalidValueError(f"user.ebsfs.kms_key_arn: {arn!r} is not a KMS key ARN")
            self._check_encryption(True)
            self.m["kms_key_arn"] = arn
            self.m["encrypt"] = True
        elif key == "description":
            if not text or len(text) > 255:
                raise InvalidValueError("user.ebsfs.description: 1 to 255 characters")
            self.m["description"] = text
        else:
            self._set_tag(key[len("tag.") :], text)
        self.m["client_token"] = _new_token()
        self._touch()
        try:
            self._save_or_undo(before)
        except EbsfsError:
            self.wb.parent = parent_reader
            raise

    def _set_tag(self, key: str, value: str) -> None:
        tags = dict(self.m.get("tags", {}))
        if not key or len(key) > 127 or key.lower().startswith("aws:"):
            raise InvalidValueError(f"tag {key!r}: keys have 1 to 127 characters, not 'aws:...'")
        if key == "Name":
            raise InvalidValueError("the Name tag is the file's name: rename the file instead")
        if len(value) > 255:
            raise InvalidValueError(f"tag {key}: values have at most 255 characters")
        tags[key] = value
        if len(tags) + 1 > _MAX_TAGS:
            raise InvalidValueError(f"at most {_MAX_TAGS} tags, Name included")
        self.m["tags"] = tags

    def _set_encrypted(self, text: str) -> None:
        if text in ("1", "true", "yes"):
            wanted = True
        elif text in ("0", "false", "no"):
            wanted = False
        else:
            raise InvalidValueError(f"user.ebsfs.encrypted: {text!r} is not 1/true or 0/false")
        self._check_encryption(wanted)
        self.m["encrypt"] = wanted
        if not wanted:
            self.m.pop("kms_key_arn", None)

    def _check_encryption(self, wanted: bool) -> None:
        """A child takes its parent's encryption (AWS refuses Encrypted with a parent)."""
        if self.m.get("parent") and wanted != bool(self.m.get("parent_encrypted")):
            state = "encrypted" if self.m.get("parent_encrypted") else "not encrypted"
            raise InvalidValueError(
                f"{self.name}: its parent {self.m['parent']} is {state}; a child snapshot "
                "takes its parent's encryption")

    async def _set_parent(self, parent: str) -> None:
        if not SNAPSHOT_ID_RE.match(parent):
            raise InvalidValueError(f"user.ebsfs.parent: {parent!r} is not a snapshot id")
        try:
            info = await self.owner.call(partial(self.owner.api.describe_snapshot, parent))
        except NotFoundError:
            raise InvalidValueError(f"user.ebsfs.parent: no snapshot {parent}") from None
        if info.state != "completed":
            raise InvalidValueError(f"user.ebsfs.parent: {parent} is {info.state}, not completed")
        gib = int(info.volume_size)
        parent_encrypted = bool(getattr(info, "encrypted", False))
        if self.m.get("encrypt") and not parent_encrypted:
            raise InvalidValueError(
                f"user.ebsfs.parent: {parent} is not encrypted, and {self.name} is to be")
        self.m["parent"] = parent
        self.m["parent_gib"] = gib
        self.m["parent_encrypted"] = parent_encrypted
        declared = self.m.get("size")
        if declared is None or declared < gib * GIB:
            self.m["size"] = gib * GIB
        self.wb.parent = self.owner.parent_reader(parent, gib)

    # ---- sealing -----------------------------------------------------------------------------

    async def seal(self) -> None:
        state = self.state
        if state in (SEALING, COMPLETED):
            raise NotPermittedError(f"{self.name} is already {state}")
        if not self.m.get("written"):
            raise InvalidValueError(f"{self.name}: nothing was written, nothing to seal")
        if self.m.get("kept_from"):
            raise NotPermittedError(
                f"{self.name}: {self.m['kept_from']} is still being kept into it; seal it after"
            )
        if state == ERROR:
            if self.m.get("aws_error"):
                # AWS failed the snapshot for good: start a new one from the spool.
                log.info(
                    "%s: snapshot %s failed; storing everything again in a new one",
                    self.name,
                    self.snapshot_id,
                )
                if self.snapshot_id:
                    await self._delete_failed(self.snapshot_id)
                self.wb.restart()
                for key in ("snapshot_id", "started_at", "aws_error", "complete_called",
                            "complete_accepted", "encrypted"):
                    self.m.pop(key, None)
                self.m["client_token"] = _new_token()
            self.m["state"] = PENDING if self.snapshot_id else DRAFT
            self.m["state_message"] = ""
            self._save()
        await self._fix_size()
        before = (self.m["state"], self.m.get("state_message", ""))
        self.m["state"] = SEALING
        self.m["state_message"] = ""
        self.progress = "storing"
        self._touch()
        try:
            self._save()
        except OSError as exc:
            # Not sealing after all (a full spool disk): left "sealing" in memory, with no
            # task to finish it, every later seal would only wait.
            self.m["state"], self.m["state_message"] = before
            self.progress = ""
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise NoSpaceError(f"{self.name}: the spool's disk is full") from None
            raise
        self._begin_finish()

    def _begin_finish(self) -> None:
        # The scope exists before the task runs, so an rm right after the chmod cancels it.
        self._seal_scope = trio.CancelScope()
        self.owner.nursery.start_soon(self._finish, self._seal_scope)

    async def _finish(self, scope: trio.CancelScope) -> None:
        snapshot_id = self.snapshot_id
        if snapshot_id is None:  # never in the mount's nursery: an error there ends the mount
            self._failed("sealing failed, seal again to retry: no snapshot was started",
                         aws=False)
            self._seal_scope = None
            return
        with scope:
            try:
                # Recorded only once AWS answered CompleteSnapshot: until then every seal
                # (and a restart) sends it again. ("complete_called", written before the
                # call by earlier versions, proves nothing: it is sent again too, unless
                # blocks are dirty again, which a sealed snapshot would refuse: then wait.)
                resumed = bool(self.m.get("complete_accepted")) or (
                    bool(self.m.get("complete_called")) and self.wb.dirty_blocks > 0)
                count, aggregate = 0, ""
                if not resumed:
                    self.progress = f"storing {self.wb.dirty_blocks} blocks"
                    await self.wb.flush()
                    # Every stored block on record on disk before CompleteSnapshot: once it
                    # reached AWS, no block can be stored again, so a restart must find none
                    # dirty (only the count and aggregate, the same, to send again).
                    self.spool.commit_records()
                    await trio.to_thread.run_sync(self.spool.sync)
                    count, aggregate = self.owner.fault(*self.wb.summary())
                await complete_and_wait(
                    self.owner.api,
                    self.owner.call,
                    snapshot_id,
                    count,
                    aggregate if count else None,
                    on_progress=self._set_progress,
                    on_accepted=self._complete_accepted,
                    complete=not resumed,
                    tuning=self.owner.seal_tuning,
                )
            except SnapshotFailedError as exc:
                self._failed(str(exc), aws=True)
            except NotFoundError as exc:
                self._failed(f"snapshot {snapshot_id} is gone: {exc}", aws=True)
            except EbsfsError as exc:
                if self.wb.fatal is not None:
                    self._failed(f"snapshot {snapshot_id} is gone: {exc}", aws=True)
                else:
                    self._failed(f"sealing failed, seal again to retry: {exc}", aws=False)
            except Exception as exc:  # a bug here must not take the mount down
                log.exception("%s: sealing failed unexpectedly", self.name)
                self._failed(f"sealing failed, seal again to retry: {exc}", aws=False)
            else:
                self._completed(snapshot_id)
        self._seal_scope = None

    def _complete_accepted(self) -> None:
        self.m["complete_accepted"] = True
        self.m.pop("complete_called", None)
        self._save()

    def _set_progress(self, text: str) -> None:
        self.progress = text

    def _failed(self, message: str, *, aws: bool) -> None:
        log.error(
            "%s: %s (the data stays in the spool %s)", self.name, message, self.spool.directory
        )
        if aws:
            self.m["state"] = ERROR
            self.m["aws_error"] = True
        else:
            self.m["state"] = PENDING
            # The CompleteSnapshot may never have reached AWS: the next seal sends it again
            # (a repeat is harmless: AWS answers the snapshot's state).
            self.m.pop("complete_called", None)
        self.m["state_message"] = message
        self.progress = ""
        self._touch()
        try:
            self._save()
        except OSError as exc:  # the spool went away (rm) or its disk failed
            log.error("%s: cannot record the failure in the spool: %s", self.name, exc)

    def _completed(self, snapshot_id: str) -> None:
        log.info("%s: snapshot %s completed", self.name, snapshot_id)
        self.m["state"] = COMPLETED
        with contextlib.suppress(OSError):  # the spool is deleted just below anyway
            self._save()
        self._wb_scope.cancel()
        self.owner._completed(self, snapshot_id)
        # Deleting a GiB of spool takes most of a second (freeing its blocks and pages): in a
        # worker thread, so the mount answers meanwhile (``ebsfs complete`` sees the file
        # leave new/ at once). A crash before it ends is harmless: the manifest says
        # completed, and recovery deletes the rest.
        self.owner.nursery.start_soon(
            partial(trio.to_thread.run_sync, self.spool.destroy, abandon_on_cancel=False)
        )

    # ---- life cycle --------------------------------------------------------------------------

    def resume(self) -> None:
        """After a restart: reattach to the started snapshot, resume an interrupted seal."""
        if self.snapshot_id and self.state in (PENDING, SEALING):
            self._attach()
        elif self.state == DRAFT and self.m.get("size") is not None and self.m.get("written"):
            self._start_soon()  # the daemon died before its StartSnapshot: uploads can begin
        if self.state == SEALING:
            self._begin_finish()

    async def abandon(self) -> str | None:
        """``rm``: delete the snapshot if it is not completed, then the spool.

        Whatever the manifest says, AWS is asked first (DescribeSnapshots): a snapshot that
        completed (sealed by another mount, or by hand) is never deleted here; only the local
        draft goes, and its id is returned (to show it as ``snap-ID``). Only ``rm`` of
        ``snap-ID`` with ``--allow-delete`` deletes those."""
        kept = None
        sealing = self._seal_scope is not None
        if self._seal_scope is not None:
            self._seal_scope.cancel()
        self._gone = True
        try:
            async with self._start_lock:
                # A StartSnapshot under way ends first: cancelled, its snapshot would be left
                # behind, pending, with no draft to name it.
                snapshot_id = self.snapshot_id
            deleted = True
            if snapshot_id and self.state != COMPLETED:
                deleted = await self._delete_unless_completed(snapshot_id)
            if not deleted:
                kept = snapshot_id
        except EbsfsError as exc:
            # The rm fails and the draft stays, usable: not "sealing" with no one sealing it
            # (``ebsfs complete`` would wait for ever), nor unable to start.
            self._gone = False
            if sealing:
                self._failed(f"sealing stopped by rm, which failed: {exc}", aws=False)
            raise
        self._wb_scope.cancel()
        self.spool.destroy()
        return kept

    async def _delete_failed(self, snapshot_id: str) -> None:
        """Delete the snapshot a new one replaces, if AWS failed it (state ``error``): two
        snapshots named alike, one useless, would stay otherwise. Never one in another state;
        a failure here only leaves it."""
        owner = self.owner
        try:
            info = await owner.call(partial(owner.api.describe_snapshot, snapshot_id))
            if info.state != ERROR:
                return
            await owner.call(partial(owner.api.delete_snapshot, snapshot_id))
        except NotFoundError:
            return
        except EbsfsError as exc:
            log.warning("%s: the failed snapshot %s is left (%s)", self.name, snapshot_id, exc)
            return
        log.info("%s: deleted the failed snapshot %s", self.name, snapshot_id)

    async def _delete_unless_completed(self, snapshot_id: str) -> bool:
        """DeleteSnapshot unless AWS says the snapshot is completed; whether it was deleted."""
        owner = self.owner
        try:
            info = await retrying(owner.call, partial(owner.api.describe_snapshot, snapshot_id))
        except NotFoundError:
            info = None
        # Not found may also be DescribeSnapshots lagging behind a fresh StartSnapshot.
        if info is not None and info.state == COMPLETED:
            log.warning(
                "%s: snapshot %s is completed: it is kept, only the draft is removed",
                self.name, snapshot_id)
            return False
        with contextlib.suppress(NotFoundError):
            await owner.call(partial(owner.api.delete_snapshot, snapshot_id))
        log.info("%s: abandoned snapshot %s", self.name, snapshot_id)
        return True


class Drafts:
    """The drafts under ``new/`` (implements ``ebsfs.fs.newdir.NewDirectory``)."""

    def __init__(
        self,
        api: DraftApi,
        spool_root: Path,
        nursery: trio.Nursery,
        limiter: trio.CapacityLimiter,
        parent_reader: ParentReaderFactory,
        *,
        tuning: WriteTuning | None = None,
        put_tuning: PutTuning | None = None,
        seal_tuning: SealTuning | None = None,
        seal_fault: str | None = None,
        put_api: PutProcess | None = None,
    ) -> None:
        self.api = api
        #: Where blocks are stored (PutSnapshotBlock in a child process); None: ``api``.
        #: Closed with the directory.
        self.put_api = put_api
        self.spool_root = Path(spool_root)
        self.nursery = nursery
        self.limiter = limiter
        self.parent_reader = parent_reader
        self.tuning = tuning or WriteTuning()
        self.put_tuning = put_tuning or PutTuning()
        self.seal_tuning = seal_tuning or SealTuning()
        self.seal_fault = os.environ.get(SEAL_FAULT_ENV, "") if seal_fault is None else seal_fault
        self._drafts: dict[str, SnapshotDraft] = {}
        #: Names whose spool is being made (``create``).
        self._creating: set[str] = set()
        #: The lock of ``spool_root`` the mount holds (see ``ebsfs.write.wiring``).
        self.spool_lock: SpoolLock | None = None
        self._callbacks: list[Callable[[str, str], None]] = []
        #: Counters of drafts that completed or were removed, so totals never go backwards.
        self._retired: Counter[str] = Counter()

    @classmethod
    async def open(cls, *args: Any, **kwargs: Any) -> Drafts:
        """Create the directory and bring back the drafts of an earlier run from the spool."""
        drafts = cls(*args, **kwargs)
        drafts.recover()
        return drafts

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking API call in a worker thread under the mount's limiter."""
        # remote.Calls: bounded by the mount's --io-timeout clock, failed at once while down.
        return await Calls(self.limiter).run(partial(fn, *args))

    def fault(self, count: int, aggregate: str) -> tuple[int, str]:
        """Apply the test-only seal fault, if one is configured."""
        if self.seal_fault == "count":
            return count + 1, aggregate
        if self.seal_fault == "checksum":
            return count, "A" * 43 + "="
        return count, aggregate

    def recover(self) -> None:
        """Bring back every draft found in the spool directory."""
        self.spool_root.mkdir(mode=0o700, parents=True, exist_ok=True)
        for directory in Spool.find(self.spool_root):
            spool: Spool | None = None
            try:
                spool = Spool.load(directory)
                if spool.manifest.get("state") == COMPLETED:
                    spool.destroy()
                    continue
                name = str(spool.manifest["name"])
                if spool.manifest.get("kept_from") and not spool.manifest.get("snapshot_id"):
                    # A keep cut short (the daemon died): some of the changes only, never
                    # started, and the overlay it came from is gone. It never was a draft.
                    log.warning("%s: the keep of %s that wrote it did not finish; discarded",
                                name, spool.manifest["kept_from"])
                    spool.destroy()
                    continue
                if name in self._drafts:
                    log.error("two spools named %s; %s left alone", name, directory)
                    spool.close()
                    continue
                draft = SnapshotDraft(self, spool)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                # Never a reason not to mount: the directory stays for a human to look at.
                log.error("spool %s cannot be read, left alone: %r", directory, exc)
                if spool is not None:
                    spool.close()
                continue
            self._drafts[name] = draft
            draft.resume()
            log.info(
                "%s: brought back from %s (%s, %d bytes written)",
                name,
                directory,
                draft.state,
                spool.max_end,
            )

    async def close(self, timeout: float = 60.0) -> None:
        """Before an unmount: store what is dirty (bounded in time; the spool keeps the rest)."""
        with trio.move_on_after(timeout) as scope:
            for draft in list(self._drafts.values()):
                if draft.snapshot_id and draft.state == PENDING and draft.wb.dirty_blocks:
                    try:
                        await draft.wb.flush()
                    except EbsfsError as exc:
                        log.warning("%s: not stored before unmount, kept in the spool: %s",
                                    draft.name, exc)
        if scope.cancelled_caught:
            log.warning("unmount: storing timed out after %.0f s; the spool keeps the rest",
                        timeout)
        if self.put_api is not None:
            await trio.to_thread.run_sync(self.put_api.close)

    def stats(self) -> dict[str, int]:
        """Counters summed over every draft."""
        total: Counter[str] = Counter(self._retired)
        for draft in self._drafts.values():
            total.update(draft.stats())
        total["drafts"] = len(self._drafts)
        if self.put_api is not None:
            total["upload_process_starts"] = self.put_api.started
            total["puts_in_mount_threads"] = self.put_api.fallback_calls
        return dict(total)

    # ---- NewDirectory ------------------------------------------------------------------------

    def names(self) -> list[str]:
        return sorted(self._drafts)

    def get(self, name: str) -> SnapshotDraft | None:
        return self._drafts.get(name)

    async def create(self, name: str, *, kept_from: str = "") -> SnapshotDraft:
        if name in self._drafts or name in self._creating:
            raise InvalidValueError(f"new/{name} exists already")
        try:
            encoded = name.encode()
        except UnicodeEncodeError:  # bytes that are not UTF-8 (the Name tag is text)
            encoded = b""
        if not encoded or "/" in name or len(encoded) > 255 or name in (".", ".."):
            raise InvalidValueError(f"{name!r} cannot name a snapshot")
        manifest = {
            "version": 1,
            "name": name,
            "state": DRAFT,
            "size": None,
            "mtime_ns": time.time_ns(),
        }
        if kept_from:
            manifest["kept_from"] = kept_from
        # Taken until the spool is made: a second create meanwhile (a keep from scratch/ is
        # not serialized with new/ by the kernel) must not make a second spool of the name.
        self._creating.add(name)
        try:
            spool = await trio.to_thread.run_sync(Spool.create, self.spool_root, manifest)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise NoSpaceError(f"new/{name}: the spool's disk is full") from None
            raise EbsfsError(f"new/{name}: spool: {exc.strerror or exc}") from None
        finally:
            self._creating.discard(name)
        draft = SnapshotDraft(self, spool)
        self._drafts[name] = draft
        return draft

    async def remove(self, name: str) -> None:
        draft = self._drafts.get(name)
        if draft is None:
            raise NotFoundError(f"new/{name} does not exist")
        kept = await draft.abandon()
        if kept is not None:
            # Completed elsewhere: it stays, and shows at the top as any sealed draft does.
            self._completed(draft, kept)
            return
        self._drafts.pop(name, None)
        self._retired.update(draft.counters)

    def on_completed(self, callback: Callable[[str, str], None]) -> None:
        self._callbacks.append(callback)

    def _completed(self, draft: SnapshotDraft, snapshot_id: str) -> None:
        if self._drafts.get(draft.name) is draft:
            del self._drafts[draft.name]
        self._retired.update(draft.counters)
        self._retired["completed"] += 1
        for callback in self._callbacks:
            try:
                callback(draft.name, snapshot_id)
            except Exception:  # a namespace bug must not lose the completion itself
                log.exception("on_completed callback failed for %s", draft.name)


if TYPE_CHECKING:

    def _conforms(drafts: Drafts) -> NewDirectory:
        return drafts
