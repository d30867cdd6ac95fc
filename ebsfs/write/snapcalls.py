"""A draft's snapshot calls besides blocks: StartSnapshot with its ClientToken, deleting a
snapshot it abandons or replaces, checking a parent (docs/architecture.md, the write path)."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from functools import partial
from typing import Any

from ebsfs.aws.retry import retrying
from ebsfs.core.errors import ApiError, EbsfsError, InvalidValueError, NotFoundError
from ebsfs.write.context import DraftContext
from ebsfs.write.state import GIB, DraftState, Manifest

log = logging.getLogger(__name__)

#: StartSnapshot Timeout: a draft may sit idle this long (a filesystem being built by hand).
TIMEOUT_MINUTES = 1440


def new_token() -> str:
    return os.urandom(16).hex()


async def start_snapshot(ctx: DraftContext, m: Manifest, save: Callable[[], None]) -> Any:
    """StartSnapshot as the manifest says; its answer. The ClientToken is saved before the
    call, so a repeat (even after a crash) finds the same snapshot."""
    if not m.client_token:
        m.client_token = new_token()
        save()
    kwargs: dict[str, Any] = dict(
        parent=m.parent or None,
        description=m.description or None,
        tags={"Name": m.name, **m.tags},
        timeout_minutes=TIMEOUT_MINUTES,
    )
    if m.encrypt and not m.parent:
        # With a parent AWS refuses Encrypted: the child takes the parent's encryption.
        kwargs["encrypted"] = True
        if m.kms_key_arn:
            kwargs["kms_key_arn"] = m.kms_key_arn
    assert m.size is not None
    gib = m.size // GIB
    try:
        return await retrying(
            ctx.call, partial(ctx.api.start_snapshot, gib, client_token=m.client_token, **kwargs)
        )
    except ApiError as exc:
        if exc.code != "ConflictException":
            raise
    # The token was used with other settings (before a crash): take a new one.
    m.client_token = new_token()
    save()
    return await ctx.call(
        partial(ctx.api.start_snapshot, gib, client_token=m.client_token, **kwargs)
    )


async def parent_info(ctx: DraftContext, parent: str) -> tuple[int, bool]:
    """A completed parent's size in GiB and whether it is encrypted (InvalidValueError if it
    is no completed snapshot)."""
    try:
        info = await ctx.call(partial(ctx.api.describe_snapshot, parent))
    except NotFoundError:
        raise InvalidValueError(f"user.ebsfs.parent: no snapshot {parent}") from None
    if info.state != "completed":
        raise InvalidValueError(f"user.ebsfs.parent: {parent} is {info.state}, not completed")
    return int(info.volume_size), bool(getattr(info, "encrypted", False))


async def delete_failed(ctx: DraftContext, name: str, snapshot_id: str) -> None:
    """Delete the snapshot a new one replaces, if AWS failed it (state ``error``): two
    snapshots named alike, one useless, would stay otherwise. Never one in another state;
    a failure here only leaves it."""
    try:
        info = await ctx.call(partial(ctx.api.describe_snapshot, snapshot_id))
        if info.state != DraftState.ERROR:
            return
        await ctx.call(partial(ctx.api.delete_snapshot, snapshot_id))
    except NotFoundError:
        return
    except EbsfsError as exc:
        log.warning("%s: the failed snapshot %s is left (%s)", name, snapshot_id, exc)
        return
    log.info("%s: deleted the failed snapshot %s", name, snapshot_id)


async def delete_unless_completed(ctx: DraftContext, name: str, snapshot_id: str) -> bool:
    """DeleteSnapshot unless AWS says the snapshot is completed; whether it was deleted."""
    try:
        info = await retrying(ctx.call, partial(ctx.api.describe_snapshot, snapshot_id))
    except NotFoundError:
        info = None
    # Not found may also be DescribeSnapshots lagging behind a fresh StartSnapshot.
    if info is not None and info.state == DraftState.COMPLETED:
        log.warning("%s: snapshot %s is completed: it is kept, only the draft is removed",
                    name, snapshot_id)
        return False
    with contextlib.suppress(NotFoundError):
        await ctx.call(partial(ctx.api.delete_snapshot, snapshot_id))
    log.info("%s: abandoned snapshot %s", name, snapshot_id)
    return True
