"""Writing new snapshots through a mount, against a baseline measured in the same run.

1. Flow A: a 1 GiB image of random data, ``ebsfs server --latency-ms 10``. Baseline: a bare
   boto3 uploader (StartSnapshot, PutSnapshotBlock from a thread pool of the mount's
   ``--max-concurrency``, each block's SHA256 computed, CompleteSnapshot, wait for
   ``completed``). Then through a mount: ``truncate -s 1G``, ``dd bs=1M conv=notrunc,fsync``,
   ``ebsfs complete``. Ratio: mount throughput / bare throughput (target at least 0.8).
   For reference, the same through a mount with ``--no-upload-process`` (uploads from the
   mount's own threads, under the GIL of the trio thread that answers ``dd``).
2. Peak RSS (VmHWM) of the mount daemon during flow A, plus that of its upload process (a
   child: their sum bounds the peak of the two together), against ``--cache-size`` + the dirty
   limit + 100 MiB. The CPU reported for the mount is also the two together.
3. Flow C: ``truncate -s 2G``, ``mkfs.ext4``, loop mount, ``cp -a`` of 2,000 small files and one
   200 MiB file, ``umount``, seal. PutSnapshotBlock requests (the mount's counters) per distinct
   block of the completed snapshot (target at most 1.3).

Environment: BENCH_WRITE_MIB (flow A image, default 1024), BENCH_WRITE_LATENCY_MS (10),
BENCH_WRITE_CONCURRENCY (32), BENCH_WRITE_CACHE (256MiB), BENCH_WRITE_DIRTY (128MiB),
BENCH_WRITE_BIG_MIB (flow C big file, 200), BENCH_WRITE_FILES (2000).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ebsfs.core import checksum
from ebsfs.core.blocks import BLOCK_SIZE
from ebsfs.core.sizes import format_size, parse_size
from tests.mounting import MountProc, ebsfs
from tests.serverproc import LocalServer, complete, list_blocks, put_block, wait_state

MIB = 1 << 20
IMAGE_MIB = int(os.environ.get("BENCH_WRITE_MIB", "1024"))
LATENCY_MS = os.environ.get("BENCH_WRITE_LATENCY_MS", "10")
CONCURRENCY = int(os.environ.get("BENCH_WRITE_CONCURRENCY", "32"))
CACHE = os.environ.get("BENCH_WRITE_CACHE", "256MiB")
DIRTY = os.environ.get("BENCH_WRITE_DIRTY", "128MiB")
BIG_MIB = int(os.environ.get("BENCH_WRITE_BIG_MIB", "200"))
FILES = int(os.environ.get("BENCH_WRITE_FILES", "2000"))


def _cpu_of(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _bare_upload(
    server: LocalServer, image: Path, threads: int = CONCURRENCY
) -> tuple[float, float]:
    """Seconds and CPU seconds for a thread-pool boto3 upload of ``image``, until
    ``completed``."""
    ebs = server.ebs(max_attempts=5, max_pool_connections=threads)
    size = image.stat().st_size
    gib = -(-size // (1 << 30))
    blocks = -(-size // BLOCK_SIZE)
    digests: dict[int, bytes] = {}
    lock = threading.Lock()
    start = time.perf_counter()
    cpu = time.process_time()
    sid = str(ebs.start_snapshot(VolumeSize=gib)["SnapshotId"])

    def one(index: int) -> None:
        with open(image, "rb") as f:
            f.seek(index * BLOCK_SIZE)
            data = f.read(BLOCK_SIZE).ljust(BLOCK_SIZE, b"\0")
        put_block(ebs, sid, index, data)
        with lock:
            digests[index] = checksum.digest(data)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(blocks)))
    complete(ebs, sid, digests)
    wait_state(server.ec2(), sid, timeout=600)
    return time.perf_counter() - start, time.process_time() - cpu


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _mount(server: LocalServer, where: Path, *flags: str, defaults: bool = False) -> MountProc:
    """A started mount with ``flags``, on this bench's cache, dirty limit and concurrency
    unless ``defaults`` (then the mount's own defaults, and ``flags`` only)."""
    if defaults:
        return MountProc(server, where, "--log-level", "warning", *flags).start()
    env = {**server.env(), "EBSFS_DIRTY_LIMIT": DIRTY}
    return MountProc(
        server, where,
        "--cache-size", CACHE,
        "--max-concurrency", str(CONCURRENCY),
        "--log-level", "warning",
        *flags,
        env=env,
    ).start()


def _run(*cmd: str | Path) -> None:
    subprocess.run([str(c) for c in cmd], check=True, capture_output=True)


def _seal(path: Path, server: LocalServer) -> str:
    done = ebsfs("complete", str(path), env=server.env(), timeout=1800)
    if done.returncode:
        raise RuntimeError(f"ebsfs complete: {done.stderr}")
    return done.stdout.strip()


def _write_stats(mountpoint: Path) -> dict[str, int]:
    raw = os.getxattr(mountpoint, "user.ebsfs.stats")
    return dict(json.loads(raw).get("write", {}))


def _flow_a(
    server: LocalServer, image: Path, where: Path, *flags: str, defaults: bool = False
) -> tuple[float, float, int]:
    """(seconds, CPU seconds of the mount and its upload process, their peak RSS) of
    truncate + dd + ``ebsfs complete`` of ``image`` (see ``_mount`` for ``defaults``)."""
    m = _mount(server, where, *flags, defaults=defaults)
    try:
        assert m.proc is not None
        target = m.path / "new" / "bench-a"
        start = time.perf_counter()
        cpu = _cpu_of(m.proc.pid)
        gib = -(-image.stat().st_size // (1 << 30))
        _run("truncate", "-s", f"{gib}G", target)
        _run("dd", f"if={image}", f"of={target}", "bs=1M", "conv=notrunc,fsync")
        _seal(target, server)
        seconds = time.perf_counter() - start
        # The mount and its upload process (a child, started at the first upload) together.
        helpers = _children(m.proc.pid)
        cpu = _cpu_of(m.proc.pid) - cpu + sum(_cpu_of(pid) for pid in helpers)
        rss = _peak_rss(m.proc.pid) + sum(_peak_rss(pid) for pid in helpers)
    finally:
        m.stop()
    return seconds, cpu, rss


def _children(pid: int) -> list[int]:
    """Live child processes of ``pid`` (the mount's upload process)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            out += [int(p) for p in (task / "children").read_text().split()]
    return out


def _flow_c(server: LocalServer, root: Path) -> tuple[float, int, int]:
    files = root / "files"
    (files / "small").mkdir(parents=True)
    for i in range(FILES):
        (files / "small" / f"f{i:05d}").write_bytes(os.urandom(512 + (i * 97) % 7000))
    with open(files / "big.bin", "wb") as f:
        for _ in range(BIG_MIB):
            f.write(os.urandom(MIB))
    m = _mount(server, root / "mc")
    loop = root / "loop"
    loop.mkdir()
    try:
        target = m.path / "new" / "bench-c"
        start = time.perf_counter()
        _run("truncate", "-s", "2G", target)
        _run("mkfs.ext4", "-q", target)
        _run("mount", "-o", "loop", target, loop)
        try:
            _run("cp", "-a", f"{files}/.", loop)
        finally:
            _run("umount", loop)
        sid = _seal(target, server)
        seconds = time.perf_counter() - start
        puts = _write_stats(m.path).get("puts", 0)
    finally:
        m.stop()
    tokens, _ = list_blocks(server.ebs(max_attempts=5), sid)
    return seconds, puts, len(tokens)


def main() -> None:
    size = IMAGE_MIB * MIB
    with tempfile.TemporaryDirectory(prefix="ebsfs-bench-write-") as tmp:
        root = Path(tmp)
        image = root / "image.bin"
        with open(image, "wb") as f:
            for _ in range(IMAGE_MIB):
                f.write(os.urandom(MIB))
        server = LocalServer(root / "server", "--latency-ms", LATENCY_MS)
        server.start()
        try:
            bare, bare_cpu = _bare_upload(server, image)
            mounted, mount_cpu, rss = _flow_a(server, image, root / "ma")
            threads, threads_cpu, _ = _flow_a(server, image, root / "mt", "--no-upload-process")
            c_seconds, puts, distinct = _flow_c(server, root)
        finally:
            server.stop()
    budget = parse_size(CACHE) + parse_size(DIRTY) + 100 * MIB
    rate_bare = size / MIB / bare
    rate_mount = size / MIB / mounted
    print(f"flow A: {format_size(size)} random, server --latency-ms {LATENCY_MS}, "
          f"concurrency {CONCURRENCY}")
    print("| run | seconds | MiB/s | ratio | client CPU s |")
    print("| --- | ---: | ---: | ---: | ---: |")
    print(f"| bare boto3 uploader | {bare:.1f} | {rate_bare:.1f} | 1.00 | {bare_cpu:.1f} |")
    print(f"| mount: truncate + dd + ebsfs complete | {mounted:.1f} | {rate_mount:.1f} | "
          f"{rate_mount / rate_bare:.2f} (target >= 0.8) | {mount_cpu:.1f} (daemon + upload "
          f"process) |")
    print(f"| mount, `--no-upload-process` (uploads in the mount's threads) | {threads:.1f} | "
          f"{size / MIB / threads:.1f} | {size / MIB / threads / rate_bare:.2f} | "
          f"{threads_cpu:.1f} (daemon) |")
    print(f"peak RSS of the mount and its upload process during flow A: {format_size(rss)}; "
          f"budget "
          f"--cache-size {CACHE} + dirty {DIRTY} + 100 MiB = {format_size(budget)}: "
          f"{'within' if rss <= budget else 'OVER'}")
    print(f"flow C: {FILES} small files + {BIG_MIB} MiB file, {c_seconds:.1f} s; "
          f"PutSnapshotBlock {puts} for {distinct} distinct blocks: "
          f"{puts / max(distinct, 1):.2f} per block (target <= 1.3)")
