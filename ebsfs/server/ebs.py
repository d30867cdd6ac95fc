"""The EBS direct APIs (rest-json) as ebs-direct-api.md §3–§6 describes AWS: routing and the
calls that write (StartSnapshot, PutSnapshotBlock, CompleteSnapshot); the reads are in
ebsreads.py. Checks run in AWS's order (docs/server.md); nothing is stored before all pass."""

import base64
import hashlib
import json
import logging
import re
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any

from ebsfs.core import checksum
from ebsfs.core.blocks import BLOCK_SIZE, MAX_VOLUME_GIB
from ebsfs.server import tokens
from ebsfs.server.ebsreads import SnapshotReads
from ebsfs.server.errors import EbsError, coral, not_found, validation
from ebsfs.server.storage import COMPLETED, ERROR, PENDING, Refused, Snapshot, Store
from ebsfs.server.validate import (
    ANY_TEXT_PATTERN,
    CHECKSUM_PATTERN,
    CLIENT_TOKEN_PATTERN,
    KMS_ARN_PATTERN,
    SNAPSHOT_ID_PATTERN,
    Checks,
    plain_int,
    serialization,
    to_int,
)
from ebsfs.server.wire import (
    ACCOUNT_ID,
    XML_INVALID_TEXT,
    Request,
    Response,
    json_response,
    xml_unsafe,
)

log = logging.getLogger(__name__)

BLOCK_TOKEN_TTL = 7 * 24 * 3600.0
PAGE_TOKEN_TTL = 3600.0
COUNT_MISMATCH = "Changed blocks count mismatch for snapshot"
CHECKSUM_MISMATCH = "Checksum mismatch for snapshot"
#: The account's default EBS key under ``--encryption-by-default`` (no KMS here: a name only).
DEFAULT_KMS_KEY_ARN = f"arn:aws:kms:us-east-1:{ACCOUNT_ID}:key/ebd0c0de-0000-4000-8000-000000000001"

_ROUTES = [
    ("POST", re.compile(r"^/snapshots$"), "StartSnapshot"),
    ("PUT", re.compile(r"^/snapshots/([^/]*)/blocks/([^/]*)$"), "PutSnapshotBlock"),
    ("GET", re.compile(r"^/snapshots/([^/]*)/blocks/([^/]*)$"), "GetSnapshotBlock"),
    ("GET", re.compile(r"^/snapshots/([^/]*)/blocks$"), "ListSnapshotBlocks"),
    ("GET", re.compile(r"^/snapshots/([^/]*)/changedblocks$"), "ListChangedBlocks"),
    ("POST", re.compile(r"^/snapshots/completion/([^/]*)$"), "CompleteSnapshot"),
]


_SNAPSHOT_ID_RE = re.compile(SNAPSHOT_ID_PATTERN)
_CHECKSUM_RE = re.compile(CHECKSUM_PATTERN)
_BLOCK_SIZE_TEXT = str(BLOCK_SIZE)


def route(req: Request) -> tuple[str, tuple[str, ...]]:
    """The operation a request names and its path parameters; UnknownOperation otherwise."""
    path = req.path
    for method, pattern, name in _ROUTES:
        m = pattern.fullmatch(path)
        if m and req.method == method:
            return name, m.groups()
    raise coral(404, "UnknownOperationException", f"No operation matches {req.method} {path}")


@dataclass(frozen=True)
class Timing:
    """Clock-related settings: token lifetimes, completion delay, length of a Timeout minute."""

    block_token_ttl: float = BLOCK_TOKEN_TTL
    page_token_ttl: float = PAGE_TOKEN_TTL
    complete_delay: float = 0.0
    minute: float = 60.0
    #: Seconds after ``completed`` during which reads still answer 404 (``--read-lag``).
    read_lag: float = 0.0


