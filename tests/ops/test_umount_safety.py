"""``ebsfs umount``: never a busy mount, never a pid it cannot vouch for, never too early."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.mounting import drop_page_cache, kernel_mounted, wait_for
from tests.ops.mounts import ebsfs, ebsfs_env, in_mount_table, mounted, unmount
from tests.serverproc import LocalServer, upload_image

PID_XATTR = "user.ebsfs.pid"
HOLD_OPEN = "import os, sys, time; fd = os.open(sys.argv[1], os.O_RDONLY); time.sleep(300)"


def sh(*argv: str | Path) -> str:
    return subprocess.run(
        [str(a) for a in argv], check=True, capture_output=True, text=True, timeout=60
    ).stdout.strip()


def running(pid: int) -> bool:
    """True unless ``pid`` exited (a zombie nobody reaped yet has exited)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def ext4_image(path: Path, tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    tree.mkdir(exist_ok=True)
    (tree / "hello.txt").write_text("hello from a loop mount\n")
    (tree / "big.bin").write_bytes(os.urandom(3 << 20))
    sh("mkfs.ext4", "-q", "-F", "-d", tree, path, "16M")
    return path


@pytest.fixture
def ext4_mount(tmp_path: Path) -> Iterator[Path]:
    """A plain ext4 loop mount: what an attacker-controlled directory looks like."""
    image = ext4_image(tmp_path / "plain.img", tmp_path)
    with kernel_mounted(image, tmp_path / "plain", "loop") as where:
        yield where


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(["sleep", "300"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("value", ["-1", "0", "1", "sleeper", "junk"])
def test_umount_never_signals_a_pid_from_another_filesystem(
    value: str,
    ext4_mount: Path,
    sleeper: subprocess.Popen[bytes],
    server: LocalServer,
    tmp_path: Path,
) -> None:
    pid = str(sleeper.pid) if value == "sleeper" else value
    os.setxattr(ext4_mount, PID_XATTR, pid.encode())
    done = ebsfs("umount", str(ext4_mount), env=ebsfs_env(server, tmp_path), check=False)
    assert done.returncode == 6, done.stderr
    assert "not an ebsfs mount" in done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert sleeper.poll() is None  # nothing was signalled
    assert in_mount_table(ext4_mount)


def test_umount_refuses_a_pid_that_is_not_an_ebsfs_daemon() -> None:
    from ebsfs.core.errors import MountError
    from ebsfs.daemon import mounttable

    entry = mounttable.MountEntry(1, 0, "0:1", "/m", "fuse.ebsfs", "ebsfs", "user_id=0")
    with subprocess.Popen(["sleep", "300"]) as proc:
        try:
            for raw in (b"-1", b"0", b"1", str(proc.pid).encode(), str(os.getpid()).encode()):
                with pytest.raises(MountError):
                    mounttable.daemon_pid("/m", entry, raw)
        finally:
            proc.kill()


def test_stats_refuses_another_filesystem(ext4_mount: Path, server: LocalServer,
                                          tmp_path: Path) -> None:
    os.setxattr(ext4_mount, "user.ebsfs.stats", b"\xff not json")
    done = ebsfs("stats", str(ext4_mount), env=ebsfs_env(server, tmp_path), check=False)
    assert done.returncode == 6, done.stderr
    assert "Traceback" not in done.stderr
    assert "not an ebsfs mount" in done.stderr


def _snapshot_with_ext4(server: LocalServer, tmp_path: Path) -> str:
    image = ext4_image(tmp_path / "disk.img", tmp_path)
    return upload_image(server.ebs(), server.ec2(), image, name="busy")


def test_umount_refuses_while_a_loop_device_holds_a_snapshot(
    server: LocalServer, tmp_path: Path
) -> None:
    snap = _snapshot_with_ext4(server, tmp_path)
    env = ebsfs_env(server, tmp_path)
    loop_dir = tmp_path / "loop"
    loop_dir.mkdir()
    with mounted(tmp_path / "mnt", env=env) as mnt:
        device = sh("losetup", "-r", "-f", "--show", mnt / snap)
        try:
            with kernel_mounted(device, loop_dir, "ro"):
                done = ebsfs("umount", str(mnt), env=env, check=False)
                assert done.returncode == 6, done.stderr
                assert device in done.stderr and "busy" in done.stderr
                assert len(done.stderr.strip().splitlines()) == 1
                # The loop mount still reads, from a daemon still serving.
                for cached in (loop_dir / "hello.txt", loop_dir / "big.bin", mnt / snap):
                    drop_page_cache(cached)
                assert (loop_dir / "hello.txt").read_text() == "hello from a loop mount\n"
                assert len((loop_dir / "big.bin").read_bytes()) == 3 << 20
                assert in_mount_table(mnt)
            # Attached but not mounted still holds the file.
            done = ebsfs("umount", str(mnt), env=env, check=False)
            assert done.returncode == 6 and device in done.stderr, done.stderr
        finally:
            subprocess.run(["losetup", "-d", device], capture_output=True, timeout=60)
        _wait_loop_detached(device)
        ebsfs("umount", str(mnt), env=env)
        assert not in_mount_table(mnt)


def _wait_loop_detached(device: str) -> None:
    # losetup -d is asynchronous when the device was busy a moment ago.
    backing = f"/sys/block/{os.path.basename(device)}/loop/backing_file"
    wait_for(lambda: not os.path.exists(backing), every=0.1)


def test_umount_refuses_while_a_process_holds_it(server: LocalServer, tmp_path: Path) -> None:
    env = ebsfs_env(server, tmp_path)
    with mounted(tmp_path / "mnt", env=env) as mnt:
        in_dir = subprocess.Popen(["sleep", "300"], cwd=mnt)
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLD_OPEN, str(mnt / "new")],
            cwd="/",
        )
        try:
            time.sleep(0.5)
            done = ebsfs("umount", str(mnt), env=env, check=False)
            assert done.returncode == 6, done.stderr
            assert f"pid {in_dir.pid}" in done.stderr and "cwd" in done.stderr
            assert f"pid {holder.pid}" in done.stderr
            assert os.listdir(mnt) is not None and in_mount_table(mnt)
        finally:
            for proc in (in_dir, holder):
                proc.kill()
                proc.wait()
        ebsfs("umount", str(mnt), env=env)
        assert not in_mount_table(mnt)


def test_umount_lazy_detaches_a_busy_mount(server: LocalServer, tmp_path: Path) -> None:
    env = ebsfs_env(server, tmp_path)
    with mounted(tmp_path / "mnt", env=env) as mnt:
        proc = subprocess.Popen(["sleep", "300"], cwd=mnt)
        try:
            ebsfs("umount", "--lazy", str(mnt), env=env)
            assert not in_mount_table(mnt)
        finally:
            proc.kill()
            proc.wait()


def test_umount_returns_only_once_the_mount_and_daemon_are_gone(
    server: LocalServer, tmp_path: Path
) -> None:
    env = ebsfs_env(server, tmp_path)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    for _ in range(10):
        ebsfs("mount", str(mnt), env=env)
        try:
            pid = int(os.getxattr(mnt, PID_XATTR))
            ebsfs("umount", str(mnt), env=env)
            assert not in_mount_table(mnt)
            assert not running(pid)
        finally:
            unmount(mnt, env)


def test_umount_of_a_dead_mount(server: LocalServer, tmp_path: Path) -> None:
    env = ebsfs_env(server, tmp_path)
    with mounted(tmp_path / "mnt", env=env) as mnt:
        pid = int(os.getxattr(mnt, PID_XATTR))
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not running(pid))
        ebsfs("umount", str(mnt), env=env)
        assert not in_mount_table(mnt)


