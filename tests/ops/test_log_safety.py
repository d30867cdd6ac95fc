"""Log lines: every form of a secret masked, and a detached daemon's log never lost."""

from __future__ import annotations

import io
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ebsfs.core import redact as redact_mod
from ebsfs.daemon import logsetup
from tests.mounting import wait_for
from tests.ops.mounts import ebsfs, ebsfs_env, unmount
from tests.serverproc import LocalServer, free_port

SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"
TOKEN = "IQoJb3JpZ2luX2VjEXAMPLETOKENvalue0123456789"


@pytest.fixture(autouse=True)
def _fresh_secrets(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(redact_mod, "_secrets", set())
    for name in ("INVOCATION_ID", "JOURNAL_STREAM", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    root = logging.getLogger()
    level = root.level
    yield
    root.setLevel(level)  # setup_logging raised it: later tests in this worker expect the default


def emit(*lines: str) -> str:
    out = io.StringIO()
    handler = logsetup.setup_logging("info", stream=out)
    try:
        for line in lines:
            logging.getLogger("ebsfs.test").info("%s", line)
    finally:
        logging.getLogger().removeHandler(handler)
    return out.getvalue()


@pytest.mark.parametrize(
    "line",
    [
        f"secret_key={SECRET}",
        f"secret_key = {SECRET}",
        f"token={SECRET}",
        f"token: {SECRET}",
        f'{{"token": "{SECRET}"}}',
        f"{{'secret': '{SECRET}'}}",
        f"password={SECRET}&user=x",
        f"argv: ebsfs server --secret-access-key {SECRET} --listen 127.0.0.1:0",
        f"argv: ebsfs server --secret-access-key={SECRET}",
        f"argv: ['ebsfs', 'server', '--secret-access-key', '{SECRET}', '--listen', 'x']",
        f"session-token: {SECRET}",
    ],
)
def test_secret_shapes_are_masked(line: str) -> None:
    text = emit(line)
    assert SECRET not in text
    assert redact_mod.MASK in text


def test_harmless_neighbours_survive() -> None:
    text = emit("token_ttl=604800 listen=127.0.0.1:9537 --listen 127.0.0.1:0")
    assert "604800" in text and "127.0.0.1:9537" in text and "127.0.0.1:0" in text


def test_environment_secrets_are_masked_wherever_they_appear(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", TOKEN)
    text = emit(f"signing with {SECRET}", f"session {TOKEN} expired")
    assert SECRET not in text and TOKEN not in text


def test_secret_flags_given_on_the_command_line_are_masked() -> None:
    redact_mod.register_argv_secrets(["server", "--secret-access-key", SECRET, "--token=" + TOKEN])
    text = emit(f"bare {SECRET} and {TOKEN}")
    assert SECRET not in text and TOKEN not in text


def test_server_never_logs_a_secret_from_its_environment(tmp_path: Path) -> None:
    port = free_port()
    env = dict(os.environ)
    env.update(
        AWS_ACCESS_KEY_ID="AKIDEXAMPLEOPS",
        AWS_SECRET_ACCESS_KEY=SECRET,
        AWS_SESSION_TOKEN=TOKEN,
        EBSFS_CONFIG="/dev/null",
    )
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "ebsfs", "server", "--data-dir", str(tmp_path / "data"),
             "--listen", f"127.0.0.1:{port}", "--log-level", "debug"],
            env=env, stdout=log, stderr=log,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert server.poll() is None, log_path.read_text()
            try:
                conn = socket.create_connection(("127.0.0.1", port), timeout=5)
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        # A request that echoes both in its target: the debug log writes every target.
        with conn:
            conn.sendall(f"GET /{SECRET}?t={TOKEN} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            conn.recv(65536)
        wait_for(lambda: "GET" in log_path.read_text())
    finally:
        server.terminate()
        server.wait(30)
    text = log_path.read_text()
    assert "GET" in text, text
    assert SECRET not in text and TOKEN not in text


def test_detached_mount_without_a_system_log_logs_to_a_file(
    server: LocalServer, tmp_path: Path
) -> None:
    """No /dev/log (hidden in a private mount namespace if this machine has one): the
    daemon's lines go to $EBSFS_LOG_DIR/<mount point escaped>.log, and ``ebsfs mount``
    says so."""
    env = ebsfs_env(server, tmp_path, EBSFS_LOG_DIR=str(tmp_path / "logs"))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    script = (
        "set -e\n"
        # Something at /dev/log that is no socket: nothing listens there.
        "if [ -e /dev/log ] || [ -L /dev/log ]; then mount --bind /dev/null /dev/log; fi\n"
        f'"{sys.executable}" -m ebsfs mount "{mnt}" 2>"{tmp_path}/mount.err"\n'
        f'ls "{mnt}" >/dev/null\n'
        f'"{sys.executable}" -m ebsfs umount "{mnt}"\n'
    )
    try:
        done = subprocess.run(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
            env=env, capture_output=True, text=True, timeout=120,
        )
    finally:
        unmount(mnt, env)
    said = (tmp_path / "mount.err").read_text()
    assert done.returncode == 0, done.stderr + said
    expected = tmp_path / "logs" / f"{logsetup.escape_path(str(mnt))}.log"
    assert said.strip().splitlines() == [f"ebsfs: mounted {mnt}; daemon log: {expected}"]
    text = expected.read_text()
    assert f"mounted {mnt}" in text and "SIGTERM" in text


def test_log_file_that_cannot_be_opened_is_one_line(server: LocalServer, tmp_path: Path) -> None:
    env = ebsfs_env(server, tmp_path)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    for extra in ([], ["--foreground"]):
        done = ebsfs("mount", str(mnt), "--log-file", str(tmp_path / "no" / "such.log"), *extra,
                     env=env, check=False, timeout=60)
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr
        assert done.stderr.strip().splitlines() == [
            f"ebsfs: --log-file {tmp_path}/no/such.log: No such file or directory"
        ]


def test_relative_log_file_is_relative_to_where_mount_ran(
    server: LocalServer, tmp_path: Path
) -> None:
    env = ebsfs_env(server, tmp_path)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "ebsfs", "mount", "mnt", "--log-file", "rel.log"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert f"daemon log: {tmp_path}/rel.log" in done.stderr
    finally:
        unmount(mnt, env)
    assert "mounted" in (tmp_path / "rel.log").read_text()
