"""The EC2 calls on a snapshot's attributes: its storage tier (ModifySnapshotTier,
RestoreSnapshotTier) and who may use it (ModifySnapshotAttribute,
DescribeSnapshotAttribute); docs/server.md, "Archive tier" and "Two accounts"."""

import time

from ebsfs.server.ebs import DEFAULT_KMS_KEY_ARN
from ebsfs.server.ec2base import Ec2Base, indexed, iso, required
from ebsfs.server.errors import Ec2Error
from ebsfs.server.storage import COMPLETED, Snapshot

#: ModifySnapshotAttribute: "up to 500 modifications to a snapshot in a single operation".
MAX_PERMISSION_CHANGES = 500
#: RestoreSnapshotTier's TemporaryRestoreDays bounds (botocore's model: min 1; AWS: 180 max).
RESTORE_DAYS = (1, 180)


class SnapshotAttributes(Ec2Base):
    """Handlers of the tier and permission calls."""

    # -- ModifySnapshotTier / RestoreSnapshotTier -----------------------------------------------

    def op_ModifySnapshotTier(self, params: dict[str, str]) -> str:
        """Archive a completed snapshot. AWS moves it over hours; here it is archived at
        once (docs/server.md), and the direct APIs refuse it from then on."""
        snap = self._owned(required(params, "SnapshotId"))
        tier = params.get("StorageTier", "archive")
        if tier != "archive":
            raise Ec2Error(
                "InvalidParameterValue",
                f"Value ({tier}) for parameter StorageTier is invalid. Expected: 'archive'.",
            )
        now = time.time()
        if self.state(snap)[0] != COMPLETED:
            raise Ec2Error(
                "IncorrectState", f"Snapshot {snap.snapshot_id} is not in the completed state."
            )
        if snap.storage_tier(now) == "archive":
            raise Ec2Error(
                "IncorrectState", f"Snapshot {snap.snapshot_id} is already archived."
            )
        self._dry_run(params)

        def archive(new: Snapshot) -> None:
            new.archived = True
            new.tiering_start = now
            new.restore_start = new.restore_expiry = None

        # Built on a copy and published once committed (Store.update), as every change.
        self.store.update([snap], archive)
        return (
            f"<snapshotId>{snap.snapshot_id}</snapshotId>"
            f"<tieringStartTime>{iso(now)}</tieringStartTime>"
        )

    def op_RestoreSnapshotTier(self, params: dict[str, str]) -> str:
        """Restore an archived snapshot for some days or for good (at once here, where AWS
        takes hours); a temporary restore may be changed by a second call, as on AWS."""
        snap = self._owned(required(params, "SnapshotId"))
        raw_days = params.get("TemporaryRestoreDays")
        permanent = params.get("PermanentRestore", "false").lower() == "true"
        days = None
        if raw_days is not None:
            try:
                days = int(raw_days)
            except ValueError:
                days = -1
            if not RESTORE_DAYS[0] <= days <= RESTORE_DAYS[1]:
                raise Ec2Error(
                    "InvalidParameterValue",
                    f"Value ({raw_days}) for parameter TemporaryRestoreDays is invalid. "
                    f"Expected a number of days from {RESTORE_DAYS[0]} to {RESTORE_DAYS[1]}.",
                )
        if permanent == (days is not None):
            raise Ec2Error(
                "InvalidParameterCombination",
                "Specify either TemporaryRestoreDays or PermanentRestore=true.",
            )
        if not snap.archived:
            raise Ec2Error(
                "IncorrectState", f"Snapshot {snap.snapshot_id} is not in the archive tier."
            )
        self._dry_run(params)
        now = time.time()

        def restore(new: Snapshot) -> None:
            new.restore_start = now
            if days is None:
                new.archived = False
                new.restore_expiry = None
            else:
                new.restore_expiry = now + days * 86400.0

        self.store.update([snap], restore)
        out = [
            f"<snapshotId>{snap.snapshot_id}</snapshotId>",
            f"<restoreStartTime>{iso(now)}</restoreStartTime>",
        ]
        if days is not None:
            out.append(f"<restoreDuration>{days}</restoreDuration>")
        out.append(f"<isPermanentRestore>{'true' if permanent else 'false'}</isPermanentRestore>")
        return "".join(out)

    # -- ModifySnapshotAttribute / DescribeSnapshotAttribute ------------------------------------

    def op_ModifySnapshotAttribute(self, params: dict[str, str]) -> str:
        """createVolumePermission: share with account ids (or group ``all``: public), or
        stop sharing. Both of botocore's forms are accepted: CreateVolumePermission.Add/
        Remove lists, and OperationType with UserId.N/UserGroup.N."""
        snap = self._owned(required(params, "SnapshotId"))
        attribute = params.get("Attribute", "createVolumePermission")
        if attribute != "createVolumePermission":
            raise Ec2Error(
                "InvalidParameterValue",
                f"Value ({attribute}) for parameter Attribute is invalid. Only "
                "createVolumePermission can be modified.",
            )
        add = _permissions(params, "CreateVolumePermission.Add")
        remove = _permissions(params, "CreateVolumePermission.Remove")
        listed = [("user", u) for u in indexed(params, "UserId")]
        listed += [("group", g) for g in indexed(params, "UserGroup")]
        if listed:
            operation = params.get("OperationType")
            if operation not in ("add", "remove"):
                raise Ec2Error(
                    "InvalidParameterValue",
                    f"Value ({operation}) for parameter OperationType is invalid. "
                    "Expected: 'add' or 'remove'.",
                )
            (add if operation == "add" else remove).extend(listed)
        if not add and not remove:
            raise Ec2Error(
                "MissingParameter", "The request must contain the parameter CreateVolumePermission"
            )
        for kind, value in add + remove:
            if kind == "user" and not (len(value) == 12 and value.isdigit()):
                raise Ec2Error("InvalidParameterValue", f"Invalid user id: '{value}'.")
            if kind == "group" and value != "all":
                raise Ec2Error(
                    "InvalidParameterValue",
                    f"Value ({value}) for parameter Group is invalid. Expected: 'all'.",
                )
        if add and remove:
            raise Ec2Error(
                "InvalidParameterCombination",
                "Account ids cannot be added and removed in the same operation.",
            )
        if len(add) + len(remove) > MAX_PERMISSION_CHANGES:
            raise Ec2Error(
                "InvalidParameterValue",
                f"At most {MAX_PERMISSION_CHANGES} modifications may be made in one operation.",
            )
        if snap.kms_key_arn == DEFAULT_KMS_KEY_ARN and any(k == "user" for k, _ in add):
            # AWS (ModifySnapshotAttribute): "Snapshots encrypted with your default KMS key
            # cannot be shared with other accounts." The error code is our choice.
            raise Ec2Error(
                "InvalidParameterValue",
                f"Snapshot {snap.snapshot_id} is encrypted with the default KMS key; snapshots "
                "encrypted with it cannot be shared with other accounts.",
            )
        if snap.encrypted and ("group", "all") in add:
            raise Ec2Error(
                "InvalidParameterValue", "Encrypted snapshots with EBS default key cannot be "
                "shared publicly; an encrypted snapshot cannot be made public."
            )
        self._dry_run(params)

        def share(new: Snapshot) -> None:
            shared = list(new.shared_with)
            for kind, value in add:
                if kind == "user" and value not in shared:
                    shared.append(value)
                elif kind == "group":
                    new.public = True
            for kind, value in remove:
                if kind == "user" and value in shared:
                    shared.remove(value)
                elif kind == "group":
                    new.public = False
            new.shared_with = shared

        self.store.update([snap], share)
        return "<return>true</return>"

    def op_DescribeSnapshotAttribute(self, params: dict[str, str]) -> str:
        snap = self._owned(required(params, "SnapshotId"))
        attribute = required(params, "Attribute")
        if attribute not in ("createVolumePermission", "productCodes"):
            raise Ec2Error(
                "InvalidParameterValue",
                f"Value ({attribute}) for parameter Attribute is invalid.",
            )
        self._dry_run(params)
        out = f"<snapshotId>{snap.snapshot_id}</snapshotId>"
        if attribute == "productCodes":
            return out + "<productCodes/>"
        items = [f"<item><userId>{u}</userId></item>" for u in snap.shared_with]
        if snap.public:
            items.append("<item><group>all</group></item>")
        if not items:
            return out + "<createVolumePermission/>"
        return out + "<createVolumePermission>" + "".join(items) + "</createVolumePermission>"


def _permissions(params: dict[str, str], prefix: str) -> list[tuple[str, str]]:
    """(``user``|``group``, value) of ``<prefix>.N.UserId`` / ``<prefix>.N.Group``."""
    found = []
    for key, value in params.items():
        head, _, tail = key.rpartition(".")
        number = head[len(prefix) + 1:]
        if head.startswith(prefix + ".") and number.isdigit() and tail in ("UserId", "Group"):
            found.append((int(number), "user" if tail == "UserId" else "group", value))
    return [(kind, value) for _, kind, value in sorted(found)]
