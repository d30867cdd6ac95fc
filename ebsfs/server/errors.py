"""The errors the local server answers with, in AWS's wire shapes.

EBS direct (rest-json) errors come in three families (ebs-direct-api.md §2.2): service logic
(``Message`` plus a ``Reason``), framework input validation (lower-case ``message``, no
``Reason``) and auth/signature errors. Each family carries its own ``x-amzn-ErrorType``
namespace, from which botocore takes the error code. EC2 errors are XML (§7.3).
"""

from collections.abc import Iterable

_SERVICE_NS = "http://internal.amazon.com/coral/com.amazon.zeppelindataservice/"
_VALIDATE_NS = "http://internal.amazon.com/coral/com.amazon.coral.validate/"
_CORAL_NS = "http://internal.amazon.com/coral/com.amazon.coral.service/"


class EbsError(Exception):
    """An EBS direct API error: HTTP status, code, message and (service errors) a Reason."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        reason: str | None = None,
        *,
        namespace: str = _SERVICE_NS,
        lower_message: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.reason = reason
        self.namespace = namespace
        self.lower_message = lower_message

    def body(self) -> dict[str, str]:
        key = "message" if self.lower_message else "Message"
        out = {key: self.message}
        if self.reason is not None:
            out["Reason"] = self.reason
        return out

    def error_type(self) -> str:
        return f"{self.code}:{self.namespace}"


def validation(reason: str, message: str) -> EbsError:
    """A service-logic ValidationException (400) with its Reason."""
    return EbsError(400, "ValidationException", message, reason)


def not_found(snapshot_id: str) -> EbsError:
    """AWS's 404 for a snapshot that is unknown, deleted, in error, or not yet readable."""
    return EbsError(
        404,
        "ResourceNotFoundException",
        f"The snapshot '{snapshot_id}' does not exist.",
        "SNAPSHOT_NOT_FOUND",
    )


def framework(violations: Iterable[str]) -> EbsError:
    """The framework's input-validation answer listing every violated constraint."""
    items = list(violations)
    noun = "error" if len(items) == 1 else "errors"
    text = f"{len(items)} validation {noun} detected: " + "; ".join(items)
    return EbsError(400, "ValidationException", text, namespace=_VALIDATE_NS, lower_message=True)


def coral(status: int, code: str, message: str) -> EbsError:
    """A Coral service-framework error (auth, serialization, unknown operation)."""
    return EbsError(status, code, message, namespace=_CORAL_NS, lower_message=True)


class Ec2Error(Exception):
    """An EC2 query-protocol error: ``<Response><Errors><Error>`` with Code and Message."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
