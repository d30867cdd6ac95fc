"""What every EC2 call shares: the caller's account, the lookups of a snapshot it may see or
owns, DryRun, and the readers of the query protocol's indexed parameters."""

import contextvars
import re
from collections.abc import Callable
from datetime import UTC, datetime

from ebsfs.server import tokens
from ebsfs.server.errors import Ec2Error
from ebsfs.server.storage import Snapshot, Store

XMLNS = "http://ec2.amazonaws.com/doc/2016-11-15/"
_SNAP_ID = re.compile(r"snap-(?:[0-9a-f]{8}|[0-9a-f]{17})")
# List indexes: ASCII digits only, and few enough of them that converting is cheap (a key
# with a longer index names no member and is ignored, as other unknown keys are).
N = "([0-9]{1,9})"
_INDEXED = re.compile(rf"([A-Za-z]+)\.{N}")
CALLER: contextvars.ContextVar[str] = contextvars.ContextVar("caller")


class Ec2Base:
    """The state and lookups of the EC2 handlers over the Store the EBS side uses."""

    def __init__(
        self,
        store: Store,
        account_id: str,
        state: Callable[[Snapshot], tuple[str, str]],
        mint: tokens.TokenMint,
    ) -> None:
        self.store = store
        self.account_id = account_id
        self.state = state
        self.mint = mint

    @property
    def caller(self) -> str:
        """The account the request being answered was signed for."""
        return CALLER.get(self.account_id)

    def _visible(self, snap: Snapshot) -> bool:
        """Whether the caller may see it: owned, shared with the caller, or public."""
        return snap.owner_id == self.caller or self.caller in snap.shared_with or snap.public

    def _owned(self, snapshot_id: str) -> Snapshot:
        """The caller's own snapshot; another account's is NotFound to it, as on AWS."""
        snap = self._snapshot(snapshot_id)
        if snap.owner_id != self.caller:
            raise Ec2Error(
                "InvalidSnapshot.NotFound", f"The snapshot '{snapshot_id}' does not exist."
            )
        return snap

    def _snapshot(self, snapshot_id: str) -> Snapshot:
        if not _SNAP_ID.fullmatch(snapshot_id):
            raise Ec2Error(
                "InvalidParameterValue",
                f"Value ({snapshot_id}) for parameter snapshotId is invalid. Expected: 'snap-...'.",
            )
        snap = self.store.get(snapshot_id)
        if snap is None or not self._visible(snap):
            raise Ec2Error(
                "InvalidSnapshot.NotFound", f"The snapshot '{snapshot_id}' does not exist."
            )
        return snap

    @staticmethod
    def _dry_run(params: dict[str, str]) -> None:
        if params.get("DryRun", "").lower() == "true":
            raise Ec2Error(
                "DryRunOperation", "Request would have succeeded, but DryRun flag is set.", 412
            )


def required(params: dict[str, str], name: str) -> str:
    value = params.get(name)
    if not value:
        raise Ec2Error("MissingParameter", f"The request must contain the parameter {name}")
    return value


def iso(epoch: float) -> str:
    stamp = datetime.fromtimestamp(epoch, UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


def indexed(params: dict[str, str], name: str) -> list[str]:
    """Values of ``Name.1``, ``Name.2``... in index order."""
    found = []
    for key, value in params.items():
        m = _INDEXED.fullmatch(key)
        if m and m.group(1) == name:
            found.append((int(m.group(2)), value))
    return [v for _, v in sorted(found)]
