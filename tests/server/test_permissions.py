"""The server's data directory is readable by its own user only (issue 12.12)."""

import os
import stat
from pathlib import Path
from typing import Any

import pytest

from ebsfs.core.blocks import BLOCK_SIZE
from ebsfs.server.storage import Store
from tests.serverproc import LocalServer, upload_image


def _modes(root: Path) -> dict[str, int]:
    """Permission bits of the data directory and of everything under it."""
    found = {".": stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        found[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return found


def _use(srv: LocalServer) -> None:
    ebs, ec2 = srv.ebs(), srv.ec2()
    upload_image(ebs, ec2, os.urandom(BLOCK_SIZE), 1)
    ebs.start_snapshot(VolumeSize=1)


def test_new_data_dir_is_private(tmp_path: Path) -> None:
    old = os.umask(0o022)  # what the server inherits must not matter
    try:
        srv = LocalServer(tmp_path / "data")
        srv.start()
        try:
            _use(srv)
            running = _modes(srv.data_dir)  # the WAL and its index exist while it runs
        finally:
            srv.stop()
    finally:
        os.umask(old)
    stopped = _modes(srv.data_dir)
    for modes in (running, stopped):
        assert any(name.startswith("segments/") for name in modes), modes
        assert "token.key" in modes and "meta.sqlite3" in modes
        for name, mode in modes.items():
            is_dir = (srv.data_dir / name).is_dir()
            assert mode == (0o700 if is_dir else 0o600), (name, oct(mode))


def test_an_open_data_dir_is_closed_at_start(tmp_path: Path, server_factory: Any) -> None:
    data = tmp_path / "old"
    srv = server_factory(data_dir=data)
    _use(srv)
    srv.stop()
    # As an older server left it.
    for path in [data, *data.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    srv.start()
    _use(srv)
    for name, mode in _modes(data).items():
        is_dir = (data / name).is_dir()
        assert mode == (0o700 if is_dir else 0o600), (name, oct(mode))


def test_a_directory_that_is_not_a_data_dir_is_refused_untouched(tmp_path: Path) -> None:
    # --data-dir given an existing directory (a home; /etc through a symlink a hostile user
    # left in /var/tmp): the start-up chmod made every file at its top 0600, the server
    # emptied its tmp/ and left its own files among the others.
    target = tmp_path / "etc"
    target.mkdir(mode=0o755)
    (target / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (target / "passwd").chmod(0o644)
    (target / "tmp").mkdir()
    (target / "tmp" / "keep").write_text("")
    link = tmp_path / "data"
    link.symlink_to(target)
    before = sorted(p.name for p in target.rglob("*"))
    with pytest.raises(OSError, match="not an ebsfs data directory"):
        Store(link)
    assert stat.S_IMODE((target / "passwd").stat().st_mode) == 0o644
    assert sorted(p.name for p in target.rglob("*")) == before


def test_files_of_others_in_a_data_dir_keep_their_modes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    Store(data).close()
    (data / "NOTES").write_text("what this disk is for\n")
    (data / "NOTES").chmod(0o644)
    (data / "lost+found").mkdir(mode=0o755)
    Store(data).close()
    assert stat.S_IMODE((data / "NOTES").stat().st_mode) == 0o644
    assert stat.S_IMODE((data / "lost+found").stat().st_mode) == 0o755


def test_a_fresh_file_system_is_a_data_dir(tmp_path: Path) -> None:
    data = tmp_path / "mnt"
    (data / "lost+found").mkdir(parents=True)
    Store(data).close()
    assert (data / "meta.sqlite3").exists()


def test_a_data_dir_of_another_user_is_refused(tmp_path: Path) -> None:
    # Root starting the server on a directory another user owns (say one made in /var/tmp
    # by a hostile user) would trust files that user can replace at will: token.key,
    # the database, symlinks in place of the lock or the segments.
    data = tmp_path / "theirs"
    data.mkdir()
    os.chown(data, 65534, 65534)
    with pytest.raises(PermissionError, match="owned by"):
        Store(data)
    assert not (data / "token.key").exists()
