"""How a mount builds its ``new/`` directory (the write path's entry point).

The mount calls :func:`open_new_directory` once, inside its trio nursery, before the FUSE
session starts, and calls :func:`close_new_directory` when it stops (after ``notify_stopping``,
before the kernel mount goes away), so buffered writes can be flushed.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import trio

from ebsfs.aws.api import Api
from ebsfs.options import settings
from ebsfs.options.config import MountConfig
from ebsfs.write.drafts import Drafts
from ebsfs.write.newdir import NewDirectory, NoDrafts
from ebsfs.write.parent import ParentStacks, parent_readers
from ebsfs.write.spool import Spool
from ebsfs.write.spoollock import SpoolLock
from ebsfs.write.upload import PutProcess
from ebsfs.write.writeback import WriteTuning

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MountContext:
    """What the mount shares with the write path."""

    config: MountConfig
    api: Api
    nursery: trio.Nursery
    limiter: trio.CapacityLimiter  # the one limiter of every blocking API call
    stacks: ParentStacks  # the mount's read stacks: a draft's parent is read through them
    #: Where blocks are stored from (the upload process); None: the mount's own threads.
    put_process: PutProcess | None = None


def usable_cpus() -> int:
    """How many CPUs this process may run on (its affinity mask, not the machine's count)."""
    return len(os.sched_getaffinity(0))


def upload_process(config: MountConfig, api: Api) -> PutProcess | None:
    """The mount's upload process (not started yet), if its configuration asks for one or
    leaves it to the machine and the mount may use two CPUs or more."""
    if config.read_only:
        return None
    wanted = config.upload_process
    if wanted is None:
        cpus = usable_cpus()
        wanted = cpus >= 2
        if not wanted:
            # On one CPU the child costs more than it saves (docs/benchmarks.md, "The
            # upload process").
            log.info("%d CPU usable: blocks are stored from the mount's own threads "
                     "(--upload-process to use a child process anyway)", cpus)
    if not wanted:
        return None
    level = "DEBUG" if config.log_level.upper() == "DEBUG" else "WARNING"
    return PutProcess(config.aws, api, config.max_concurrency, log_level=level)


async def open_new_directory(ctx: MountContext) -> NewDirectory:
    """The ``new/`` directory of a mount: drafts spooled under ``--spool-dir``."""
    config = ctx.config
    if config.read_only:
        return NoDrafts()
    spool_dir = Path(config.spool_dir)
    # Held as long as this process lives (the directory keeps it): one mount per spool.
    lock = SpoolLock.acquire(spool_dir, config.mountpoint)
    _warn_of_a_shared_spool(config.mountpoint, spool_dir)
    drafts = await Drafts.open(
        ctx.api,
        spool_dir,
        ctx.nursery,
        ctx.limiter,
        parent_readers(ctx.stacks),
        tuning=WriteTuning(
            dirty_limit=config.dirty_limit,
            delay=config.writeback_delay,
            max_uploads=config.max_concurrency,
        ),
        put_api=ctx.put_process,
    )
    drafts.spool_lock = lock
    return drafts


def _warn_of_a_shared_spool(mountpoint: str, spool_dir: Path) -> None:
    """Before spools were per mount point, every mount shared the default root itself: drafts
    left there are not adopted (which mount wrote them is not known), but named, with the
    way to bring them back."""
    if str(spool_dir) != settings.default_spool_dir(mountpoint):
        return
    root = spool_dir.parent
    try:
        left = Spool.find(root)
    except OSError:
        return
    if left:
        log.warning(
            "%s holds %d draft(s) from before spools were per mount point; they are not in "
            "this mount's new/. To bring them back: ebsfs mount MOUNTPOINT --spool-dir %s "
            "(one mount at a time), then seal or rm them", root, len(left), root)


async def close_new_directory(newdir: NewDirectory) -> None:
    """Store what the write path holds dirty before the unmount (the spool keeps the rest)."""
    await newdir.close()
