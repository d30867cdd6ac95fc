"""Reading through a mount, against baselines measured in the same run.

1. A 1 GiB snapshot, every block written (random data), on ``ebsfs server --latency-ms 10``.
2. Baseline A: a bare boto3 downloader — ListSnapshotBlocks, then GetSnapshotBlock in a thread
   pool of the mount's ``--max-concurrency``, each block SHA256-verified and discarded.
3. Cold sequential read through a fresh mount (``dd if=SNAP of=/dev/null bs=1M``), with the
   default read-ahead and again with ``--read-ahead 0``.
4. Warm read: the same ``dd`` again on the mount that just read it, against baseline B, ``dd``
   of the same image from a local file (page-cached, as the mount's pages are), and B', the
   local file read after its pages were dropped (from the disk). Also with a
   ``--cache-size`` that holds the whole image, and with ``--disk-cache 2GiB`` (the blocks the
   kernel dropped come back from a local file instead of the server). Also the number of
   blocks the warm pass fetched again (pages the kernel dropped after the cold pass). For
   reference, the image read twice through ``bench/_memfs.py``, a pyfuse3 filesystem that
   serves it from memory: its second pass is the kernel's FUSE page cache alone, the bound
   on any FUSE filesystem's warm read here.
5. Peak RSS (VmHWM) of each mount daemon, against ``--cache-size`` + 100 MiB.
6. CPU seconds of the cold read: the mount daemon's (``/proc/PID/stat``) against the bare
   downloader's (``getrusage`` of this process); stable under load, unlike wall time. Also
   the daemon's minor page faults over the cold read (fresh buffer pages cost CPU).

Prints a table of throughputs and the ratios the issue asks for. Environment:
BENCH_READ_GIB (default 1), BENCH_READ_LATENCY_MS (default 10), BENCH_READ_CONCURRENCY
(default 32), BENCH_READ_CACHE (default 256MiB), BENCH_READ_DISK_CACHE (default 2GiB).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ebsfs.core import checksum
from ebsfs.core.blocks import BLOCK_SIZE
from ebsfs.core.sizes import format_size, parse_size
from tests.mounting import MountProc, drop_page_cache
from tests.serverproc import LocalServer, complete, put_block, wait_state

GIB = int(os.environ.get("BENCH_READ_GIB", "1"))
LATENCY_MS = os.environ.get("BENCH_READ_LATENCY_MS", "10")
CONCURRENCY = int(os.environ.get("BENCH_READ_CONCURRENCY", "32"))
CACHE = os.environ.get("BENCH_READ_CACHE", "256MiB")
READ_AHEAD = os.environ.get("BENCH_READ_AHEAD", "")  # empty: the mount's default
DISK_CACHE = os.environ.get("BENCH_READ_DISK_CACHE", "2GiB")
MIB = 1 << 20


def _upload(server: LocalServer, image: Path) -> str:
    size = image.stat().st_size
    ebs = server.ebs(max_attempts=5, max_pool_connections=16)
    sid = str(ebs.start_snapshot(VolumeSize=-(-size // (1 << 30)))["SnapshotId"])
    digests: dict[int, bytes] = {}
    lock = threading.Lock()

    def one(index: int) -> None:
        with open(image, "rb") as f:
            f.seek(index * BLOCK_SIZE)
            data = f.read(BLOCK_SIZE)
        put_block(ebs, sid, index, data)
        with lock:
            digests[index] = checksum.digest(data)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(one, range(-(-size // BLOCK_SIZE))))
    complete(ebs, sid, digests)
    wait_state(server.ec2(), sid)
    return sid


def _own_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _stat_fields(pid: int) -> list[str]:
    # Fields after the command name: state is [0], minflt [7], utime [11], stime [12].
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _cpu_of(pid: int) -> float:
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _faults_of(pid: int) -> int:
    return int(_stat_fields(pid)[7])


def _bare_download(server: LocalServer, sid: str) -> tuple[float, float]:
    """(seconds, CPU seconds) of a thread-pool boto3 download, verified and discarded."""
    ebs = server.ebs(max_attempts=5, max_pool_connections=CONCURRENCY)
    cpu = _own_cpu()
    start = time.perf_counter()
    tokens: list[tuple[int, str]] = []
    kwargs = {"SnapshotId": sid, "MaxResults": 10000}
    while True:
        page = ebs.list_snapshot_blocks(**kwargs)
        tokens += [(b["BlockIndex"], b["BlockToken"]) for b in page["Blocks"]]
        if not page.get("NextToken"):
            break
        kwargs["NextToken"] = page["NextToken"]

    def one(item: tuple[int, str]) -> None:
        r = ebs.get_snapshot_block(SnapshotId=sid, BlockIndex=item[0], BlockToken=item[1])
        data = r["BlockData"].read()
        if checksum.block_checksum(data) != r["Checksum"]:
            raise RuntimeError(f"block {item[0]} failed its checksum")

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        list(pool.map(one, tokens))
    return time.perf_counter() - start, _own_cpu() - cpu


def _dd(path: Path) -> float:
    start = time.perf_counter()
    subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=1M"], check=True, capture_output=True)
    return time.perf_counter() - start


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _mount_read(
    server: LocalServer, sid: str, where: Path, cache: str, *flags: str
) -> tuple[float, float, int, float, int, dict[str, int], int]:
    """(cold seconds, warm seconds, peak RSS, daemon CPU seconds and page faults of the cold
    read, the mount's read counters after the warm read, blocks the warm read fetched from
    the server: those of pages the kernel had dropped and the memory cache no longer held)."""
    extra = ["--read-ahead", READ_AHEAD] if READ_AHEAD and "--read-ahead" not in flags else []
    m = MountProc(
        server,
        where,
        "--cache-size",
        cache,
        "--max-concurrency",
        str(CONCURRENCY),
        "--log-level",
        "warning",
        *extra,
        *flags,
    )
    with m:
        assert m.proc is not None
        snap = m.path / sid
        cpu, faults = _cpu_of(m.proc.pid), _faults_of(m.proc.pid)
        cold = _dd(snap)
        cpu, faults = _cpu_of(m.proc.pid) - cpu, _faults_of(m.proc.pid) - faults
        fetched = _counters(m.path).get("GetSnapshotBlock.ok", 0)
        warm = _dd(snap)
        rss = _peak_rss(m.proc.pid)
        counters = _counters(m.path)
    refetched = counters.get("GetSnapshotBlock.ok", 0) - fetched
    return cold, warm, rss, cpu, faults, counters, refetched


def cold_read(
    server: LocalServer, sid: str, where: Path, *flags: str
) -> tuple[float, float, dict[str, int]]:
    """(seconds, daemon CPU seconds, read counters) of one cold ``dd`` of ``sid`` through a
    fresh mount with ``flags`` only (the mount's defaults otherwise)."""
    with MountProc(server, where, "--log-level", "warning", *flags) as m:
        assert m.proc is not None
        cpu = _cpu_of(m.proc.pid)
        seconds = _dd(m.path / sid)
        cpu = _cpu_of(m.proc.pid) - cpu
        counters = _counters(m.path)
    return seconds, cpu, counters


def _counters(mountpoint: Path) -> dict[str, int]:
    read: dict[str, int] = json.loads(os.getxattr(mountpoint, "user.ebsfs.stats"))["read"]
    return read


def _memfs_read(image: Path, where: Path) -> tuple[float, float]:
    """(first, second pass seconds) of ``image`` through bench/_memfs.py: the kernel's FUSE
    page cache with no daemon work behind it."""
    where.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench._memfs", str(image), str(where)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("bench._memfs did not start")
        first = _dd(where / "image")
        second = _dd(where / "image")
    finally:
        subprocess.run(["umount", str(where)], check=False)
        proc.wait(timeout=30)
    return first, second


def main() -> None:
    size = GIB << 30
    with tempfile.TemporaryDirectory(prefix="ebsfs-bench-read-") as tmp:
        root = Path(tmp)
        image = root / "image.bin"
        with open(image, "wb") as f:
            for _ in range(size // (64 * MIB)):
                f.write(os.urandom(64 * MIB))
        server = LocalServer(root / "server")
        server.start()
        try:
            sid = _upload(server, image)
            server.restart("--latency-ms", LATENCY_MS)
            bare, bare_cpu = _bare_download(server, sid)
            cold, warm, rss, cold_cpu, cold_faults, _, refetched = _mount_read(
                server, sid, root / "m1", CACHE
            )
            cold_off, _, rss_off, _, _, _, _ = _mount_read(
                server, sid, root / "m2", CACHE, "--read-ahead", "0"
            )
            big_cache = f"{GIB * 1024 + 256}MiB"
            _, warm_big, rss_big, _, _, _, refetched_big = _mount_read(
                server, sid, root / "m3", big_cache
            )
            cold_disk, warm_disk, rss_disk, cold_disk_cpu, _, disk, _ = _mount_read(
                server, sid, root / "m4", CACHE, "--disk-cache", DISK_CACHE,
                "--cache-dir", str(root / "disk-cache"),
            )
        finally:
            server.stop()
        memfs_first, memfs_second = _memfs_read(image, root / "m5")
        # Local file baselines: page-cached like the mount's second pass, and cold (pages
        # dropped first, so read from the disk).
        _dd(image)
        local = _dd(image)
        drop_page_cache(image)
        local_cold = _dd(image)
        drop_page_cache(image)
    mbps = lambda seconds: size / MIB / seconds  # noqa: E731
    cache_bytes = parse_size(CACHE)
    rows = [
        ("bare boto3 downloader (baseline A)", bare),
        ("mount, cold, read-ahead default", cold),
        ("mount, cold, read-ahead 0", cold_off),
        ("local file, page-cached (baseline B)", local),
        ("local file, from disk (baseline B')", local_cold),
    ]
    rows.insert(3, ("mount, warm (second pass)", warm))
    rows.insert(4, (f"mount, warm, --cache-size {big_cache}", warm_big))
    rows.insert(5, (f"mount, cold, --disk-cache {DISK_CACHE}", cold_disk))
    rows.insert(6, (f"mount, warm, --disk-cache {DISK_CACHE}", warm_disk))
    rows.insert(7, ("in-memory pyfuse3 file, first pass", memfs_first))
    rows.insert(8, ("in-memory pyfuse3 file, second pass", memfs_second))
    print(
        f"1 snapshot of {GIB} GiB, server --latency-ms {LATENCY_MS}, "
        f"--max-concurrency {CONCURRENCY}, --cache-size {CACHE}, "
        f"--read-ahead {READ_AHEAD or 'default'}"
    )
    for name, seconds in rows:
        print(f"  {name:<40} {seconds:7.2f} s  {mbps(seconds):9.1f} MiB/s")
    print(f"  cold / bare boto3            {bare / cold:5.2f}   (target >= 0.8)")
    print(
        f"  CPU s per GiB, cold: bare {bare_cpu / GIB:.2f}, daemon {cold_cpu / GIB:.2f}"
        f" ({cold_cpu / bare_cpu:.2f} times)"
    )
    print(f"  daemon minor page faults per GiB, cold: {cold_faults // GIB}")
    print(f"  cold, read-ahead 0 / bare    {bare / cold_off:5.2f}")
    print(f"  warm / local file            {local / warm:5.2f}   (target >= 0.5)")
    print(f"  warm, big cache / local file {local / warm_big:5.2f}")
    print(f"  in-memory pyfuse3, 2nd pass / local file {local / memfs_second:5.2f}"
          "   (the kernel's FUSE page cache alone)")
    print(f"  blocks fetched again by the warm pass: {refetched} (big cache: {refetched_big})")
    print(f"  warm, disk cache / local file {local / warm_disk:5.2f}   (target >= 0.5)")
    print(f"  cold, disk cache / bare      {bare / cold_disk:5.2f}")
    print(
        f"  CPU s per GiB, cold, disk cache: daemon {cold_disk_cpu / GIB:.2f}"
        f" ({cold_disk_cpu / bare_cpu:.2f} times bare)"
    )
    print(
        "  disk cache: "
        + ", ".join(f"{k.removeprefix('disk_cache_')} {v}" for k, v in sorted(disk.items())
                    if k.startswith("disk_cache_"))
        + f"; GetSnapshotBlock.ok {disk.get('GetSnapshotBlock.ok', 0)}"
    )
    print(f"  warm / local from disk       {local_cold / warm:5.2f}")
    print(f"  warm, big cache / from disk  {local_cold / warm_big:5.2f}")
    limit = cache_bytes + 100 * MIB
    print(f"  peak RSS, read-ahead default {format_size(rss)}  (limit {format_size(limit)})")
    print(f"  peak RSS, read-ahead 0       {format_size(rss_off)}")
    big_limit = format_size(parse_size(big_cache) + 100 * MIB)
    print(f"  peak RSS, big cache          {format_size(rss_big)}  (limit {big_limit})")
    print(f"  peak RSS, disk cache         {format_size(rss_disk)}  (limit {format_size(limit)})")
    print(f"  load average {os.getloadavg()[0]:.1f}")
    sys.stdout.flush()
