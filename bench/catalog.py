"""A large account: a mount over 20,000 completed snapshots.

1. ``ebsfs server`` holds BENCH_CATALOG_SNAPSHOTS (default 20,000) completed snapshots, each
   with a unique Name tag and no blocks (made with boto3 in 16 threads).
2. Baseline: a bare boto3 DescribeSnapshots paginator listing them all, in this process.
3. A fresh ebsfs mount: the time until it answers (one small page: the full listing goes on
   in the background), the time of that background listing (from the daemon's log line),
   then, once it is in, ``ls -l`` of the top level and of ``by-name/``, then again after a
   listing refresh (``--refresh`` seconds later), and the daemon's RSS (VmRSS and VmHWM).

Prints each figure with its target (mount answers within 5 s, each ``ls -l`` under 5 s,
RSS under 150 MiB) and the mount's time over the bare listing's.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.mounting import MountProc
from tests.serverproc import LocalServer, complete

COUNT = int(os.environ.get("BENCH_CATALOG_SNAPSHOTS", "20000"))
REFRESH = 20.0


def _populate(server: LocalServer) -> None:
    ebs = server.ebs(max_attempts=5, max_pool_connections=16)

    def one(i: int) -> None:
        sid = str(
            ebs.start_snapshot(VolumeSize=1, Tags=[{"Key": "Name", "Value": f"bench-{i:06d}"}])[
                "SnapshotId"
            ]
        )
        complete(ebs, sid, {})

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(one, range(COUNT)))


def _bare_listing(server: LocalServer) -> tuple[float, int]:
    ec2 = server.ec2()
    start = time.monotonic()
    total = 0
    for page in ec2.get_paginator("describe_snapshots").paginate(OwnerIds=["self"]):
        total += len(page["Snapshots"])
    return time.monotonic() - start, total


def _status(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _timed(*cmd: str) -> float:
    start = time.monotonic()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - start


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="ebsfs-bench-catalog-") as tmp:
        root = Path(tmp)
        server = LocalServer(root / "data")
        server.start()
        try:
            t0 = time.monotonic()
            _populate(server)
            print(f"{COUNT} snapshots made in {time.monotonic() - t0:.1f} s")
            bare, listed = _bare_listing(server)
            assert listed == COUNT, listed
            start = time.monotonic()
            with MountProc(server, root / "mnt", "--refresh", str(REFRESH)) as m:
                answered = time.monotonic() - start
                assert m.proc is not None
                pid = m.proc.pid
                rss_mounted = _status(pid, "VmRSS")
                deadline = time.monotonic() + 300
                while (found := re.search(r"listed \d+ snapshots in ([0-9.]+) s",
                                          m.log_text())) is None:
                    assert time.monotonic() < deadline, "no background listing"
                    time.sleep(0.2)
                listing = float(found.group(1))
                top = _timed("ls", "-l", str(m.path))
                by_name = _timed("ls", "-l", str(m.path / "by-name"))
                time.sleep(REFRESH + 2)  # a refresh has run
                by_name_after = _timed("ls", "-l", str(m.path / "by-name"))
                rss_after, peak = _status(pid, "VmRSS"), _status(pid, "VmHWM")
        finally:
            server.stop()
    mib = 1 << 20
    rows = [
        ("bare boto3 listing of all", f"{bare:.2f} s", ""),
        ("mount answers", f"{answered:.2f} s", "<= 5 s"),
        ("mount / bare listing", f"{answered / bare:.2f}", ""),
        ("background listing", f"{listing:.2f} s", ""),
        ("background listing / bare listing", f"{listing / bare:.2f}", ""),
        ("ls -l MOUNTPOINT", f"{top:.2f} s", "< 5 s"),
        ("ls -l by-name/", f"{by_name:.2f} s", "< 5 s"),
        ("ls -l by-name/ after a refresh", f"{by_name_after:.2f} s", "< 5 s"),
        ("RSS after mount", f"{rss_mounted / mib:.0f} MiB", "< 150 MiB"),
        ("RSS after a refresh / peak", f"{rss_after / mib:.0f} / {peak / mib:.0f} MiB",
         "< 150 MiB"),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value, target in rows:
        print(f"{name:<{width}}  {value:>14}  {target}")


if __name__ == "__main__":
    main()
