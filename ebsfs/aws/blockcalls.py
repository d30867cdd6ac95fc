"""GetSnapshotBlock and PutSnapshotBlock made from the ebs client's own botocore parts, without
its per-call machinery (the CPU this saves: docs/benchmarks.md). Only botocore's exceptions
leave this module (``ebsfs.aws.convert`` converts them). ``block_calls`` falls back to the
client's own calls, in one log line, where the installed botocore lacks a part; the botocore
range these are tested with is pinned in pyproject.toml (test: tests/read/test_api.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import botocore
import botocore.exceptions

# The parts the lean calls are made of. Should a botocore release move one, importing this
# module must still work: the Api then uses the client's own calls.
_MISSING: ImportError | None = None
try:
    import botocore.parsers
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest, AWSResponse
    from botocore.response import StreamingBody
    from botocore.retries import quota, standard
    from botocore.utils import percent_encode
except ImportError as exc:
    _MISSING = exc

__all__ = ["BlockCalls", "ClientBlockCalls", "block_calls"]

log = logging.getLogger(__name__)

#: What botocore sends for PutSnapshotBlock (its model marks the body unsigned).
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"

#: The bounds botocore's parameter validation applies to these two operations.
MAX_SNAPSHOT_ID = 64
MAX_TOKEN = 256


class BlockCalls:
    """The two block calls of one boto3 ``ebs`` client, made without the client's machinery.

    * the request as the ebs model lays it out, signed by botocore's ``SigV4Auth`` with the
      client's region, signing name and credentials (frozen per attempt, so refreshable ones
      keep working); a put's payload is ``UNSIGNED-PAYLOAD``, as botocore sends it;
    * sent through the client's own ``URLLib3Session`` (pool, timeouts, proxies, TLS);
    * retried by botocore's "standard" retry objects with the client's attempts;
    * an error answer parsed by botocore's parser and raised as the client's own
      ``ClientError`` subclass.
    """

    def __init__(self, client: Any, credentials: Any) -> None:
        """Raises (ImportError, AttributeError...) when this botocore lacks a part it needs."""
        if _MISSING is not None:
            raise _MISSING
        meta = client.meta
        model = meta.service_model
        self._base = meta.endpoint_url.rstrip("/")
        self._region = meta.region_name
        self._signing_name = model.signing_name
        self._credentials = credentials
        # The client's own transport: pool, timeouts, proxies, TLS verification, client cert.
        self._http = client._endpoint.http_session
        if not callable(getattr(self._http, "send", None)):
            raise AttributeError("the client's http_session has no send()")
        if not callable(getattr(client.exceptions, "from_code", None)):
            raise AttributeError("the client's exceptions have no from_code()")
        self._model = model
        self._get_op = model.operation_model("GetSnapshotBlock")
        self._put_op = model.operation_model("PutSnapshotBlock")
        self._parser = botocore.parsers.create_parser(model.protocol)
        self._exceptions = client.exceptions
        self._user_agent = f"{meta.config.user_agent} ebsfs"
        #: Told the status and error code of every answer, retried ones included (the
        #: mount's liveness clock: ``Api.last_answer``).
        self.heard: Callable[[int, str], None] | None = None
        # The objects botocore's standard mode registers on the client, with its attempts.
        retries = meta.config.retries or {}
        attempts = retries.get("total_max_attempts", standard.DEFAULT_MAX_ATTEMPTS)
        adapter = standard.RetryEventAdapter()
        throttling = standard.ThrottlingErrorDetector(adapter)
        # Typed Any: botocore-stubs name the wrong types for the quota's arguments.
        self._quota: Any = standard.RetryQuotaChecker(quota.RetryQuota(), throttling)
        retry_handler: Any = standard.RetryHandler
        self._retry = retry_handler(
            retry_policy=standard.RetryPolicy(
                retry_checker=standard.StandardRetryConditions(max_attempts=attempts),
                retry_backoff=standard.ExponentialBackoff(
                    service_name=model.service_id.hyphenize(), throttling_detector=throttling
                ),
            ),
            retry_event_adapter=adapter,
            retry_quota=self._quota,
            service_name=model.service_id.hyphenize(),
        )

    def get(self, snapshot_id: str, index: int, token: str) -> tuple[StreamingBody, Any]:
        """GetSnapshotBlock: the unread body and the answer's headers.

        The body is botocore's ``StreamingBody`` (as the client returns it), so a body that
        breaks off or runs short raises its errors, unretried, when read."""
        _check(snapshot_id, index)
        if len(token) > MAX_TOKEN:
            raise botocore.exceptions.ParamValidationError(report=f"BlockToken over {MAX_TOKEN}")
        path = (
            f"/snapshots/{percent_encode(snapshot_id)}/blocks/{index}"
            f"?blockToken={percent_encode(token)}"
        )
        response = self._call(self._get_op, "GET", path, {}, None)
        headers = response.headers
        return StreamingBody(response.raw, _length(headers)), headers

    def put(
        self,
        snapshot_id: str,
        index: int,
        data: bytes | memoryview,
        checksum_b64: str,
        progress: int | None = None,
    ) -> Any:
        """PutSnapshotBlock of ``data``; returns the answer's headers."""
        _check(snapshot_id, index)
        if isinstance(data, memoryview):
            data = data.cast("B")  # lengths in bytes, whatever the view's item format
        headers = {
            "x-amz-Data-Length": str(len(data)),
            "x-amz-Checksum": checksum_b64,
            "x-amz-Checksum-Algorithm": "SHA256",
            "X-Amz-Content-SHA256": UNSIGNED_PAYLOAD,
        }
        if progress is not None:
            headers["x-amz-Progress"] = str(progress)
        path = f"/snapshots/{percent_encode(snapshot_id)}/blocks/{index}"
        # The small JSON answer is read inside the retry loop, as botocore reads it in its send.
        return self._call(self._put_op, "PUT", path, headers, data, read_answer=True).headers

    def _call(
        self,
        op: Any,
        method: str,
        path: str,
        headers: dict[str, str],
        body: Any,
        read_answer: bool = False,
    ) -> AWSResponse:
        """One operation with botocore's standard retries: the 2xx answer, its body unread
        unless ``read_answer`` (then drained, so the connection goes back to the pool)."""
        url = self._base + path
        context: dict[str, Any] = {}  # the retry quota keeps what a retry took here
        attempt = 0
        while True:
            attempt += 1
            request = AWSRequest(method, url, headers=headers, data=body, stream_output=True)
            request.headers["User-Agent"] = self._user_agent
            frozen = self._credentials.get_frozen_credentials() if self._credentials else None
            if frozen is None:
                raise botocore.exceptions.NoCredentialsError()
            SigV4Auth(frozen, self._signing_name, self._region).add_auth(request)
            response: AWSResponse | None = None
            parsed: dict[str, Any] | None = None
            caught: Exception | None = None
            try:
                response = self._http.send(request.prepare())
                if response.status_code < 300:
                    if self.heard is not None:
                        self.heard(response.status_code, "")
                    if read_answer:
                        _read(response)
                    self._quota.release_retry_quota(context, response)
                    return response
                answer = {
                    "headers": response.headers,
                    "status_code": response.status_code,
                    "body": _read(response),
                    "context": {"operation_name": op.name},
                }
                parsed = self._parser.parse(answer, op.output_shape)
                # As the client's endpoint does: a second pass fills in the modelled members
                # of the error's shape (``Reason``) at the top level.
                shape = self._model.shape_for_error_code(parsed.get("Error", {}).get("Code"))
                if shape is not None:
                    parsed.update(self._parser.parse(answer, shape))
                if self.heard is not None:
                    self.heard(response.status_code, str(parsed.get("Error", {}).get("Code", "")))
            except (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError) as e:
                caught = e
            delay = self._retry.needs_retry(
                response=None if response is None else (response, parsed),
                attempts=attempt,
                operation=op,
                caught_exception=caught,
                request_dict={"context": context},
            )
            if delay is None or delay is False:
                if caught is not None:
                    raise caught
                assert parsed is not None
                code = parsed.get("Error", {}).get("Code")
                raise self._exceptions.from_code(code)(parsed, op.name)
            time.sleep(delay)


