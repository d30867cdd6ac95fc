"""The EBS direct APIs and the EC2 snapshot calls, as plain synchronous methods.

The only module that makes boto3 clients (``blockcalls`` builds the two block calls from the
ebs client's parts, ``endpoints`` says where they go); every botocore exception is converted in
``convert`` (``raise ... from exc``), so the layers above never see botocore. Retries inside a
call are botocore's ("standard" mode, bounded by ``AwsConfig.max_attempts``); every request has
connect and read timeouts. Methods block: ``ebsfs.aws.runner`` runs them in worker threads.
docs/usage.md says how endpoints and credentials are found.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

import boto3
import botocore.config
import botocore.credentials
import botocore.exceptions
import botocore.parsers

from ebsfs.aws import throttles
from ebsfs.aws.blockcalls import block_calls
from ebsfs.aws.convert import check_page_loop, converted, error_fields, is_answer, raise_converted
from ebsfs.aws.endpoints import Endpoints, new_client, resolve_endpoints
from ebsfs.aws.records import (
    MAX_LIST_RESULTS,
    MIN_LIST_RESULTS,
    PARENT_TAG,
    BlockPage,
    ChangedPage,
    SnapshotInfo,
    ec2_info,
    epoch,
    group_filters,
    parse_owner,
    tags_of,
)
from ebsfs.core import checksum
from ebsfs.core.blocks import BLOCK_SIZE
from ebsfs.core.errors import (
    AccessDeniedError,
    ApiError,
    ChecksumError,
    NotFoundError,
    throttling,
)
from ebsfs.options.config import DEV_ACCESS_KEY_ID, DEV_SECRET_ACCESS_KEY, AwsConfig

log = logging.getLogger(__name__)

__all__ = [
    "Api",
    "ApiFactory",
    "BlockPage",
    "ChangedPage",
    "Endpoints",
    "SnapshotInfo",
    "parse_owner",
    "resolve_endpoints",
]

#: The snapshot ``Api.probe`` asks about: any answer for it (404, 400, 403) shows the endpoint
#: at work.
PROBE_SNAPSHOT = "snap-0000000000000000e"


class Api:
    """boto3 ``ebs`` and ``ec2`` clients behind methods that raise only ``ebsfs.core.errors``."""

    def __init__(self, aws: AwsConfig) -> None:
        with converted("AWS configuration"):
            session = boto3.Session(profile_name=aws.profile, region_name=aws.region)
            self.endpoints = resolve_endpoints(aws, session)
            log.info("endpoint: %s", self.endpoints.describe())
            key_id: str | None = None
            secret: str | None = None
            if session.get_credentials() is None:
                if not self.endpoints.local:
                    # Said here, with the reason AWS was chosen: a region left in a
                    # configuration file is the usual cause.
                    raise AccessDeniedError(
                        f"no usable AWS credentials for {self.endpoints.describe()}; give "
                        "credentials, or set no region to use the local server"
                    )
                key_id, secret = DEV_ACCESS_KEY_ID, DEV_SECRET_ACCESS_KEY
            config = botocore.config.Config(
                region_name=self.endpoints.region,
                retries={"mode": "standard", "max_attempts": aws.max_attempts},
                connect_timeout=aws.connect_timeout,
                read_timeout=aws.read_timeout,
                max_pool_connections=aws.max_pool_connections,
                user_agent_extra="ebsfs",
            )
            self._ebs_args: dict[str, Any] = {
                "endpoint_url": self.endpoints.ebs,
                "config": config,
                "aws_access_key_id": key_id,
                "aws_secret_access_key": secret,
            }
            self.ebs: Any = new_client(session, "ebs", self._ebs_args, self.endpoints)
            #: time.monotonic() of the last HTTP answer any worker thread heard (see
            #: ``last_answer``), the forked upload process's included.
            self._answers = throttles.AnswerClock()
            # First: botocore's retry handler answers the event and later handlers are skipped.
            self.ebs.meta.events.register_first("needs-retry.ebs", self._heard)
            self._probe_ebs: Any = None
            # The ec2 client is made at its first use (loading its model costs about 0.2 s of
            # CPU): a mount given --snapshot ids, and the upload process, never need it.
            self._ec2_args: dict[str, Any] = {
                "endpoint_url": self.endpoints.ec2,
                "config": config,
                "aws_access_key_id": key_id,
                "aws_secret_access_key": secret,
            }
            self._session = session
            self._ec2: Any = None
            self._ec2_lock = threading.Lock()
            # The credentials object the ebs client signs with (refreshable ones refresh).
            credentials = (
                botocore.credentials.Credentials(key_id, secret)
                if key_id and secret
                else session.get_credentials()
            )
            # The lean block calls, or the client's own where this botocore lacks their parts.
            self.blocks = block_calls(self.ebs, credentials)
            if hasattr(self.blocks, "heard"):
                self.blocks.heard = self._heard_status

    # ---- liveness ----------------------------------------------------------------------------

    def last_answer(self) -> float:
        """time.monotonic() of the last HTTP answer that shows the endpoint at work (a 2xx,
        a 4xx, throttling), heard at every attempt, botocore's own retries included: a call
        still in botocore's retry loop under throttling does not make the endpoint look down."""
        return self._answers.last()

    def _heard_status(self, status: int, code: str, ebs: bool = True, reason: str = "") -> None:
        if is_answer(status, code):
            self._answers.heard()
        if ebs and throttling(code):
            # EBS's block-call limits only (EC2 keeps its own).
            throttles.note(reason)  # the call of this thread, by Reason (the runner's windows)

    def _heard(self, response: Any = None, service: str = "", **_: Any) -> None:
        # botocore's needs-retry event, after every attempt; None: no answer (connection).
        if response is None:
            return
        http, parsed = response
        error = (parsed or {}).get("Error") or {}
        code = str(error.get("Code") or "")
        reason = str((parsed or {}).get("Reason") or error.get("Reason") or "")
        status = int(getattr(http, "status_code", 0) or 0)
        self._heard_status(status, code, service != "ec2", reason)

    def _heard_ec2(self, response: Any = None, **_: Any) -> None:
        self._heard(response, "ec2")

    def probe(self, timeout: float) -> None:
        """One cheap request to the ebs endpoint (ListSnapshotBlocks of ``PROBE_SNAPSHOT``),
        one attempt, connect and read timeouts at most ``timeout``: returns once the endpoint
        answered anything but a 5xx; BackendUnavailableError (or ApiError for a 5xx) else."""
        with self._ec2_lock:  # the session is not thread-safe
            if self._probe_ebs is None:
                aws_config = self._ebs_args["config"]
                config = aws_config.merge(
                    botocore.config.Config(
                        retries={"mode": "standard", "total_max_attempts": 1},
                        connect_timeout=min(aws_config.connect_timeout, timeout),
                        read_timeout=min(aws_config.read_timeout, timeout),
                    )
                )
                with converted("AWS configuration"):
                    self._probe_ebs = new_client(
                        self._session, "ebs", {**self._ebs_args, "config": config},
                        self.endpoints,
                    )
            client = self._probe_ebs
        try:
            client.list_snapshot_blocks(SnapshotId=PROBE_SNAPSHOT, MaxResults=MIN_LIST_RESULTS)
        except botocore.exceptions.ClientError as exc:
            code, _, _, status = error_fields(exc)
            if is_answer(status, code):
                return
            raise_converted(exc, "probe (ListSnapshotBlocks)")
        except (botocore.exceptions.BotoCoreError, botocore.parsers.ResponseParserError,
                OSError) as exc:
            raise_converted(exc, "probe (ListSnapshotBlocks)")

    @property
    def ec2(self) -> Any:
        """The boto3 ``ec2`` client (made at the first use; boto3 sessions are not
        thread-safe, hence the lock)."""
        with self._ec2_lock:
            if self._ec2 is None:
                with converted("AWS configuration"):
                    self._ec2 = new_client(self._session, "ec2", self._ec2_args, self.endpoints)
                self._ec2.meta.events.register_first("needs-retry.ec2", self._heard_ec2)
            return self._ec2

    # ---- EC2 -------------------------------------------------------------------------------

    def describe_snapshots(
        self,
        snapshot_ids: Iterable[str] = (),
        owner: str = "self",
        filters: Iterable[tuple[str, str]] = (),
    ) -> list[SnapshotInfo]:
        """Every matching snapshot, all pages followed (filtered pages may be empty).

        Explicit ids are looked up without OwnerIds, so that snapshots shared with this
        account are found too; otherwise ``owner`` (``parse_owner``) picks the listings:
        OwnerIds, and RestorableByUserIds=[self] for ``shared``, merged without duplicates.
        Public snapshots are never listed.
        """
        base: dict[str, Any] = {}
        flt = group_filters(filters)
        if flt:
            base["Filters"] = flt
        ids = list(snapshot_ids)
        if ids:
            return self._describe({**base, "SnapshotIds": ids})
        owners, shared = parse_owner(owner)
        base["MaxResults"] = 1000
        listings = []
        if owners:
            listings.append({**base, "OwnerIds": owners})
        if shared:
            listings.append({**base, "RestorableByUserIds": ["self"]})
        out: dict[str, SnapshotInfo] = {}
        for kwargs in listings:
            for info in self._describe(kwargs):
                out.setdefault(info.snapshot_id, info)
        return list(out.values())

    def check_listing(self, owner: str = "self", filters: Iterable[tuple[str, str]] = ()) -> None:
        """One small DescribeSnapshots page of the listing ``describe_snapshots`` would make:
        its errors (credentials, access, a bad filter, the endpoint) without its pages."""
        owners, shared = parse_owner(owner)
        kwargs: dict[str, Any] = {"MaxResults": 5}
        flt = group_filters(filters)
        if flt:
            kwargs["Filters"] = flt
        if owners:
            kwargs["OwnerIds"] = owners
        elif shared:
            kwargs["RestorableByUserIds"] = ["self"]
        with converted("DescribeSnapshots"):
            self.ec2.describe_snapshots(**kwargs)

    def _describe(self, kwargs: dict[str, Any]) -> list[SnapshotInfo]:
        out: list[SnapshotInfo] = []
        seen: set[str] = set()
        with converted("DescribeSnapshots"):
            for page in self.ec2.get_paginator("describe_snapshots").paginate(**kwargs):
                out.extend(ec2_info(item) for item in page.get("Snapshots", ()))
                check_page_loop(page.get("NextToken"), seen)
        return out

    def describe_snapshot(self, snapshot_id: str) -> SnapshotInfo:
        """One snapshot; NotFoundError if EC2 does not know it."""
        found = self.describe_snapshots([snapshot_id], owner="")
        if not found:
            raise NotFoundError(f"DescribeSnapshots: snapshot {snapshot_id} does not exist")
        return found[0]

    def delete_snapshot(self, snapshot_id: str) -> None:
        """EC2 DeleteSnapshot."""
        with converted(f"DeleteSnapshot {snapshot_id}"):
            self.ec2.delete_snapshot(SnapshotId=snapshot_id)

    def createtags_of(self, snapshot_id: str, tags: dict[str, str]) -> None:
        """EC2 CreateTags (existing keys are overwritten)."""
        with converted(f"CreateTags {snapshot_id}"):
            self.ec2.createtags_of(
                Resources=[snapshot_id], Tags=[{"Key": k, "Value": v} for k, v in tags.items()]
            )

    # ---- EBS read ----------------------------------------------------------------------------

    def list_blocks(
        self,
        snapshot_id: str,
        start_index: int = 0,
        max_results: int = MAX_LIST_RESULTS,
        next_token: str | None = None,
    ) -> BlockPage:
        """One page of ListSnapshotBlocks from ``start_index`` (or ``next_token``)."""
        kwargs: dict[str, Any] = {
            "SnapshotId": snapshot_id,
            "MaxResults": max(MIN_LIST_RESULTS, min(MAX_LIST_RESULTS, max_results)),
            "StartingBlockIndex": start_index,
        }
        if next_token:
            kwargs["NextToken"] = next_token
        with converted(f"ListSnapshotBlocks {snapshot_id}"):
            r = self.ebs.list_snapshot_blocks(**kwargs)
        return BlockPage(
            blocks=[(int(b["BlockIndex"]), str(b["BlockToken"])) for b in r.get("Blocks", ())],
            expiry=epoch(r.get("ExpiryTime")),
            next_token=r.get("NextToken") or None,
            volume_size=int(r.get("VolumeSize", 0)),
        )

    def get_block(self, snapshot_id: str, index: int, token: str) -> bytes:
        """The block's bytes, verified against the SHA256 checksum the answer carries."""
        return self.get_verified_block(snapshot_id, index, token)[0]

    def get_verified_block(self, snapshot_id: str, index: int, token: str) -> tuple[bytes, bytes]:
        """The block's bytes and their raw SHA256 digest, checked against the answer's
        checksum (a layer that keeps the block can reuse the digest instead of hashing)."""
        what = f"GetSnapshotBlock {snapshot_id} block {index}"
        with converted(what):
            body, headers = self.blocks.get(snapshot_id, index, token)
        try:
            data = body.read()
        except (botocore.exceptions.BotoCoreError, OSError, ValueError) as exc:
            # The body broke off after the headers: botocore does not retry that itself.
            raise ApiError(f"{what}: incomplete body: {exc}", "IncompleteBody") from exc
        finally:
            body.close()
        expected = headers.get("x-amz-Checksum", "")
        algorithm = headers.get("x-amz-Checksum-Algorithm", "SHA256")
        if algorithm != "SHA256":
            raise ChecksumError(f"{what}: unsupported checksum algorithm {algorithm!r}")
        if len(data) != BLOCK_SIZE:
            raise ChecksumError(f"{what}: {len(data)} bytes instead of {BLOCK_SIZE}")
        raw = checksum.digest(data)
        actual = checksum.b64(raw)
        if actual != expected:
            raise ChecksumError(f"{what}: SHA256 {actual} does not match checksum {expected!r}")
        return data, raw

    def list_changed_blocks(
        self,
        first_id: str,
        second_id: str,
        start_index: int = 0,
        next_token: str | None = None,
        max_results: int = MAX_LIST_RESULTS,
    ) -> ChangedPage:
        """One page of ListChangedBlocks between two snapshots of one lineage."""
        kwargs: dict[str, Any] = {
            "FirstSnapshotId": first_id,
            "SecondSnapshotId": second_id,
            "MaxResults": max(MIN_LIST_RESULTS, min(MAX_LIST_RESULTS, max_results)),
            "StartingBlockIndex": start_index,
        }
        if next_token:
            kwargs["NextToken"] = next_token
        with converted(f"ListChangedBlocks {first_id} {second_id}"):
            r = self.ebs.list_changed_blocks(**kwargs)
        return ChangedPage(
            changed=[
                (int(b["BlockIndex"]), b.get("FirstBlockToken"), b.get("SecondBlockToken"))
                for b in r.get("ChangedBlocks", ())
            ],
            expiry=epoch(r.get("ExpiryTime")),
            next_token=r.get("NextToken") or None,
        )

    # ---- EBS write ---------------------------------------------------------------------------

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
    ) -> SnapshotInfo:
        """StartSnapshot; the same ``client_token`` makes a retry safe (idempotent).

        The answer's ``encrypted`` is what AWS did, not what was asked: with encryption by
        default (or an encrypted parent) a snapshot is encrypted whatever the request said."""
        kwargs: dict[str, Any] = {"VolumeSize": volume_size, "ClientToken": client_token}
        tags = dict(tags or {})
        if parent:
            kwargs["ParentSnapshotId"] = parent
            tags[PARENT_TAG] = parent
        if description:
            kwargs["Description"] = description
        if tags:
            kwargs["Tags"] = [{"Key": k, "Value": v} for k, v in tags.items()]
        if timeout_minutes is not None:
            kwargs["Timeout"] = timeout_minutes
        if encrypted or kms_key_arn:
            kwargs["Encrypted"] = True
        if kms_key_arn:
            kwargs["KmsKeyArn"] = kms_key_arn
        with converted("StartSnapshot"):
            r = self.ebs.start_snapshot(**kwargs)
        return SnapshotInfo(
            snapshot_id=r["SnapshotId"],
            state=str(r.get("Status", "pending")),
            volume_size=int(r.get("VolumeSize", volume_size)),
            start_time=epoch(r.get("StartTime")),
            description=str(r.get("Description") or ""),
            tags=tags_of(r.get("Tags")),
            owner_id=str(r.get("OwnerId", "")),
            # AWS answers null (botocore: absent) for both when the snapshot is not encrypted.
            encrypted=bool(r.get("KmsKeyArn"))
            or str(r.get("SseType") or "none").lower() not in ("none", ""),
            parent=str(r.get("ParentSnapshotId") or parent or ""),
        )

    def put_block(
        self, snapshot_id: str, index: int, data: bytes | memoryview, checksum_b64: str
    ) -> None:
        """PutSnapshotBlock of one full block (ChecksumError if AWS computed another SHA256).

        ``data`` may be any contiguous bytes-like object; it is sent as it is, not copied."""
        with converted(f"PutSnapshotBlock {snapshot_id} block {index}"):
            self.blocks.put(snapshot_id, index, data, checksum_b64)

    def complete_snapshot(
        self, snapshot_id: str, changed_blocks_count: int, aggregate_b64: str | None
    ) -> str:
        """CompleteSnapshot; returns the status AWS answers (usually "pending")."""
        kwargs: dict[str, Any] = {
            "SnapshotId": snapshot_id,
            "ChangedBlocksCount": changed_blocks_count,
        }
        if aggregate_b64:
            kwargs.update(
                Checksum=aggregate_b64,
                ChecksumAlgorithm="SHA256",
                ChecksumAggregationMethod="LINEAR",
            )
        with converted(f"CompleteSnapshot {snapshot_id}"):
            r = self.ebs.complete_snapshot(**kwargs)
        return str(r.get("Status", "pending"))


#: A factory the mount and commands use, replaceable in tests.
ApiFactory = Callable[[AwsConfig], Api]
