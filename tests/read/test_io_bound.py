"""The documented read bound through a real mount: EIO once the endpoint has not answered for
``--io-timeout``, at once while it is known down, and reads again without a remount once it
answers (a stopped server: SIGSTOP; a dead one: its port refuses connections)."""

from __future__ import annotations

import errno
import mmap
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.mounting import MountProc
from tests.serverproc import LocalServer, upload_image

BLOCK = 512 * 1024
IO_TIMEOUT = 6.0
#: Generous: the bound is io_timeout; a buffered read may be two FUSE requests in a row.
BOUND = 2 * IO_TIMEOUT + 8
#: A read while the endpoint is known down must not wait for the bound again (it waits a
#: second at most for a probe's verdict; before, every read waited about the bound anew).
FAST = 0.5 * IO_TIMEOUT

pytestmark = pytest.mark.timeout(240)


@contextmanager
def outage(srv: LocalServer, kind: str) -> Iterator[Callable[[], None]]:
    """Take the server away (``stopped``: SIGSTOP; ``killed``: SIGKILL, port refused);
    yields the function that brings it back. Always brought back at the end."""
    back = False

    def restore() -> None:
        nonlocal back
        if back:
            return
        back = True
        if kind == "stopped":
            assert srv.proc is not None
            srv.proc.send_signal(signal.SIGCONT)
        else:
            srv.start()

    if kind == "stopped":
        assert srv.proc is not None
        srv.proc.send_signal(signal.SIGSTOP)
    else:
        srv.kill()
    try:
        yield restore
    finally:
        restore()


def read_at(path: Path, offset: int, direct: bool) -> bytes:
    """4 KiB at ``offset``: through the page cache, or O_DIRECT with an aligned buffer."""
    if not direct:
        fd = os.open(path, os.O_RDONLY)
        try:
            return os.pread(fd, 4096, offset)
        finally:
            os.close(fd)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        buf = mmap.mmap(-1, 4096)
        n = os.preadv(fd, [buf], offset)
        return bytes(buf[:n])
    finally:
        os.close(fd)


def timed_errno(fn: Callable[[], object]) -> tuple[int, float]:
    start = time.monotonic()
    with pytest.raises(OSError) as info:
        fn()
    return info.value.errno or 0, time.monotonic() - start


def eventually(fn: Callable[[], bytes], within: float) -> bytes:
    """``fn()`` once it stops failing (the prober needs a moment to hear the endpoint)."""
    deadline = time.monotonic() + within
    while True:
        try:
            return fn()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.mark.parametrize("kind", ["stopped", "killed"])
@pytest.mark.parametrize("direct", [False, True], ids=["buffered", "o_direct"])
def test_reads_fail_within_the_bound_then_fast_then_recover(
    server_factory, mount_factory, tmp_path: Path, kind: str, direct: bool
) -> None:
    srv = server_factory()
    image = tmp_path / "image.bin"
    image.write_bytes(os.urandom(8 * BLOCK))
    data = image.read_bytes()
    sid = upload_image(srv.ebs(), srv.ec2(), image)
    # botocore's own timeouts and attempts left at their defaults (30 s, 6): the bound must
    # hold whatever they are.
    m: MountProc = mount_factory(
        srv, "--read-ahead", "0", "--io-timeout", str(IO_TIMEOUT), "--snapshot", sid
    )
    path = m.path / sid
    assert read_at(path, 0, direct) == data[:4096]
    with outage(srv, kind) as restore:
        code, took = timed_errno(lambda: read_at(path, 3 * BLOCK, direct))
        assert code == errno.EIO
        assert took < BOUND, f"EIO after {took:.1f} s\n{m.log_text()[-3000:]}"
        # Known down: another read (another block) fails at once, not after the bound again.
        time.sleep(1)
        code, took = timed_errno(lambda: read_at(path, 5 * BLOCK + 8192, direct))
        assert code == errno.EIO
        assert took < FAST, (
            f"EIO after {took:.1f} s while the endpoint was known down\n{m.log_text()[-3000:]}"
        )
        restore()
        # No remount: reads work again once the prober heard the endpoint.
        got = eventually(lambda: read_at(path, 3 * BLOCK, direct), within=60)
        assert got == data[3 * BLOCK : 3 * BLOCK + 4096]
    assert read_at(path, 5 * BLOCK + 8192, direct) == data[5 * BLOCK + 8192 : 5 * BLOCK + 12288]
    assert "has not answered" in m.log_text()
