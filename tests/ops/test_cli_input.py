"""The command line on a closed pipe and on a mount point that is not empty: one line or
nothing, never a traceback, never a silent surprise."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ops.mounts import ebsfs, ebsfs_env, in_mount_table, unmount
from tests.serverproc import LocalServer, upload_image


def run_into_closed_pipe(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``ebsfs ARGV | head -0``, deterministically: stdout is a pipe nobody reads any more."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [sys.executable, "-m", "ebsfs", *argv],
            stdout=write_end,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=env,
            text=True,
            timeout=120,
        )
    finally:
        os.close(write_end)


@pytest.mark.parametrize(
    "argv", [["ls", "--json"], ["ls"], ["--help"], ["--version"], ["ls", "--help"]]
)
def test_a_closed_pipe_is_a_quiet_exit(
    argv: list[str], server: LocalServer, tmp_path: Path
) -> None:
    upload_image(server.ebs(), server.ec2(), os.urandom(1 << 20), name="piped")
    done = run_into_closed_pipe(argv, ebsfs_env(server, tmp_path))
    # Not even ls's endpoint line: it comes after stdout was flushed, which a closed pipe ends.
    assert done.stderr == "", done.stderr
    # argparse itself swallows a failed write of its help: that is quiet too.
    assert done.returncode == (0 if "--help" in argv or "--version" in argv else 141)


def test_stats_into_a_closed_pipe(server: LocalServer, tmp_path: Path) -> None:
    env = ebsfs_env(server, tmp_path)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    ebsfs("mount", str(mnt), env=env)
    try:
        done = run_into_closed_pipe(["stats", "--json", str(mnt)], env)
        assert (done.returncode, done.stderr) == (141, "")
    finally:
        unmount(mnt, env)


def test_mount_refuses_a_directory_that_is_not_empty(
    server: LocalServer, tmp_path: Path
) -> None:
    env = ebsfs_env(server, tmp_path)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    (mnt / "precious.txt").write_text("hidden by a mount\n")
    try:
        for extra in ([], ["--foreground"]):
            done = ebsfs("mount", str(mnt), *extra, env=env, check=False, timeout=60)
            assert done.returncode == 6, done.stderr
            assert "not empty" in done.stderr and "--nonempty" in done.stderr
            assert len(done.stderr.strip().splitlines()) == 1
            assert not in_mount_table(mnt)
        # Asked for, it mounts over them.
        ebsfs("mount", str(mnt), "--nonempty", env=env)
        assert in_mount_table(mnt)
        assert not (mnt / "precious.txt").exists()
    finally:
        unmount(mnt, env)
    assert (mnt / "precious.txt").read_text() == "hidden by a mount\n"


@pytest.mark.parametrize(
    ("argv", "code", "fragment"),
    [
        (["umount", "--timeout", "nan", "/tmp"], 2, "--timeout"),
        (["umount", "--timeout", "-5", "/tmp"], 2, "--timeout"),
        (["umount", "--timeout", "inf", "/tmp"], 2, "--timeout"),
        (["umount", ""], 2, "MOUNTPOINT"),
        (["stats", ""], 2, "MOUNTPOINT"),
        (["mount", "MNT", "--io-timeout", "nan"], 2, "--io-timeout"),
        (["mount", "MNT", "--refresh", "nan"], 2, "--refresh"),
        (["mount", "MNT", "--writeback-delay", "inf"], 2, "--writeback-delay"),
    ],
)
def test_bad_numbers_and_empty_paths_are_one_line(
    argv: list[str], code: int, fragment: str, tmp_path: Path
) -> None:
    """NaN or infinity as a time would make a wait without bound (every comparison false)."""
    (tmp_path / "mnt").mkdir()
    argv = [str(tmp_path / "mnt") if a == "MNT" else a for a in argv]
    env = dict(os.environ, EBSFS_CONFIG="/dev/null")
    if argv[0] == "mount":
        argv.append("--foreground")
    done = ebsfs(*argv, env=env, check=False, timeout=60)
    assert done.returncode == code, done.stderr
    assert fragment in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not in_mount_table(tmp_path / "mnt")


def test_an_unreadable_path_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from ebsfs import cli

    def denied(path: str, *args: object, **kwargs: object) -> str:
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(os.path, "realpath", denied)
    for command in ("umount", "stats"):
        assert cli.main([command, "/proc/1/root/mnt"]) == 6
        err = capsys.readouterr().err
        assert err.startswith("ebsfs: ") and "Permission denied" in err, err


@pytest.mark.parametrize(
    "raw",
    [b"[" * 60000, b'{"a": ' * 5000 + b"1" + b"}" * 5000],
)
def test_stats_from_a_hostile_mount_is_one_line(
    raw: bytes, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from ebsfs import cli
    from ebsfs.daemon import mounttable
    monkeypatch.setattr(mounttable, "ebsfs_mount", lambda path, *a: (path, None))
    monkeypatch.setattr(mounttable, "bounded_getxattr", lambda *a, **k: raw)
    assert cli.main(["stats", "/m"]) == 6
    err = capsys.readouterr().err
    assert err.startswith("ebsfs: /m") and len(err.splitlines()) == 1


def test_stats_escapes_control_characters(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from ebsfs import cli
    from ebsfs.daemon import mounttable
    monkeypatch.setattr(mounttable, "ebsfs_mount", lambda path, *a: (path, None))
    monkeypatch.setattr(
        mounttable, "bounded_getxattr", lambda *a, **k: b'{"read": {"x\\u001b]0;pwned\\u0007": 1}}'
    )
    assert cli.main(["stats", "/m"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "pwned" in out
