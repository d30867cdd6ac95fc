"""Issue 14: throttling alone never fails a read, however long it waits for its lane behind
other readers' fetches under a quota far below what the mount asks for, with a short
``--io-timeout``: the reads go through, slowly. A real mount against the server's
``--rate-limit``; no timing asserted. ``--max-attempts 1``: throttled answers come back to
ebsfs's own retries at once (botocore's back-off pauses are longer than so short a bound)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

import pytest

from tests.mounting import MountProc
from tests.serverproc import LocalServer, upload_image

BS = 512 * 1024
RATE = 2  # 32 blocks take 16 s: well past 4 x --io-timeout for the last in the queue
READERS = 8
BLOCKS = 4  # per reader

pytestmark = pytest.mark.timeout(240)


def test_parallel_reads_under_a_low_quota_are_slow_not_failed(
    server_factory: Callable[..., LocalServer],
    mount_factory: Callable[..., MountProc],
) -> None:
    image = os.urandom(READERS * BLOCKS * BS)
    srv = server_factory()
    sid = upload_image(srv.ebs(), srv.ec2(), image)
    srv.restart("--rate-limit", str(RATE))
    m = mount_factory(srv, "--io-timeout", "2", "--max-attempts", "1", "--read-ahead", "0")
    failures: list[str] = []

    def reader(r: int) -> None:
        fd = os.open(m.path / sid, os.O_RDONLY | os.O_DIRECT)
        try:
            import mmap

            buf = mmap.mmap(-1, BS)
            for b in range(BLOCKS):
                index = b * READERS + r  # interleaved: no stream, every block its own call
                os.preadv(fd, [buf], index * BS)
                if buf[:] != image[index * BS:(index + 1) * BS]:
                    failures.append(f"block {index}: wrong data")
        except OSError as exc:
            failures.append(f"reader {r}: {exc}")
        finally:
            os.close(fd)

    threads = [threading.Thread(target=reader, args=(r,)) for r in range(READERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(200)
    assert not failures, f"{failures}\n{m.log_text()[-3000:]}"
