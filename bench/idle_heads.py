"""The local server under 1000 connections that send only a request head (issue 12, item
10): its resident memory, and the latency of a normal request meanwhile.

``python -m bench idle_heads``. Two kinds of head, alternating: an unsigned EC2 POST
announcing a 2 MiB body, and a PutSnapshotBlock head signed by an unknown key announcing a
block. Neither body is ever sent. Latency is DescribeSnapshots over one keep-alive boto3
connection, before and while the connections are open.
"""

import resource
import socket
import statistics
import tempfile
import time
from pathlib import Path

from ebsfs.core.blocks import BLOCK_SIZE
from tests.serverproc import LocalServer

CONNECTIONS = 1000
SAMPLES = 50


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _latency_ms(ec2: object) -> float:
    times = []
    for _ in range(SAMPLES):
        started = time.perf_counter()
        ec2.describe_snapshots(OwnerIds=["self"])  # type: ignore[attr-defined]
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(soft, 4096), hard), hard))
    with tempfile.TemporaryDirectory() as tmp, LocalServer(Path(tmp) / "data") as server:
        assert server.proc is not None
        pid = server.proc.pid
        ec2 = server.client("ec2", max_attempts=5)
        idle_ms = _latency_ms(ec2)
        before = _rss(pid)
        heads = [
            f"POST / HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
            f"Content-Length: {2 << 20}\r\n\r\n".encode(),
            (f"PUT /snapshots/snap-0123456789abcdef0/blocks/0 HTTP/1.1\r\n"
             f"Host: 127.0.0.1:{server.port}\r\nContent-Length: {BLOCK_SIZE}\r\n"
             "Authorization: AWS4-HMAC-SHA256 Credential=AKIAUNKNOWN/20260101/us-east-1/ebs/"
             "aws4_request, SignedHeaders=host, Signature=" + "0" * 64 + "\r\n\r\n").encode(),
        ]
        socks = []
        peak = before
        started = time.perf_counter()
        try:
            for n in range(CONNECTIONS):
                s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
                socks.append(s)
                s.sendall(heads[n % 2])
                if n % 50 == 49:
                    peak = max(peak, _rss(pid))
            opened = time.perf_counter() - started
            busy_ms = _latency_ms(ec2)
            peak = max(peak, _rss(pid))
        finally:
            for s in socks:
                s.close()
        print(f"{CONNECTIONS} head-only connections opened in {opened:.2f} s")
        print(f"server RSS: {before / 2**20:.0f} MiB before, peak {peak / 2**20:.0f} MiB "
              f"(+{(peak - before) / 2**20:.1f} MiB)")
        print(f"DescribeSnapshots median: {idle_ms:.1f} ms alone, {busy_ms:.1f} ms with the "
              f"connections open")
