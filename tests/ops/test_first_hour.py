"""Small things a new user notices: ISO 8601 times in ``ebsfs ls --json``, and attribute
probes that are not counted as errors."""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.mounting import MountProc, ebsfs
from tests.serverproc import LocalServer, upload_image


def test_ls_json_start_time_is_iso_8601(server: LocalServer) -> None:
    sid = upload_image(server.ebs(), server.ec2(), b"x" * 4096, 1, name="iso")
    rows = json.loads(ebsfs("ls", "--json", env=server.env(), check=True).stdout)
    (row,) = [r for r in rows if r["snapshot_id"] == sid]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", row["start_time"])


def test_missing_attribute_probes_are_not_errors(server: LocalServer, tmp_path: Path) -> None:
    sid = upload_image(server.ebs(), server.ec2(), b"x" * 4096, 1)
    with MountProc(server, tmp_path / "mnt") as m:
        for _ in range(20):
            with pytest.raises(OSError) as missing:
                os.getxattr(m.path / sid, "security.selinux")
            assert missing.value.errno == errno.ENODATA
        with pytest.raises(OSError):
            (m.path / sid).write_bytes(b"no")  # EROFS: an error, counted
        stats = json.loads(ebsfs("stats", "--json", str(m.path), env=m.env, check=True).stdout)
        assert "ENODATA" not in stats["errors"]
        assert stats["errors"].get("EROFS", 0) >= 1


def test_the_size_a_parent_gives_shows_at_once(server: LocalServer, tmp_path: Path) -> None:
    parent = upload_image(server.ebs(), server.ec2(), b"p" * 4096, 3)
    with MountProc(server, tmp_path / "mnt") as m:
        draft = m.path / "new" / "child"
        # As a user types it: three processes, each looking the name up again.
        script = (f"touch {draft} && stat -c %s {draft} && "
                  f"setfattr -n user.ebsfs.parent -v {parent} {draft} && stat -c %s {draft}")
        out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True)
        # The size the parent gives, not 0 until the kernel's attribute timeout.
        assert out.stdout.split() == ["0", str(3 << 30)]


def test_complete_of_a_completed_snapshot_says_its_id(server: LocalServer, tmp_path: Path) -> None:
    sid = upload_image(server.ebs(), server.ec2(), b"c" * 4096, 1, name="done")
    with MountProc(server, tmp_path / "mnt") as m:
        for path in (m.path / sid, m.path / "by-name" / "done"):
            proc = ebsfs("complete", str(path), env=m.env)
            assert proc.returncode == 0, proc.stderr
            assert proc.stdout.strip() == sid


def test_an_unknown_option_points_to_the_command_help() -> None:
    proc = ebsfs("ls", "-l")
    assert proc.returncode == 2
    assert proc.stderr.strip().endswith("(see 'ebsfs ls --help')"), proc.stderr
