"""The detached daemon's fallback log file (no /dev/log) when its directory holds something
planted: a symlink, a FIFO, a hard link, another user's file; and mount points whose escaped
name is longer than a file name may be."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from ebsfs.daemon import logsetup

NOBODY = 65534


@pytest.fixture
def logs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """EBSFS_LOG_DIR in tmp_path, and no system log listening."""
    monkeypatch.setattr(logsetup, "SYSLOG_SOCKET", str(tmp_path / "no-dev-log"))
    directory = tmp_path / "logs"
    directory.mkdir(mode=0o750)
    monkeypatch.setenv(logsetup.LOG_DIR_ENV, str(directory))
    root = logging.getLogger()
    level, before = root.level, list(root.handlers)
    try:
        yield directory
    finally:
        for handler in list(root.handlers):
            if handler not in before:
                root.removeHandler(handler)
                handler.close()
        for handler in before:
            if handler not in root.handlers:
                root.addHandler(handler)
        root.setLevel(level)


MOUNT = "/mnt/snapshots"


def _setup() -> logging.Handler:
    handler = logsetup.setup_logging("info", syslog=True, fallback_name=MOUNT)
    logging.getLogger("ebsfs.test").warning("a line of the daemon's log")
    handler.flush()
    return handler


def _target(logs: Path) -> Path:
    return Path(logsetup.fallback_log_path(MOUNT))


def test_a_symlink_planted_at_the_log_path_is_not_followed(logs: Path, tmp_path: Path) -> None:
    """A root daemon appended its log to whatever the link named (/etc/shadow, say)."""
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    _target(logs).symlink_to(victim)
    handler = _setup()
    assert victim.read_text() == "precious\n"
    assert logsetup.describe(handler).startswith("nowhere")


def test_a_hard_link_planted_at_the_log_path_is_not_written(logs: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    os.link(victim, _target(logs))
    _setup()
    assert victim.read_text() == "precious\n"


def test_another_users_file_at_the_log_path_is_not_written(logs: Path) -> None:
    """Someone else's file (pre-created in a shared EBSFS_LOG_DIR) got the daemon's log."""
    planted = _target(logs)
    planted.write_text("")
    os.chown(planted, NOBODY, NOBODY)
    _setup()
    assert planted.read_text() == ""


def test_a_fifo_at_the_log_path_does_not_hang_the_daemon(logs: Path) -> None:
    """open(O_WRONLY) of a FIFO waits for a reader: the daemon never started."""
    os.mkfifo(_target(logs))
    done: list[logging.Handler] = []
    worker = threading.Thread(target=lambda: done.append(_setup()), daemon=True)
    worker.start()
    worker.join(30)  # hang guard
    if worker.is_alive():  # let the thread end, then fail
        with open(_target(logs), "rb"):
            pass
        worker.join(30)
        pytest.fail("setup_logging waited for a reader of the FIFO")
    assert logsetup.describe(done[0]).startswith("nowhere")


def test_the_log_file_of_an_ordinary_mount_still_works(logs: Path) -> None:
    handler = _setup()
    assert logsetup.describe(handler) == str(_target(logs))
    assert "a line of the daemon's log" in _target(logs).read_text()


def test_a_long_mount_point_still_has_a_log_file(tmp_path: Path) -> None:
    """A mount point whose escaped name passes 255 bytes (non-ASCII names escape to four
    bytes a byte) had no log file at all: ENAMETOOLONG, and the daemon logged nowhere."""
    one = "/srv/" + "é" * 100 + "/a"
    two = "/srv/" + "é" * 100 + "/b"
    names = {os.path.basename(logsetup.fallback_log_path(p)) for p in (one, two)}
    assert len(names) == 2
    assert all(len(n.encode()) <= 255 and n.endswith(".log") for n in names)
