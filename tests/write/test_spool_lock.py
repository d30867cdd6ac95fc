"""One spool, one mount: the lock on the spool, and the default spool per mount point."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from ebsfs.options.settings import default_spool_dir, escape_path
from ebsfs.write.spoollock import LOCK
from tests.mounting import MountProc, ebsfs
from tests.serverproc import LocalServer


class DefaultSpoolMount(MountProc):
    """A mount given no --spool-dir (the default), with the default root moved to a test dir."""

    def __init__(self, server: LocalServer, mountpoint: Path, root: Path, *flags: str) -> None:
        env = {**server.env(), "EBSFS_SPOOL_ROOT": str(root)}
        super().__init__(server, mountpoint, *flags, env=env)

    def command(self) -> list[str]:
        cmd = super().command()
        at = cmd.index("--spool-dir")
        return cmd[:at] + cmd[at + 2 :]


def test_escape_path_is_systemd_escape() -> None:
    assert escape_path("/mnt/snapshots") == "mnt-snapshots"
    assert escape_path("/mnt/snap-shots/") == "mnt-snap\\x2dshots"
    assert escape_path("/") == "-"
    assert default_spool_dir("/mnt/a", {"EBSFS_SPOOL_ROOT": "/x"}) == "/x/mnt-a"
    assert default_spool_dir("/mnt/a", {}) == "/var/lib/ebsfs/spool/mnt-a"


def test_a_second_mount_on_one_spool_is_refused_naming_the_holder(
    server: LocalServer, mount_factory: Callable[..., MountProc], tmp_path: Path
) -> None:
    spool = tmp_path / "shared-spool"
    first = mount_factory(server, "--upload-process", spool_dir=spool, name="first")
    # The upload process has run (it closes the descriptors it inherited): the lock holds.
    (first.path / "new" / "x").write_bytes(os.urandom(1 << 20))
    fd = os.open(first.path / "new" / "x", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    second = tmp_path / "second"
    second.mkdir()
    done = ebsfs("mount", str(second), "--spool-dir", str(spool), env=server.env(), timeout=60)
    assert done.returncode == 6, done.stderr
    assert not os.path.ismount(second)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert str(first.path) in lines[0] and f"pid {first.proc.pid}" in lines[0], lines[0]
    assert str(spool) in lines[0]
    # The first mount still has its draft, untouched.
    assert os.listdir(first.path / "new") == ["x"]


def test_kill_9_of_the_holder_frees_the_spool(
    server: LocalServer, mount_factory: Callable[..., MountProc], tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    first = mount_factory(server, "--upload-process", spool_dir=spool, name="first")
    data = os.urandom(3 << 19)
    (first.path / "new" / "img").write_bytes(data)
    first.kill()
    again = mount_factory(server, spool_dir=spool, name="again")
    assert (again.path / "new" / "img").read_bytes() == data
    assert f"mountpoint={again.path}" in (spool / LOCK).read_text()


def test_mounts_without_a_spool_setting_get_one_each(
    server: LocalServer, tmp_path: Path
) -> None:
    root = tmp_path / "state" / "spool"
    mounts = [DefaultSpoolMount(server, tmp_path / n, root) for n in ("a", "b")]
    try:
        for m in mounts:
            m.start()
        for i, m in enumerate(mounts):
            (m.path / "new" / f"img{i}").write_bytes(bytes([i + 1]) * 1000)
        for i, m in enumerate(mounts):
            assert os.listdir(m.path / "new") == [f"img{i}"]
            own = root / escape_path(str(m.path))
            assert f"mountpoint={m.path}" in (own / LOCK).read_text()
            drafts = [p for p in own.iterdir() if (p / "manifest.json").is_file()]
            assert len(drafts) == 1
    finally:
        for m in mounts:
            m.stop()


def test_drafts_left_in_the_old_shared_spool_are_named_in_the_log(
    server: LocalServer, mount_factory: Callable[..., MountProc], tmp_path: Path
) -> None:
    root = tmp_path / "state" / "spool"
    # A draft written by a mount of the old version, which spooled in the root itself.
    old = mount_factory(server, spool_dir=root, name="old")
    (old.path / "new" / "left").write_bytes(b"keep me")
    old.stop()
    m = DefaultSpoolMount(server, tmp_path / "new-version", root)
    try:
        m.start()
        assert os.listdir(m.path / "new") == []
        log = m.log_text()
        assert f"{root} holds 1 draft(s)" in log and f"--spool-dir {root}" in log, log
    finally:
        m.stop()
    # What the log says brings it back.
    back = mount_factory(server, spool_dir=root, name="back")
    with open(back.path / "new" / "left", "rb") as f:  # sized to a GiB at close
        assert f.read(8) == b"keep me\0"


def test_the_default_spool_is_per_mount_point_and_a_setting_wins(tmp_path: Path) -> None:
    from ebsfs.options import settings
    env = {"EBSFS_SPOOL_ROOT": str(tmp_path)}
    a = settings.mount_config("/mnt/a", {}, config=settings.EMPTY, environ=env)
    b = settings.mount_config("/mnt/b", {}, config=settings.EMPTY, environ=env)
    assert a.spool_dir == str(tmp_path / "mnt-a") and b.spool_dir == str(tmp_path / "mnt-b")
    given = settings.mount_config("/mnt/a", {"spool_dir": "/s"}, config=settings.EMPTY,
                                  environ=env)
    assert given.spool_dir == "/s"
    example = settings.load_config(
        str(Path(__file__).resolve().parents[2] / "systemd" / "ebsfs.toml"), {})
    # The shipped example sets no spool shared by every instance of ebsfs@.service.
    assert "spool_dir" not in example.values("mount")
