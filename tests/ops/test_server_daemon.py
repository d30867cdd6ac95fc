"""The local server as a systemd service: READY=1/STOPPING=1 and journald-style log lines."""

import socket
import uuid
from pathlib import Path

import pytest

from tests.serverproc import LocalServer


def test_server_notifies_systemd_and_logs_priorities(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"ebsfs-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(b"\0" + name.encode())
        listener.settimeout(20)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        monkeypatch.setenv("INVOCATION_ID", "0123456789abcdef")
        srv = LocalServer(tmp_path / "data")
        srv.start()
        try:
            ready = listener.recv(4096).decode().splitlines()
            assert "READY=1" in ready
            assert f"STATUS=listening on 127.0.0.1:{srv.port}" in ready
        finally:
            srv.stop()
        assert listener.recv(4096).decode().splitlines()[0] == "STOPPING=1"
    lines = [line for line in srv.log_text().splitlines() if line]
    assert lines, "the server logged nothing"
    assert all(line[:3] in ("<6>", "<4>", "<3>", "<7>", "<2>") for line in lines), lines
    assert any("listening on" in line for line in lines)
    # The secret key the server was given never shows up in its log.
    assert srv.secret_access_key not in srv.log_text()
