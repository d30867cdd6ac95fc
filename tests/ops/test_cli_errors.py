"""Every CLI error a test can reach: one line ``ebsfs: ...``, no traceback, the documented code.

The codes are those of docs/errors.md (and ``ebsfs.core.errors``).
"""

import os
import subprocess
from pathlib import Path

import pytest

from tests.mounting import ebsfs
from tests.serverproc import LocalServer, free_port

SNAP_A = "snap-0123456789abcdef0"
SNAP_B = "snap-0123456789abcdef1"


def run_ebsfs(
    *argv: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``python -m ebsfs ARGV`` with no machine configuration unless ``env`` names one."""
    base = dict(os.environ if env is None else env)
    base.setdefault("EBSFS_CONFIG", "/dev/null")
    return ebsfs(*argv, env=base, timeout=timeout)


def assert_one_line_error(
    proc: subprocess.CompletedProcess[str], code: int, *fragments: str
) -> None:
    lines = proc.stderr.splitlines()
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("ebsfs: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def _isolated_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "EBSFS_"))}
    env.update({"AWS_EC2_METADATA_DISABLED": "true", "EBSFS_MAX_ATTEMPTS": "1", **extra})
    return env


@pytest.mark.parametrize(
    ("argv", "code", "fragments"),
    [
        (["bogus"], 2, ["invalid choice: 'bogus'"]),
        (["diff"], 2, ["required: SNAP_A", "ebsfs diff --help"]),
        (["diff", "snap-x", SNAP_B], 2, ["not a snapshot id: 'snap-x'"]),
        (["diff", SNAP_A, SNAP_B, "--frobnicate"], 2, ["unrecognized arguments: --frobnicate"]),
        (["server", "--listen", "nowhere"], 2, ["expected HOST:PORT"]),
        (["server", "--throttle-rate", "2"], 2, ["between 0 and 1"]),
        (["mount"], 2, ["required: MOUNTPOINT", "ebsfs mount --help"]),
        (["mount", "/tmp", "--cache-size", "lots"], 2, ["--cache-size: not a size: 'lots'"]),
        (["mount", "/tmp", "--max-concurrency", "0"], 2, ["--max-concurrency", "at least 1"]),
        (["mount", "/tmp", "--snapshot", "bogus"], 2, ["--snapshot: not a snapshot id"]),
        (["mount", "/tmp", "--log-level", "loud"], 2, ["log"]),
        (["mount", "/nonexistent/ebsfs-mp"], 6, ["/nonexistent/ebsfs-mp does not exist"]),
        (["mount", "/etc/hostname"], 6, ["/etc/hostname is not a directory"]),
        (["umount", "/tmp"], 6, ["/tmp is not mounted"]),
        (["stats", "/tmp"], 6, ["/tmp is not an ebsfs mount"]),
        (["stats", "/proc"], 6, ["/proc is not an ebsfs mount"]),
        (["complete", "/nonexistent/ebsfs-file"], 3, ["/nonexistent/ebsfs-file does not exist"]),
        (["complete", "/etc/hostname"], 2, ["/etc/hostname is not a file of an ebsfs mount"]),
        (["ebsfs", "/mnt/x", "-o", "ro,turbo"], 2, ["unknown mount option 'turbo'"]),
        (["ebsfs", "/mnt/x", "-o", "region"], 2, ["mount option 'region' needs a value"]),
    ],
)
def test_usage_errors(argv: list[str], code: int, fragments: list[str]) -> None:
    assert_one_line_error(run_ebsfs(*argv), code, *fragments)


def test_configuration_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[mount]\ncache_sise = '1GiB'\n")
    proc = run_ebsfs("diff", SNAP_A, SNAP_B, "--config", str(bad))
    assert_one_line_error(proc, 2, str(bad), "unknown key 'mount.cache_sise'", "cache_size")
    proc = run_ebsfs("diff", SNAP_A, SNAP_B, env=_isolated_env(EBSFS_CONFIG=str(bad)))
    assert_one_line_error(proc, 2, "unknown key 'mount.cache_sise'")
    proc = run_ebsfs("diff", SNAP_A, SNAP_B, "--config", str(tmp_path / "missing.toml"))
    assert_one_line_error(proc, 2, "configuration file not found")
    proc = run_ebsfs("diff", SNAP_A, SNAP_B, env=_isolated_env(EBSFS_MAX_ATTEMPTS="many"))
    assert_one_line_error(proc, 2, "EBSFS_MAX_ATTEMPTS: expected a whole number")


def test_unreachable_endpoint_is_exit_5() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    proc = run_ebsfs("diff", "--endpoint-url", url, SNAP_A, SNAP_B, env=_isolated_env())
    assert_one_line_error(proc, 5, "Could not connect")


def test_ls_unreachable_is_exit_5() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    proc = run_ebsfs("ls", "--endpoint-url", url, env=_isolated_env())
    assert_one_line_error(proc, 5, "DescribeSnapshots", "Could not connect")


def test_mount_unreachable_is_exit_5(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    proc = run_ebsfs("mount", str(mountpoint), "--endpoint-url", url, env=_isolated_env())
    assert_one_line_error(proc, 5, "Could not connect")
    assert not os.path.ismount(mountpoint)


def test_missing_snapshot_is_exit_3(server: LocalServer) -> None:
    env = server.env()
    env["EBSFS_MAX_ATTEMPTS"] = "1"
    proc = run_ebsfs("diff", SNAP_A, SNAP_B, env=env)
    assert_one_line_error(proc, 3, "no such snapshot: snap-")


def test_wrong_credentials_are_exit_4(server: LocalServer) -> None:
    env = server.env()
    env.update(AWS_SECRET_ACCESS_KEY="not-the-secret", EBSFS_MAX_ATTEMPTS="1")
    proc = run_ebsfs("diff", SNAP_A, SNAP_B, env=env)
    assert_one_line_error(proc, 4)
    assert "not-the-secret" not in proc.stderr


def test_server_refuses_a_busy_port(server: LocalServer, tmp_path: Path) -> None:
    proc = run_ebsfs(
        "server", "--data-dir", str(tmp_path / "d"), "--listen", f"127.0.0.1:{server.port}"
    )
    assert_one_line_error(proc, 2, f"cannot listen on 127.0.0.1:{server.port}")


def test_server_refuses_the_dev_pair_off_loopback(tmp_path: Path) -> None:
    proc = run_ebsfs(
        "server",
        "--data-dir",
        str(tmp_path / "d"),
        "--listen",
        "0.0.0.0:0",
        env=_isolated_env(),
    )
    assert_one_line_error(proc, 2, "non-loopback")


@pytest.mark.parametrize(
    "command", ["mount", "umount", "ls", "stats", "complete", "diff", "server"]
)
def test_every_command_help_has_examples_and_exit_codes(command: str) -> None:
    proc = run_ebsfs(command, "--help")
    assert proc.returncode == 0, proc.stderr
    assert "examples:" in proc.stdout
    assert f"ebsfs {command} " in proc.stdout.split("examples:", 1)[1]
    assert "Exit codes:" in proc.stdout