def test_umount_waits_for_the_mount_to_leave_the_table(
    server_factory: Callable[..., LocalServer], tmp_path: Path
) -> None:
    """The daemon dies while it stops (here: SIGKILL while it flushes): a stat of the mount
    point then fails although the mount is still in the table, and no daemon will unmount
    it. ``ebsfs umount`` must still return only once nothing is mounted there."""
    srv = server_factory("--latency-ms", "300")
    env = ebsfs_env(srv, tmp_path)
    mnt = tmp_path / "mnt"
    log = tmp_path / "mount.log"
    with mounted(mnt, "--log-file", str(log), "--writeback-delay", "60", env=env):
        with open(mnt / "new" / "pending", "wb") as f:
            f.write(os.urandom(4 << 20))  # stored only at the unmount: a flush that takes time
        pid = int(os.getxattr(mnt, PID_XATTR))
        umount = subprocess.Popen(
            [sys.executable, "-m", "ebsfs", "umount", str(mnt)],
            env=env, stderr=subprocess.PIPE, text=True,
        )
        try:
            wait_for(lambda: "SIGTERM" in log.read_text(), 60, every=0.01)
            os.kill(pid, signal.SIGKILL)
            _, err = umount.communicate(timeout=120)
        finally:
            if umount.poll() is None:
                umount.kill()
        assert umount.returncode == 0, err
        assert not in_mount_table(mnt)


