"""The EBS direct APIs and the EC2 snapshot calls, as plain synchronous methods.

This is the only module that imports boto3 and botocore (with ``ebsfs.aws.blockcalls``, its helper
for the two block calls). Every botocore exception is converted here to an ``ebsfs.core.errors``
class (``raise ... from exc``), so the layers above never see botocore. Retries of throttling,
5xx answers and dropped connections are botocore's own ("standard" mode, bounded by
``AwsConfig.max_attempts``); every request has connect and read timeouts. Methods block: the
mount runs them in worker threads under one trio CapacityLimiter.

GetSnapshotBlock and PutSnapshotBlock, one call per 512 KiB block, skip the client's per-call
machinery: ``ebsfs.aws.blockcalls`` builds them from the client's own botocore parts (signer,
HTTP session, standard retry objects, error parser): about a third less CPU per call. Where
the botocore installed lacks one of those parts, ``blockcalls.block_calls`` says so in one log
line and the client's own calls are used (the same answers and exceptions).

Endpoint resolution, in this order (documented in docs/usage.md):

1. an explicit ``endpoint_url`` is used for both the ebs and the ec2 client;
2. else botocore's own configuration (``AWS_ENDPOINT_URL_EBS``, ``AWS_ENDPOINT_URL_EC2``,
   ``AWS_ENDPOINT_URL``, ``endpoint_url`` in the profile);
3. else, when a region is configured (flag, ``AWS_REGION``/``AWS_DEFAULT_REGION``, profile), AWS;
4. else, when the EC2 instance metadata names a region (botocore's fetcher: one short attempt,
   ``AWS_EC2_METADATA_DISABLED`` and the metadata endpoint settings honoured), AWS there;
5. else the local server at ``DEFAULT_LOCAL_ENDPOINT`` in ``us-east-1``.

``Endpoints.why`` says which rule chose and where its setting came from; ``Api`` logs it once.

When the endpoint is not AWS (cases 1, 2 and 5) and no credentials are found, the local
server's development key pair is used.
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NoReturn

import boto3
import botocore.config
import botocore.credentials
import botocore.exceptions
import botocore.utils

from ebsfs.aws.blockcalls import block_calls
from ebsfs.core import checksum
from ebsfs.core.blocks import BLOCK_SIZE
from ebsfs.core.errors import (
    DENIED,
    DEPENDENCY,
    GONE,
    AccessDeniedError,
    ApiError,
    BackendUnavailableError,
    ChecksumError,
    DependencyMissingError,
    EbsfsError,
    InvalidTokenError,
    InvalidValueError,
    NotFoundError,
    UsageError,
    classify,
)
from ebsfs.options.config import (
    DEFAULT_LOCAL_ENDPOINT,
    DEFAULT_LOCAL_REGION,
    DEV_ACCESS_KEY_ID,
    DEV_SECRET_ACCESS_KEY,
    AwsConfig,
)

log = logging.getLogger(__name__)

__all__ = ["Api", "BlockPage", "ChangedPage", "SnapshotInfo", "resolve_endpoints"]

#: AWS bounds for ListSnapshotBlocks / ListChangedBlocks MaxResults.
MIN_LIST_RESULTS = 100
MAX_LIST_RESULTS = 10000

#: The tag in which ebsfs records a snapshot's parent at StartSnapshot (DescribeSnapshots has
#: no parent field; this is where AWS keeps it for us).
PARENT_TAG = "ebsfs:parent"

_TOKEN_REASONS = frozenset({"INVALID_BLOCK_TOKEN", "INVALID_PAGE_TOKEN"})
_BAD_VALUE_CODES = frozenset({"InvalidParameterValue", "InvalidSnapshot.Malformed"})
#: The snapshot ``Api.probe`` asks about: any answer for it (404, 400, 403) shows the endpoint
#: at work.
PROBE_SNAPSHOT = "snap-0000000000000000e"


def _is_answer(status: int, code: str) -> bool:
    """Whether an HTTP answer shows the endpoint at work: anything but a 5xx, and throttling
    whatever its status (a busy endpoint, not a broken one)."""
    return 0 < status < 500 or "Throttl" in code or "SlowDown" in code


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


@dataclass(frozen=True)
class Endpoints:
    """Where the two clients go, as resolved by ``resolve_endpoints``."""

    ebs: str | None  # None: botocore decides (its env/config, or AWS)
    ec2: str | None
    region: str
    local: bool  # not AWS: the dev key pair may stand in for missing credentials
    why: str = ""  # which rule chose them, and where its setting came from

    def describe(self) -> str:
        """One line for the log and ``ebsfs ls``: where requests go, and why."""
        if self.ebs is None and self.local:
            where = f"the endpoints botocore is configured with, region {self.region}"
        elif self.ebs is None:
            where = f"AWS in {self.region}"
        else:
            where = self.ebs if self.ebs == self.ec2 else f"{self.ebs} (ec2: {self.ec2})"
        return f"{where} ({self.why})" if self.why else where


def _botocore_endpoint_configured(session: boto3.Session) -> str | None:
    """What configures botocore's own endpoints, or None."""
    env = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_EBS", "AWS_ENDPOINT_URL_EC2")
    named = [name for name in env if os.environ.get(name)]
    if named:
        return ", ".join(named)
    try:
        scoped = session._session.get_scoped_config()
    except botocore.exceptions.ProfileNotFound:
        return None
    if scoped.get("endpoint_url") or scoped.get("services"):
        return "endpoint_url in the AWS profile's configuration"
    return None


