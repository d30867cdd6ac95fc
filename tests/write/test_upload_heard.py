"""Issue 14: the throttled answers the upload process hears (botocore's retries of a put,
there) keep the mount's endpoint clock going, as those the mount's own threads hear do
(``Api.last_answer``): else a put throttled for longer than ``--io-timeout``, the whole call
in the child's retries, made the endpoint look silent while it was answering. A real forked
upload process against a loopback server that throttles every request."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import pytest

from ebsfs.aws.api import Api
from ebsfs.core import errors
from ebsfs.core.blocks import BLOCK_SIZE
from ebsfs.core.checksum import block_checksum
from ebsfs.options.config import AwsConfig
from ebsfs.write.upload import PutProcess
from tests.read.test_api import ScriptedServer, Seen, _error_answer, scripted

__all__ = ["scripted"]

pytestmark = pytest.mark.timeout(60)
SNAP = "snap-0123456789abcdef0"


def test_the_upload_process_answers_are_heard_by_the_mount(
    scripted: Callable[[Callable[[Seen], bytes]], ScriptedServer],
) -> None:
    srv = scripted(
        lambda seen: _error_answer(
            "400 Bad Request", "RequestThrottledException", "RESOURCE_LEVEL_THROTTLE"
        )
    )
    aws = AwsConfig(endpoint_url=srv.url, region="us-east-1", max_attempts=2)
    api = Api(aws)
    puts = PutProcess(aws, api, threads=1)
    puts.prefork()
    try:
        assert puts.pid is not None  # forked: the put below is the child's
        before = time.monotonic()
        data = b"\1" * BLOCK_SIZE
        with pytest.raises(errors.ApiError) as caught:
            puts.put_block(SNAP, 1, data, block_checksum(data))
        assert caught.value.code == "RequestThrottledException"
        assert len(srv.seen) >= 2  # botocore retried, in the child
        assert puts.fallback_calls == 0
        assert api.last_answer() != -math.inf, "the child's answers were not heard"
        assert api.last_answer() >= before
    finally:
        puts.close()
