"""Small things a new user notices: ISO 8601 times in ``ebsfs ls --json``, and attribute
probes that are not counted as errors."""

from __future__ import annotations

import errno
import json
import os
import re
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
