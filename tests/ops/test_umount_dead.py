"""``ebsfs umount`` of a mount whose daemon was killed: refused while held, once at a time."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.mounting import wait_for
from tests.ops.mounts import ebsfs, ebsfs_env, in_mount_table, mounted
from tests.serverproc import LocalServer

pytestmark = pytest.mark.timeout(180)
HOLD_OPEN = "import os, sys, time; fd = os.open(sys.argv[1], os.O_RDONLY); time.sleep(300)"


def _kill_daemon(mnt: Path) -> None:
    pid = int(os.getxattr(mnt, "user.ebsfs.pid"))
    os.kill(pid, signal.SIGKILL)
    def gone() -> bool:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            return True
        return "Z" in status.split("State:")[1][:4]

    assert wait_for(gone)


def test_a_dead_mount_held_by_a_process_is_refused_not_detached(
    server: LocalServer, tmp_path: Path
) -> None:
    env = ebsfs_env(server, tmp_path)
    with mounted(tmp_path / "mnt", env=env) as mnt:
        in_dir = subprocess.Popen(["sleep", "300"], cwd=mnt / "new")
        holder = subprocess.Popen([sys.executable, "-c", HOLD_OPEN, str(mnt / "new")], cwd="/")
        try:
            time.sleep(0.5)
            _kill_daemon(mnt)
            done = ebsfs("umount", str(mnt), env=env, check=False)
            assert done.returncode == 6, done.stderr
            assert f"pid {in_dir.pid}" in done.stderr, done.stderr
            assert f"pid {holder.pid}" in done.stderr, done.stderr
            assert len(done.stderr.strip().splitlines()) == 1, done.stderr
            assert in_mount_table(mnt)
        finally:
            for proc in (in_dir, holder):
                proc.kill()
                proc.wait()
        ebsfs("umount", str(mnt), env=env)
        assert not in_mount_table(mnt)


def test_a_dead_mount_through_a_symlink(server: LocalServer, tmp_path: Path) -> None:
    env = ebsfs_env(server, tmp_path)
    with mounted(tmp_path / "mnt", env=env) as mnt:
        link = tmp_path / "link"
        link.symlink_to(mnt)
        _kill_daemon(mnt)
        done = ebsfs("umount", str(link), env=env, check=False)
        assert done.returncode == 0, done.stderr
        assert not in_mount_table(mnt)


def test_two_umounts_of_one_dead_mount_at_once(server: LocalServer, tmp_path: Path) -> None:
    env = ebsfs_env(server, tmp_path)
    with mounted(tmp_path / "mnt", env=env) as mnt:
        _kill_daemon(mnt)
        cmd = [sys.executable, "-m", "ebsfs", "umount", str(mnt)]
        procs = [subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
        results = [(p.wait(timeout=120), p.stderr.read() if p.stderr else "") for p in procs]
        assert not in_mount_table(mnt)
        # Both asked for the mount to be gone, and it is: success, or (one that looked only
        # once the other was done) "is not mounted", as umount(8) says; never busy or "not an
        # ebsfs mount".
        assert 0 in [rc for rc, _ in results], results
        for rc, err in results:
            assert rc == 0 or (rc == 6 and err.strip().endswith("is not mounted")), results


def test_a_dead_mount_under_another_mount_is_left_to_its_owner(
    server: LocalServer, tmp_path: Path
) -> None:
    # A tmpfs mounted over the dead mount: the path names the tmpfs now; neither must go.
    env = ebsfs_env(server, tmp_path)
    with mounted(tmp_path / "mnt", env=env) as mnt:
        _kill_daemon(mnt)
        subprocess.run(["mount", "-t", "tmpfs", "over", str(mnt)], check=True)
        try:
            done = ebsfs("umount", str(mnt), env=env, check=False)
            assert done.returncode == 6, done.stderr
            assert "tmpfs" in done.stderr, done.stderr
            mountinfo = Path("/proc/self/mountinfo").read_text().splitlines()
            tables = [line.split()[4] for line in mountinfo]
            assert tables.count(str(mnt)) == 2
        finally:
            subprocess.run(["umount", str(mnt)], check=True)
        ebsfs("umount", str(mnt), env=env)
        assert not in_mount_table(mnt)


def test_a_dead_mount_held_where_the_scan_cannot_see_is_not_detached(
    server: LocalServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The holder scan (/proc) misses what came in after it or is out of its sight (hidepid,
    # another PID namespace): the plain umount then says "target is busy", and that must
    # end it; on main the next round's `umount -l` detached the mount from under its holder.
    from ebsfs.commands import umount as umount_cmd
    from ebsfs.core.errors import MountError
    from ebsfs.daemon import mounttable

    env = ebsfs_env(server, tmp_path)
    with mounted(tmp_path / "mnt", env=env) as mnt:
        holder = subprocess.Popen(["sleep", "300"], cwd=mnt / "new")
        try:
            time.sleep(0.5)
            _kill_daemon(mnt)
            monkeypatch.setattr(mounttable, "holders", lambda *a: [])
            monkeypatch.setattr(umount_cmd, "DEAD_PAUSE", 0.0)
            with pytest.raises(MountError, match="busy"):
                umount_cmd.unmount(str(mnt))
            assert in_mount_table(mnt)
        finally:
            holder.kill()
            holder.wait()
        monkeypatch.undo()
        ebsfs("umount", str(mnt), env=env)
        assert not in_mount_table(mnt)


def test_a_mount_another_umount_took_meanwhile_is_success(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Two `ebsfs umount` of one dead mount at once: the second found the mount, then the
    # first unmounted it, and the second's look at the pid attribute met the directory
    # below (ENODATA): "is not an ebsfs mount", exit 6, though the mount is gone as asked.
    from ebsfs.commands import umount as umount_cmd
    from ebsfs.daemon import mounttable

    entry = mounttable.MountEntry(7, 1, "0:99", str(tmp_path), "fuse.ebsfs", "ebsfs", "rw")
    monkeypatch.setattr(mounttable, "ebsfs_mount", lambda path: (str(tmp_path), entry))
    monkeypatch.setattr(mounttable, "mount_table", lambda: [])
    umount_cmd.unmount(str(tmp_path))  # tmp_path has no user.ebsfs.pid: ENODATA


class _FakeDead:
    """A dead mount at /m in a fake mount table, nothing holding it, commands answered by
    ``answer`` (cmd -> return code, stderr; it may empty ``table``)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from ebsfs.commands import umount as umount_cmd
        from ebsfs.daemon import mounttable

        self.entry = mounttable.MountEntry(7, 1, "0:99", "/m", "fuse.ebsfs", "ebsfs", "rw")
        self.table = [self.entry]
        self.ran: list[list[str]] = []
        self.answer = lambda cmd: (1, f"{cmd[0]}: /m: Invalid argument")
        monkeypatch.setattr(mounttable, "mount_table", lambda: list(self.table))
        monkeypatch.setattr(mounttable, "holders", lambda *a: [])
        monkeypatch.setattr(umount_cmd, "DEAD_PAUSE", 0.0)
        monkeypatch.setattr(umount_cmd.subprocess, "run", self._run)
        self.unmount_dead = umount_cmd._unmount_dead
        self.MountError = umount_cmd.MountError

    def _run(self, cmd: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        self.ran.append(cmd)
        code, err = self.answer(cmd)
        return subprocess.CompletedProcess(cmd, code, "", err)


def test_a_mount_that_left_the_table_meanwhile_is_unmounted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The exited daemon's own unmount can win the race against ours: our umount then fails
    (EINVAL, nothing mounted there), and that is success, not "could not unmount"."""
    fake = _FakeDead(monkeypatch)

    def someone_else_unmounted(cmd: list[str]) -> tuple[int, str]:
        fake.table.clear()
        return 1, f"{cmd[0]}: /m: Invalid argument"

    fake.answer = someone_else_unmounted
    fake.unmount_dead("/m", fake.entry, lazy=False)
    assert len(fake.ran) == 1  # and not a second command against a gone mount
    fake.table.append(fake.entry)
    fake.ran.clear()
    fake.unmount_dead("/m", fake.entry, lazy=True)
    assert len(fake.ran) == 1


def test_a_dead_mount_that_refuses_a_plain_unmount_is_detached(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Seen in CI: a dead mount still in the table, umount and fusermount3 both EINVAL.
    Nothing holds it (checked first) and no daemon serves it: a detach loses nothing."""
    fake = _FakeDead(monkeypatch)

    def only_a_detach_works(cmd: list[str]) -> tuple[int, str]:
        if "-l" in cmd:
            fake.table.clear()
            return 0, ""
        return 1, f"{cmd[0]}: /m: Invalid argument"

    fake.answer = only_a_detach_works
    fake.unmount_dead("/m", fake.entry, lazy=False)
    assert fake.ran == [["umount", "/m"], ["fusermount3", "-u", "/m"], ["umount", "-l", "/m"]]
    # Nothing works: every command's answer in the one-line error, after a few rounds.
    fake.table.append(fake.entry)
    fake.answer = lambda cmd: (1, f"{cmd[0]}: /m: Invalid argument")
    with pytest.raises(fake.MountError, match="umount: /m: Invalid argument; fusermount3"):
        fake.unmount_dead("/m", fake.entry, lazy=False)


def test_a_freed_mount_id_given_to_another_mount_is_not_ours(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Seen in CI (six workers mounting at once): our mount gone, the kernel gave its id to a
    mount elsewhere, and `ebsfs umount` took that one for ours still in the table: it waited,
    then failed with "not mounted" from every command. The mount is gone: success."""
    fake = _FakeDead(monkeypatch)
    other = dataclasses.replace(fake.entry, device="0:123", mountpoint="/elsewhere")
    fake.table[:] = [other]
    fake.unmount_dead("/m", fake.entry, lazy=False)
    assert fake.ran == []
