"""How ``ebsfs complete`` shows its progress (docs/usage.md, "Sealing"): a live bar on a
terminal, one plain line per state change otherwise, JSON events (one object a line) with
``--json``. What it shows comes from the draft's attributes and the mount's counters."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from ebsfs.core.blocks import BLOCK_SIZE
from ebsfs.core.errors import EbsfsError

#: Seconds of history the rate is measured over.
RATE_WINDOW = 5.0
#: Least seconds between two redraws of the bar, or two JSON progress events.
BAR_EVERY = 0.2
JSON_EVERY = 1.0
BAR_WIDTH = 24


def write(stream: TextIO, text: str, end: str = "\n") -> None:
    """``text`` on ``stream``, flushed. A stream that cannot take it (a full disk, an I/O
    error) is pointed at /dev/null, so that nothing later writes to it again (the
    interpreter's last flush included), and the command fails with one line saying why;
    a reader gone away (BrokenPipeError) is the command line's to handle."""
    try:
        print(text, end=end, file=stream, flush=True)
    except BrokenPipeError:
        raise
    except OSError as exc:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, stream.fileno())
            os.close(devnull)
        name = getattr(stream, "name", "")
        name = {"<stdout>": "standard output", "<stderr>": "standard error"}.get(name, name)
        raise EbsfsError(f"cannot write to {name or 'the output'}: {exc.strerror or exc}") from None


@dataclass(frozen=True)
class Sample:
    """What one poll of the file (and, now and then, of the mount's counters) saw."""

    state: str
    #: The daemon's progress text: "storing", "storing 40 blocks", "completing 45%", ...
    progress: str
    dirty: int
    stored: int
    #: PutSnapshotBlock answers that were throttling, and all of them, if the mount counts them.
    throttled: int | None = None
    answers: int | None = None

    @property
    def phase(self) -> str:
        """``storing`` or ``completing`` while sealing, else the state itself."""
        if self.state != "sealing":
            return self.state
        return "completing" if self.progress.startswith("completing") else "storing"

    @property
    def aws_progress(self) -> str:
        """AWS's Progress ("45%") while completing, else ""."""
        word = self.progress.rpartition(" ")[2]
        return word if self.phase == "completing" and word.endswith("%") else ""


def throttle_counts(stats: dict[str, Any] | None) -> tuple[int | None, int | None]:
    """(throttled, answers) of PutSnapshotBlock from ``ebsfs stats`` counters: the mount's
    ``write.puts_throttled`` over it plus ``write.puts``; (None, None) if it does not
    count them."""
    write = (stats or {}).get("write")
    if not isinstance(write, dict):
        return None, None
    throttled, puts = write.get("puts_throttled"), write.get("puts")
    if not isinstance(throttled, int) or not isinstance(puts, int):
        return None, None
    return throttled, throttled + puts


class Tracker:
    """Blocks to store and stored since sealing was first seen, rate, time left and the
    throttled share, from successive samples."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.started = clock()
        self.to_store: int | None = None
        self.done = 0
        self._history: deque[tuple[float, int]] = deque()
        self._base: tuple[int, int] | None = None
        self._throttled: tuple[int, int] | None = None
        self._counts: tuple[int, int] | None = None  # the mount's, as last read

    def update(self, sample: Sample) -> None:
        now = self.clock()
        if self.to_store is None:
            self.to_store = sample.dirty
        # Blocks only leave "dirty" while sealing; if more show up (a seal resumed after a
        # restart), they are more to store.
        self.done = max(self.done, self.to_store - sample.dirty)
        self.to_store = max(self.to_store, self.done + sample.dirty)
        self._history.append((now, self.done))
        while len(self._history) > 2 and now - self._history[1][0] >= RATE_WINDOW:
            self._history.popleft()
        if sample.throttled is not None and sample.answers is not None:
            counts = (sample.throttled, sample.answers)
            last = self._counts
            if self._base is None:
                self._base = counts
            elif last is not None and (counts[0] < last[0] or counts[1] < last[1]):
                # The mount's counters started again from 0 (its daemon restarted mid-seal):
                # what this seal counted stays, the new counters add to it.
                seen = self._throttled or (0, 0)
                self._base = (-seen[0], -seen[1])
            self._counts = counts
            self._throttled = (counts[0] - self._base[0], counts[1] - self._base[1])

    def rate(self) -> float | None:
        """Blocks stored a second over the last few seconds; None before it can be told."""
        if len(self._history) < 2:
            return None
        (t0, d0), (t1, d1) = self._history[0], self._history[-1]
        return (d1 - d0) / (t1 - t0) if t1 - t0 >= 0.5 else None

    def left(self) -> float | None:
        """Seconds until every block is stored at the current rate."""
        rate = self.rate()
        if self.to_store is None or not rate:
            return None
        return (self.to_store - self.done) / rate

    def throttled_share(self) -> float | None:
        """Share of this seal's PutSnapshotBlock answers that were throttling, if counted."""
        if self._throttled is None:
            return None
        throttled, answers = self._throttled
        return throttled / answers if answers > 0 else 0.0


