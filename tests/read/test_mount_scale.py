"""A 64 TiB sparse snapshot, and a listing of 2,000 snapshots, through a real mount."""

from __future__ import annotations

import os
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from ebsfs.core import checksum
from ebsfs.core.blocks import BLOCK_SIZE, BLOCKS_PER_GIB, MAX_VOLUME_GIB
from tests.read.fakes import block_of
from tests.serverproc import complete, put_block, wait_state

pytestmark = pytest.mark.timeout(240)
MIB = 1 << 20


def _peak_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_64tib_snapshot_reads_first_and_last_blocks(server, mount_factory) -> None:
    ebs, ec2 = server.ebs(), server.ec2()
    last = MAX_VOLUME_GIB * BLOCKS_PER_GIB - 1
    indexes = [0, 1, 123456789, last]
    sid = ebs.start_snapshot(VolumeSize=MAX_VOLUME_GIB, Tags=[{"Key": "Name", "Value": "huge"}])[
        "SnapshotId"
    ]
    for i in indexes:
        put_block(ebs, sid, i, block_of(i))
    complete(ebs, sid, {i: checksum.digest(block_of(i)) for i in indexes})
    assert wait_state(ec2, sid)["State"] == "completed"

    cache = 32 * MIB
    m = mount_factory(server, "--cache-size", str(cache))
    assert m.proc is not None
    snap = m.path / sid
    assert snap.stat().st_size == MAX_VOLUME_GIB << 30
    fd = os.open(snap, os.O_RDONLY)
    try:
        for i in indexes:
            assert os.pread(fd, BLOCK_SIZE, i * BLOCK_SIZE) == block_of(i)
        # holes anywhere read as zeros, including the block just before the last one
        assert os.pread(fd, 4096, (last - 1) * BLOCK_SIZE) == bytes(4096)
        assert os.pread(fd, 4096, 7 * (1 << 40)) == bytes(4096)
        # a sequential read through a hole-only region stays cheap and bounded
        for k in range(64):
            assert os.pread(fd, MIB, 40 * (1 << 40) + k * MIB) == bytes(MIB)
    finally:
        os.close(fd)
    assert _peak_rss(m.proc.pid) < cache + 100 * MIB
    out = subprocess.run(["tail", "-c", "16", str(snap)], capture_output=True, check=True).stdout
    assert out == block_of(last)[-16:]


def test_2000_snapshots_listed(server, mount_factory) -> None:
    ebs = server.ebs(max_attempts=5)

    def make(n: int) -> str:
        sid = ebs.start_snapshot(
            VolumeSize=1 + n % 3, Tags=[{"Key": "Name", "Value": f"vol-{n:04d}"}]
        )["SnapshotId"]
        ebs.complete_snapshot(SnapshotId=sid, ChangedBlocksCount=0)
        return str(sid)

    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(make, range(2000)))
    ec2 = server.ec2()
    assert wait_state(ec2, ids[-1])["State"] == "completed"

    m = mount_factory(server)
    out = subprocess.run(
        ["ls", "-l", str(m.path)], capture_output=True, text=True, check=True
    ).stdout
    shown = {line.split()[-1] for line in out.splitlines()[1:]}
    assert set(ids) <= shown
    assert len(os.listdir(m.path / "by-name")) == 2000
    n = 1234
    assert os.readlink(m.path / "by-name" / f"vol-{n:04d}") == f"../{ids[n]}"
    assert os.stat(m.path / "by-name" / f"vol-{n:04d}").st_size == (1 + n % 3) << 30