#: What a region name looks like (us-east-1, us-gov-west-1, eu-isoe-west-1): anything else
#: from the instance metadata is not taken as one.
_REGION_NAME = re.compile(r"[a-z]{2}(?:-[a-z0-9]+)+-[0-9]{1,3}")
#: The longest the instance metadata may take to name a region, whatever it sends.
IMDS_DEADLINE = 5.0


def instance_region(session: boto3.Session) -> str | None:
    """The region of the EC2 instance this runs on, from its metadata, or None.

    botocore's own provider: its timeout and attempts (1 s, 1 by default), the metadata
    endpoint settings and ``AWS_EC2_METADATA_DISABLED`` apply. Its timeout is per read, so
    the whole lookup is bounded by :data:`IMDS_DEADLINE` too (an answer dripping a byte at a
    time is given up, its thread left to end alone), and what it names must look like a
    region name.
    """
    answer: list[str | None] = []

    def provide() -> None:
        try:
            answer.append(botocore.utils.IMDSRegionProvider(session._session).provide())
        except (botocore.exceptions.BotoCoreError, OSError, ValueError) as exc:
            log.debug("instance metadata: no region (%s)", exc)
            answer.append(None)

    worker = threading.Thread(target=provide, name="ebsfs-imds", daemon=True)
    worker.start()
    worker.join(IMDS_DEADLINE)
    if not answer:
        log.warning("instance metadata: no region within %.0f s; not used", IMDS_DEADLINE)
        return None
    region = answer[0]
    if region and not _REGION_NAME.fullmatch(region):
        log.warning("instance metadata: %.80r is no region name; not used", region)
        return None
    return region or None


def resolve_endpoints(aws: AwsConfig, session: boto3.Session) -> Endpoints:
    """Apply the endpoint resolution order of the module docstring."""
    region = aws.region or session.region_name
    if aws.region:
        region_from = f"region {aws.region} from {aws.origin('region') or 'the configuration'}"
    else:
        region_from = f"region {region} from the AWS profile's configuration"
    if aws.endpoint_url:
        why = f"endpoint from {aws.origin('endpoint_url') or 'the configuration'}"
        return Endpoints(
            aws.endpoint_url, aws.endpoint_url, region or DEFAULT_LOCAL_REGION, True, why
        )
    configured = _botocore_endpoint_configured(session)
    if configured:
        return Endpoints(None, None, region or DEFAULT_LOCAL_REGION, True, f"set by {configured}")
    if region:
        return Endpoints(None, None, region, False, region_from)
    found = instance_region(session)
    if found:
        return Endpoints(None, None, found, False, f"region {found} from the EC2 instance metadata")
    return Endpoints(
        DEFAULT_LOCAL_ENDPOINT,
        DEFAULT_LOCAL_ENDPOINT,
        DEFAULT_LOCAL_REGION,
        True,
        "the local server: no endpoint or region is configured and no EC2 instance metadata "
        "answered",
    )


