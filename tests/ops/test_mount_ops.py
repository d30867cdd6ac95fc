"""The mount as operators run it: fstab/mount.fuse3, systemd notification, configuration."""

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ops.mounts import BIN, ebsfs, ebsfs_env, mounted, unmount
from tests.serverproc import LocalServer, upload_image

MiB = 1 << 20


def _image(seed: int, size: int = 3 * MiB) -> bytes:
    return (bytes([seed]) * 97 + os.urandom(31)) * (size // 128) + bytes(size % 128)


def _mountinfo(mountpoint: Path) -> tuple[str, set[str]]:
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if fields[1] == str(mountpoint):
                return fields[2], set(fields[3].split(","))
    raise AssertionError(f"{mountpoint} is not mounted")


#: mount(8) runs helpers with a fixed PATH (/usr/local/sbin:/usr/local/bin:/usr/sbin:...), so
#: mount.fuse3 finds ``ebsfs`` only there; ``make install`` links /usr/local/bin/ebsfs.
HELPER_LINK = Path("/usr/local/sbin/ebsfs")


@pytest.fixture
def ebsfs_on_system_path() -> Iterator[None]:
    """This checkout's ebsfs where mount.fuse3 looks, for the test only."""
    ours = BIN / "ebsfs"
    if HELPER_LINK.is_symlink() and HELPER_LINK.resolve() == ours.resolve():
        yield
        return
    assert not HELPER_LINK.exists() and not HELPER_LINK.is_symlink(), (
        f"{HELPER_LINK} exists and is not this checkout's ebsfs; remove it to run this test"
    )
    HELPER_LINK.symlink_to(ours)
    try:
        yield
    finally:
        HELPER_LINK.unlink()


@pytest.mark.usefixtures("ebsfs_on_system_path")
@pytest.mark.xdist_group("usr-local-sbin")  # one link for the whole machine
def test_mount_t_fuse_ebsfs_with_fstab_options(server: LocalServer, tmp_path: Path) -> None:
    data = _image(1)
    snap = upload_image(server.ebs(), server.ec2(), data, name="fstab-image")
    other = upload_image(server.ebs(), server.ec2(), _image(2), name="other")
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    env = ebsfs_env(server, tmp_path)
    # As an /etc/fstab line would give them (mount(8) leaves no AWS settings in the
    # environment at boot, so the endpoint comes from the options).
    for name in ("AWS_ENDPOINT_URL_EBS", "AWS_ENDPOINT_URL_EC2", "EBSFS_SPOOL_DIR"):
        env.pop(name)
    options = ",".join(
        [
            f"endpoint_url={server.endpoint_url}",
            "region=us-east-1",
            f"snapshot={snap}",
            "cache_size=16MiB",
            f"spool_dir={tmp_path / 'spool'}",
            "ro",
            "allow_other",
            "_netdev",
            "nofail",
        ]
    )
    proc = subprocess.run(
        ["mount", "-t", "fuse.ebsfs", "ebsfs", str(mountpoint), "-o", options],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    try:
        assert proc.returncode == 0, proc.stderr
        fstype, opts = _mountinfo(mountpoint)
        assert fstype.startswith("fuse"), fstype
        assert "ro" in opts
        assert "allow_other" in opts
        names = set(os.listdir(mountpoint))
        assert snap in names
        assert other not in names  # snapshot= limits the listing
        with open(mountpoint / snap, "rb") as f:
            assert f.read(len(data)) == data
        with pytest.raises(OSError):
            (mountpoint / "new" / "x").write_bytes(b"no")
    finally:
        unmount(mountpoint, env)
    assert not os.path.ismount(mountpoint)


@pytest.mark.usefixtures("ebsfs_on_system_path")
@pytest.mark.xdist_group("usr-local-sbin")  # one link for the whole machine
def test_mount_helper_rejects_an_unknown_option(server: LocalServer, tmp_path: Path) -> None:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    env = ebsfs_env(server, tmp_path)
    proc = subprocess.run(
        ["mount", "-t", "fuse.ebsfs", "ebsfs", str(mountpoint), "-o", "ro,cache_sise=1G"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert proc.returncode != 0
    assert "unknown mount option 'cache_sise'" in proc.stderr
    assert not os.path.ismount(mountpoint)


def test_ready_and_stopping_reach_notify_socket(server: LocalServer, tmp_path: Path) -> None:
    upload_image(server.ebs(), server.ec2(), _image(3), name="notified")
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    name = f"ebsfs-notify-{uuid.uuid4().hex}"
    env = ebsfs_env(server, tmp_path, NOTIFY_SOCKET="@" + name, INVOCATION_ID="ab12")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(b"\0" + name.encode())
        listener.settimeout(60)
        daemon = subprocess.Popen(
            [sys.executable, "-m", "ebsfs", "mount", str(mountpoint), "--foreground"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            messages = listener.recv(4096).decode().splitlines()
            assert "READY=1" in messages
            # READY=1 means the mount answers already.
            assert os.path.ismount(mountpoint)
            assert "by-name" in os.listdir(mountpoint)
            daemon.send_signal(signal.SIGTERM)
            stopping = listener.recv(4096).decode().splitlines()
            assert "STOPPING=1" in stopping
            _, stderr = daemon.communicate(timeout=60)
            assert daemon.returncode == 0, stderr
            assert not os.path.ismount(mountpoint)
            # Under systemd (INVOCATION_ID) the log lines carry syslog priorities.
            lines = [line for line in stderr.splitlines() if line]
            assert lines and all(line.startswith("<") for line in lines), lines
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait()
            unmount(mountpoint, env)


def test_configuration_file_is_honoured_and_overridden(server: LocalServer, tmp_path: Path) -> None:
    a = upload_image(server.ebs(), server.ec2(), _image(4), name="a")
    b = upload_image(server.ebs(), server.ec2(), _image(5), name="b")
    config = tmp_path / "ebsfs.toml"
    config.write_text(
        f'[aws]\nendpoint_url = "{server.endpoint_url}"\n\n'
        f'[mount]\nsnapshots = ["{a}"]\nspool_dir = "{tmp_path / "spool"}"\n'
    )
    env = ebsfs_env(server, tmp_path)
    for name in ("AWS_ENDPOINT_URL_EBS", "AWS_ENDPOINT_URL_EC2", "EBSFS_SPOOL_DIR"):
        env.pop(name)
    mountpoint = tmp_path / "mnt"
    # The file alone.
    with mounted(mountpoint, "--config", str(config), env=env):
        names = set(os.listdir(mountpoint))
        assert a in names and b not in names
    # The environment over the file.
    with mounted(mountpoint, "--config", str(config), env={**env, "EBSFS_SNAPSHOTS": b}):
        names = set(os.listdir(mountpoint))
        assert b in names and a not in names
    # The command line over both.
    with mounted(
        mountpoint,
        "--config",
        str(config),
        "--snapshot",
        a,
        env={**env, "EBSFS_SNAPSHOTS": b},
    ):
        names = set(os.listdir(mountpoint))
        assert a in names and b not in names


def test_unknown_key_fails_the_mount_and_names_it(server: LocalServer, tmp_path: Path) -> None:
    config = tmp_path / "ebsfs.toml"
    config.write_text("[mount]\nread_ahed = '1MiB'\n")
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    env = ebsfs_env(server, tmp_path)
    proc = ebsfs("mount", str(mountpoint), "--config", str(config), env=env, check=False)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"ebsfs: {config}: unknown key 'mount.read_ahed' (did you mean 'read_ahead'?)"
    ]
    time.sleep(0.2)
    assert not os.path.ismount(mountpoint)