class EbsService(SnapshotReads):
    """Handlers of the EBS direct APIs over a Store."""

    def __init__(self, store: Store, timing: Timing, encryption_by_default: bool = False) -> None:
        self.store = store
        self.timing = timing
        #: The key every new snapshot is encrypted with unless asked for another; None:
        #: encryption only on request (``--encryption-by-default`` sets it).
        self.default_key: str | None = DEFAULT_KMS_KEY_ARN if encryption_by_default else None
        self.mint = tokens.TokenMint(store.token_key)
        self._start_lock = threading.Lock()

    # -- helpers ------------------------------------------------------------------------------

    def _own(self, snapshot_id: str, account: str) -> Snapshot:
        """A snapshot of ``account`` (writes); another account's reads as 404."""
        snap = self.store.get(snapshot_id)
        if snap is None or snap.owner_id != account:
            raise not_found(snapshot_id)
        return snap

    def handle(self, req: Request, operation: str, params: tuple[str, ...]) -> Response:
        handler = getattr(self, "op_" + operation)
        result: Response = handler(req, *params)
        return result

    # -- StartSnapshot --------------------------------------------------------------------------

    def op_StartSnapshot(self, req: Request) -> Response:
        try:
            doc = json.loads(bytes(req.body) or b"{}")
        except (ValueError, UnicodeDecodeError, RecursionError):
            # RecursionError: nesting deeper than the parser's stack ("[[[[...").
            raise serialization("Start of structure or map found where not expected.") from None
        if not isinstance(doc, dict):
            raise serialization("Start of structure or map found where not expected.")
        volume_size = _typed(doc, "VolumeSize", int)
        timeout = _typed(doc, "Timeout", int)
        client_token = _typed(doc, "ClientToken", str)
        description = _typed(doc, "Description", str)
        parent_id = _typed(doc, "ParentSnapshotId", str)
        encrypted = _typed(doc, "Encrypted", bool)
        kms = _typed(doc, "KmsKeyArn", str)
        raw_tags = doc.get("Tags")
        if raw_tags is not None and not isinstance(raw_tags, list):
            raise serialization("Expected list or null for 'Tags'.")
        tags: list[tuple[str, str]] = []
        c = Checks()
        if c.required(volume_size, "volumeSize"):
            c.at_least(volume_size, "volumeSize", 1)
        c.between(timeout, "timeout", 10, 4320)
        c.length(client_token, "clientToken", 1, 255)
        c.pattern(client_token, "clientToken", CLIENT_TOKEN_PATTERN)
        c.length(description, "description", 0, 255)
        c.pattern(description, "description", ANY_TEXT_PATTERN)
        c.snapshot_id(parent_id, "parentSnapshotId")
        c.length(kms, "kmsKeyArn", 1, 2048)
        c.pattern(kms, "kmsKeyArn", KMS_ARN_PATTERN)
        for n, item in enumerate(raw_tags or [], 1):
            if not isinstance(item, dict):
                raise serialization("Expected a structure for a member of 'Tags'.")
            key, value = _typed(item, "Key", str), _typed(item, "Value", str)
            c.length(key, f"tags.{n}.member.key", 0, 127)
            c.pattern(key, f"tags.{n}.member.key", ANY_TEXT_PATTERN)
            c.length(value, f"tags.{n}.member.value", 0, 255)
            c.pattern(value, f"tags.{n}.member.value", r"^[\S\s]*$")
            tags.append((key or "", value or ""))
        c.done()
        assert volume_size is not None
        # Each of these comes back in DescribeSnapshots' XML.
        for name, text in [("description", description), ("kmsKeyArn", kms)] + [
            (f"tags.{n}.member.{part}", t)
            for n, (k, v) in enumerate(tags, 1) for part, t in (("key", k), ("value", v))
        ]:
            if xml_unsafe(text):
                raise validation("INVALID_PARAMETER_VALUE",
                                 f"Value at '{name}' holds {XML_INVALID_TEXT}.")
        if len(tags) > 50:
            raise validation("INVALID_TAG", "The number of tags exceeds the limit of 50.")
        for key, _ in tags:
            if not key or key.lower().startswith("aws:"):
                raise validation("INVALID_TAG", f"The tag key '{key}' is not valid.")
        if volume_size > MAX_VOLUME_GIB:
            raise validation(
                "INVALID_VOLUME_SIZE",
                f"Volume size {volume_size} GiB exceeds the maximum of {MAX_VOLUME_GIB} GiB.",
            )
        if parent_id is not None and encrypted:
            raise validation(
                "INVALID_PARAMETER_VALUE",
                "Encrypted cannot be specified together with ParentSnapshotId; the snapshot "
                "inherits the parent's encryption.",
            )
        fingerprint = json.dumps(
            [volume_size, timeout, description, parent_id, encrypted, kms, tags]
        )
        with self._start_lock:
            if client_token is not None:
                known = self.store.client_token(client_token)
                if known is not None:
                    if known[0] != fingerprint:
                        raise EbsError(
                            409,
                            "ConflictException",
                            "Current request does not match request stored with this token.",
                        )
                    return json_response(201, json.loads(known[1]), req.request_id)
            parent = None
            if parent_id is not None:
                parent = self.store.get(parent_id)
                if (
                    parent is None
                    or not parent.may_read(req.account)
                    or self.state(parent)[0] == ERROR
                ):
                    raise not_found(parent_id)
                if self.state(parent)[0] != COMPLETED:
                    raise validation(
                        "INVALID_SNAPSHOT_ID", f"Source snapshot ({parent_id}) is not complete."
                    )
                if volume_size < parent.volume_size:
                    raise validation(
                        "INVALID_VOLUME_SIZE",
                        f"Volume size {volume_size} GiB is smaller than the size of the "
                        f"parent snapshot ({parent.volume_size} GiB).",
                    )
                if self.default_key is not None and not parent.encrypted:
                    # AWS: with encryption by default, an unencrypted parent must first be
                    # copied encrypted (ValidationException; Reason and text unobserved).
                    raise validation(
                        "INVALID_PARAMETER_VALUE",
                        f"Parent snapshot ({parent_id}) is not encrypted, and encryption by "
                        "default is enabled for this account.",
                    )
            now = time.time()
            snap = Snapshot(
                snapshot_id="snap-" + secrets.token_hex(9)[:17],
                volume_size=volume_size,
                owner_id=req.account,
                start_time=round(now, 3),
                timeout_minutes=timeout if timeout is not None else 60,
                last_activity=now,
                description=description,
                tags=tags,
                parent_id=parent_id,
                root_id=parent.root_id if parent is not None else "",
                encrypted=bool(encrypted) or bool(parent and parent.encrypted),
                kms_key_arn=kms if kms is not None else (parent.kms_key_arn if parent else None),
            )
            if self.default_key is not None:
                # Every new snapshot is encrypted (Encrypted=false included); a child
                # reaching here has an encrypted parent and keeps its key.
                snap.encrypted = True
            if snap.encrypted and snap.kms_key_arn is None:
                # AWS encrypts with the account's default key when none is named.
                snap.kms_key_arn = DEFAULT_KMS_KEY_ARN
            if not snap.root_id:
                snap.root_id = snap.snapshot_id
            body = {
                "BlockSize": BLOCK_SIZE,
                "Description": description,
                "KmsKeyArn": snap.kms_key_arn,
                "OwnerId": req.account,
                "ParentSnapshotId": parent_id,
                "SnapshotId": snap.snapshot_id,
                "SseType": "sse-kms" if snap.encrypted else None,
                "StartTime": snap.start_time,
                "Status": PENDING,
                "Tags": [{"Key": k, "Value": v} for k, v in tags] if tags else None,
                "VolumeSize": volume_size,
            }
            self.store.create(snap, client_token, fingerprint, json.dumps(body))
        log.info("started %s (%d GiB, parent %s)", snap.snapshot_id, volume_size, parent_id)
        return json_response(201, body, req.request_id)

    # -- PutSnapshotBlock -----------------------------------------------------------------------

    def op_PutSnapshotBlock(self, req: Request, snapshot_id: str, raw_index: str) -> Response:
        h = req.headers
        index = to_int(raw_index, "blockIndex")
        data_length = to_int(h.get("x-amz-data-length"), "dataLength")
        progress = to_int(h.get("x-amz-progress"), "progress")
        sent = h.get("x-amz-checksum")
        algorithm = h.get("x-amz-checksum-algorithm")
        c = Checks()
        c.snapshot_id(snapshot_id, "snapshotId")
        if c.required(index, "blockIndex"):
            c.at_least(index, "blockIndex", 0)
        c.required(data_length, "dataLength")
        if c.required(sent, "checksum"):
            c.length(sent, "checksum", 0, 64)
            c.pattern(sent, "checksum", CHECKSUM_PATTERN)
        c.required(algorithm, "checksumAlgorithm")
        c.between(progress, "progress", 0, 100)
        c.done()
        assert index is not None and data_length is not None and sent is not None
        snap = self._own(snapshot_id, req.account)
        status = self.state(snap)[0]
        if status == ERROR:
            raise not_found(snapshot_id)
        if snap.sealed:
            raise validation("INVALID_SNAPSHOT_ID", "Snapshot is already completed")
        if index >= snap.block_count:
            raise validation(
                "INVALID_BLOCK", f"Block index {index} is beyond the volume size extent"
            )
        if not req.body_complete or len(req.body) < BLOCK_SIZE:
            raise validation("INVALID_PARAMETER_VALUE", "Failed to read block data")
        if data_length != BLOCK_SIZE or len(req.body) != BLOCK_SIZE:
            shown = data_length if data_length != BLOCK_SIZE else len(req.body)
            raise validation(
                "INVALID_BLOCK", f"Block data length {shown} is not valid, expected {BLOCK_SIZE}"
            )
        if algorithm != "SHA256":
            raise validation(
                "INVALID_PARAMETER_VALUE",
                f"Unsupported Checksum Algorithm '{algorithm}', supported algorithms are SHA256",
            )
        raw = hashlib.sha256(req.body).digest()
        computed = base64.b64encode(raw).decode()
        if computed != sent:
            raise coral(
                403,
                "InvalidSignatureException",
                "The value passed in as x-amz-Checksum does not match the computed checksum. "
                f"Computed checksum: {computed} expected checksum: {sent}",
            )
        try:
            self.store.put_block(snap, index, req.body, raw)
        except Refused as exc:
            if exc.why == "deleted":
                raise not_found(snapshot_id) from None
            raise validation("INVALID_SNAPSHOT_ID", "Snapshot is already completed") from None
        resp = json_response(201, {}, req.request_id)
        resp.headers += [("x-amz-Checksum", computed), ("x-amz-Checksum-Algorithm", "SHA256")]
        return resp

    def put_fast(self, req: Request, snapshot_id: str, raw_index: str) -> Response | None:
        """PutSnapshotBlock when everything about it is in order (the common case), with
        the same checks and answer as ``op_PutSnapshotBlock`` but none of its generic
        machinery; None, having changed nothing, when anything is off: the general path
        then answers (and words the error)."""
        h = req.headers
        index = plain_int(raw_index)
        sent = h.get("x-amz-checksum")
        progress = h.get("x-amz-progress")
        if (
            index is None
            or sent is None
            or h.get("x-amz-data-length") != _BLOCK_SIZE_TEXT
            or h.get("x-amz-checksum-algorithm") != "SHA256"
            or len(sent) > 64
            or not _CHECKSUM_RE.fullmatch(sent)
            or len(snapshot_id) > 64
            or not _SNAPSHOT_ID_RE.fullmatch(snapshot_id)
            or (progress is not None and (plain_int(progress) or 0) > 100)
            or (progress is not None and plain_int(progress) is None)
            or not req.body_complete
            or len(req.body) != BLOCK_SIZE
        ):
            return None
        snap = self.store.get(snapshot_id)
        if snap is None or snap.sealed or index >= snap.block_count:
            return None
        if snap.owner_id != req.account:
            return None
        if self.state(snap)[0] == ERROR:
            return None
        raw = hashlib.sha256(req.body).digest()
        computed = base64.b64encode(raw).decode()
        if computed != sent:
            return None
        try:
            self.store.put_block(snap, index, req.body, raw)
        except Refused:
            return None  # nothing was stored; the general path words the refusal
        return Response(
            201,
            [
                ("Content-Type", "application/json"),
                ("x-amzn-RequestId", req.request_id),
                ("x-amz-Checksum", computed),
                ("x-amz-Checksum-Algorithm", "SHA256"),
            ],
            b"{}",
        )

    # -- CompleteSnapshot -----------------------------------------------------------------------

    def op_CompleteSnapshot(self, req: Request, snapshot_id: str) -> Response:
        h = req.headers
        count = to_int(h.get("x-amz-changedblockscount"), "changedBlocksCount")
        sent = h.get("x-amz-checksum")
        algorithm = h.get("x-amz-checksum-algorithm")
        method = h.get("x-amz-checksum-aggregation-method")
        c = Checks()
        c.snapshot_id(snapshot_id, "snapshotId")
        if c.required(count, "changedBlocksCount"):
            c.at_least(count, "changedBlocksCount", 0)
        c.length(sent, "checksum", 0, 64)
        c.pattern(sent, "checksum", CHECKSUM_PATTERN)
        c.enum(algorithm, "checksumAlgorithm", ["SHA256"])
        c.enum(method, "checksumAggregationMethod", ["LINEAR"])
        c.done()
        snap = self._own(snapshot_id, req.account)
        status = self.state(snap)[0]
        if status == ERROR or snap.sealed:
            return json_response(202, {"Status": status}, req.request_id)
        if sent is not None and algorithm is None:
            raise validation(
                "INVALID_PARAMETER_VALUE",
                "Invalid parameter combination. Checksum algorithm is missing.",
            )
        if sent is None and (algorithm is not None or method is not None):
            raise validation(
                "INVALID_PARAMETER_VALUE",
                "Invalid parameter combination. Snapshot checksum is missing.",
            )
        def decide(own: list[tuple[int, bytes]]) -> tuple[str, str]:
            if sent is not None and checksum.linear_aggregate(d for _, d in own) != sent:
                return ERROR, CHECKSUM_MISMATCH
            if count != len(own):
                return ERROR, COUNT_MISMATCH
            return COMPLETED, ""

        if not self.store.seal(snap, decide, time.time() + self.timing.complete_delay):
            # Another CompleteSnapshot sealed it a moment ago.
            return json_response(202, {"Status": self.state(snap)[0]}, req.request_id)
        final, message = snap.final_status, snap.final_message
        log.info("sealed %s: %s %s", snapshot_id, final, message)
        return json_response(202, {"Status": PENDING}, req.request_id)


def _typed(doc: dict[str, Any], key: str, kind: type) -> Any:
    """A JSON member of the given type, or None; another type cannot be deserialised."""
    value = doc.get(key)
    if value is None:
        return None
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise serialization(f"Expected an integer for '{key}'.")
    if not isinstance(value, kind):
        raise serialization(f"Expected a {kind.__name__} for '{key}'.")
    return value
