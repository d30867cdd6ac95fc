"""How a mount builds its ``new/`` directory (the write path's entry point).

The mount calls :func:`open_new_directory` once, inside its trio nursery, before the FUSE
session starts, and calls :func:`close_new_directory` when it stops (after ``notify_stopping``,
before the kernel mount goes away), so buffered writes can be flushed.
"""

from __future__ import annotations

from dataclasses import dataclass

import trio

from ebsfs.api import Api
from ebsfs.config import MountConfig
from ebsfs.fs.newdir import NewDirectory
from ebsfs.fs.ops import EmptyNewDirectory
from ebsfs.store.stack import ReadStacks


@dataclass(frozen=True)
class MountContext:
    """What the mount shares with the write path."""

    config: MountConfig
    api: Api
    nursery: trio.Nursery
    limiter: trio.CapacityLimiter  # the one limiter of every blocking API call
    stacks: ReadStacks  # stacks.get(snapshot_id, volume_gib) reads a completed parent


async def open_new_directory(ctx: MountContext) -> NewDirectory:
    """The ``new/`` directory of a mount (write path: replace the empty one)."""
    return EmptyNewDirectory()


async def close_new_directory(newdir: NewDirectory) -> None:
    """Flush what the write path buffers before the unmount."""
    return None
