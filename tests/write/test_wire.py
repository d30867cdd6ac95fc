"""Errors crossing the upload process's socket: an explicit, typed encoding."""

import errno

import pytest

from ebsfs.core import errors
from ebsfs.core.errors import (
    ApiError,
    BackendUnavailableError,
    EbsfsError,
    InvalidTokenError,
    NotFoundError,
)
from ebsfs.write.wire import ERROR_TYPES, WireError


def roundtrip(exc: EbsfsError) -> EbsfsError:
    return WireError.from_json(WireError.of(exc).to_json()).exception()


def test_every_error_class_comes_back_as_itself() -> None:
    for name, cls in vars(errors).items():
        if isinstance(cls, type) and issubclass(cls, EbsfsError):
            assert name in ERROR_TYPES
            exc = cls("m", "C", "R", 500) if issubclass(cls, ApiError) else cls("m")
            back = roundtrip(exc)
            assert type(back) is cls and str(back) == "m" and back.kind == exc.kind


def test_aws_fields_and_a_kind_set_per_error_come_back() -> None:
    back = roundtrip(
        InvalidTokenError("expired", "ValidationException", "INVALID_BLOCK_TOKEN", 400))
    assert isinstance(back, InvalidTokenError)
    assert (back.code, back.reason, back.status, back.kind) == (
        "ValidationException", "INVALID_BLOCK_TOKEN", 400, errors.classify(
            "ValidationException", "INVALID_BLOCK_TOKEN", 400, "expired"))
    gone = NotFoundError("x")
    gone.kind = errors.RETRY
    assert roundtrip(gone).kind == errors.RETRY


@pytest.mark.parametrize("raw", [
    {"type": "KeyError", "message": "boom"},
    {"type": "classify", "message": "boom"},
    {"message": "boom"},
])
def test_an_unknown_type_is_a_clear_transient_error(raw: dict[str, object]) -> None:
    back = WireError.from_json(raw).exception()
    assert type(back) is BackendUnavailableError
    assert "upload process failed" in str(back) and "boom" in str(back)


def test_only_the_declared_fields_are_taken() -> None:
    # Formerly every "attrs" entry was copied into the exception: errno, kind, anything.
    raw = {"type": "ApiError", "message": "m", "status": "500", "kind": "whatever",
           "attrs": {"errno": 0, "code": "Sneaky"}}
    back = WireError.from_json(raw).exception()
    assert isinstance(back, ApiError)
    assert back.errno == errno.EIO and back.code == "" and back.status == 0
    assert back.kind == errors.classify("", "", 0, "m")
    assert isinstance(WireError.from_json("garbage").exception(), BackendUnavailableError)
