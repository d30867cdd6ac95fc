"""A child written through the mount keeps its parent: the ebsfs:parent tag set at
StartSnapshot shows in user.ebsfs.parent, ebsfs ls and --json once it is completed, and
ebsfs diff takes Name tags and mount paths, and one snapshot alone (against its parent)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable

from tests.mounting import MountProc, ebsfs
from tests.serverproc import LocalServer, upload_image
from tests.write.helpers import seal, sh

BS = 524288
MountFactory = Callable[..., MountProc]


def test_lineage_is_kept_and_diff_takes_names_and_paths(
    server: LocalServer, mount_factory: MountFactory
) -> None:
    parent = upload_image(server.ebs(), server.ec2(), os.urandom(8 * BS), 1, name="base")
    m = mount_factory(server)
    target = m.path / "new" / "child"
    sh("touch", target)
    sh("setfattr", "-n", "user.ebsfs.parent", "-v", parent, target)
    fd = os.open(target, os.O_WRONLY)
    try:
        os.pwrite(fd, b"changed", 5 * BS + 3)
    finally:
        os.close(fd)
    child = seal(target, server)
    link = m.path / "by-name" / "child"
    assert os.getxattr(link, "user.ebsfs.parent") == parent.encode()
    env = m.env
    rows = json.loads(ebsfs("ls", "--json", env=env, check=True).stdout)
    assert {r["snapshot_id"]: r["parent"] for r in rows}[child] == parent
    table = ebsfs("ls", env=env, check=True).stdout
    assert "PARENT" in table.splitlines()[0]
    assert any(child in line and parent in line for line in table.splitlines())
    expected = {"first_snapshot": parent, "second_snapshot": child, "changed_blocks": 1}
    for argv in (
        [parent, child],
        ["base", "child"],
        [str(m.path / "by-name" / "base"), str(link)],
        ["child"],
        [str(link)],
    ):
        out = json.loads(ebsfs("diff", "--json", *argv, env=env, check=True).stdout)
        assert {k: out[k] for k in expected} == expected, argv
        assert out["ranges"][0]["first_block"] == 5
    alone = ebsfs("diff", "base", env=env)
    assert alone.returncode == 2 and "no recorded parent" in alone.stderr
    missing = ebsfs("diff", "no-such-name", "child", env=env)
    assert missing.returncode == 3 and "no completed snapshot named" in missing.stderr
    elsewhere = ebsfs("diff", "/etc/hostname", "child", env=env)
    assert elsewhere.returncode == 2 and "not a snapshot file of an ebsfs mount" in elsewhere.stderr
