"""The errno edge: a full local disk met anywhere in a request is ENOSPC with one log line,
not EIO with a traceback (docs/reliability.md, finding 3)."""

from __future__ import annotations

import errno
import logging

import pyfuse3
import pytest
import trio

from ebsfs.fs.edge import fuse_errors


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_a_full_disk_is_enospc_not_a_bug(code: int, caplog: pytest.LogCaptureFixture) -> None:
    @fuse_errors
    async def fsync() -> None:
        async with trio.open_nursery() as nursery:  # as concurrent work raises it: a group
            async def save() -> None:
                raise OSError(code, "No space left on device", "/spool/x/journal")

            nursery.start_soon(save)

    caplog.set_level(logging.ERROR)
    with pytest.raises(pyfuse3.FUSEError) as answered:
        trio.run(fsync)
    assert answered.value.errno == code
    assert "no room on a local disk" in caplog.text
    assert "Traceback" not in caplog.text and "unexpectedly" not in caplog.text


def test_anything_else_is_still_a_bug(caplog: pytest.LogCaptureFixture) -> None:
    @fuse_errors
    async def read() -> None:
        raise OSError(errno.EBADF, "Bad file descriptor")

    with pytest.raises(pyfuse3.FUSEError) as answered:
        trio.run(read)
    assert answered.value.errno == errno.EIO
    assert "failed unexpectedly" in caplog.text
