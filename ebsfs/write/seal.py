"""Sealing a pending snapshot: CompleteSnapshot, then wait until EC2 says ``completed``.

CompleteSnapshot answers 202 ``pending`` before AWS has checked anything; a wrong
ChangedBlocksCount or aggregate checksum only shows minutes later as the ``error`` state with a
StateMessage (ebs-direct-api.md §4.3, §5). So a 202 is not success: DescribeSnapshots is polled,
with a pause growing from ``first_pause`` to ``max_pause``, until ``completed`` or ``error``.
Each call goes through the runner (``call``) and is retried by the one policy
(``ebsfs.aws.retry.CONTROL``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from ebsfs.aws.retry import retrying
from ebsfs.core.errors import (
    BackendUnavailableError,
    EbsfsError,
    NotFoundError,
    SnapshotFailedError,
)

log = logging.getLogger(__name__)


class SnapshotState(Protocol):
    """What DescribeSnapshots tells about one snapshot (``ebsfs.aws.api.SnapshotInfo``)."""

    @property
    def state(self) -> str: ...
    @property
    def progress(self) -> str: ...
    @property
    def state_message(self) -> str: ...


class SealApi(Protocol):
    """The part of ``ebsfs.aws.api.Api`` sealing uses."""

    def complete_snapshot(
        self, snapshot_id: str, changed_blocks_count: int, aggregate_b64: str | None
    ) -> str: ...

    def describe_snapshot(self, snapshot_id: str) -> Any: ...


#: Runs a blocking API call in a worker thread: ``await call(fn, *args)``.
Caller = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class SealTuning:
    """Polling knobs; AWS can take over ten minutes to report a count mismatch."""

    first_pause: float = 0.1
    max_pause: float = 5.0
    patience: float = 3 * 3600.0
    not_found_polls: int = 5  # DescribeSnapshots may lag a moment behind the EBS side


async def complete_and_wait(
    api: SealApi,
    call: Caller,
    snapshot_id: str,
    changed_blocks_count: int,
    aggregate_b64: str | None,
    *,
    on_progress: Callable[[str], None] = lambda _text: None,
    on_accepted: Callable[[], None] = lambda: None,
    complete: bool = True,
    tuning: SealTuning | None = None,
) -> None:
    """Seal ``snapshot_id`` and return once it is ``completed``.

    ``on_accepted`` is called once AWS answered CompleteSnapshot (not before: a call that
    failed must be sent again, and CompleteSnapshot is idempotent). ``complete=False`` only
    waits (CompleteSnapshot was accepted before a restart). Raises SnapshotFailedError with
    AWS's StateMessage if the snapshot goes to ``error``.
    """
    t = tuning or SealTuning()
    if complete:
        on_progress("completing")
        status = await _send_complete(api, call, snapshot_id, changed_blocks_count,
                                      aggregate_b64)
        on_accepted()
        log.info(
            "CompleteSnapshot %s: %d blocks, status %s", snapshot_id, changed_blocks_count, status
        )
        if status == "error":
            info = await retrying(call, api.describe_snapshot, snapshot_id)
            raise SnapshotFailedError(
                f"snapshot {snapshot_id} failed: {info.state_message or 'state error'}"
            )
    pause = t.first_pause
    deadline = trio.current_time() + t.patience
    missing = 0
    while True:
        try:
            info = await retrying(call, api.describe_snapshot, snapshot_id)
        except NotFoundError:
            missing += 1
            if missing >= t.not_found_polls:
                raise SnapshotFailedError(
                    f"snapshot {snapshot_id} disappeared while it was being sealed"
                ) from None
            info = None
        if info is not None:
            if info.state == "completed":
                on_progress("completed")
                return
            if info.state == "error":
                message = info.state_message or "state error"
                log.error("snapshot %s failed: %s", snapshot_id, message)
                raise SnapshotFailedError(f"snapshot {snapshot_id} failed: {message}")
            on_progress(f"completing {info.progress or '0%'}")
        if trio.current_time() > deadline:
            raise BackendUnavailableError(
                f"snapshot {snapshot_id} still pending after {t.patience:.0f} s"
            )
        await trio.sleep(pause)
        pause = min(t.max_pause, pause * 1.5)


async def _send_complete(
    api: SealApi, call: Caller, snapshot_id: str, count: int, aggregate_b64: str | None
) -> str:
    """CompleteSnapshot, retried while the failure is transient; its status.

    A CompleteSnapshot sent again (its first answer was lost, or the daemon restarted) may be
    refused because the snapshot is no longer pending: then DescribeSnapshots says where it
    is, and that is the answer."""
    try:
        return str(await retrying(call, api.complete_snapshot, snapshot_id, count, aggregate_b64))
    except NotFoundError:
        raise
    except EbsfsError as exc:
        try:
            info = await retrying(call, api.describe_snapshot, snapshot_id)
        except EbsfsError:
            raise exc from None
        if info.state in ("completed", "error"):
            log.info("CompleteSnapshot %s refused (%s), but the snapshot is %s already",
                     snapshot_id, exc, info.state)
            return str(info.state)
        raise
