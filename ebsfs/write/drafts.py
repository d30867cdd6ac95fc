"""The ``new/`` directory: the drafts of a mount, made, found again in the spool after a
restart, removed, counted (docs/usage.md "Writing", docs/architecture.md, the write path).
Each draft is a ``draft.SnapshotDraft``; it reaches back here only through its context."""

from __future__ import annotations

import errno
import logging
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from ebsfs.aws.runner import Calls
from ebsfs.core.errors import EbsfsError, InvalidValueError, NoSpaceError, NotFoundError
from ebsfs.write.context import DraftApi, DraftContext
from ebsfs.write.draft import SnapshotDraft
from ebsfs.write.lifecycle import DraftLifeCycle
from ebsfs.write.newdir import NewDirectory
from ebsfs.write.parent import ParentReaderFactory
from ebsfs.write.seal import SealTuning
from ebsfs.write.sink import PutTuning
from ebsfs.write.spool import Spool
from ebsfs.write.spooled import ThreadPuts
from ebsfs.write.spoollock import SpoolLock
from ebsfs.write.state import DraftState, Manifest
from ebsfs.write.writeback import WriteTuning

if TYPE_CHECKING:
    from ebsfs.write.upload import PutProcess

__all__ = ["Drafts", "SnapshotDraft"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class Drafts(NewDirectory):
    """The drafts under ``new/``."""

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
        self.ctx = DraftContext(
            api=api,
            call=self.call,
            nursery=nursery,
            limiter=limiter,
            parent_reader=parent_reader,
            puts=put_api if put_api is not None else ThreadPuts(api),
            on_completed=self._completed,
            tuning=self.tuning,
            put_tuning=self.put_tuning,
            seal_tuning=self.seal_tuning,
        )
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

    def recover(self) -> None:
        """Bring back every draft found in the spool directory."""
        self.spool_root.mkdir(mode=0o700, parents=True, exist_ok=True)
        for directory in Spool.find(self.spool_root):
            spool: Spool | None = None
            try:
                spool = Spool.load(directory)
                manifest = Manifest.from_json(spool.manifest)
                if manifest.state == DraftState.COMPLETED:
                    spool.destroy()
                    continue
                name = manifest.name
                if manifest.kept_from and not manifest.snapshot_id:
                    # A keep cut short (the daemon died): some of the changes only, never
                    # started, and the overlay it came from is gone. It never was a draft.
                    log.warning("%s: the keep of %s that wrote it did not finish; discarded",
                                name, manifest.kept_from)
                    spool.destroy()
                    continue
                if name in self._drafts:
                    log.error("two spools named %s; %s left alone", name, directory)
                    spool.close()
                    continue
                draft = SnapshotDraft(self.ctx, spool, manifest)
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
                pending = draft.state == DraftState.PENDING
                if draft.snapshot_id and pending and draft.wb.dirty_blocks:
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
        manifest = Manifest(name=name, mtime_ns=time.time_ns(), kept_from=kept_from)
        # Taken until the spool is made: a second create meanwhile (a keep from scratch/ is
        # not serialized with new/ by the kernel) must not make a second spool of the name.
        self._creating.add(name)
        try:
            spool = await trio.to_thread.run_sync(
                Spool.create, self.spool_root, manifest.to_json())
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise NoSpaceError(f"new/{name}: the spool's disk is full") from None
            raise EbsfsError(f"new/{name}: spool: {exc.strerror or exc}") from None
        finally:
            self._creating.discard(name)
        draft = SnapshotDraft(self.ctx, spool, manifest)
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

    def _completed(self, draft: DraftLifeCycle, snapshot_id: str) -> None:
        if self._drafts.get(draft.name) is draft:
            del self._drafts[draft.name]
        self._retired.update(draft.counters)
        self._retired["completed"] += 1
        for callback in self._callbacks:
            try:
                callback(draft.name, snapshot_id)
            except Exception:  # a namespace bug must not lose the completion itself
                log.exception("on_completed callback failed for %s", draft.name)

