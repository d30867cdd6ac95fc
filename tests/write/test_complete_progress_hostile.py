"""``ebsfs complete`` progress when things go wrong around it (issue 14 item 4): its output
cannot be written (a full disk: /dev/full), the mount's counters start again (the daemon
restarted mid-seal); through a real mount and, for the arithmetic, with a fake clock."""

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from ebsfs.commands.progress import Sample, Tracker, bar_text
from tests.mounting import MountProc
from tests.serverproc import LocalServer
from tests.write.helpers import Clock, complete_on_a_terminal

BS = 512 * 1024
MountFactory = Callable[..., MountProc]


@pytest.fixture
def mount(server_factory: Callable[..., LocalServer], mount_factory: MountFactory) -> MountProc:
    srv = server_factory("--latency-ms", "20", "--complete-delay", "0.5")
    return mount_factory(srv, "--writeback-delay", "600")


def _write(m: MountProc, name: str, blocks: int = 3) -> Path:
    target = m.path / "new" / name
    with open(target, "wb") as f:
        f.truncate(1 << 30)
        for i in range(blocks):
            os.pwrite(f.fileno(), bytes([i + 1]) * BS, i * BS)
    return target


@pytest.mark.parametrize("args", [["--json"], []], ids=["json", "plain"])
def test_output_to_a_full_disk_is_a_one_line_error(mount: MountProc, args: list[str]) -> None:
    """stdout on a full disk: a one-line error and exit code 1, not a traceback."""
    target = _write(mount, "full-" + (args[0][2:] if args else "plain"))
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [sys.executable, "-m", "ebsfs", "complete", *args, str(target)], env=mount.env,
            stdout=full, stderr=subprocess.PIPE, text=True, timeout=240,
        )
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 1, done.stderr
    # Plain: the lines of the states went to stderr; then the one error line.
    errors = [line for line in done.stderr.splitlines() if line.startswith("ebsfs: ")]
    assert errors == [
        "ebsfs: cannot write to standard output: No space left on device"
    ], done.stderr
    assert done.stderr.endswith(errors[0] + "\n")


def test_throttled_share_after_the_mount_counters_start_again() -> None:
    """The daemon restarted mid-seal (its counters start from 0): the share this seal shows
    stays between 0 and 100 %, counted from the new counters."""
    clock = Clock()
    tracker = Tracker(clock)
    tracker.update(Sample("sealing", "storing", 100, 0, throttled=400, answers=1000))
    clock.now = 1.0
    tracker.update(Sample("sealing", "storing", 90, 10, throttled=450, answers=1100))
    assert tracker.throttled_share() == pytest.approx(0.5)
    clock.now = 2.0  # restarted: the counters are small again
    tracker.update(Sample("sealing", "storing", 80, 20, throttled=1, answers=20))
    share = tracker.throttled_share()
    assert share is not None and 0.0 <= share <= 1.0, share
    clock.now = 3.0
    tracker.update(Sample("sealing", "storing", 70, 30, throttled=11, answers=1500))
    share = tracker.throttled_share()
    # 50 of 100 before the restart, 11 of 1500 since.
    assert share == pytest.approx(61 / 1600), share
    assert "throttled -" not in bar_text("x", "snap-1", Sample("sealing", "storing", 70, 30),
                                         tracker)


@pytest.mark.parametrize("columns", [40, 0])
def test_the_bar_fits_a_narrow_terminal(
    server_factory: Callable[..., LocalServer], mount_factory: MountFactory, columns: int
) -> None:
    """A bar longer than the terminal is wide wraps, and each redraw (carriage return, clear
    the line) leaves the wrapped part behind: a screen of stale bars. Each frame fits one
    line less a column (a terminal of width 0, unknown, is taken as 80)."""
    srv = server_factory("--latency-ms", "100", "--complete-delay", "1.0")
    m = mount_factory(srv, "--writeback-delay", "600", "--max-concurrency", "2")
    target = _write(m, "a-draft-with-a-rather-long-name", blocks=8)
    proc, out, shown = complete_on_a_terminal(target, m.env, columns)
    assert proc.returncode == 0, shown
    frames = [f for f in shown.decode().split("\r\x1b[K") if f]
    assert frames and any(": storing [" in f or ": storing" in f for f in frames), frames
    width = columns or 80
    assert all(len(f) <= width - 1 for f in frames), [f for f in frames if len(f) >= width]
    assert out.strip().startswith("snap-")