def _clock(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def bar_text(
    name: str, snapshot_id: str, sample: Sample, tracker: Tracker, width: int = BAR_WIDTH,
    compact: bool = False,
) -> str:
    """The bar's one line (no terminal codes); ``compact``: the rate without MiB/s."""
    head = f"{name} {snapshot_id}".strip()
    if sample.phase == "completing":
        return f"{head}: completing {sample.aws_progress or ''}".rstrip()
    total, done = tracker.to_store or 0, tracker.done
    filled = width * done // total if total else width
    parts = [f"{head}: storing [{'#' * filled}{'.' * (width - filled)}] "
             f"{done}/{total} blocks"]
    rate = tracker.rate()
    if rate is not None:
        mib = "" if compact else f" ({rate * BLOCK_SIZE / (1 << 20):.1f} MiB/s)"
        parts.append(f"{rate:.1f} blocks/s{mib}")
    left = tracker.left()
    if left is not None:
        parts.append(f"{_clock(left)} left")
    share = tracker.throttled_share()
    if share is not None:
        parts.append(f"throttled {share:.0%}")
    return "  ".join(parts)


class Reporter:
    """Shows nothing (the base of the three ways below)."""

    def update(self, name: str, snapshot_id: str, sample: Sample, tracker: Tracker) -> None:
        return None

    def done(self, snapshot_id: str, tracker: Tracker) -> None:
        return None

    def failed(self, message: str, state: str) -> None:
        return None


class Bar(Reporter):
    """A line redrawn in place on a terminal (stderr)."""

    def __init__(self, stream: TextIO, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream, self.clock = stream, clock
        self._shown, self._at = "", float("-inf")

    def update(self, name: str, snapshot_id: str, sample: Sample, tracker: Tracker) -> None:
        # One line less a column: a longer one wraps, and the next redraw (carriage return,
        # clear the line) would leave the wrapped part behind. A shorter bar first, then
        # the rate in MiB/s, then the name; what is still too long is cut.
        room = self._columns() - 1
        for text in (
            bar_text(name, snapshot_id, sample, tracker),
            bar_text(name, snapshot_id, sample, tracker, BAR_WIDTH // 2, compact=True),
            bar_text("", snapshot_id, sample, tracker, BAR_WIDTH // 2, compact=True),
        ):
            if len(text) <= room:
                break
        text = text[:room]
        now = self.clock()
        if text != self._shown and (now - self._at >= BAR_EVERY or not self._shown):
            write(self.stream, f"\r\033[K{text}", end="")
            self._shown, self._at = text, now

    def done(self, snapshot_id: str, tracker: Tracker) -> None:
        self._clear()

    def failed(self, message: str, state: str) -> None:
        self._clear()

    def _columns(self) -> int:
        """The terminal's width (80 when it says 0, or cannot say)."""
        try:
            columns = os.get_terminal_size(self.stream.fileno()).columns
        except (OSError, ValueError, AttributeError):
            columns = 0
        return max(columns, 2) if columns > 0 else 80

    def _clear(self) -> None:
        if self._shown:
            write(self.stream, "\r\033[K", end="")
            self._shown = ""


class Lines(Reporter):
    """One plain line per state change (stderr that is not a terminal: a log)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._phase = self._head = ""

    def update(self, name: str, snapshot_id: str, sample: Sample, tracker: Tracker) -> None:
        if sample.phase == self._phase:
            return
        self._phase, self._head = sample.phase, f"{name} {snapshot_id}".strip()
        if sample.phase == "storing":
            text = f"storing {tracker.to_store} blocks"
        elif sample.phase == "completing":
            text = f"stored {tracker.done} blocks; completing"
        else:
            text = sample.phase
        write(self.stream, f"{self._head}: {text}")

    def done(self, snapshot_id: str, tracker: Tracker) -> None:
        if self._phase:  # nothing to say when there was nothing to wait for
            write(self.stream, f"{self._head or snapshot_id}: completed")


class JsonEvents(Reporter):
    """One JSON object a line on stdout, for scripts: ``state`` at each state change,
    ``progress`` at most once a second, then ``completed`` or ``error``."""

    def __init__(self, stream: TextIO, path: str,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream, self.path, self.clock = stream, path, clock
        self._phase, self._at = "", float("-inf")
        self._last: tuple[int, str] | None = None

    def _emit(self, event: str, **fields: Any) -> None:
        doc = {"event": event, "path": self.path, "time": round(time.time(), 3), **fields}
        write(self.stream, json.dumps(doc, sort_keys=True))

    @staticmethod
    def _counts(tracker: Tracker) -> dict[str, Any]:
        rate, left, share = tracker.rate(), tracker.left(), tracker.throttled_share()
        return {
            "stored": tracker.done,
            "to_store": tracker.to_store,
            "blocks_per_second": None if rate is None else round(rate, 2),
            "seconds_left": None if left is None else round(left, 1),
            "throttled_share": None if share is None else round(share, 4),
        }

    def update(self, name: str, snapshot_id: str, sample: Sample, tracker: Tracker) -> None:
        now = self.clock()
        if sample.phase != self._phase:
            self._phase = sample.phase
            self._emit("state", state=sample.phase, snapshot_id=snapshot_id or None,
                       **self._counts(tracker))
            self._at = now
            return
        mark = (tracker.done, sample.aws_progress)
        if mark != self._last and now - self._at >= JSON_EVERY:
            self._emit("progress", state=sample.phase, snapshot_id=snapshot_id or None,
                       aws_progress=sample.aws_progress or None, **self._counts(tracker))
            self._last, self._at = mark, now

    def done(self, snapshot_id: str, tracker: Tracker) -> None:
        self._emit("completed", snapshot_id=snapshot_id,
                   seconds=round(tracker.clock() - tracker.started, 1), **self._counts(tracker))

    def failed(self, message: str, state: str) -> None:
        self._emit("error", state=state or None, message=message)
