"""Issue 14: throughput at AWS's latency and under its rate limits (docs/benchmarks.md, "At
AWS's latency and limits").

(a) ``--latency-ms 100``: cold sequential read (``dd``) through a fresh mount against dsnap
    (its 50 threads, writing the image to a local file), flow A (truncate + dd + ``ebsfs
    complete``) against a 64-thread boto3 uploader (``bench.write._bare_upload``);
(b) the same mount runs at ``--latency-ms 10``: ratio 100 ms / 10 ms;
(c) ``--rate-limit 300 --latency-ms 100``: blocks a second of read and flow A, the share of
    block calls throttled (from the server's per-request debug log), errors (any other
    non-2xx answer); then ``--account-rate-limit 300``: two mounts read two snapshots at once,
    each one's blocks a second.
Every mount setting in SETTINGS is run (the defaults first; then ``--read-ahead 8MiB``, the
default before issue 14). A round runs each case once,
peers and settings one after the other (their order reversed every other round), so all see
the same load; the tables are medians over the rounds, with the load average (1 min) seen.
Environment: BENCH_LAT_MIB (512), BENCH_LAT_ROUNDS (3), BENCH_LAT_SETTINGS (``;``-separated
flag lists; ``default`` is none), BENCH_LAT_RATES (``300``; a comma-separated list runs (c) at
each), BENCH_LAT_PARTS (``a,b,c``). CPU seconds per GiB are the client's (the mount and its
upload process, or the peer) and, apart, the server's over the same run: on a saturated
machine the ratio of their sums bounds the ratio of throughputs.
"""

from __future__ import annotations

import importlib.util
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from bench.read import _cpu_of, _dd, _upload, cold_read
from bench.write import _bare_upload, _flow_a
from ebsfs.core.blocks import BLOCK_SIZE
from tests.mounting import MountProc
from tests.serverproc import LocalServer

MIB = 1 << 20
SIZE_MIB = int(os.environ.get("BENCH_LAT_MIB", "512"))
ROUNDS = int(os.environ.get("BENCH_LAT_ROUNDS", "3"))
RATES = [int(r) for r in os.environ.get("BENCH_LAT_RATES", "300").split(",")]
PARTS = set(os.environ.get("BENCH_LAT_PARTS", "a,b,c").split(","))
SETTINGS = [
    () if s.strip() == "default" else tuple(s.split())
    for s in os.environ.get(
        "BENCH_LAT_SETTINGS", "default;--read-ahead 8MiB"
    ).split(";")
]
UPLOAD_THREADS = 64  # coldsnap's worker count
BLOCKS = SIZE_MIB * MIB // BLOCK_SIZE

#: (case, setting label) -> [(value, load average when it ran)]
Results = dict[tuple[str, str], list[tuple[float, float]]]


def _label(flags: tuple[str, ...]) -> str:
    return " ".join(flags) or "defaults"


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _dsnap(server: LocalServer, sid: str, out: Path) -> tuple[float, float]:
    """(seconds, CPU seconds) of ``dsnap get`` writing the snapshot to a local file."""
    out.mkdir(exist_ok=True)
    cpu = _children_cpu()
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "dsnap", "get", "--output", str(out), sid],
        env=server.env(), capture_output=True, text=True, timeout=1800,
    )
    seconds = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"dsnap failed: {done.stderr[-2000:]}")
    for f in out.iterdir():
        f.unlink()
    return seconds, _children_cpu() - cpu


def _calls(log: str, operation: str) -> tuple[int, int, int]:
    """(answered, throttled, other errors) of ``operation`` in a debug log of the server."""
    statuses = re.findall(rf" {operation} \S+ \S+ -> (\d+)", log)
    throttled = sum(1 for s in statuses if s == "400")
    errors = sum(1 for s in statuses if not s.startswith("2") and s != "400")
    return len(statuses), throttled, errors


