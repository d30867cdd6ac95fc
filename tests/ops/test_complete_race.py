"""``ebsfs complete`` when the draft completes and leaves new/ between two polls, before its
snapshot id was ever read (a small draft on a fast endpoint): it finds the snapshot under
by-name/ instead of reporting it "disappeared" (seen once in the README tour)."""

import argparse
import os
import time
from pathlib import Path

import pytest

from ebsfs.commands import complete
from ebsfs.core.errors import NotFoundError

SNAP = "snap-0123456789abcdef0"


def _mount(tmp_path: Path, mtime: float) -> Path:
    mnt = tmp_path / "mnt"
    (mnt / "new").mkdir(parents=True)
    (mnt / "by-name").mkdir()
    (mnt / SNAP).write_bytes(b"")
    os.utime(mnt / SNAP, (mtime, mtime))
    (mnt / "by-name" / "disk").symlink_to(f"../{SNAP}")
    return mnt


def _run(mnt: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> str:
    """``ebsfs complete MNT/new/disk`` where the file answers 'sealing' with no id, then is
    gone."""
    answers = iter([("state", "sealing"), ("snapshot_id", ""), ("state", "sealing"),
                    ("snapshot_id", "")])

    def attr(path: str, key: str) -> str:
        for wanted, value in answers:
            if wanted == key:
                return value
        raise FileNotFoundError(path)

    monkeypatch.setattr(complete, "_attr", attr)
    monkeypatch.setattr(complete, "_int_attr", lambda path, key: 0)
    monkeypatch.setattr(complete, "POLL", 0.01)
    args = argparse.Namespace(path=str(mnt / "new" / "disk"), timeout=5.0, json=False)
    assert complete.run(args) == 0
    return capsys.readouterr().out.strip()


def test_a_draft_that_left_before_its_id_was_read_is_found_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    mnt = _mount(tmp_path, time.time())
    assert _run(mnt, monkeypatch, capsys) == SNAP


def test_an_older_snapshot_of_the_same_name_is_not_taken_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    mnt = _mount(tmp_path, time.time() - 3600)
    monkeypatch.setattr(complete, "SHOW_WAIT", 0.2)
    with pytest.raises(NotFoundError, match="disappeared before it was completed"):
        _run(mnt, monkeypatch, capsys)
