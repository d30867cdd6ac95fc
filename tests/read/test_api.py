"""ebsfs.api: botocore errors become ebsfs errors; blocks are verified before they are returned."""

import io

import botocore.exceptions
import pytest
from botocore.response import StreamingBody
from botocore.stub import Stubber

from ebsfs import checksum, errors
from ebsfs.api import Api, _convert
from ebsfs.config import AwsConfig
from ebsfs.types import BLOCK_SIZE


def _client_error(code: str, status: int, reason: str = "", message: str = "m") -> Exception:
    response: dict = {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    if reason:
        response["Reason"] = reason
    return botocore.exceptions.ClientError(response, "Op")


@pytest.mark.parametrize(
    ("exc", "cls"),
    [
        (
            _client_error("AccessDeniedException", 403, "UNAUTHORIZED_ACCOUNT"),
            errors.AccessDeniedError,
        ),
        (_client_error("InvalidSignatureException", 403), errors.AccessDeniedError),
        (_client_error("AuthFailure", 401), errors.AccessDeniedError),
        (
            _client_error("ResourceNotFoundException", 404, "SNAPSHOT_NOT_FOUND"),
            errors.NotFoundError,
        ),
        (_client_error("InvalidSnapshot.NotFound", 400), errors.NotFoundError),
        (
            _client_error("ValidationException", 400, "INVALID_BLOCK_TOKEN"),
            errors.InvalidTokenError,
        ),
        (_client_error("ValidationException", 400, "INVALID_PAGE_TOKEN"), errors.InvalidTokenError),
        (_client_error("InternalServerException", 500), errors.ApiError),
        (
            _client_error(
                "InvalidSignatureException", 403, message="x-amz-Checksum does not match"
            ),
            errors.ChecksumError,
        ),
        (botocore.exceptions.NoCredentialsError(), errors.AccessDeniedError),
        (
            botocore.exceptions.EndpointConnectionError(endpoint_url="http://127.0.0.1:1"),
            errors.BackendUnavailableError,
        ),
        (
            botocore.exceptions.ReadTimeoutError(endpoint_url="http://127.0.0.1:1"),
            errors.BackendUnavailableError,
        ),
    ],
)
def test_conversion(exc: Exception, cls: type) -> None:
    converted = _convert(exc, "Op")
    assert type(converted) is cls
    assert str(converted).startswith("Op")


def test_token_error_keeps_code_and_reason() -> None:
    converted = _convert(_client_error("ValidationException", 400, "INVALID_BLOCK_TOKEN"), "Op")
    assert isinstance(converted, errors.InvalidTokenError)
    assert (converted.code, converted.reason, converted.status) == (
        "ValidationException",
        "INVALID_BLOCK_TOKEN",
        400,
    )


def _api() -> Api:
    return Api(AwsConfig(endpoint_url="http://127.0.0.1:9", region="us-east-1"))


def _stub_block(stub: Stubber, data: bytes, sum_b64: str) -> None:
    stub.add_response(
        "get_snapshot_block",
        {
            "BlockData": StreamingBody(io.BytesIO(data), len(data)),
            "DataLength": len(data),
            "Checksum": sum_b64,
            "ChecksumAlgorithm": "SHA256",
        },
        {"SnapshotId": "snap-0123456789abcdef0", "BlockIndex": 3, "BlockToken": "t"},
    )


def test_get_block_verifies_checksum() -> None:
    api = _api()
    good = bytes(range(256)) * (BLOCK_SIZE // 256)
    bad = b"\1" + good[1:]
    with Stubber(api.ebs) as stub:
        _stub_block(stub, good, checksum.block_checksum(good))
        _stub_block(stub, bad, checksum.block_checksum(good))
        _stub_block(stub, good[:100], checksum.block_checksum(good[:100]))
        assert api.get_block("snap-0123456789abcdef0", 3, "t") == good
        with pytest.raises(errors.ChecksumError, match="block 3"):
            api.get_block("snap-0123456789abcdef0", 3, "t")
        with pytest.raises(errors.ChecksumError, match="100 bytes"):
            api.get_block("snap-0123456789abcdef0", 3, "t")


def test_unreachable_endpoint_is_backend_unavailable() -> None:
    api = Api(AwsConfig(endpoint_url="http://127.0.0.1:9", region="us-east-1", max_attempts=1))
    with pytest.raises(errors.BackendUnavailableError):
        api.list_blocks("snap-0123456789abcdef0")
