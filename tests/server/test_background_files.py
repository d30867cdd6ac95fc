"""``ebsfs server --background`` and ``--log-file`` as root in a directory other users can
write to (the documented ``--data-dir /var/tmp/s``): the pid and log files must not be
written through a symlink or hard link another user planted there."""

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.serverproc import free_port

PRECIOUS = "root:x:0:0::/root:/bin/sh\n"


def _start(data: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    port = free_port()
    return subprocess.run(
        [sys.executable, "-m", "ebsfs", "server", "--data-dir", str(data),
         "--listen", f"127.0.0.1:{port}", "--background", *flags],
        capture_output=True, text=True, timeout=90,
    )


def _stop_any(*places: Path) -> None:
    """Stop a server a failing run left behind (its pid went wherever it was written)."""
    for place in places:
        with contextlib.suppress(OSError, ValueError):
            text = place.read_text().strip()
            if text.isdigit():
                os.kill(int(text), signal.SIGTERM)


@pytest.mark.parametrize("planted", ["s.pid", "s.log"])
@pytest.mark.parametrize("link", ["symlink", "hardlink"])
def test_pid_and_log_files_planted_by_another_user_are_refused(
    tmp_path: Path, planted: str, link: str
) -> None:
    victim = tmp_path / "passwd"
    victim.write_text(PRECIOUS)
    os.chmod(victim, 0o644)
    path = tmp_path / planted
    if link == "symlink":
        path.symlink_to(victim)
        os.lchown(path, 65534, 65534)
    else:
        os.link(victim, path)
    done = _start(tmp_path / "s")
    try:
        assert done.returncode == 2, done
        assert planted in done.stderr, done.stderr
        assert victim.read_text() == PRECIOUS
    finally:
        _stop_any(victim, tmp_path / "s.pid")


def test_a_log_file_of_another_user_is_refused(tmp_path: Path) -> None:
    log = tmp_path / "s.log"
    log.write_text("")
    os.chown(log, 65534, 65534)
    done = _start(tmp_path / "s", "--log-file", str(log))
    try:
        assert done.returncode == 2, done
        assert "s.log" in done.stderr, done.stderr
    finally:
        _stop_any(tmp_path / "s.pid")


def test_own_files_and_own_symlinks_are_used(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    (tmp_path / "s.log").symlink_to(tmp_path / "logs" / "server.log")
    done = _start(tmp_path / "s")
    try:
        assert done.returncode == 0, done
        assert "listening" in (tmp_path / "logs" / "server.log").read_text()
        assert (tmp_path / "s.pid").read_text().strip().isdigit()
    finally:
        _stop_any(tmp_path / "s.pid")


def test_a_server_that_does_not_start_leaves_no_pid_file(tmp_path: Path) -> None:
    data = tmp_path / "s"
    data.mkdir()
    os.chown(data, 65534, 65534)  # refused: another user's
    done = _start(data)
    assert done.returncode == 2, done
    assert not (tmp_path / "s.pid").exists()


def test_why_a_background_server_did_not_start_is_in_its_log(tmp_path: Path) -> None:
    # A second server on the same data directory (another port): the command said "see
    # the log", and the log had no word of why (the exception died with the child).
    data = tmp_path / "s"
    first = _start(data)
    try:
        assert first.returncode == 0, first
        second = _start(data)
        assert second.returncode == 2, second
        assert "see" in second.stderr
        log = (tmp_path / "s.log").read_text()
        assert "in use by another server" in log, log
        assert (tmp_path / "s.pid").read_text().strip().isdigit()  # still the first's
    finally:
        _stop_any(tmp_path / "s.pid")
