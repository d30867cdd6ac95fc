"""sd_notify datagrams and the journald/redaction behaviour of the log set-up."""

import io
import logging
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ebsfs.core import redact as redact_mod
from ebsfs.daemon import logsetup, notify


@pytest.fixture
def abstract_listener(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    name = f"ebsfs-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    yield sock
    sock.close()


def test_ready_and_stopping_reach_an_abstract_socket(abstract_listener: socket.socket) -> None:
    assert notify.notify_ready("mounted /mnt/x")
    ready = abstract_listener.recv(4096).decode().splitlines()
    assert "READY=1" in ready
    assert f"MAINPID={os.getpid()}" in ready
    assert "STATUS=mounted /mnt/x" in ready
    assert notify.notify_stopping()
    stopping = abstract_listener.recv(4096).decode().splitlines()
    assert stopping[0] == "STOPPING=1"


def test_path_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert notify.notify_stopping("two\nlines")
        assert sock.recv(4096) == b"STOPPING=1\nSTATUS=two lines"


def test_no_socket_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify.notify_ready() is False
    assert notify.notify_stopping() is False


def test_unreachable_socket_is_logged_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "absent"))
    with caplog.at_level(logging.WARNING, logger="ebsfs.daemon.notify"):
        assert notify.notify_ready() is False
    assert "could not notify systemd" in caplog.text


def _emit(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], *lines: str) -> str:
    for key in ("JOURNAL_STREAM", "INVOCATION_ID"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    out = io.StringIO()
    handler = logsetup.setup_logging("debug", stream=out)
    try:
        log = logging.getLogger("ebsfs.test")
        for line in lines:
            log.warning("%s", line)
        log.info("plain info")
        log.error("bad thing")
    finally:
        logging.getLogger().removeHandler(handler)
        logging.getLogger().setLevel(logging.WARNING)
    return out.getvalue()


def test_priority_prefixes_under_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    text = _emit(monkeypatch, {"INVOCATION_ID": "abc"}, "careful")
    assert text.splitlines() == [
        "<4>ebsfs.test: careful",
        "<6>ebsfs.test: plain info",
        "<3>ebsfs.test: bad thing",
    ]


def test_plain_format_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    text = _emit(monkeypatch, {}, "careful")
    first = text.splitlines()[0]
    assert not first.startswith("<")
    assert "WARNING ebsfs.test: careful" in first


def test_journal_stream_of_another_file_is_not_the_journal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A StringIO has no file descriptor: JOURNAL_STREAM alone then counts as systemd.
    assert "<4>" in _emit(monkeypatch, {"JOURNAL_STREAM": "1:2"}, "x")
    with open(os.devnull, "w") as devnull:
        monkeypatch.setenv("JOURNAL_STREAM", "1:2")
        monkeypatch.delenv("INVOCATION_ID", raising=False)
        assert not logsetup.under_systemd(devnull)
        st = os.fstat(devnull.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert logsetup.under_systemd(devnull)


SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


@pytest.mark.parametrize(
    "line",
    [
        "Authorization: AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20260101/us-east-1/ebs/"
        "aws4_request, SignedHeaders=host;x-amz-date, Signature="
        "fe5f80f77d5fa3beca038a248ff027d0445342fe2855ddc963176630326f1024",
        "GET /snapshots?X-Amz-Signature=abcdef0123456789abcdef&X-Amz-Security-Token=FQoGZXIvYXdz",
        f"config: aws_secret_access_key = {SECRET}",
        f"{{'SecretAccessKey': '{SECRET}', 'SessionToken': 'IQoJb3JpZ2luX2VjEXAMPLE'}}",
        "key id AKIAIOSFODNN7EXAMPLE in use",
    ],
)
def test_secrets_never_reach_the_log(monkeypatch: pytest.MonkeyPatch, line: str) -> None:
    text = _emit(monkeypatch, {}, line)
    for secret in (
        SECRET,
        "IOSFODNN7EXAMPLE",
        "fe5f80f77d5fa3beca038a248ff027d0",
        "abcdef0123456789abcdef",
        "FQoGZXIvYXdz",
        "IQoJb3JpZ2luX2VjEXAMPLE",
    ):
        assert secret not in text
    assert redact_mod.MASK in text


def test_registered_secret_is_masked_even_in_tracebacks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    redact_mod.register_secret("hunter2-very-secret")
    out = io.StringIO()
    monkeypatch.delenv("INVOCATION_ID", raising=False)
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    handler = logsetup.setup_logging("info", stream=out)
    try:
        try:
            raise RuntimeError("login with hunter2-very-secret failed")
        except RuntimeError:
            logging.getLogger("ebsfs.test").exception("using %s", "hunter2-very-secret")
    finally:
        logging.getLogger().removeHandler(handler)
    assert "hunter2-very-secret" not in out.getvalue()
    assert "RuntimeError" in out.getvalue()


def test_unknown_level_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown log level"):
        logsetup.parse_level("loud")


def test_syslog_lines_are_redacted_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "log"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(5)
        monkeypatch.setattr(logsetup, "SYSLOG_SOCKET", str(path))
        handler = logsetup.setup_logging("info", syslog=True)
        try:
            logging.getLogger("ebsfs.test").warning("secret_access_key=abcdEFGH1234")
        finally:
            logging.getLogger().removeHandler(handler)
            handler.close()
        line = sock.recv(4096).decode()
    assert line.startswith("<12>ebsfs[")  # facility user (1) * 8 + warning (4)
    assert "abcdEFGH1234" not in line
    assert redact_mod.MASK in line
