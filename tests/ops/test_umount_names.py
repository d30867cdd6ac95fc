"""``ebsfs umount`` of mount points whose names the kernel escapes (newline, backslash,
space, tab): what holds them is still found."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ebsfs.daemon import mounttable
from tests.mounting import wait_for
from tests.ops.mounts import detach, ebsfs, ebsfs_env, in_mount_table
from tests.serverproc import LocalServer, upload_image

# ctypes' mmap: Python's mmap module keeps a duplicate of the descriptor open.
MAP_AND_CLOSE = (
    "import ctypes, os, sys, time\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    "libc.mmap.restype = ctypes.c_void_p\n"
    "libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,"
    " ctypes.c_int, ctypes.c_long]\n"
    "fd = os.open(sys.argv[1], os.O_RDONLY)\n"
    "addr = libc.mmap(None, 4096, 1, 1, fd, 0)\n"
    "assert addr not in (None, ctypes.c_void_p(-1).value)\n"
    "os.close(fd)\n"
    "ctypes.string_at(addr, 1)\n"
    "print('mapped', flush=True)\n"
    "time.sleep(300)\n"
)


@pytest.mark.parametrize("name", ["plain", "odd\nname\\with \ttabs"])
def test_a_mapping_holds_a_mount_point_whatever_its_name(
    server: LocalServer, tmp_path: Path, name: str
) -> None:
    """/proc/PID/maps writes a newline in a path as the four characters \\012: a file mapped
    from such a mount (its descriptor closed) was not seen, the daemon was told to stop, and
    umount waited for --timeout to end instead of naming the holder."""
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(1 << 20))
    snap = upload_image(server.ebs(), server.ec2(), image, name="mapped")
    env = ebsfs_env(server, tmp_path)
    mnt = tmp_path / name
    mnt.mkdir()
    ebsfs("mount", str(mnt), env=env)
    holder = None
    try:
        holder = subprocess.Popen(
            [sys.executable, "-c", MAP_AND_CLOSE, str(mnt / snap)],
            cwd="/",
            stdout=subprocess.PIPE,
            text=True,
        )
        assert holder.stdout is not None and holder.stdout.readline() == "mapped\n"
        done = ebsfs("umount", "--timeout", "20", str(mnt), env=env, check=False)
        assert done.returncode == 6, done.stderr
        assert "busy" in done.stderr and f"pid {holder.pid}: mapped file" in done.stderr
        assert in_mount_table(mnt)
        holder.kill()
        holder.wait()
        holder = None
        ebsfs("umount", str(mnt), env=env)
        assert not in_mount_table(mnt)
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
        detach(mnt)


def test_a_daemon_mounted_through_a_symlink_still_waits_for_its_holders(
    server: LocalServer, tmp_path: Path
) -> None:
    """``ebsfs mount /mnt/link`` with /mnt/link a symlink to the real directory: the mount
    table names the real directory, the daemon looked its mount up by the link's path, found
    nothing, and on SIGTERM (systemd's stop) pulled the mount from under a process in it."""
    env = ebsfs_env(server, tmp_path)
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    log = tmp_path / "mount.log"
    ebsfs("mount", str(link), "--log-file", str(log), env=env)
    holder = None
    try:
        assert in_mount_table(real)
        pid = int(os.getxattr(real, "user.ebsfs.pid"))
        holder = subprocess.Popen(["sleep", "300"], cwd=real)
        os.kill(pid, signal.SIGTERM)
        busy = wait_for(lambda: "is busy" in log.read_text() or not in_mount_table(real))
        assert busy, log.read_text()
        assert in_mount_table(real), log.read_text()
        assert f"pid {holder.pid}" in log.read_text()
        assert "new" in os.listdir(real)  # still served
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
        ebsfs("umount", str(real), env=env, check=False)
        detach(real)


def test_a_daemon_whose_mount_is_covered_by_another_does_not_unmount_that_one(
    server: LocalServer, tmp_path: Path
) -> None:
    """A tmpfs mounted over the ebsfs mount: on SIGTERM the daemon looked at the top mount
    of its path (the tmpfs: not ebsfs, so 'nothing holds it') and libfuse's unmount of the
    path, as root, detached the tmpfs instead of its own mount. The tmpfs over it holds the
    ebsfs mount, as umount(8) would say."""
    env = ebsfs_env(server, tmp_path)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    log = tmp_path / "mount.log"
    ebsfs("mount", str(mnt), "--log-file", str(log), env=env)
    pid = int(os.getxattr(mnt, "user.ebsfs.pid"))
    covered = False
    try:
        subprocess.run(["mount", "-t", "tmpfs", "cover", str(mnt)], check=True, timeout=30)
        covered = True
        (mnt / "tmpfs-file").write_text("on the tmpfs")
        os.kill(pid, signal.SIGTERM)
        said = wait_for(lambda: "is busy" in log.read_text() or "unmounting" in log.read_text())
        assert said, log.read_text()
        time.sleep(0.5)
        assert (mnt / "tmpfs-file").read_text() == "on the tmpfs", log.read_text()
        assert "is busy" in log.read_text() and f"a mount at {mnt}" in log.read_text()
    finally:
        if covered:
            subprocess.run(["umount", str(mnt)], capture_output=True, timeout=30)
        if any(e.mountpoint == str(mnt) and e.fstype == "tmpfs"
               for e in mounttable.mount_table()):
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)
        wait_for(lambda: not in_mount_table(mnt), every=0.1)
        detach(mnt)
