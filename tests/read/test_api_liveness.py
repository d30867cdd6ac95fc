"""What ``Api`` tells the mount's endpoint clock, over real HTTP: every answer botocore hears
(its own retries included) but 5xx, and ``Api.probe``'s verdict."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator

import pytest

from ebsfs.aws.api import Api
from ebsfs.core import errors
from ebsfs.options.config import AwsConfig
from tests.read.test_api import SILENT, ScriptedServer, Seen, _error_answer, scripted
from tests.serverproc import free_port

__all__ = ["scripted"]

pytestmark = pytest.mark.timeout(60)
SNAP = "snap-0123456789abcdef0"
Make = Callable[[Callable[[Seen], bytes | tuple[bytes] | str]], ScriptedServer]


def _api(url: str, **config: object) -> Api:
    return Api(AwsConfig(endpoint_url=url, region="us-east-1", **config))  # type: ignore[arg-type]


@pytest.fixture(params=["get", "list"])
def call(request: pytest.FixtureRequest) -> Iterator[Callable[[Api], object]]:
    """GetSnapshotBlock (the lean block calls) and ListSnapshotBlocks (the client's own)."""
    if request.param == "get":
        yield lambda api: api.get_block(SNAP, 1, "token")
    else:
        yield lambda api: api.list_blocks(SNAP)


def test_throttling_inside_botocores_retries_is_heard(scripted: Make, call) -> None:
    srv = scripted(lambda seen: _error_answer("400 Bad Request", "ThrottlingException"))
    api = _api(srv.url, max_attempts=2)
    assert api.last_answer() == -math.inf
    before = time.monotonic()
    with pytest.raises(errors.ApiError):
        call(api)
    assert api.last_answer() >= before


def test_a_4xx_is_heard_a_5xx_is_not(scripted: Make, call) -> None:
    denied = scripted(lambda seen: _error_answer("403 Forbidden", "AccessDeniedException"))
    api = _api(denied.url, max_attempts=1)
    with pytest.raises(errors.AccessDeniedError):
        call(api)
    assert api.last_answer() > -math.inf
    failing = scripted(lambda seen: _error_answer("500 Internal Server Error", "InternalError"))
    api = _api(failing.url, max_attempts=1)
    with pytest.raises(errors.ApiError):
        call(api)
    assert api.last_answer() == -math.inf


def test_probe_returns_on_any_answer_but_a_5xx(scripted: Make) -> None:
    gone = scripted(lambda seen: _error_answer("404 Not Found", "ResourceNotFoundException"))
    _api(gone.url).probe(2.0)
    throttled = scripted(lambda seen: _error_answer("429 Too Many", "ThrottlingException"))
    _api(throttled.url).probe(2.0)
    failing = scripted(lambda seen: _error_answer("503 Unavailable", "InternalError"))
    with pytest.raises(errors.ApiError):
        _api(failing.url).probe(2.0)


def test_probe_of_a_silent_or_dead_endpoint_fails_within_its_timeout(scripted: Make) -> None:
    silent = scripted(lambda seen: SILENT)
    api = _api(silent.url)  # default 30 s read timeout and 6 attempts: the probe's own apply
    start = time.monotonic()
    with pytest.raises(errors.BackendUnavailableError):
        api.probe(1.0)
    assert time.monotonic() - start < 10
    assert len(silent.seen) == 1  # one attempt, no retries
    with pytest.raises(errors.BackendUnavailableError):
        _api(f"http://127.0.0.1:{free_port()}").probe(1.0)


def _ec2_error(status: str, code: str) -> bytes:
    body = (
        f"<Response><Errors><Error><Code>{code}</Code><Message>slow down</Message></Error>"
        "</Errors><RequestID>r</RequestID></Response>"
    ).encode()
    head = f"HTTP/1.1 {status}\r\nContent-Type: text/xml\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


def test_ec2_throttling_with_a_503_is_heard(scripted: Make) -> None:
    """EC2 throttles with 503 RequestLimitExceeded: an answer (a busy endpoint), as the
    runner's clock counts it; the liveness hook used to take it for a 5xx."""
    srv = scripted(lambda seen: _ec2_error("503 Service Unavailable", "RequestLimitExceeded"))
    api = _api(srv.url, max_attempts=1)
    before = time.monotonic()
    with pytest.raises(errors.ApiError) as throttled:
        api.describe_snapshots([SNAP])
    assert throttled.value.code == "RequestLimitExceeded"
    assert throttled.value.kind == errors.RETRY
    assert api.last_answer() >= before
