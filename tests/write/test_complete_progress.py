"""``ebsfs complete`` progress (issue 14 item 4): a live bar on a terminal (a pty here), one
line per state change when stderr is not a terminal, JSON events with ``--json``; through a
real mount whose blocks are all still to store when sealing starts (a long write-back delay)
and whose server answers slowly enough that both phases are seen."""

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from ebsfs.commands.progress import Bar, JsonEvents, Lines, Sample, Tracker, bar_text
from tests.mounting import MountProc
from tests.serverproc import LocalServer
from tests.write.helpers import Clock, complete_on_a_terminal

BS = 512 * 1024
BLOCKS = 12
MountFactory = Callable[..., MountProc]


@pytest.fixture
def mount(server_factory: Callable[..., LocalServer], mount_factory: MountFactory) -> MountProc:
    srv = server_factory("--latency-ms", "100", "--complete-delay", "1.5")
    return mount_factory(srv, "--writeback-delay", "600", "--max-concurrency", "2")


def _write(m: MountProc, name: str) -> Path:
    target = m.path / "new" / name
    with open(target, "wb") as f:
        f.truncate(1 << 30)
        # Backwards: no sequential stream, whose completed blocks would be stored at once.
        for i in reversed(range(BLOCKS)):
            os.pwrite(f.fileno(), bytes([i + 1]) * BS, i * BS)
    return target


def _complete(m: MountProc, *args: str, stderr: int | None = subprocess.PIPE
              ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ebsfs", "complete", *args], env=m.env,
                          stdout=subprocess.PIPE, stderr=stderr, text=True, timeout=240)


def test_not_a_terminal_one_line_per_state_change(mount: MountProc) -> None:
    target = _write(mount, "plain")
    done = _complete(mount, str(target))
    assert done.returncode == 0, done.stderr
    snapshot_id = done.stdout.strip()
    assert snapshot_id.startswith("snap-") and "\n" not in snapshot_id
    lines = done.stderr.splitlines()
    assert lines == [
        f"plain {snapshot_id}: storing {BLOCKS} blocks",
        f"plain {snapshot_id}: stored {BLOCKS} blocks; completing",
        f"plain {snapshot_id}: completed",
    ], done.stderr
    assert "\r" not in done.stderr and "\033" not in done.stderr


def test_json_events_one_object_a_line(mount: MountProc) -> None:
    target = _write(mount, "scripted")
    done = _complete(mount, "--json", str(target))
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert done.stderr == ""
    kinds = [e["event"] for e in events]
    assert kinds[-1] == "completed" and kinds.count("completed") == 1
    states = [e["state"] for e in events if e["event"] == "state"]
    assert states == ["storing", "completing"]
    first, last = events[0], events[-1]
    assert first["to_store"] == BLOCKS and first["stored"] == 0
    snapshot_id = last["snapshot_id"]
    assert snapshot_id.startswith("snap-") and last["stored"] == last["to_store"] == BLOCKS
    for e in events:
        assert e["path"] == str(target) and isinstance(e["time"], float)
        if e["event"] in ("state", "progress"):
            assert e["snapshot_id"] == snapshot_id
            assert 0 <= e["stored"] <= e["to_store"] == BLOCKS
    assert (mount.path / snapshot_id).exists()


def test_json_error_event_and_exit_code(mount: MountProc) -> None:
    target = mount.path / "new" / "empty"
    target.touch()
    done = _complete(mount, "--json", str(target))
    assert done.returncode == 1
    (event,) = [json.loads(line) for line in done.stdout.splitlines()]
    assert event["event"] == "error" and "nothing was written" in event["message"]
    assert done.stderr.startswith("ebsfs: ")


def test_a_terminal_gets_a_live_bar(mount: MountProc) -> None:
    target = _write(mount, "interactive")
    proc, out, shown = complete_on_a_terminal(target, mount.env)
    assert proc.returncode == 0, shown
    snapshot_id = out.strip()
    text = shown.decode()
    frames = [f for f in text.split("\r\x1b[K") if f]
    assert frames, text
    assert all("\n" not in f for f in frames), text  # redrawn in place
    storing = [f for f in frames if ": storing [" in f]
    assert storing and storing[0].startswith(f"interactive {snapshot_id}: storing [")
    assert all(f"/{BLOCKS} blocks" in f for f in storing)
    assert any(f"{BLOCKS}/{BLOCKS} blocks" in f or "completing" in f for f in frames)
    assert text.endswith("\r\x1b[K")  # the bar is cleared at the end


# -- the pieces, with a fake clock -------------------------------------------------------------


def test_rate_time_left_and_throttled_share() -> None:
    clock = Clock()
    tracker = Tracker(clock)
    tracker.update(Sample("sealing", "storing 100 blocks", 100, 0, throttled=5, answers=50))
    assert tracker.rate() is None and tracker.left() is None
    assert tracker.throttled_share() == 0.0
    for t in range(1, 5):
        clock.now = float(t)
        tracker.update(Sample("sealing", "storing 100 blocks", 100 - 10 * t, 10 * t,
                              throttled=5 + 2 * t, answers=50 + 12 * t))
    assert (tracker.done, tracker.to_store) == (40, 100)
    assert tracker.rate() == pytest.approx(10.0)
    assert tracker.left() == pytest.approx(6.0)
    assert tracker.throttled_share() == pytest.approx(8 / 48)
    text = bar_text("img", "snap-0123456789abcdef0", Sample("sealing", "storing", 60, 40),
                    tracker)
    assert text.startswith("img snap-0123456789abcdef0: storing [#########")
    assert "40/100 blocks" in text and "10.0 blocks/s (5.0 MiB/s)" in text
    assert "0:06 left" in text and "throttled 17%" in text
    # Without counters of throttling, nothing is claimed about it.
    bare = Tracker(clock)
    bare.update(Sample("sealing", "storing", 3, 0))
    assert "throttled" not in bar_text("x", "", Sample("sealing", "storing", 3, 0), bare)
    completing = Sample("sealing", "completing 45%", 0, 100)
    assert completing.phase == "completing" and completing.aws_progress == "45%"
    assert bar_text("img", "snap-1", completing, tracker) == "img snap-1: completing 45%"


def test_reporters_write_where_they_should(capsys: pytest.CaptureFixture[str]) -> None:
    import io

    clock = Clock()
    tracker = Tracker(clock)
    stream = io.StringIO()
    bar = Bar(stream, clock)
    sample = Sample("sealing", "storing 2 blocks", 2, 0)
    tracker.update(sample)
    bar.update("a", "snap-1", sample, tracker)
    bar.update("a", "snap-1", sample, tracker)  # unchanged: not drawn again
    bar.done("snap-1", tracker)
    assert stream.getvalue().count("\r\x1b[K") == 2
    lines = io.StringIO()
    plain = Lines(lines)
    plain.update("a", "snap-1", sample, tracker)
    plain.update("a", "snap-1", sample, tracker)
    plain.done("snap-1", tracker)
    assert lines.getvalue() == "a snap-1: storing 2 blocks\na snap-1: completed\n"
    events = io.StringIO()
    JsonEvents(events, "/m/new/a", clock).failed("boom", "pending")
    assert json.loads(events.getvalue())["message"] == "boom"
