"""The completed snapshots a mount shows, and their Name tags for ``by-name/``.

Listed (DescribeSnapshots, refreshed; an unknown ``snap-`` id asked for once) or fixed
(``--snapshot`` ids, each checked with one ListSnapshotBlocks page); only completed,
standard-tier snapshots are kept, and a failed refresh keeps the last listing.
See docs/architecture.md and docs/usage.md.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Protocol

import trio

from ebsfs.aws.api import BlockPage, SnapshotInfo
from ebsfs.aws.runner import Calls
from ebsfs.core.blocks import SNAPSHOT_ID_RE
from ebsfs.core.errors import AccessDeniedError, EbsfsError, NotFoundError
from ebsfs.read.remote import READ_LAG_GRACE, seen_completed, since_completion

log = logging.getLogger(__name__)

#: A lookup of an unknown snapshot id asks EC2 at most this often per id.
UNKNOWN_LOOKUP_INTERVAL = 2.0
#: How long a snapshot sealed through new/ may answer 404 before it is given up on.
NOT_FOUND_GRACE = READ_LAG_GRACE


class ListingApi(Protocol):
    """The part of ``ebsfs.aws.api.Api`` the catalog uses."""

    def describe_snapshots(
        self,
        snapshot_ids: Iterable[str] = (),
        owner: str = "self",
        filters: Iterable[tuple[str, str]] = (),
    ) -> list[SnapshotInfo]: ...

    def check_listing(
        self, owner: str = "self", filters: Iterable[tuple[str, str]] = ()
    ) -> None: ...

    def list_blocks(
        self,
        snapshot_id: str,
        start_index: int = 0,
        max_results: int = ...,
        next_token: str | None = None,
    ) -> BlockPage: ...


@dataclass(frozen=True)
class CatalogConfig:
    """Which snapshots to show."""

    snapshot_ids: tuple[str, ...] = ()
    owner: str = "self"
    filters: tuple[tuple[str, str], ...] = ()
    refresh: float = 60.0


def is_snapshot_id(name: str) -> bool:
    """Whether ``name`` has the shape of an EBS snapshot id."""
    return bool(SNAPSHOT_ID_RE.match(name))


def readable(info: SnapshotInfo) -> bool:
    """Whether the EBS direct APIs can read it: completed, not in the archive tier, not an
    Outposts local snapshot."""
    return info.state == "completed" and info.storage_tier != "archive" and not info.outpost_arn


def usable_name(name: str) -> bool:
    """Whether a Name tag can be a ``by-name/`` entry."""
    return bool(name) and name not in (".", "..") and "/" not in name and "\0" not in name


class Catalog:
    """The completed snapshots, kept fresh; all methods run on the mount's trio thread."""

    def __init__(self, api: ListingApi, calls: Calls, config: CatalogConfig) -> None:
        self.api = api
        self.calls = calls
        self.config = config
        self.snapshots: dict[str, SnapshotInfo] = {}
        self._extra: dict[str, SnapshotInfo] = {}  # added through new/, kept across refreshes
        self._asked: dict[str, float] = {}
        self._refreshing: trio.Event | None = None
        self.counters: Counter[str] = Counter()
        self.mounted_at = time.time()
        # by_name() is asked for at every lookup: it is rebuilt only after a change, so a
        # lookup costs the same with 20 snapshots or 20,000.
        self._version = 0
        self._by_name: tuple[int, dict[str, str]] = (-1, {})
        # Unset only while a background first listing (load(background=True)) is under way.
        self._listed = trio.Event()
        self._listed.set()

    def _changed(self) -> None:
        self._version += 1

    @property
    def fixed(self) -> bool:
        """True when ``--snapshot`` ids were given: no EC2 listing."""
        return bool(self.config.snapshot_ids)

    # ---- listing ------------------------------------------------------------------------------

    async def load(self, *, background: bool = False) -> None:
        """The first listing; its errors are the mount's startup errors.

        ``background``: only one small page is asked for now (its errors are the startup
        errors) and ``refresher`` makes the full listing, so that a mount over thousands of
        snapshots answers at once; lookups and listings wait for it (``listed``)."""
        if self.fixed:
            found = {}
            for sid in self.config.snapshot_ids:
                found[sid] = await self._probe(sid)
            self.snapshots = found
            self._changed()
        elif background:
            await self.calls.run(self.api.check_listing, self.config.owner, self.config.filters)
            self._listed = trio.Event()
            return
        else:
            await self.refresh(raise_errors=True)
        self._listed.set()

    async def listed(self) -> None:
        """Return once the first full listing is done (at once after it)."""
        await self._listed.wait()

    async def _probe(self, snapshot_id: str, name: str = "") -> SnapshotInfo:
        """What a one-page ListSnapshotBlocks tells of a snapshot (no EC2 call)."""
        try:
            page = await self.calls.run(self.api.list_blocks, snapshot_id, 0, 100, None)
        except NotFoundError as exc:
            raise NotFoundError(
                f"snapshot {snapshot_id} does not exist or is not completed ({exc})"
            ) from exc
        tags = {"Name": name} if name else {}
        return SnapshotInfo(
            snapshot_id=snapshot_id,
            state="completed",
            volume_size=page.volume_size,
            start_time=self.mounted_at,
            tags=tags,
            progress="100%",
        )

    async def _probe_until_readable(self, snapshot_id: str, name: str) -> SnapshotInfo:
        """``_probe``, retried while AWS still answers 404 for a snapshot that just completed
        (ebs-direct-api.md §4.4: up to about a minute)."""
        # Counted from its completion when known (seen_completed), as the reads count it.
        deadline = trio.current_time() + NOT_FOUND_GRACE - since_completion(snapshot_id, 0.0)
        pause = 0.5
        while True:
            try:
                return await self._probe(snapshot_id, name)
            except NotFoundError:
                if trio.current_time() + pause > deadline:
                    raise
                await trio.sleep(pause)
                pause = min(pause * 2, 8.0)

    async def refresh(self, *, raise_errors: bool = False) -> None:
        """List again (EC2 mode only); concurrent callers share one listing."""
        if self.fixed:
            return
        if self._refreshing is not None:
            await self._refreshing.wait()
            return
        self._refreshing = trio.Event()
        try:
            infos = await self.calls.run(
                self.api.describe_snapshots, (), self.config.owner, self.config.filters
            )
        except EbsfsError as exc:
            self.counters["refresh_errors"] += 1
            if raise_errors:
                raise
            log.warning("listing snapshots failed, keeping the previous listing: %s", exc)
            return
        finally:
            self._refreshing.set()
            self._refreshing = None
        self.counters["refreshes"] += 1
        listed = {i.snapshot_id: i for i in infos if readable(i)}
        for info in listed.values():
            if info.completion_time:
                seen_completed(info.snapshot_id, info.completion_time)
        for sid, info in self._extra.items():
            listed.setdefault(sid, info)
        self.snapshots = listed
        self._changed()

    async def refresher(self) -> None:
        """The first full listing if ``load`` left it to the background, then a refresh
        every ``refresh`` seconds, forever (a task of the mount's nursery)."""
        if not self._listed.is_set() and not self.fixed:
            start = trio.current_time()
            try:
                await self.refresh()  # a failure keeps the (empty) listing and logs why
            finally:
                self._listed.set()
            log.info("listed %d snapshots in %.1f s", len(self.snapshots),
                     trio.current_time() - start)
        if self.fixed or self.config.refresh <= 0:
            return
        while True:
            await trio.sleep(self.config.refresh)
            await self.refresh()

    async def lookup(self, name: str) -> SnapshotInfo | None:
        """The snapshot called ``name``; an unknown id is looked up in EC2 (listed mode)."""
        await self._listed.wait()
        info = self.snapshots.get(name)
        if info is not None or self.fixed or not is_snapshot_id(name):
            return info
        now = trio.current_time()
        if now - self._asked.get(name, -UNKNOWN_LOOKUP_INTERVAL) < UNKNOWN_LOOKUP_INTERVAL:
            return None
        self._asked[name] = now
        self.counters["unknown_lookups"] += 1
        try:
            # No owner: a snapshot shared with this account is asked for by its id.
            found = await self.calls.run(
                self.api.describe_snapshots, (name,), "", self.config.filters
            )
        except NotFoundError:
            return None
        except EbsfsError as exc:
            log.warning("looking up %s failed: %s", name, exc)
            return None
        for info in found:
            if info.snapshot_id != name:
                continue
            if info.state == "completed" and info.storage_tier == "archive":
                log.warning(
                    "%s is archived (StorageTier archive): the EBS direct APIs cannot read it "
                    "until it is restored (RestoreSnapshotTier)", name
                )
            elif info.state == "completed" and info.outpost_arn:
                log.warning(
                    "%s is an Outposts local snapshot (%s): the EBS direct APIs cannot read it",
                    name, info.outpost_arn,
                )
            elif readable(info):
                self.snapshots[name] = info
                self._changed()
                return info
        return None

    # ---- changes made through this mount --------------------------------------------------------

    async def add_completed(self, snapshot_id: str, name: str = "") -> None:
        """Show a snapshot sealed through ``new/`` (in every mode)."""
        # The moment ebsfs saw it complete: AWS's read lag counts from about here.
        seen_completed(snapshot_id)
        info: SnapshotInfo | None = None
        if not self.fixed:
            try:
                found = await self.calls.run(self.api.describe_snapshots, (snapshot_id,), "", ())
                info = next((i for i in found if i.snapshot_id == snapshot_id), None)
                if info is not None and info.completion_time:
                    seen_completed(snapshot_id, info.completion_time)
            except (AccessDeniedError, NotFoundError) as exc:
                log.info("EC2 does not describe %s (%s); probing it instead", snapshot_id, exc)
        if info is None:
            info = await self._probe_until_readable(snapshot_id, name)
        if name and not info.name:
            info = replace(info, tags={**info.tags, "Name": name})
        info = replace(info, state="completed")
        self._extra[snapshot_id] = info
        self.snapshots[snapshot_id] = info
        self._changed()

    def remove(self, snapshot_id: str) -> None:
        """Forget a snapshot deleted through this mount."""
        self.snapshots.pop(snapshot_id, None)
        self._extra.pop(snapshot_id, None)
        self._changed()

    # ---- by-name/ -------------------------------------------------------------------------------

    def by_name(self) -> dict[str, str]:
        """Name tag -> snapshot id; a name several snapshots share points at the newest."""
        if self._by_name[0] == self._version:
            return self._by_name[1]
        names: dict[str, SnapshotInfo] = {}
        for info in self.snapshots.values():
            if not usable_name(info.name):
                continue
            other = names.get(info.name)
            if other is None or (info.start_time, info.snapshot_id) > (
                other.start_time,
                other.snapshot_id,
            ):
                names[info.name] = info
        result = {n: i.snapshot_id for n, i in names.items()}
        self._by_name = (self._version, result)
        return result

    def stats(self) -> dict[str, int]:
        return {**self.counters, "snapshots_shown": len(self.snapshots)}
