"""The local server's cost per request, next to the boto3 client's, for Put/GetSnapshotBlock.

Starts ``ebsfs server`` as a subprocess, drives it with 1, 8 and 32 threads (one boto3 client
each) and reads, for the same interval, the CPU seconds of the server process (from /proc) and
of this client process (getrusage). The target: the server spends at most a third of the
client's CPU per request, so that benchmarks of ebsfs measure ebsfs, not the server.

Environment: BENCH_SERVER_REQUESTS (per level and operation, default 600),
BENCH_SERVER_OPS (``put``, ``get`` or ``put,get``, the default).
"""

import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import botocore.config

from ebsfs.core import checksum
from ebsfs.core.blocks import BLOCK_SIZE
from tests.serverproc import LocalServer, complete, list_blocks, put_block, wait_state

LEVELS = (1, 8, 32)
SOURCE_BLOCKS = 256


def _server_cpu(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of the server process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / ticks, int(fields[12]) / ticks


def _client_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _run(threads: int, total: int, make_worker: Callable[[int], Callable[[int], None]],
         server_pid: int) -> tuple[float, float, float, float]:
    """(wall seconds, server CPU s, of which system, client CPU s) for ``total`` requests
    over ``threads``."""
    workers = [make_worker(t) for t in range(threads)]
    per = [total // threads + (1 if t < total % threads else 0) for t in range(threads)]
    barrier = threading.Barrier(threads + 1)
    errors: list[BaseException] = []

    def body(t: int) -> None:
        barrier.wait()
        try:
            for n in range(per[t]):
                workers[t](n)
        except BaseException as exc:
            errors.append(exc)

    pool = [threading.Thread(target=body, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    s0, c0, w0 = _server_cpu(server_pid), _client_cpu(), time.perf_counter()
    barrier.wait()
    for th in pool:
        th.join()
    w1, c1, s1 = time.perf_counter(), _client_cpu(), _server_cpu(server_pid)
    if errors:
        raise errors[0]
    return w1 - w0, sum(s1) - sum(s0), s1[1] - s0[1], c1 - c0


def main() -> None:
    total = int(os.environ.get("BENCH_SERVER_REQUESTS", "600"))
    with tempfile.TemporaryDirectory(prefix="ebsfs-bench-") as tmp:
        srv = LocalServer(Path(tmp) / "data")
        srv.start()
        try:
            assert srv.proc is not None
            pid = srv.proc.pid
            rows = _measure(srv, pid, total)
        finally:
            srv.stop()
        if "put" in os.environ.get("BENCH_SERVER_OPS", "put,get").split(","):
            rows += _measure_floor(Path(tmp) / "floor.data", total, contract=False)
            rows += _measure_floor(Path(tmp) / "floor.data", total, contract=True)
    print()
    print("| operation | clients | req/s | MiB/s | server CPU ms/req | of which kernel "
          "| client CPU ms/req | server/client |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for op, threads, wall, scpu, ssys, ccpu in rows:
        rate = total / wall
        print(f"| {op} | {threads} | {rate:.0f} | {rate * BLOCK_SIZE / 2**20:.0f} | "
              f"{scpu / total * 1000:.2f} | {ssys / total * 1000:.2f} | "
              f"{ccpu / total * 1000:.2f} | {scpu / ccpu:.2f} |")
    worst = max(scpu / ccpu for op, *_, scpu, _kernel, ccpu in rows if op not in FLOORS)
    print()
    for name, what in FLOORS.items():
        floor = [scpu / ccpu for op, *_, scpu, _kernel, ccpu in rows if op == name]
        if floor:
            print(f"{what}: server/client {' / '.join(f'{r:.2f}' for r in floor)} with "
                  f"{' / '.join(map(str, LEVELS))} clients")
    verdict = "meets" if worst <= 1 / 3 else "MISSES"
    print(f"\nworst server/client CPU ratio {worst:.2f}: {verdict} the target of 0.33")


FLOOR = "PutSnapshotBlock, floor"
FLOOR_CONTRACT = "PutSnapshotBlock, floor + SigV4 + sync"
FLOORS = {
    FLOOR: "floor (a minimal Python server: no SigV4, validation, index or sync)",
    FLOOR_CONTRACT: "floor with SigV4 and a durable write (what SPEC.md requires of a put)",
}


def _put_worker(clients: list[Any], target: str, threads: int, base: bytes) -> Any:
    """A worker factory: thread ``t`` puts distinct blocks to ``target`` with its client."""

    def make(t: int) -> Callable[[int], None]:
        ebs = clients[t]

        def one(n: int) -> None:
            index = (n * threads + t) % (64 * 2048)
            # Every block distinct, as a real upload's are: no deduplication helps.
            block = os.urandom(16) + base[16:]
            ebs.put_snapshot_block(
                SnapshotId=target, BlockIndex=index, BlockData=block,
                DataLength=BLOCK_SIZE, Checksum=checksum.block_checksum(block),
                ChecksumAlgorithm="SHA256")

        return one

    return make


def _measure_floor(
    data_file: Path, total: int, contract: bool
) -> list[tuple[str, int, float, float, float, float]]:
    """The put load of ``_measure`` against bench/_floor_server.py."""
    flags = ["--contract"] if contract else []
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench._floor_server", *flags, str(data_file)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        config = botocore.config.Config(
            retries={"mode": "standard", "max_attempts": 3}, max_pool_connections=4,
            connect_timeout=5, read_timeout=30,
        )
        clients = [
            boto3.session.Session().client(
                "ebs", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                aws_access_key_id="floor", aws_secret_access_key="floor", config=config,
            )
            for _ in range(max(LEVELS))
        ]
        base = os.urandom(BLOCK_SIZE)
        rows = []
        for threads in LEVELS:
            make = _put_worker(clients, "snap-0123456789abcdef0", threads, base)
            name = FLOOR_CONTRACT if contract else FLOOR
            rows.append((name, threads, *_run(threads, total, make, proc.pid)))
            print(f"  {name}, {threads} clients done", flush=True)
        return rows
    finally:
        proc.kill()
        proc.wait()


def _measure(
    srv: LocalServer, pid: int, total: int
) -> list[tuple[str, int, float, float, float, float]]:
    rows = []
    ops = os.environ.get("BENCH_SERVER_OPS", "put,get").split(",")
    base = os.urandom(BLOCK_SIZE)
    clients = [srv.ebs(max_attempts=3, max_pool_connections=4) for _ in range(max(LEVELS))]
    ec2 = srv.ec2()

    # Source snapshot for the reads.
    seed = clients[0].start_snapshot(VolumeSize=1)["SnapshotId"]
    digests = {}
    for i in range(SOURCE_BLOCKS):
        block = i.to_bytes(8, "big") + base[8:]
        put_block(clients[0], seed, i, block)
        digests[i] = checksum.digest(block)
    complete(clients[0], seed, digests)
    wait_state(ec2, seed)
    tokens, _ = list_blocks(clients[0], seed)
    token_list = sorted(tokens.items())

    for threads in LEVELS:
        target = clients[0].start_snapshot(VolumeSize=64)["SnapshotId"]

        def get_worker(t: int, threads: int = threads) -> Any:
            ebs = clients[t]

            def one(n: int) -> None:
                index, token = token_list[(n * threads + t) % len(token_list)]
                resp = ebs.get_snapshot_block(SnapshotId=seed, BlockIndex=index, BlockToken=token)
                data = resp["BlockData"].read()
                if checksum.block_checksum(data) != resp["Checksum"]:
                    raise AssertionError("checksum mismatch")

            return one

        if "put" in ops:
            put_worker = _put_worker(clients, target, threads, base)
            rows.append(("PutSnapshotBlock", threads, *_run(threads, total, put_worker, pid)))
        if "get" in ops:
            rows.append(("GetSnapshotBlock", threads, *_run(threads, total, get_worker, pid)))
        print(f"  {threads} clients done", flush=True)
    return rows


if __name__ == "__main__":
    main()
