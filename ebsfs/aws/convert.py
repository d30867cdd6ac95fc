"""botocore's exceptions to ``ebsfs.core.errors``: the one place they are converted.

The kind (``ebsfs.core.errors.classify``) decides; the class follows it, for the errno
(docs/errors.md). Every method of ``ebsfs.aws.api.Api`` raises through ``converted``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import botocore.exceptions

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
    throttling,
)

__all__ = ["convert", "converted", "error_fields", "is_answer", "raise_converted"]

_TOKEN_REASONS = frozenset({"INVALID_BLOCK_TOKEN", "INVALID_PAGE_TOKEN"})
_BAD_VALUE_CODES = frozenset({"InvalidParameterValue", "InvalidSnapshot.Malformed"})


def is_answer(status: int, code: str) -> bool:
    """Whether an HTTP answer shows the endpoint at work: anything but a 5xx, and throttling
    whatever its status (a busy endpoint, not a broken one)."""
    return 0 < status < 500 or throttling(code)


def error_fields(exc: botocore.exceptions.ClientError) -> tuple[str, str, str, int]:
    response: Any = exc.response or {}
    error = response.get("Error") or {}
    code = str(error.get("Code") or "")
    message = str(error.get("Message") or "")
    reason = str(response.get("Reason") or error.get("Reason") or "")
    status = int((response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0)
    return code, reason, message, status


def convert(exc: Exception, what: str) -> EbsfsError:
    """The ``ebsfs.core.errors`` equivalent of a botocore/boto3 exception raised by ``what``."""
    if isinstance(exc, botocore.exceptions.ClientError):
        code, reason, message, status = error_fields(exc)
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
def converted(what: str) -> Iterator[None]:
    try:
        yield
    except EbsfsError:
        raise
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, OSError) as exc:
        raise convert(exc, what) from exc


def raise_converted(exc: Exception, what: str) -> NoReturn:
    raise convert(exc, what) from exc
