"""The EC2 snapshot calls (query protocol), answered in EC2's XML as ebs-direct-api.md §7
describes: DescribeSnapshots, DeleteSnapshot, CreateTags, DeleteTags here, the tier and
permission calls in ec2attrs.py."""

import logging
import re
import time
from urllib.parse import parse_qsl

from ebsfs.core.blocks import BLOCK_SIZE
from ebsfs.server import tokens
from ebsfs.server.ec2attrs import SnapshotAttributes
from ebsfs.server.ec2base import CALLER, XMLNS, N, indexed, iso
from ebsfs.server.ec2filters import FILTER_NAMES, glob_match, parse_filters
from ebsfs.server.errors import Ec2Error
from ebsfs.server.storage import COMPLETED, ERROR, Snapshot
from ebsfs.server.wire import XML_INVALID_TEXT, Request, Response, xml_escape, xml_unsafe

log = logging.getLogger(__name__)

VOLUME_ID = "vol-ffffffff"
_TAG = re.compile(rf"Tag\.{N}\.(Key|Value)")
_MAX_RESULTS = re.compile(r"-?[0-9]{1,9}")
MAX_TAGS = 50
DESCRIBE_TOKEN_TTL = 3600.0


class Ec2Service(SnapshotAttributes):
    """Handlers of the EC2 snapshot calls (dispatched by Action)."""

    @staticmethod
    def params(req: Request) -> dict[str, str]:
        """The query string and the form body together."""
        out = dict(parse_qsl(req.raw_query, keep_blank_values=True))
        if req.body:
            try:
                text = bytes(req.body).decode("utf-8")
                out.update(parse_qsl(text, keep_blank_values=True, strict_parsing=False))
            except UnicodeDecodeError:
                raise Ec2Error("InvalidParameterValue", "The request body is not UTF-8.") from None
        return out

    def handle(self, req: Request, params: dict[str, str]) -> Response:
        action = params.get("Action")
        if not action:
            raise Ec2Error("MissingParameter", "The request must contain the parameter Action")
        handler = getattr(self, "op_" + action, None)
        if handler is None:
            raise Ec2Error(
                "InvalidAction", f"The action {action} is not valid for this web service."
            )
        CALLER.set(req.account)
        body: str = handler(params)
        xml = (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<{action}Response xmlns="{XMLNS}">'
            f"<requestId>{req.request_id}</requestId>{body}</{action}Response>"
        )
        return Response(200, [("Content-Type", "text/xml;charset=UTF-8")], xml.encode())

    def _item(self, snap: Snapshot) -> str:
        status, message = self.state(snap)
        parts = [
            f"<snapshotId>{snap.snapshot_id}</snapshotId>",
            f"<volumeId>{VOLUME_ID}</volumeId>",
            f"<status>{status}</status>",
        ]
        if status == ERROR:
            parts.append(f"<statusMessage>{xml_escape(message)}</statusMessage>")
        parts += [
            f"<startTime>{iso(snap.start_time)}</startTime>",
            f"<progress>{'100%' if status == COMPLETED else '0%'}</progress>",
            f"<ownerId>{snap.owner_id}</ownerId>",
            f"<volumeSize>{snap.volume_size}</volumeSize>",
        ]
        if snap.description is not None:
            parts.append(f"<description>{xml_escape(snap.description)}</description>")
        parts.append(f"<encrypted>{'true' if snap.encrypted else 'false'}</encrypted>")
        if snap.kms_key_arn:
            parts.append(f"<kmsKeyId>{xml_escape(snap.kms_key_arn)}</kmsKeyId>")
        if snap.tags:
            tags = "".join(
                f"<item><key>{xml_escape(k)}</key><value>{xml_escape(v)}</value></item>"
                for k, v in snap.tags
            )
            parts.append(f"<tagSet>{tags}</tagSet>")
        parts.append(f"<storageTier>{snap.storage_tier(time.time())}</storageTier>")
        if snap.restore_expiry is not None and snap.storage_tier(time.time()) == "standard":
            parts.append(f"<restoreExpiryTime>{iso(snap.restore_expiry)}</restoreExpiryTime>")
        if status == COMPLETED:
            done = snap.completion_time()
            if done is not None:
                parts.append(f"<completionTime>{iso(done)}</completionTime>")
            parts.append(
                f"<fullSnapshotSizeInBytes>{snap.full_blocks * BLOCK_SIZE}"
                "</fullSnapshotSizeInBytes>"
            )
        return "<item>" + "".join(parts) + "</item>"

    def _field(self, snap: Snapshot, name: str) -> list[str]:
        """The values a filter name compares against for this snapshot."""
        status = self.state(snap)[0]
        if name.startswith("tag:"):
            key = name[4:]
            return [v for k, v in snap.tags if k == key]
        return {
            "description": [snap.description or ""],
            "encrypted": ["true" if snap.encrypted else "false"],
            "owner-alias": [],
            "owner-id": [snap.owner_id],
            "progress": ["100%" if status == COMPLETED else "0%"],
            "snapshot-id": [snap.snapshot_id],
            "start-time": [iso(snap.start_time)],
            "status": [status],
            "storage-tier": [snap.storage_tier(time.time())],
            "tag-key": [k for k, _ in snap.tags],
            "volume-id": [VOLUME_ID],
            "volume-size": [str(snap.volume_size)],
        }[name]

    # -- DescribeSnapshots ----------------------------------------------------------------------

    def op_DescribeSnapshots(self, params: dict[str, str]) -> str:
        owners = indexed(params, "Owner")
        ids = indexed(params, "SnapshotId")
        restorable = indexed(params, "RestorableBy")
        filters = parse_filters(params)
        for name, _ in filters:
            if name not in FILTER_NAMES and not (name.startswith("tag:") and len(name) > 4):
                raise Ec2Error("InvalidParameterValue", f"The filter '{name}' is invalid")
        raw_max = params.get("MaxResults")
        max_results = None
        if raw_max is not None:
            if ids:
                raise Ec2Error(
                    "InvalidParameterCombination",
                    "The parameter SnapshotIds cannot be used with the parameter MaxResults",
                )
            if not _MAX_RESULTS.fullmatch(raw_max):
                raise Ec2Error(
                    "InvalidParameterValue",
                    f"Value ({raw_max}) for parameter maxResults is invalid. Expecting an integer.",
                )
            max_results = int(raw_max)
            if max_results < 5:
                raise Ec2Error(
                    "InvalidParameterValue",
                    f"Value ( {max_results} ) for parameter maxResults is invalid. "
                    "Expecting a value greater than 5.",
                )
            max_results = min(max_results, 1000)
        wanted = [self._snapshot(i) for i in ids]
        self._dry_run(params)
        candidates = self._candidates(wanted if ids else None, owners, restorable)
        candidates.sort(key=lambda s: (s.start_time, s.snapshot_id))
        token = params.get("NextToken")
        if token:
            pos = self.mint.verify(token, tokens.PAGE_EC2, "DescribeSnapshots")
            if pos is None:
                raise Ec2Error("InvalidParameterValue", f"The token '{token}' is invalid.")
            candidates = candidates[pos:]
            offset = pos
        else:
            offset = 0
        next_token = ""
        if max_results is not None and len(candidates) > max_results:
            # Like EC2, a page scans MaxResults snapshots and then filters them, so a page
            # may hold fewer matches (even none) while a NextToken is present.
            candidates = candidates[:max_results]
            next_token = self.mint.mint(
                tokens.PAGE_EC2,
                "DescribeSnapshots",
                offset + max_results,
                time.time() + DESCRIBE_TOKEN_TTL,
            )
        matches = [s for s in candidates if self._matches(s, filters)]
        items = "".join(self._item(s) for s in matches)
        out = f"<snapshotSet>{items}</snapshotSet>" if items else "<snapshotSet/>"
        if next_token:
            out += f"<nextToken>{next_token}</nextToken>"
        return out

    def _candidates(
        self, wanted: list[Snapshot] | None, owners: list[str], restorable: list[str]
    ) -> list[Snapshot]:
        """The snapshots OwnerIds and RestorableByUserIds select among ``wanted`` (the
        SnapshotIds), else among all the caller can see (own, shared with it, public)."""
        caller = self.caller
        pool = wanted if wanted is not None else [s for s in self.store.live() if self._visible(s)]
        if owners:
            ids = {caller if o == "self" else o for o in owners}
            pool = [s for s in pool if s.owner_id in ids]
        if restorable:
            pool = [s for s in pool if any(self._restorable_by(s, r) for r in restorable)]
        return pool

    def _restorable_by(self, snap: Snapshot, who: str) -> bool:
        """AWS: ``self`` (or the caller's id) is what it owns or was explicitly granted,
        ``all`` the public ones, another id the caller's own shared with that id."""
        caller = self.caller
        if who in ("self", caller):
            return snap.owner_id == caller or caller in snap.shared_with
        if who == "all":
            return snap.public
        return snap.owner_id == caller and who in snap.shared_with

    def _matches(self, snap: Snapshot, filters: list[tuple[str, list[str]]]) -> bool:
        for name, values in filters:
            have = self._field(snap, name)
            if not any(glob_match(v, h) for v in values for h in have):
                return False
        return True

    # -- DeleteSnapshot -------------------------------------------------------------------------

    def op_DeleteSnapshot(self, params: dict[str, str]) -> str:
        snapshot_id = params.get("SnapshotId")
        if not snapshot_id:
            raise Ec2Error("MissingParameter", "The request must contain the parameter SnapshotId")
        snap = self._owned(snapshot_id)
        self._dry_run(params)
        self.store.delete(snap)
        log.info("deleted snapshot %s (%d GiB)", snap.snapshot_id, snap.volume_size)
        return "<return>true</return>"

    # -- CreateTags / DeleteTags ----------------------------------------------------------------

    def _resources(self, params: dict[str, str]) -> list[Snapshot]:
        ids = indexed(params, "ResourceId")
        if not ids:
            raise Ec2Error("MissingParameter", "The request must contain the parameter ResourceId")
        for rid in ids:
            if not rid.startswith("snap-"):
                raise Ec2Error("InvalidID", f"The ID '{rid}' is not valid")
        return [self._owned(rid) for rid in ids]

    def op_CreateTags(self, params: dict[str, str]) -> str:
        snaps = self._resources(params)
        tags = _tags(params)
        if not tags:
            raise Ec2Error("MissingParameter", "The request must contain the parameter Tag")
        for key, value in tags:
            value = value or ""
            if not key or len(key) > 128:
                raise Ec2Error(
                    "InvalidParameterValue", f"Tag key '{key}' must be 1 to 128 characters long."
                )
            if len(value) > 256:
                raise Ec2Error(
                    "InvalidParameterValue", f"Tag value for key '{key}' exceeds 256 characters."
                )
            if xml_unsafe(key) or xml_unsafe(value):
                raise Ec2Error(
                    "InvalidParameterValue", f"A tag key or value holds {XML_INVALID_TEXT}."
                )
            if key.lower().startswith("aws:"):
                raise Ec2Error(
                    "InvalidParameterValue",
                    "Tag keys starting with 'aws:' are reserved for internal use",
                )
        for snap in snaps:
            if len({k for k, _ in snap.tags} | {k for k, _ in tags}) > MAX_TAGS:
                raise Ec2Error(
                    "TagLimitExceeded",
                    "The maximum number of Tags for a resource has been reached.",
                )
        self._dry_run(params)

        def add(snap: Snapshot) -> None:
            merged = dict(snap.tags)
            merged.update((k, v or "") for k, v in tags)
            snap.tags = list(merged.items())

        # One transaction for all of them, published only once it is committed.
        self.store.update(snaps, add)
        return "<return>true</return>"

    def op_DeleteTags(self, params: dict[str, str]) -> str:
        snaps = self._resources(params)
        tags = _tags(params)
        self._dry_run(params)

        def remove(snap: Snapshot) -> None:
            snap.tags = [
                (k, v)
                for k, v in snap.tags
                if tags and not any(k == dk and (dv is None or dv == v) for dk, dv in tags)
            ]

        self.store.update(snaps, remove)
        return "<return>true</return>"


def _tags(params: dict[str, str]) -> list[tuple[str, str | None]]:
    keys: dict[int, str] = {}
    vals: dict[int, str] = {}
    for key, value in params.items():
        m = _TAG.fullmatch(key)
        if m:
            (keys if m.group(2) == "Key" else vals)[int(m.group(1))] = value
    return [(keys[n], vals.get(n)) for n in sorted(keys)]
