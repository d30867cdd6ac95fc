"""What the EBS direct APIs and DescribeSnapshots answer, as plain records (no boto3 here),
and the request shapes built from ebsfs's options (docs/usage.md: ``--owner``, filters)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ebsfs.core.errors import UsageError

__all__ = [
    "MAX_LIST_RESULTS",
    "MIN_LIST_RESULTS",
    "PARENT_TAG",
    "BlockPage",
    "ChangedPage",
    "SnapshotInfo",
    "ec2_info",
    "epoch",
    "group_filters",
    "parse_owner",
    "tags_of",
]

#: AWS bounds for ListSnapshotBlocks / ListChangedBlocks MaxResults.
MIN_LIST_RESULTS = 100
MAX_LIST_RESULTS = 10000

#: The tag in which ebsfs records a snapshot's parent at StartSnapshot (DescribeSnapshots has
#: no parent field; this is where AWS keeps it for us).
PARENT_TAG = "ebsfs:parent"


@dataclass(frozen=True)
class SnapshotInfo:
    """One snapshot as EC2 DescribeSnapshots (or StartSnapshot) describes it."""

    snapshot_id: str
    state: str  # pending | completed | error
    volume_size: int  # GiB
    start_time: float  # epoch seconds
    description: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    progress: str = ""
    owner_id: str = ""
    state_message: str = ""
    encrypted: bool = False
    parent: str = ""  # ParentSnapshotId when known (StartSnapshot answers carry it)
    #: ``standard`` or ``archive``: the EBS direct APIs cannot read an archived snapshot.
    storage_tier: str = "standard"
    #: Set for an Outposts local snapshot, which the EBS direct APIs cannot read either.
    outpost_arn: str = ""
    #: Epoch seconds EC2 says it completed (0: not completed, or not said).
    completion_time: float = 0.0

    @property
    def name(self) -> str:
        """The Name tag, or ""."""
        return self.tags.get("Name", "")


@dataclass(frozen=True)
class BlockPage:
    """One page of ListSnapshotBlocks: ``(index, token)`` pairs in ascending index order."""

    blocks: list[tuple[int, str]]
    expiry: float  # epoch seconds; for an empty page AWS answers about "now"
    next_token: str | None
    volume_size: int  # GiB


@dataclass(frozen=True)
class ChangedPage:
    """One page of ListChangedBlocks: ``(index, first_token, second_token)``; may be empty
    while ``next_token`` is set."""

    changed: list[tuple[int, str | None, str | None]]
    expiry: float
    next_token: str | None



def epoch(value: Any) -> float:
    if value is None:
        return 0.0
    if hasattr(value, "timestamp"):
        return float(value.timestamp())
    return float(value)


def tags_of(items: Iterable[dict[str, str]] | None) -> dict[str, str]:
    return {t["Key"]: t.get("Value", "") for t in items or ()}


def ec2_info(item: dict[str, Any]) -> SnapshotInfo:
    return SnapshotInfo(
        snapshot_id=item["SnapshotId"],
        state=str(item.get("State", "")),
        volume_size=int(item.get("VolumeSize", 0)),
        start_time=epoch(item.get("StartTime")),
        description=str(item.get("Description", "")),
        tags=tags_of(item.get("Tags")),
        progress=str(item.get("Progress", "")),
        owner_id=str(item.get("OwnerId", "")),
        state_message=str(item.get("StateMessage", "")),
        encrypted=bool(item.get("Encrypted", False)),
        parent=tags_of(item.get("Tags")).get(PARENT_TAG, ""),
        storage_tier=str(item.get("StorageTier") or "standard"),
        outpost_arn=str(item.get("OutpostArn") or ""),
        completion_time=epoch(item.get("CompletionTime")),
    )


def parse_owner(owner: str) -> tuple[list[str], bool]:
    """``--owner``: comma-separated ``self``, 12-digit account ids and ``shared`` (what
    others shared with this account) -> (OwnerIds, whether to list the shared ones).
    Anything that would list public snapshots (``all``, ``amazon``) is refused."""
    owners: list[str] = []
    shared = False
    for item in (part.strip() for part in (owner or "self").split(",")):
        if item == "shared":
            shared = True
        elif item == "self" or (len(item) == 12 and item.isascii() and item.isdigit()):
            if item not in owners:
                owners.append(item)
        else:
            raise UsageError(
                f"--owner: expected self, shared or a 12-digit account id "
                f"(comma-separated), not {item!r}"
            )
    return owners, shared


def group_filters(filters: Iterable[tuple[str, str]]) -> list[dict[str, Any]]:
    grouped: dict[str, list[str]] = {}
    for name, value in filters:
        grouped.setdefault(name, []).append(value)
    return [{"Name": n, "Values": v} for n, v in grouped.items()]

