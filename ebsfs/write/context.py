"""What a draft works with, handed to it by the directory of drafts as one small object."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import trio

from ebsfs.write.parent import ParentReaderFactory
from ebsfs.write.seal import SealTuning
from ebsfs.write.sink import PutTuning
from ebsfs.write.spooled import BlockPuts
from ebsfs.write.writeback import WriteTuning

if TYPE_CHECKING:
    from ebsfs.write.lifecycle import DraftLifeCycle

T = TypeVar("T")


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


class Caller(Protocol):
    """Runs a blocking API call in a worker thread: ``await call(fn, *args)``."""

    def __call__(self, fn: Callable[..., T], *args: Any) -> Awaitable[T]: ...


@dataclass(frozen=True)
class DraftContext:
    """A draft's collaborators: the API and how to call it, where its tasks run, its parent's
    reader, where its blocks are stored, its knobs, and whom to tell when it completed."""

    api: DraftApi
    call: Caller
    nursery: trio.Nursery
    limiter: trio.CapacityLimiter
    parent_reader: ParentReaderFactory
    puts: BlockPuts
    on_completed: Callable[[DraftLifeCycle, str], None]
    tuning: WriteTuning = field(default_factory=WriteTuning)
    put_tuning: PutTuning = field(default_factory=PutTuning)
    seal_tuning: SealTuning = field(default_factory=SealTuning)
