"""``ebsfs diff`` arguments that only look like snapshots: a file of another file system
carrying ebsfs's attribute, ids with a trailing newline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ebsfs.commands import diff
from ebsfs.core.blocks import ID_XATTR, SNAPSHOT_ID_RE
from ebsfs.core.errors import UsageError

SNAP = "snap-0123456789abcdef0"


def test_a_file_of_another_file_system_with_the_attribute_is_no_snapshot(
    tmp_path: Path,
) -> None:
    """Anyone can set user.ebsfs.snapshot_id on a file of their own (here on ext4, /tmp):
    diff took the id it named, and compared snapshots the user never pointed at."""
    planted = tmp_path / "web-root"
    planted.write_bytes(b"")
    os.setxattr(planted, ID_XATTR, SNAP.encode())
    with pytest.raises(UsageError, match="not a snapshot file of an ebsfs mount"):
        diff.resolve(None, str(planted))


@pytest.mark.parametrize("text", [SNAP + "\n", "snap-01234567\n"])
def test_an_id_with_a_trailing_newline_is_no_id(text: str) -> None:
    """SNAPSHOT_ID.match with '$' matched before a final newline: the id went to the
    endpoint as it was."""
    with pytest.raises(UsageError):
        diff.resolve(None, text)


def test_an_attribute_value_with_a_trailing_newline_is_no_id(tmp_path: Path) -> None:
    planted = tmp_path / "f"
    planted.write_bytes(b"")
    os.setxattr(planted, ID_XATTR, (SNAP + "\n").encode())
    with pytest.raises(UsageError):
        diff.resolve(None, str(planted))


@pytest.mark.parametrize("text", [SNAP + "\n", "snap-01234567\n"])
def test_no_snapshot_id_check_takes_a_trailing_newline(text: str) -> None:
    """The same '$' in the mount's catalog (a lookup of 'snap-...\\n' asked EC2 for it), in
    the configuration's snapshot ids and in a draft's parent."""
    from ebsfs.fs import catalog
    from ebsfs.options import settings
    assert not catalog.is_snapshot_id(text)
    assert not SNAPSHOT_ID_RE.match(text)
    with pytest.raises(ValueError):
        settings._snapshot_ids([text])
