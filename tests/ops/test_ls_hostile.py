"""``ebsfs ls`` of snapshots whose tags carry control characters: whoever may tag a snapshot
must not drive the terminal of whoever lists it, nor forge rows of the table."""

from __future__ import annotations

from ebsfs.aws.api import SnapshotInfo
from ebsfs.commands.ls import table


def test_control_characters_in_tags_are_escaped_in_the_table() -> None:
    evil = SnapshotInfo(
        "snap-0123456789abcdef0",
        "completed",
        8,
        1_700_000_000.0,
        tags={
            "Name": "web\nsnap-0fffffffffffffff0  completed  standard  1 GiB  forged\x1b[2J",
            "ebsfs:parent": "snap-01234567\r\x1b]0;title\x07",
        },
        parent="snap-01234567\r\x1b]0;title\x07",
    )
    text = table([evil])
    lines = text.splitlines()
    assert len(lines) == 2, text
    assert "\x1b" not in text and "\r" not in text and "\x07" not in text
    assert "web\\nsnap-0fffffffffffffff0" in lines[1]


def test_ordinary_names_are_printed_as_they_are() -> None:
    info = SnapshotInfo(
        "snap-0123456789abcdef0", "completed", 8, 0.0, tags={"Name": "web root é"}
    )
    assert "web root é" in table([info]).splitlines()[1]