class ClientBlockCalls:
    """The two block calls through the boto3 client's own methods, answering as ``BlockCalls``
    does: the fallback when this botocore lacks a part ``BlockCalls`` is made of."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def get(self, snapshot_id: str, index: int, token: str) -> tuple[Any, dict[str, str]]:
        """GetSnapshotBlock: the unread body and the checksum headers of the answer."""
        r = self._client.get_snapshot_block(
            SnapshotId=snapshot_id, BlockIndex=index, BlockToken=token
        )
        headers: dict[str, str] = {}
        if "Checksum" in r:
            headers["x-amz-Checksum"] = r["Checksum"]
        if "ChecksumAlgorithm" in r:
            headers["x-amz-Checksum-Algorithm"] = r["ChecksumAlgorithm"]
        return r["BlockData"], headers

    def put(
        self,
        snapshot_id: str,
        index: int,
        data: bytes | memoryview,
        checksum_b64: str,
        progress: int | None = None,
    ) -> Any:
        """PutSnapshotBlock of ``data``; returns the answer's headers."""
        if isinstance(data, memoryview):
            data = data.tobytes()  # the client's parameter check takes bytes, not views
        kwargs: dict[str, Any] = {}
        if progress is not None:
            kwargs["Progress"] = progress
        r = self._client.put_snapshot_block(
            SnapshotId=snapshot_id,
            BlockIndex=index,
            BlockData=data,
            DataLength=len(data),
            Checksum=checksum_b64,
            ChecksumAlgorithm="SHA256",
            **kwargs,
        )
        return r.get("ResponseMetadata", {}).get("HTTPHeaders", {})


