"""The server's data directory is readable by its own user only (issue 12.12)."""

import os
import stat
from pathlib import Path
from typing import Any

from ebsfs.types import BLOCK_SIZE
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
