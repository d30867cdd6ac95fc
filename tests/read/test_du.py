"""``du`` of a snapshot tells how much it holds, not its volume's size (st_blocks from the
blocks ListSnapshotBlocks lists, counted in the background)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from tests.mounting import MountProc
from tests.serverproc import LocalServer, upload_image

BLOCK = 512 * 1024


def test_du_of_a_sparse_snapshot(server: LocalServer, tmp_path: Path) -> None:
    image = bytearray(64 * BLOCK)
    for index in (0, 7, 63):
        image[index * BLOCK : index * BLOCK + 10] = b"not zeros!"
    sid = upload_image(server.ebs(), server.ec2(), bytes(image), 1)
    with MountProc(server, tmp_path / "mnt") as m:
        path = m.path / sid
        assert path.stat().st_size == 1 << 30
        deadline = time.monotonic() + 30
        while path.stat().st_blocks != 3 * BLOCK // 512:
            assert time.monotonic() < deadline, path.stat()
            time.sleep(0.2)
        out = subprocess.run(["du", "-B1", "--apparent-size", str(path)], capture_output=True,
                             text=True, check=True).stdout
        assert out.split()[0] == str(1 << 30)
        out = subprocess.run(["du", "-B1", str(path)], capture_output=True, text=True,
                             check=True).stdout
        assert out.split()[0] == str(3 * BLOCK)
        # Reading is unchanged by it.
        with open(path, "rb") as f:
            assert f.read(10) == b"not zeros!"
        assert os.stat(path).st_size == 1 << 30