def block_calls(client: Any, credentials: Any) -> BlockCalls | ClientBlockCalls:
    """``BlockCalls`` for ``client``, or ``ClientBlockCalls`` (one log line saying why) when
    this botocore lacks a part the lean calls are made of."""
    try:
        return BlockCalls(client, credentials)
    except Exception as exc:  # whatever broke here, the client's own calls still work
        log.info(
            "GetSnapshotBlock/PutSnapshotBlock go through the boto3 client's own calls "
            "(more CPU per block): botocore %s lacks a part ebsfs makes them from (%s: %s)",
            botocore.__version__,
            type(exc).__name__,
            exc,
        )
        return ClientBlockCalls(client)


def _check(snapshot_id: str, index: int) -> None:
    # The checks botocore's parameter validation makes (it does not apply patterns).
    if not 1 <= len(snapshot_id) <= MAX_SNAPSHOT_ID:
        raise botocore.exceptions.ParamValidationError(report=f"bad SnapshotId {snapshot_id!r}")
    if index < 0:
        raise botocore.exceptions.ParamValidationError(report=f"BlockIndex {index} below 0")


def _read(response: AWSResponse) -> bytes:
    """A whole small body; a failure is a connection error (retryable), as when botocore
    reads such a body inside its send."""
    body = StreamingBody(response.raw, _length(response.headers))
    try:
        return bytes(body.read())
    except botocore.exceptions.IncompleteReadError as exc:
        raise botocore.exceptions.ResponseStreamingError(error=exc) from exc
    finally:
        body.close()


def _length(headers: Any) -> Any:
    # StreamingBody checks what it read against this (None: unknown, not checked).
    try:
        return int(headers.get("content-length"))
    except (TypeError, ValueError):
        return None