def _error_fields(exc: botocore.exceptions.ClientError) -> tuple[str, str, str, int]:
    response: Any = exc.response or {}
    error = response.get("Error") or {}
    code = str(error.get("Code") or "")
    message = str(error.get("Message") or "")
    reason = str(response.get("Reason") or error.get("Reason") or "")
    status = int((response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0)
    return code, reason, message, status


def _convert(exc: Exception, what: str) -> EbsfsError:
    """The ``ebsfs.core.errors`` equivalent of a botocore/boto3 exception raised by ``what``."""
    if isinstance(exc, botocore.exceptions.ClientError):
        code, reason, message, status = _error_fields(exc)
        text = f"{what}: {code}{' ' + reason if reason else ''}: {message or 'no message'}"
        # The kind (ebsfs.core.errors.classify) decides; the class follows it, for the errno.
        kind = classify(code, reason, status, message)
        result: EbsfsError
        if kind == DENIED:
            if code == "InvalidSignatureException" and "checksum" in message.lower():
                return ChecksumError(text)
            result = AccessDeniedError(text)
        elif kind == GONE:
            result = NotFoundError(text)
        elif kind == DEPENDENCY:
            # Said plainly: the snapshot is there, a KMS key (or grant) it needs is not.
            return DependencyMissingError(
                f"{text} (a KMS key or grant the snapshot needs is missing; not retried)",
                code, reason, status)
        elif reason in _TOKEN_REASONS:
            return InvalidTokenError(text, code, reason, status)
        elif code in _BAD_VALUE_CODES:
            result = InvalidValueError(text)
        else:
            return ApiError(text, code, reason, status)
        result.kind = kind
        return result
    if isinstance(
        exc, botocore.exceptions.NoCredentialsError | botocore.exceptions.PartialCredentialsError
    ):
        return AccessDeniedError(f"{what}: no usable AWS credentials ({exc})")
    if isinstance(
        exc,
        botocore.exceptions.ProfileNotFound
        | botocore.exceptions.NoRegionError
        | botocore.exceptions.InvalidRegionError,  # the profile's region (ebsfs checks its own)
    ):
        return UsageError(str(exc))
    if isinstance(exc, botocore.exceptions.ParamValidationError):
        return InvalidValueError(f"{what}: {exc}")
    if isinstance(
        exc,
        botocore.exceptions.HTTPClientError
        | botocore.exceptions.ConnectionError
        | botocore.exceptions.IncompleteReadError
        | botocore.exceptions.ResponseStreamingError,
    ):
        return BackendUnavailableError(f"{what}: {exc}")
    if isinstance(exc, botocore.exceptions.BotoCoreError):
        return ApiError(f"{what}: {exc}", type(exc).__name__)
    if isinstance(exc, OSError):
        return BackendUnavailableError(f"{what}: {exc}")
    return ApiError(f"{what}: {type(exc).__name__}: {exc}", type(exc).__name__)


@contextmanager
def _converted(what: str) -> Iterator[None]:
    try:
        yield
    except EbsfsError:
        raise
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, OSError) as exc:
        raise _convert(exc, what) from exc


def _raise(exc: Exception, what: str) -> NoReturn:
    raise _convert(exc, what) from exc


def _epoch(value: Any) -> float:
    if value is None:
        return 0.0
    if hasattr(value, "timestamp"):
        return float(value.timestamp())
    return float(value)


def _tags(items: Iterable[dict[str, str]] | None) -> dict[str, str]:
    return {t["Key"]: t.get("Value", "") for t in items or ()}