def _pair(server: LocalServer, sids: list[str], root: Path, flags: tuple[str, ...]) -> list[float]:
    """Blocks a second of each of two mounts reading one snapshot each, at once."""
    seconds = [0.0, 0.0]
    mounts = [MountProc(server, root / f"pair{i}", "--log-level", "warning", *flags)
              for i in range(2)]
    for m in mounts:
        m.start()
    try:
        def one(i: int) -> None:
            seconds[i] = _dd(mounts[i].path / sids[i])

        threads = [threading.Thread(target=one, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for m in mounts:
            m.stop()
    return [BLOCKS / s for s in seconds]


class Bench:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.image = root / "image.bin"
        self.results: Results = defaultdict(list)
        self.server = LocalServer(root / "server")
        self.sids: list[str] = []
        self.runs = 0

    def note(self, case: str, label: str, value: float, load: float) -> None:
        self.results[(case, label)].append((value, load))

    def timed(self, case: str, label: str, run: Callable[[], tuple[float, float]]) -> None:
        """Run, note MiB/s and CPU seconds per GiB."""
        load = os.getloadavg()[0]
        assert self.server.proc is not None
        pid = self.server.proc.pid
        server_cpu = _cpu_of(pid)
        seconds, cpu = run()
        server_cpu = _cpu_of(pid) - server_cpu
        gib = SIZE_MIB / 1024
        self.note(case, label, SIZE_MIB / seconds, load)
        self.note(case + " cpu", label, cpu / gib, load)
        self.note(case + " server cpu", label, server_cpu / gib, load)
        print(f"  {case:<12} {label:<45} {SIZE_MIB / seconds:7.1f} MiB/s  CPU {cpu:5.1f} s"
              f"  server {server_cpu:5.1f} s  load {load:.1f}", flush=True)

    def where(self) -> Path:
        self.runs += 1
        return self.root / f"m{self.runs}"

    def read(self, case: str, flags: tuple[str, ...]) -> dict[str, int]:
        counters: dict[str, int] = {}

        def run() -> tuple[float, float]:
            seconds, cpu, got = cold_read(self.server, self.sids[0], self.where(), *flags)
            counters.update(got)
            return seconds, cpu

        self.timed(case, _label(flags), run)
        return counters

    def write(self, case: str, flags: tuple[str, ...]) -> None:
        def run() -> tuple[float, float]:
            seconds, cpu, _ = _flow_a(self.server, self.image, self.where(), *flags,
                                      defaults=True)
            return seconds, cpu

        self.timed(case, _label(flags), run)

    def limited(self, flags: tuple[str, ...], rate: int) -> None:
        """Part (c) under --rate-limit: blocks a second and throttled share, from the log."""
        label = _label(flags)
        for case, operation, go in (
            (f"read {rate}/s", "GetSnapshotBlock", self.read),
            (f"flow A {rate}/s", "PutSnapshotBlock", self.write),
        ):
            mark = len(self.server.log_text())
            load = os.getloadavg()[0]
            go(case, flags)
            answered, throttled, errors = _calls(self.server.log_text()[mark:], operation)
            print(f"    {operation}: {answered} answers, {throttled} throttled, {errors} errors",
                  flush=True)
            self.note(case + " throttled %", label, 100 * throttled / max(answered, 1), load)
            self.note(case + " errors", label, errors, load)

    def round(self, number: int) -> None:
        settings = SETTINGS if number % 2 == 0 else SETTINGS[::-1]
        srv = self.server
        print(f"round {number + 1}", flush=True)
        if "a" in PARTS or "b" in PARTS:
            srv.restart("--latency-ms", "100")
        if "a" in PARTS:
            self.timed("read 100ms", "dsnap (50 threads)",
                       lambda: _dsnap(srv, self.sids[0], self.root / "dsnap"))
        if "a" in PARTS or "b" in PARTS:
            for flags in settings:
                self.read("read 100ms", flags)
        if "a" in PARTS:
            self.timed("flowA 100ms", f"boto3 uploader ({UPLOAD_THREADS} threads)",
                       lambda: _bare_upload(srv, self.image, UPLOAD_THREADS))
        if "a" in PARTS or "b" in PARTS:
            for flags in settings:
                self.write("flowA 100ms", flags)
        if "b" in PARTS:
            srv.restart("--latency-ms", "10")
            for flags in settings:
                self.read("read 10ms", flags)
                self.write("flowA 10ms", flags)
        for rate in RATES if "c" in PARTS else []:
            srv.restart("--rate-limit", str(rate), "--latency-ms", "100", "--log-level", "debug")
            for flags in settings:
                self.limited(flags, rate)
            srv.restart("--account-rate-limit", str(rate), "--latency-ms", "100")
            for flags in settings:
                load = os.getloadavg()[0]
                rates = _pair(srv, self.sids, self.root / f"p{number}", flags)
                self.note(f"pair {rate}/s share", _label(flags), min(rates) / max(rates), load)
                self.note(f"pair {rate}/s total", _label(flags), sum(rates), load)
                print(f"  pair {rate}/s {_label(flags):<45} {rates[0]:.0f} + {rates[1]:.0f} "
                      f"blocks/s  load {load:.1f}", flush=True)

    def setup(self) -> None:
        with open(self.image, "wb") as f:
            for _ in range(SIZE_MIB):
                f.write(os.urandom(MIB))
        self.server.start()
        self.sids = [_upload(self.server, self.image) for _ in range(2)]


def _median(values: list[tuple[float, float]]) -> tuple[float, str]:
    loads = [load for _, load in values]
    return statistics.median(v for v, _ in values), f"{min(loads):.1f}–{max(loads):.1f}"


def report(results: Results) -> None:
    """The tables: medians, ratios against their targets."""
    def med(case: str, label: str) -> float:
        return _median(results[(case, label)])[0] if results.get((case, label)) else 0.0

    def ratio(a: tuple[str, str], b: tuple[str, str]) -> float | None:
        """med(a) / med(b), None unless both were measured."""
        return med(*a) / med(*b) if results.get(a) and results.get(b) else None

    labels = [_label(flags) for flags in SETTINGS]
    print(f"\nmedians of {ROUNDS} rounds, {SIZE_MIB} MiB; load = 1-min load average seen")
    print("| case | run | median | client CPU s/GiB | server CPU s/GiB | load |")
    print("| --- | --- | ---: | ---: | ---: | --- |")
    for (case, label), values in results.items():
        if case.endswith(" cpu"):
            continue
        value, loads = _median(values)
        if (case + " cpu", label) in results:
            cpu, server = med(case + " cpu", label), med(case + " server cpu", label)
            print(f"| {case} | {label} | {value:.1f} MiB/s | {cpu:.2f} | {server:.2f} | {loads} |")
        else:
            print(f"| {case} | {label} | {value:.2f} | | | {loads} |")
    print("\n| target | setting | ratio | target | met |")
    print("| --- | --- | ---: | ---: | --- |")

    def row(what: str, label: str, ratio: float | None, target: float, above: bool = True
            ) -> None:
        if ratio is None:
            return
        met = ratio >= target if above else ratio <= target
        sign = ">=" if above else "<="
        print(f"| {what} | {label} | {ratio:.2f} | {sign} {target} | {'yes' if met else 'NO'} |")

    dsnap = ("read 100ms", "dsnap (50 threads)")
    boto = ("flowA 100ms", f"boto3 uploader ({UPLOAD_THREADS} threads)")
    for label in labels:
        row("(a) cold read / dsnap, 100 ms", label, ratio(("read 100ms", label), dsnap), 1.5)
        row("(a) flow A / boto3 64 threads, 100 ms", label,
            ratio(("flowA 100ms", label), boto), 1.2)
        row("(b) read 100 ms / 10 ms", label,
            ratio(("read 100ms", label), ("read 10ms", label)), 0.85)
        row("(b) flow A 100 ms / 10 ms", label,
            ratio(("flowA 100ms", label), ("flowA 10ms", label)), 0.85)
        for rate in RATES if "c" in PARTS else []:
            for case in (f"read {rate}/s", f"flow A {rate}/s"):
                blocks = med(case, label) * MIB / BLOCK_SIZE
                row(f"(c) {case}: blocks/s / {rate}", label, blocks / rate, 0.9)
                row(f"(c) {case}: % throttled", label, med(case + " throttled %", label), 5,
                    above=False)
                row(f"(c) {case}: errors", label, med(case + " errors", label), 0, above=False)
            row(f"(c) two mounts, --account-rate-limit {rate}: slower / faster", label,
                med(f"pair {rate}/s share", label), 0.8)
            print(f"|   (two mounts together: {med(f'pair {rate}/s total', label):.0f} blocks/s)"
                  f" | {label} | | | |")
    print(f"load average now {os.getloadavg()[0]:.1f}", flush=True)


def main() -> None:
    if importlib.util.find_spec("dsnap") is None or importlib.util.find_spec("typer") is None:
        print("bench.latency needs dsnap, the peer of the read: .venv/bin/pip install -e "
              "'.[bench]' (make bench does)", flush=True)
        return
    with tempfile.TemporaryDirectory(prefix="ebsfs-bench-latency-") as tmp:
        bench = Bench(Path(tmp))
        print(f"{SIZE_MIB} MiB, {ROUNDS} rounds, mount settings: "
              + "; ".join(_label(f) for f in SETTINGS), flush=True)
        try:
            bench.setup()
            for number in range(ROUNDS):
                bench.round(number)
        finally:
            bench.server.stop()
            report(bench.results)