def test_daemon_told_to_stop_while_busy_waits_until_free(
    server: LocalServer, tmp_path: Path
) -> None:
    """SIGTERM straight to the daemon (systemd's stop, after ExecStop refused): it does not
    pull the mount from under its holders, and stops by itself once they let go."""
    env = ebsfs_env(server, tmp_path)
    log = tmp_path / "mount.log"
    with mounted(tmp_path / "mnt", "--log-file", str(log), env=env) as mnt:
        pid = int(os.getxattr(mnt, PID_XATTR))
        holder = subprocess.Popen(["sleep", "300"], cwd=mnt)
        try:
            os.kill(pid, signal.SIGTERM)
            wait_for(lambda: "is busy" in log.read_text())
            assert f"pid {holder.pid}" in log.read_text()
            assert in_mount_table(mnt) and running(pid)
            assert "new" in os.listdir(mnt)  # still served
        finally:
            holder.kill()
            holder.wait()
        wait_for(lambda: not in_mount_table(mnt) and not running(pid), 60)
        assert not in_mount_table(mnt) and not running(pid)


def test_complete_does_not_act_on_attributes_of_another_filesystem(
    ext4_mount: Path, server: LocalServer, tmp_path: Path
) -> None:
    """A file on ext4 dressed up as an ebsfs file being written: not sealed (chmod) nor
    waited on."""
    (ext4_mount / "new").mkdir()
    victim = ext4_mount / "new" / "file"
    victim.write_bytes(b"x")
    victim.chmod(0o644)
    os.setxattr(victim, "user.ebsfs.state", b"writing")
    done = ebsfs("complete", str(victim), env=ebsfs_env(server, tmp_path), check=False)
    assert done.returncode == 2, done.stderr
    assert "not a file of an ebsfs mount" in done.stderr
    assert victim.stat().st_mode & 0o777 == 0o644


def test_complete_timeout_must_be_finite(server: LocalServer, tmp_path: Path) -> None:
    done = ebsfs("complete", "--timeout", "nan", "/x/new/y", env=ebsfs_env(server, tmp_path),
                 check=False)
    assert done.returncode == 2 and "--timeout" in done.stderr, done.stderr


def test_a_process_in_the_directory_under_the_mount_does_not_hold_it(
    server: LocalServer, tmp_path: Path
) -> None:
    """A shell that was in MOUNTPOINT before the mount is in the directory underneath, not
    in the mount: umount(8) would not call that busy, and neither does ebsfs umount."""
    env = ebsfs_env(server, tmp_path)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    below = subprocess.Popen(["sleep", "300"], cwd=mnt)
    try:
        with mounted(mnt, env=env):
            ebsfs("umount", str(mnt), env=env)
            assert not in_mount_table(mnt)
    finally:
        below.kill()
        below.wait()

