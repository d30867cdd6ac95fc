"""The one classification of AWS errors (ebsfs.core.errors.classify) over every (code, Reason)
pair the EBS model and the EC2 calls ebsfs makes can answer, and aws/convert.py's use of it."""

from __future__ import annotations

import botocore.exceptions
import pytest

from ebsfs.aws.convert import convert as _convert
from ebsfs.core import errors
from ebsfs.core.errors import (
    DENIED,
    DEPENDENCY,
    FINAL,
    GONE,
    INVALID,
    RESEND,
    RETRY,
    AccessDeniedError,
    ApiError,
    DependencyMissingError,
    InvalidTokenError,
    NotFoundError,
    classify,
)

_VALIDATION = [
    "INVALID_CUSTOMER_KEY", "INVALID_PAGE_TOKEN", "INVALID_BLOCK_TOKEN", "INVALID_GRANT_TOKEN",
    "INVALID_SNAPSHOT_ID", "UNRELATED_SNAPSHOTS", "INVALID_BLOCK", "INVALID_CONTENT_ENCODING",
    "INVALID_TAG", "INVALID_DEPENDENCY_REQUEST", "INVALID_PARAMETER_VALUE", "INVALID_VOLUME_SIZE",
    "INVALID_IMAGE_ID", "",
]

# (code, Reason, HTTP status) -> kind: every pair of the ebs 2019-11-02 model, and EC2's.
CASES = [
    *[("ValidationException", r, 400, INVALID) for r in _VALIDATION],
    ("ValidationException", "WRITE_REQUEST_TIMEOUT", 400, RESEND),
    ("ValidationException", "CONFLICTING_BLOCK_UPDATE", 400, RESEND),
    ("ResourceNotFoundException", "SNAPSHOT_NOT_FOUND", 404, GONE),
    ("ResourceNotFoundException", "", 404, GONE),
    ("ResourceNotFoundException", "DEPENDENCY_RESOURCE_NOT_FOUND", 404, DEPENDENCY),
    ("ResourceNotFoundException", "GRANT_NOT_FOUND", 404, DEPENDENCY),
    ("ResourceNotFoundException", "IMAGE_NOT_FOUND", 404, INVALID),
    ("AccessDeniedException", "UNAUTHORIZED_ACCOUNT", 403, DENIED),
    ("AccessDeniedException", "DEPENDENCY_ACCESS_DENIED", 403, DENIED),
    ("RequestThrottledException", "ACCOUNT_THROTTLED", 400, RETRY),
    ("RequestThrottledException", "DEPENDENCY_REQUEST_THROTTLED", 400, RETRY),
    ("RequestThrottledException", "RESOURCE_LEVEL_THROTTLE", 400, RETRY),
    ("ThrottlingException", "", 400, RETRY),
    ("ServiceQuotaExceededException", "DEPENDENCY_SERVICE_QUOTA_EXCEEDED", 402, RETRY),
    ("ConflictException", "", 409, INVALID),
    ("ConcurrentLimitExceededException", "", 400, RETRY),
    ("InternalServerException", "", 500, RETRY),
    ("InvalidSignatureException", "", 403, DENIED),
    # EC2
    ("RequestLimitExceeded", "", 503, RETRY),
    ("InternalError", "", 500, RETRY),
    ("Unavailable", "", 503, RETRY),
    ("InvalidSnapshot.NotFound", "", 400, GONE),
    ("InvalidParameterValue", "", 400, INVALID),
    ("UnauthorizedOperation", "", 403, DENIED),
    ("AuthFailure", "", 401, DENIED),
    ("SomethingNew", "", 400, FINAL),
    ("SomethingNew", "", 502, RETRY),
]


@pytest.mark.parametrize(("code", "reason", "status", "kind"), CASES)
def test_every_code_and_reason_has_its_kind(code: str, reason: str, status: int, kind: str) -> None:
    assert classify(code, reason, status) == kind


def test_a_body_cut_short_on_the_way_is_retried() -> None:
    assert classify("ValidationException", "INVALID_PARAMETER_VALUE", 400,
                    "Failed to read block data") == RETRY


def _client_error(code: str, reason: str, status: int) -> botocore.exceptions.ClientError:
    response = {
        "Error": {"Code": code, "Message": "m"},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    if reason:
        response["Reason"] = reason
    return botocore.exceptions.ClientError(response, "Op")  # type: ignore[arg-type]


@pytest.mark.parametrize(("code", "reason", "status", "kind"), CASES)
def test_converted_errors_carry_the_kind(code: str, reason: str, status: int, kind: str) -> None:
    exc = _convert(_client_error(code, reason, status), "Op")
    assert exc.kind == kind


def test_the_class_follows_the_kind() -> None:
    gone = _convert(_client_error("ResourceNotFoundException", "SNAPSHOT_NOT_FOUND", 404), "Get")
    assert type(gone) is NotFoundError
    kms = _convert(
        _client_error("ResourceNotFoundException", "DEPENDENCY_RESOURCE_NOT_FOUND", 404), "Put"
    )
    # Not a NotFoundError: nothing may take it for "snapshot gone".
    assert isinstance(kms, DependencyMissingError) and not isinstance(kms, NotFoundError)
    assert "KMS key" in str(kms)
    quota = _convert(
        _client_error("ServiceQuotaExceededException", "DEPENDENCY_SERVICE_QUOTA_EXCEEDED", 402),
        "Put",
    )
    assert isinstance(quota, ApiError) and quota.kind == RETRY
    token = _convert(_client_error("ValidationException", "INVALID_BLOCK_TOKEN", 400), "Get")
    assert isinstance(token, InvalidTokenError)
    assert isinstance(
        _convert(_client_error("AccessDeniedException", "UNAUTHORIZED_ACCOUNT", 403), "x"),
        AccessDeniedError,
    )


def test_ebsfs_errors_of_no_aws_origin_have_kinds() -> None:
    assert errors.BackendUnavailableError("x").kind == RETRY
    assert errors.NotFoundError("x").kind == GONE
    assert errors.UsageError("x").kind == FINAL
