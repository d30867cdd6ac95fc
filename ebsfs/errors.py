"""The exceptions of ebsfs, each with the errno the filesystem answers and the CLI exit code.

Everything below the FUSE edge raises these; botocore's exceptions are converted to them in
one place (``ebsfs.api``), and the FUSE edge (``ebsfs.fs``) turns them into errno values.
The CLI prints ``ebsfs: <message>`` and exits with ``exit_code``: no traceback.

    EbsfsError                      EIO    exit 1
    ├── UsageError                  EINVAL exit 2   bad command line or configuration
    ├── NotFoundError               ENOENT exit 3   no such snapshot, file or block
    ├── AccessDeniedError           EACCES exit 4   AWS said no, or credentials are missing/wrong
    ├── BackendUnavailableError     EIO    exit 5   endpoint unreachable or timing out
    │   └── EndpointDownError       EIO    exit 5   known down (--io-timeout): failed at once
    ├── MountError                  EIO    exit 6   FUSE unavailable, bad or busy mount point
    ├── SnapshotFailedError         EIO    exit 7   AWS moved the snapshot to ``error``
    ├── ApiError                    EIO    exit 1   any other AWS error (code, reason kept)
    │   └── InvalidTokenError       EIO             a block or page token AWS no longer accepts
    ├── ChecksumError               EIO             a block failed its SHA256 check
    ├── ReadOnlyError               EROFS
    ├── FileTooLargeError           EFBIG
    ├── NotPermittedError           EPERM
    ├── NoSpaceError                ENOSPC          the spool's disk is full
    └── InvalidValueError           EINVAL
"""

import errno as _errno


class EbsfsError(Exception):
    """Base of every ebsfs error; ``str(e)`` is a one-line message for the user."""

    errno: int = _errno.EIO
    exit_code: int = 1


class UsageError(EbsfsError):
    """The command line or the configuration is wrong."""

    errno = _errno.EINVAL
    exit_code = 2


class NotFoundError(EbsfsError):
    """A snapshot, file or block that does not exist."""

    errno = _errno.ENOENT
    exit_code = 3


class AccessDeniedError(EbsfsError):
    """AWS refused the request, or no usable credentials were found."""

    errno = _errno.EACCES
    exit_code = 4


class BackendUnavailableError(EbsfsError):
    """The endpoint could not be reached or kept timing out after bounded retries."""

    errno = _errno.EIO
    exit_code = 5


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


class InvalidTokenError(ApiError):
    """A block or page token that AWS no longer accepts (expired or re-issued)."""


class ChecksumError(EbsfsError):
    """A block whose bytes do not match its SHA256 checksum."""


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


class NoSpaceError(EbsfsError):
    """The spool's disk is full: a write to ``new/`` cannot be kept (nothing was accepted)."""

    errno = _errno.ENOSPC