def _ec2_info(item: dict[str, Any]) -> SnapshotInfo:
    return SnapshotInfo(
        snapshot_id=item["SnapshotId"],
        state=str(item.get("State", "")),
        volume_size=int(item.get("VolumeSize", 0)),
        start_time=_epoch(item.get("StartTime")),
        description=str(item.get("Description", "")),
        tags=_tags(item.get("Tags")),
        progress=str(item.get("Progress", "")),
        owner_id=str(item.get("OwnerId", "")),
        state_message=str(item.get("StateMessage", "")),
        encrypted=bool(item.get("Encrypted", False)),
        parent=_tags(item.get("Tags")).get(PARENT_TAG, ""),
        storage_tier=str(item.get("StorageTier") or "standard"),
        outpost_arn=str(item.get("OutpostArn") or ""),
        completion_time=_epoch(item.get("CompletionTime")),
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


def _group_filters(filters: Iterable[tuple[str, str]]) -> list[dict[str, Any]]:
    grouped: dict[str, list[str]] = {}
    for name, value in filters:
        grouped.setdefault(name, []).append(value)
    return [{"Name": n, "Values": v} for n, v in grouped.items()]


def _new_client(
    session: boto3.Session, service: str, args: dict[str, Any], endpoints: Endpoints
) -> Any:
    """``session.client(service, **args)``; an endpoint URL it cannot use (from any layer,
    botocore's own AWS_ENDPOINT_URL* included) is a UsageError saying where it came from."""
    try:
        make: Any = session.client  # its stubs know each service by a literal name
        return make(service, **args)
    except botocore.exceptions.BotoCoreError:
        raise
    except ValueError as exc:  # botocore's "Invalid endpoint: x", urllib's IPv6 one
        raise UsageError(
            f"{service} endpoint URL not usable ({exc}); expected http(s)://HOST[:PORT] "
            f"({endpoints.why})"
        ) from None


class Api:
    """boto3 ``ebs`` and ``ec2`` clients behind methods that raise only ``ebsfs.core.errors``."""

    def __init__(self, aws: AwsConfig) -> None:
        with _converted("AWS configuration"):
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
            self.ebs: Any = _new_client(session, "ebs", self._ebs_args, self.endpoints)
            #: time.monotonic() of the last HTTP answer any worker thread heard (see
            #: ``last_answer``); a float store, atomic under the GIL.
            self._last_answer = -math.inf
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
        return self._last_answer

    def _heard_status(self, status: int, code: str) -> None:
        if _is_answer(status, code):
            self._last_answer = time.monotonic()

    def _heard(self, response: Any = None, **_: Any) -> None:
        # botocore's needs-retry event, after every attempt; None: no answer (connection).
        if response is None:
            return
        http, parsed = response
        code = str(((parsed or {}).get("Error") or {}).get("Code") or "")
        self._heard_status(int(getattr(http, "status_code", 0) or 0), code)

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
                with _converted("AWS configuration"):
                    self._probe_ebs = _new_client(
                        self._session, "ebs", {**self._ebs_args, "config": config},
                        self.endpoints,
                    )
            client = self._probe_ebs
        try:
            client.list_snapshot_blocks(SnapshotId=PROBE_SNAPSHOT, MaxResults=MIN_LIST_RESULTS)
        except botocore.exceptions.ClientError as exc:
            code, _, _, status = _error_fields(exc)
            if _is_answer(status, code):
                return
            _raise(exc, "probe (ListSnapshotBlocks)")
        except (botocore.exceptions.BotoCoreError, OSError) as exc:
            _raise(exc, "probe (ListSnapshotBlocks)")

    @property
    def ec2(self) -> Any:
        """The boto3 ``ec2`` client (made at the first use; boto3 sessions are not
        thread-safe, hence the lock)."""
        with self._ec2_lock:
            if self._ec2 is None:
                with _converted("AWS configuration"):
                    self._ec2 = _new_client(
                        self._session, "ec2", self._ec2_args, self.endpoints
                    )
                self._ec2.meta.events.register_first("needs-retry.ec2", self._heard)
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
        flt = _group_filters(filters)
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
        flt = _group_filters(filters)
        if flt:
            kwargs["Filters"] = flt
        if owners:
            kwargs["OwnerIds"] = owners
        elif shared:
            kwargs["RestorableByUserIds"] = ["self"]
        with _converted("DescribeSnapshots"):
            self.ec2.describe_snapshots(**kwargs)

    def _describe(self, kwargs: dict[str, Any]) -> list[SnapshotInfo]:
        out: list[SnapshotInfo] = []
        with _converted("DescribeSnapshots"):
            for page in self.ec2.get_paginator("describe_snapshots").paginate(**kwargs):
                out.extend(_ec2_info(item) for item in page.get("Snapshots", ()))
        return out

    def describe_snapshot(self, snapshot_id: str) -> SnapshotInfo:
        """One snapshot; NotFoundError if EC2 does not know it."""
        found = self.describe_snapshots([snapshot_id], owner="")
        if not found:
            raise NotFoundError(f"DescribeSnapshots: snapshot {snapshot_id} does not exist")
        return found[0]

    def delete_snapshot(self, snapshot_id: str) -> None:
        """EC2 DeleteSnapshot."""
        with _converted(f"DeleteSnapshot {snapshot_id}"):
            self.ec2.delete_snapshot(SnapshotId=snapshot_id)

    def create_tags(self, snapshot_id: str, tags: dict[str, str]) -> None:
        """EC2 CreateTags (existing keys are overwritten)."""
        with _converted(f"CreateTags {snapshot_id}"):
            self.ec2.create_tags(
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
        with _converted(f"ListSnapshotBlocks {snapshot_id}"):
            r = self.ebs.list_snapshot_blocks(**kwargs)
        return BlockPage(
            blocks=[(int(b["BlockIndex"]), str(b["BlockToken"])) for b in r.get("Blocks", ())],
            expiry=_epoch(r.get("ExpiryTime")),
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
        with _converted(what):
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
        with _converted(f"ListChangedBlocks {first_id} {second_id}"):
            r = self.ebs.list_changed_blocks(**kwargs)
        return ChangedPage(
            changed=[
                (int(b["BlockIndex"]), b.get("FirstBlockToken"), b.get("SecondBlockToken"))
                for b in r.get("ChangedBlocks", ())
            ],
            expiry=_epoch(r.get("ExpiryTime")),
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
        with _converted("StartSnapshot"):
            r = self.ebs.start_snapshot(**kwargs)
        return SnapshotInfo(
            snapshot_id=r["SnapshotId"],
            state=str(r.get("Status", "pending")),
            volume_size=int(r.get("VolumeSize", volume_size)),
            start_time=_epoch(r.get("StartTime")),
            description=str(r.get("Description") or ""),
            tags=_tags(r.get("Tags")),
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
        with _converted(f"PutSnapshotBlock {snapshot_id} block {index}"):
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
        with _converted(f"CompleteSnapshot {snapshot_id}"):
            r = self.ebs.complete_snapshot(**kwargs)
        return str(r.get("Status", "pending"))


#: A factory the mount and commands use, replaceable in tests.
ApiFactory = Callable[[AwsConfig], Api]
