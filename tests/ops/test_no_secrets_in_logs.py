"""Debug logs of the mount and the server never contain the secret key or a signature."""

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tests.ops.mounts import ebsfs_env, unmount
from tests.serverproc import LocalServer, upload_image

SECRET = "ops-test-secret-KEY-0123456789abcdefXYZ"
SIGNATURE = re.compile(r"Signature=[0-9a-f]{64}")


def test_debug_logs_hold_no_secrets(
    server_factory: Callable[..., LocalServer], tmp_path: Path
) -> None:
    srv = server_factory("--log-level", "debug")
    srv.secret_access_key = SECRET
    srv.restart("--log-level", "debug")
    data = os.urandom(1 << 20)
    snap = upload_image(srv.ebs(), srv.ec2(), data, name="secret-test")
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    env = ebsfs_env(srv, tmp_path)
    daemon = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ebsfs",
            "mount",
            str(mountpoint),
            "--foreground",
            "--log-level",
            "debug",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not os.path.ismount(mountpoint):
            assert daemon.poll() is None, daemon.stderr.read() if daemon.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.1)
        with open(mountpoint / snap, "rb") as f:
            assert f.read(len(data)) == data
        (mountpoint / "new" / "w").write_bytes(os.urandom(1 << 20))
        daemon.send_signal(signal.SIGTERM)
        _, log = daemon.communicate(timeout=120)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        unmount(mountpoint, env)
    server_log = srv.log_text()
    # Both logged plenty at debug level (so the check below has something to look at).
    assert len(log.splitlines()) > 5, log
    assert len(server_log.splitlines()) > 5, server_log
    for text in (log, server_log):
        assert SECRET not in text
        assert not SIGNATURE.search(text)
