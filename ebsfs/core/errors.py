"""The exceptions of ebsfs, each with the errno the filesystem answers and the CLI exit code.

Everything below the FUSE edge raises these; botocore's exceptions are converted to them in
one place (``ebsfs.aws.convert``), and the FUSE edge (``ebsfs.fs``) turns them into errno values.
The CLI prints ``ebsfs: <message>`` and exits with ``exit_code``: no traceback.

The tree, each class's errno and exit code: docs/errors.md.

Every error also has a ``kind`` (``classify``): what a caller may do about it. The kind of
an AWS error comes from its (code, Reason, HTTP status), decided here and nowhere else.
"""

import errno as _errno

#: Kinds (``EbsfsError.kind``). The same call again after a pause: throttling, a quota,
#: 5xx, a connection failure, a body cut short.
RETRY = "retry"
#: The whole request sent again (a block put: WRITE_REQUEST_TIMEOUT, CONFLICTING_BLOCK_UPDATE).
RESEND = "resend"
#: The snapshot does not exist (any more, or not yet readable).
GONE = "gone"
#: Something the snapshot depends on (a KMS key or grant) is missing: final, and NOT
#: "snapshot gone" (a new snapshot would fail the same way).
DEPENDENCY = "dependency"
DENIED = "denied"
INVALID = "invalid"
#: Anything else: no retry.
FINAL = "final"

_RETRY_CODES = frozenset(
    {
        "RequestThrottledException",
        "ThrottlingException",
        "Throttling",
        "ThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",  # EC2
        "SlowDown",
        "ServiceQuotaExceededException",  # 402 DEPENDENCY_SERVICE_QUOTA_EXCEEDED: a KMS quota
        "ConcurrentLimitExceededException",
        "InternalServerException",
        "InternalError",  # EC2
        "InternalFailure",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "Unavailable",
        "IncompleteBody",
    }
)
_RESEND_REASONS = frozenset({"WRITE_REQUEST_TIMEOUT", "CONFLICTING_BLOCK_UPDATE"})
_DEPENDENCY_REASONS = frozenset({"DEPENDENCY_RESOURCE_NOT_FOUND", "GRANT_NOT_FOUND"})
_DENIED_CODES = frozenset(
    {
        "AccessDeniedException",
        "AccessDenied",
        "UnauthorizedOperation",
        "AuthFailure",
        "InvalidSignatureException",
        "SignatureDoesNotMatch",
        "UnrecognizedClientException",
        "MissingAuthenticationToken",
        "MissingAuthenticationTokenException",
        "IncompleteSignatureException",
        "InvalidClientTokenId",
        "OptInRequired",
        "ExpiredToken",
        "ExpiredTokenException",
    }
)
_GONE_CODES = frozenset({"ResourceNotFoundException", "InvalidSnapshot.NotFound"})


def classify(code: str, reason: str = "", status: int = 0, message: str = "") -> str:
    """The kind of an AWS error from its code, Reason and HTTP status (``message`` only for
    the one error AWS tells apart by text: "Failed to read block data", retryable)."""
    if code in _RETRY_CODES or status >= 500 or status == 429:
        return RETRY
    if reason in _RESEND_REASONS:
        return RESEND
    if reason in _DEPENDENCY_REASONS:
        return DEPENDENCY
    if code in _DENIED_CODES or status == 403:
        return DENIED
    if code in _GONE_CODES or status == 404:
        return INVALID if reason == "IMAGE_NOT_FOUND" else GONE
    if "Failed to read block data" in message:
        return RETRY
    if code == "ValidationException" or code.startswith("Invalid") or code == "ConflictException":
        return INVALID
    return FINAL


#: Throttling codes of the EBS direct APIs and EC2 (ebs-direct-api.md §8).
_THROTTLING_CODES = frozenset({"SlowDown", "RequestLimitExceeded"})


def throttling(code: str) -> bool:
    """Whether an AWS error code says "slow down" (a busy endpoint, not a broken one)."""
    return "Throttl" in code or code in _THROTTLING_CODES


class EbsfsError(Exception):
    """Base of every ebsfs error; ``str(e)`` is a one-line message for the user."""

    errno: int = _errno.EIO
    exit_code: int = 1
    #: What a caller may do about it (one of the kinds above); AWS errors set it per instance.
    kind: str = FINAL


class UsageError(EbsfsError):
    """The command line or the configuration is wrong."""

    errno = _errno.EINVAL
    exit_code = 2


class NotFoundError(EbsfsError):
    """A snapshot, file or block that does not exist."""

    errno = _errno.ENOENT
    exit_code = 3
    kind = GONE


class AccessDeniedError(EbsfsError):
    """AWS refused the request, or no usable credentials were found."""

    errno = _errno.EACCES
    exit_code = 4
    kind = DENIED


class BackendUnavailableError(EbsfsError):
    """The endpoint could not be reached or kept timing out after bounded retries."""

    errno = _errno.EIO
    exit_code = 5
    kind = RETRY


class EndpointDownError(BackendUnavailableError):
    """The endpoint has not answered for ``--io-timeout``: calls fail at once, unretried,
    until a probe hears it again."""


class MountError(EbsfsError):
    """The mount could not be made: FUSE missing, bad or busy mount point."""

    errno = _errno.EIO
    exit_code = 6


class SnapshotFailedError(EbsfsError):
    """A snapshot went to the ``error`` state; the message is AWS's StateMessage."""

    errno = _errno.EIO
    exit_code = 7


class ApiError(EbsfsError):
    """An AWS error with no more specific meaning; keeps AWS's code and reason."""

    def __init__(self, message: str, code: str = "", reason: str = "", status: int = 0):
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.status = status
        self.kind = classify(code, reason, status, message)


class InvalidTokenError(ApiError):
    """A block or page token that AWS no longer accepts (expired or re-issued)."""


class DependencyMissingError(ApiError):
    """A resource the snapshot depends on is missing (a KMS key, 404
    DEPENDENCY_RESOURCE_NOT_FOUND): final, and not "snapshot gone"."""


class ChecksumError(EbsfsError):
    """A block whose bytes do not match its SHA256 checksum."""

    kind = RETRY


class ReadOnlyError(EbsfsError):
    """A write to something that cannot change."""

    errno = _errno.EROFS


class FileTooLargeError(EbsfsError):
    """A write or size past the fixed volume size, or over 64 TiB."""

    errno = _errno.EFBIG


class NotPermittedError(EbsfsError):
    """An operation a snapshot never allows, such as shrinking it."""

    errno = _errno.EPERM


class InvalidValueError(EbsfsError):
    """A bad value, such as an unknown parent snapshot or a malformed tag."""

    errno = _errno.EINVAL
    kind = INVALID


class NoSpaceError(EbsfsError):
    """The spool's disk is full: a write to ``new/`` cannot be kept (nothing was accepted)."""

    errno = _errno.ENOSPC
