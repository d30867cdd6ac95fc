"""Through a real mount: a put answered WRITE_REQUEST_TIMEOUT every time is retried for its
attempts and then fails, and the endpoint (answering every call) is never taken for down."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.mounting import MountProc, ebsfs
from tests.serverproc import LocalServer
from tests.write.helpers import sh


def test_puts_answered_write_request_timeout_never_mark_the_endpoint_down(
    tmp_path: Path,
) -> None:
    # On main the pause before a later attempt was cut to what was left of the io clock, the
    # attempt began at its deadline, failed "no answer within the bound" and the endpoint was
    # marked down: every other call of the mount failed at once with EIO.
    server = LocalServer(tmp_path / "data")
    with server:
        env = {**server.env(), "EBSFS_MAX_ATTEMPTS": "1"}
        m = MountProc(server, tmp_path / "mnt", "--io-timeout", "3", env=env).start()
        try:
            target = m.path / "new" / "img"
            sh("truncate", "-s", "1G", target)
            with open(target, "r+b") as f:
                f.write(os.urandom(1 << 19))
                os.fsync(f.fileno())  # the snapshot started, one block stored
            server.restart("--fault", "WRITE_REQUEST_TIMEOUT:1")
            done = subprocess.run(
                ["dd", "if=/dev/urandom", f"of={target}", "bs=512k", "count=1", "seek=1",
                 "conv=fsync,notrunc"], capture_output=True, text=True, timeout=300)
            assert done.returncode != 0 and "Input/output error" in done.stderr
            stats = json.loads(ebsfs("stats", "--json", str(m.path), env=env).stdout)
            server.restart("--fault-seed", "1")  # no faults: the unmount stores the block
        finally:
            m.stop()
        log = m.log_text()
        assert "no answer within the bound" not in log, log[-3000:]
        assert stats["read"].get("endpoint_down", 0) == 0, stats
        assert stats["write"]["put_failures"] >= 1 and stats["write"]["put_retries"] >= 7
