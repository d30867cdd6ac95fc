"""A draft's life cycle: its manifest kept in the spool, starting the snapshot, sealing, failing,
completing, resuming after a restart and removal (docs/architecture.md, the write path). The
moves between states are ``state.TRANSITIONS``; the file's side is ``draft.SnapshotDraft``."""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import time
from collections import Counter
from functools import partial

import trio

from ebsfs.core.errors import (
    EbsfsError,
    InvalidValueError,
    NoSpaceError,
    NotFoundError,
    NotPermittedError,
    SnapshotFailedError,
)
from ebsfs.write import snapcalls
from ebsfs.write.context import DraftContext
from ebsfs.write.seal import complete_and_wait
from ebsfs.write.sink import RemoteWriter
from ebsfs.write.spool import Spool
from ebsfs.write.state import GIB, DraftState, Manifest, gib_ceil
from ebsfs.write.writeback import WriteBack

log = logging.getLogger(__name__)

#: Seconds between two background StartSnapshot attempts of a draft after one failed.
START_RETRY = 30.0

DRAFT, PENDING, SEALING = DraftState.DRAFT, DraftState.PENDING, DraftState.SEALING
COMPLETED, ERROR = DraftState.COMPLETED, DraftState.ERROR


def spool_error(name: str, exc: OSError) -> EbsfsError:
    """What a request that the spool could not keep answers."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoSpaceError(f"{name}: the spool's disk is full")
    return EbsfsError(f"{name}: spool: {exc.strerror or exc}")


class DraftLifeCycle:
    """The states of one draft and the moves between them."""

    def __init__(self, ctx: DraftContext, spool: Spool, manifest: Manifest) -> None:
        self.ctx = ctx
        self.spool = spool
        self.m = manifest
        self.name = manifest.name
        self.counters: Counter[str] = Counter()
        if self.m.snapshot_id and self.m.encrypted is None:
            # Started by an earlier version, which skipped zero blocks whatever the snapshot's
            # encryption: it may be encrypted (see ``_encrypted``), so every written block it
            # did not store is stored now.
            spool.dirty |= set(spool.coverage) - set(spool.stored)
        self.wb = WriteBack(
            spool,
            ctx.parent_reader(self.m.parent, self.m.parent_gib) if self.m.parent else None,
            encrypted=self._encrypted(),
            tuning=ctx.tuning,
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
        self._mtime_ns = self.m.mtime_ns or time.time_ns()
        ctx.nursery.start_soon(self._run_writeback)

    async def _run_writeback(self) -> None:
        with self._wb_scope:
            await self.wb.run()

    # ---- small accessors ---------------------------------------------------------------------

    @property
    def state(self) -> DraftState:
        return self.m.state

    @property
    def snapshot_id(self) -> str | None:
        return self.m.snapshot_id or None

    def _encrypted(self) -> bool:
        """Whether the snapshot is encrypted, as StartSnapshot answered. A started snapshot
        whose manifest does not say (written by an earlier version) counts as encrypted:
        storing zero blocks is only slower, skipping them over an encrypted hole is wrong."""
        if self.m.encrypted is not None:
            return self.m.encrypted
        return bool(self.m.snapshot_id)

    def _save(self) -> None:
        self.m.mtime_ns = self._mtime_ns
        self.spool.save_manifest(self.m.to_json())

    def _save_or_undo(self, before: Manifest) -> None:
        """Save a change asked for by a request; if the manifest cannot be saved (a full
        spool disk), put ``before`` back and answer ENOSPC: the change was not made."""
        try:
            self._save()
        except OSError as exc:
            self.m = before
            raise spool_error(self.name, exc) from None

    def _touch(self) -> None:
        self._mtime_ns = time.time_ns()

    # ---- starting the snapshot ---------------------------------------------------------------

    def _start_soon(self) -> None:
        """Start the snapshot in the background, so uploads can begin while writes go on.

        The writes never wait for it: they are in the spool already, and an endpoint that is
        down only delays the StartSnapshot (tried again here at most every
        ``START_RETRY`` seconds, and by every fsync, close and seal). Not while a keep
        writes it: a restart must find nothing started for a keep cut short."""
        if self.m.kept_from:
            return
        if self._start_scope is not None or trio.current_time() < self._start_retry_at:
            return
        self._start_scope = trio.CancelScope()
        self.ctx.nursery.start_soon(self._start_in_background, self._start_scope)

    async def _start_in_background(self, scope: trio.CancelScope) -> None:
        with scope:
            try:
                await self._start()
            except (EbsfsError, OSError) as exc:
                self._start_retry_at = trio.current_time() + START_RETRY
                # Shown in user.ebsfs.state_message (not saved: it is tried again anyway).
                self.m.state_message = f"not started yet: {exc}"
                log.warning("%s: snapshot not started yet, the writes wait in the spool: %s",
                            self.name, exc)
            except Exception:  # a bug here must not take the mount down
                self._start_retry_at = trio.current_time() + START_RETRY
                log.exception("%s: starting the snapshot failed unexpectedly", self.name)
        self._start_scope = None

    async def _fix_size(self) -> None:
        """Flow B: the first fsync or close fixes the size from the data and starts."""
        if self.m.size is None and self.m.written:
            self.m.size = gib_ceil(max(self.spool.max_end, 1))
            self.m.client_token = snapcalls.new_token()
            self._save()
        if self.m.kept_from:
            return  # a keep writes it: started once that is done (``kept``)
        if self.m.size is not None and self.m.written and not self.snapshot_id:
            await self._start()

    async def _start(self) -> None:
        async with self._start_lock:
            if self.snapshot_id or self._gone:
                return
            info = await snapcalls.start_snapshot(self.ctx, self.m, self._save)
            self.m.snapshot_id = info.snapshot_id
            self.m.started_at = time.time()
            # What AWS did, not what was asked (encryption by default, an encrypted parent):
            # it decides whether zero blocks may be skipped, so it is kept across remounts.
            self.m.encrypted = bool(getattr(info, "encrypted", False)) or self.m.parent_encrypted
            self.wb.encrypted = self.m.encrypted
            if self.state == DRAFT:
                self.m.move(PENDING)
            if self.m.state_message.startswith("not started yet"):
                self.m.state_message = ""
            self._save()
            log.info("%s: started snapshot %s (%d GiB)", self.name, info.snapshot_id,
                     (self.m.size or 0) // GIB)
            self._attach()

    def _attach(self) -> None:
        snapshot_id = self.snapshot_id
        assert snapshot_id is not None
        age = max(0.0, time.time() - (self.m.started_at or time.time()))
        self.wb.attach(
            RemoteWriter(
                self.ctx.puts,
                snapshot_id,
                self.ctx.limiter,
                started_at=trio.current_time() - age,
                counters=self.counters,
                tuning=self.ctx.put_tuning,
            )
        )

    # ---- sealing -----------------------------------------------------------------------------

    async def seal(self) -> None:
        state = self.state
        if state in (SEALING, COMPLETED):
            raise NotPermittedError(f"{self.name} is already {state}")
        if not self.m.written:
            raise InvalidValueError(f"{self.name}: nothing was written, nothing to seal")
        if self.m.kept_from:
            raise NotPermittedError(
                f"{self.name}: {self.m.kept_from} is still being kept into it; seal it after"
            )
        if state == ERROR:
            if self.m.aws_error:
                # AWS failed the snapshot for good: start a new one from the spool.
                log.info(
                    "%s: snapshot %s failed; storing everything again in a new one",
                    self.name,
                    self.snapshot_id,
                )
                if self.snapshot_id:
                    await snapcalls.delete_failed(self.ctx, self.name, self.snapshot_id)
                self.wb.restart()
                self.m.snapshot_id, self.m.started_at, self.m.encrypted = "", 0.0, None
                self.m.aws_error = self.m.complete_called = self.m.complete_accepted = False
                self.m.client_token = snapcalls.new_token()
            self.m.move(PENDING if self.snapshot_id else DRAFT)
            self.m.state_message = ""
            self._save()
        await self._fix_size()
        before = (self.m.state, self.m.state_message)
        self.m.move(SEALING)
        self.m.state_message = ""
        self.progress = "storing"
        self._touch()
        try:
            self._save()
        except OSError as exc:
            # Not sealing after all (a full spool disk): left "sealing" in memory, with no
            # task to finish it, every later seal would only wait.
            self.m.state, self.m.state_message = before
            self.progress = ""
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise NoSpaceError(f"{self.name}: the spool's disk is full") from None
            raise
        self._begin_finish()

    def _begin_finish(self) -> None:
        # The scope exists before the task runs, so an rm right after the chmod cancels it.
        self._seal_scope = trio.CancelScope()
        self.ctx.nursery.start_soon(self._finish, self._seal_scope)

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
                resumed = bool(self.m.complete_accepted) or (
                    bool(self.m.complete_called) and self.wb.dirty_blocks > 0)
                count, aggregate = 0, ""
                if not resumed:
                    self.progress = f"storing {self.wb.dirty_blocks} blocks"
                    await self.wb.flush()
                    # Every stored block on record on disk before CompleteSnapshot: once it
                    # reached AWS, no block can be stored again, so a restart must find none
                    # dirty (only the count and aggregate, the same, to send again).
                    self.spool.commit_records()
                    await trio.to_thread.run_sync(self.spool.sync)
                    count, aggregate = self.wb.summary()
                await complete_and_wait(
                    self.ctx.api,
                    self.ctx.call,
                    snapshot_id,
                    count,
                    aggregate if count else None,
                    on_progress=self._set_progress,
                    on_accepted=self._complete_accepted,
                    complete=not resumed,
                    tuning=self.ctx.seal_tuning,
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
        self.m.complete_accepted = True
        self.m.complete_called = False
        self._save()

    def _set_progress(self, text: str) -> None:
        self.progress = text

    def _failed(self, message: str, *, aws: bool) -> None:
        log.error(
            "%s: %s (the data stays in the spool %s)", self.name, message, self.spool.directory
        )
        if aws:
            self.m.move(ERROR)
            self.m.aws_error = True
        else:
            self.m.move(PENDING)
            # The CompleteSnapshot may never have reached AWS: the next seal sends it again
            # (a repeat is harmless: AWS answers the snapshot's state).
            self.m.complete_called = False
        self.m.state_message = message
        self.progress = ""
        self._touch()
        try:
            self._save()
        except OSError as exc:  # the spool went away (rm) or its disk failed
            log.error("%s: cannot record the failure in the spool: %s", self.name, exc)

    def _completed(self, snapshot_id: str) -> None:
        log.info("%s: snapshot %s completed", self.name, snapshot_id)
        self.m.move(COMPLETED)
        with contextlib.suppress(OSError):  # the spool is deleted just below anyway
            self._save()
        self._wb_scope.cancel()
        self.ctx.on_completed(self, snapshot_id)
        # Deleting a large spool takes a while (freeing its blocks and pages): in a
        # worker thread, so the mount answers meanwhile (``ebsfs complete`` sees the file
        # leave new/ at once). A crash before it ends is harmless: the manifest says
        # completed, and recovery deletes the rest.
        self.ctx.nursery.start_soon(
            partial(trio.to_thread.run_sync, self.spool.destroy, abandon_on_cancel=False)
        )

    # ---- life cycle --------------------------------------------------------------------------

    def resume(self) -> None:
        """After a restart: reattach to the started snapshot, resume an interrupted seal."""
        if self.snapshot_id and self.state in (PENDING, SEALING):
            self._attach()
        elif self.state == DRAFT and self.m.size is not None and self.m.written:
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
                deleted = await snapcalls.delete_unless_completed(self.ctx, self.name, snapshot_id)
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

