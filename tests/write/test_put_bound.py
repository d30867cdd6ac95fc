"""The put layer under the io bound, against a fake: a put abandoned at the bound (its thread
still on the wire) never lands after a newer put of the same block."""

from __future__ import annotations

import threading

import pytest
import trio

from ebsfs.aws.runner import Calls
from ebsfs.core import errors
from ebsfs.core.blocks import BLOCK_SIZE
from ebsfs.write.sink import PutTuning, RemoteWriter
from ebsfs.write.spooled import ThreadPuts

pytestmark = pytest.mark.timeout(60)
SNAP = "snap-0123456789abcdef0"
T = 1.0


class GatedPuts:
    """Stores blocks; a put of bytes starting with b"old" hangs until ``release`` is set
    (a request stuck on a stopped server that goes through once it resumes)."""

    def __init__(self) -> None:
        self.stored: dict[int, bytes] = {}
        self.release = threading.Event()

    def put_block(self, snapshot_id: str, index: int, data: bytes, checksum_b64: str) -> None:
        if bytes(data[:3]) == b"old":
            self.release.wait(30)
        self.stored[index] = bytes(data)


def test_an_abandoned_put_never_lands_after_a_newer_one() -> None:
    api = GatedPuts()
    old = b"old" + bytes(BLOCK_SIZE - 3)
    new = b"new" + bytes(BLOCK_SIZE - 3)

    async def main() -> None:
        limiter = trio.CapacityLimiter(4)
        calls = Calls(limiter, io_timeout=T)
        w = RemoteWriter(ThreadPuts(api), SNAP, limiter, tuning=PutTuning(backoff=0.01))
        start = trio.current_time()
        with pytest.raises(errors.BackendUnavailableError):
            await w.put(0, old)
        assert trio.current_time() - start < 2 * T + 3
        with trio.fail_after(10):  # no probe here: the endpoint is simply tried again
            while calls.health.down:
                await trio.sleep(0.02)

        async def server_resumes() -> None:
            await trio.sleep(T / 5)
            api.release.set()

        async with trio.open_nursery() as n:
            n.start_soon(server_resumes)
            assert await w.put(0, new) is not None
        await trio.to_thread.run_sync(lambda: None)
        await trio.sleep(0.2)  # room for a late old put to land, were it still running

    trio.run(main)
    assert api.stored[0] == new
