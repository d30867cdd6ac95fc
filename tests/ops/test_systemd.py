"""The unit files pass ``systemd-analyze verify``; the example configuration is valid."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ebsfs.options import settings
from tests.serverproc import LocalServer

SYSTEMD = Path(__file__).resolve().parents[2] / "systemd"
INSTALLED_PATH = "/usr/local/bin/ebsfs"


def _ebsfs_binary() -> str:
    found = Path(sys.executable).parent / "ebsfs"
    assert found.exists(), f"console script not installed beside {sys.executable}"
    return str(found)


def _verify(unit: Path) -> subprocess.CompletedProcess[str]:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: make deps installs the systemd package"
    return subprocess.run(
        [analyze, "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=unit.parent,
    )


@pytest.mark.parametrize(
    ("source", "instance"),
    [
        ("ebsfs@.service", "ebsfs@mnt-snapshots.service"),
        ("ebsfs@.service", "ebsfs@.service"),
        ("ebsfs-server.service", "ebsfs-server.service"),
    ],
)
def test_units_verify_cleanly(tmp_path: Path, source: str, instance: str) -> None:
    text = (SYSTEMD / source).read_text()
    assert INSTALLED_PATH in text
    # verify checks that ExecStart= exists: point it at this checkout's console script.
    unit = tmp_path / instance
    unit.write_text(text.replace(INSTALLED_PATH, _ebsfs_binary()))
    result = _verify(unit)
    assert result.returncode == 0, result.stderr
    # Unknown keys and bad values are only warnings to systemd: treat them as failures.
    assert result.stderr.strip() == "", result.stderr


def test_verify_catches_a_bad_unit(tmp_path: Path) -> None:
    text = (SYSTEMD / "ebsfs@.service").read_text().replace("Type=notify", "Tipe=notify")
    unit = tmp_path / "ebsfs@mnt-x.service"
    unit.write_text(text.replace(INSTALLED_PATH, _ebsfs_binary()))
    assert "Unknown key" in _verify(unit).stderr


def test_mount_unit_is_notify_and_flushes_on_stop() -> None:
    text = (SYSTEMD / "ebsfs@.service").read_text()
    lines = {
        line.split("=", 1)[0]: line.split("=", 1)[1]
        for line in text.splitlines()
        if "=" in line and not line.startswith("#")
    }
    assert lines["Type"] == "notify"
    assert lines["Restart"] == "on-failure"
    assert lines["ExecStart"].endswith("mount %f --foreground")
    assert lines["ExecStop"].endswith("umount %f --timeout 840")  # < TimeoutStopSec
    assert lines["TimeoutStopSec"] == "15min"
    # A private mount namespace would hide the FUSE mount from the host.
    for key in ("ProtectSystem", "PrivateTmp", "ProtectHome", "PrivateMounts"):
        assert key not in lines


def test_example_configuration_changes_nothing_as_installed() -> None:
    config = settings.load_config(str(SYSTEMD / "ebsfs.toml"), {})
    # A region would select AWS for every command, allow_other open every mount to every
    # user, and a spool_dir make every mount share one spool.
    assert all(not values for values in config.sections.values()), config.sections
    assert not config.mounts


def test_example_configuration_is_valid_once_uncommented() -> None:
    import re

    text = (SYSTEMD / "ebsfs.toml").read_text()
    lines = []
    for line in text.splitlines():
        # "# key = value   # comment" and '# [mount."/mnt/backups"]' lines, not prose.
        if re.match(r"# (\[|[a-z_]+ = )", line) and "spool/..." not in line:
            line = line[2:]
        lines.append(line)
    config = settings.parse_config("\n".join(lines), "uncommented example")
    assert config.sections["mount"]["cache_size"] == 256 << 20
    assert config.sections["mount"]["allow_other"] is False
    assert config.sections["aws"]["region"] == "us-east-1"
    assert "/mnt/backups" in config.mounts


def _stale_mount_cleanup(mountpoint: Path) -> list[str]:
    """The unit's ExecStartPre that clears a dead FUSE mount, as systemd would run it."""
    import shlex

    for line in (SYSTEMD / "ebsfs@.service").read_text().splitlines():
        if line.startswith("ExecStartPre=") and "fusermount3" in line:
            argv = shlex.split(line.split("=", 1)[1])
            return [str(mountpoint) if word == "%f" else word for word in argv]
    raise AssertionError("no stale-mount ExecStartPre in ebsfs@.service")


def test_restart_clears_a_dead_mount_and_only_a_dead_one(
    server: LocalServer, tmp_path: Path
) -> None:
    import os
    import signal

    from tests.mounting import wait_for
    from tests.ops.mounts import ebsfs, ebsfs_env, in_mount_table, unmount

    env = ebsfs_env(server, tmp_path)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    cleanup = _stale_mount_cleanup(mountpoint)
    ebsfs("mount", str(mountpoint), env=env)
    try:
        # A live mount is left alone.
        assert subprocess.run(cleanup, timeout=30).returncode == 0
        assert os.path.ismount(mountpoint)
        assert "new" in os.listdir(mountpoint)
        # A crashed daemon leaves "Transport endpoint is not connected": cleared.
        pid = int(os.getxattr(mountpoint, "user.ebsfs.pid"))
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not os.path.exists(mountpoint), 10, every=0.1)
        # (os.path.ismount says False: its stat fails with ENOTCONN; the table still has it.)
        assert in_mount_table(mountpoint)
        assert subprocess.run(cleanup, timeout=30).returncode == 0
        assert not in_mount_table(mountpoint)
    finally:
        unmount(mountpoint, env)
