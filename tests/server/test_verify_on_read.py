"""GetSnapshotBlock never serves bytes that disagree with their checksum (issue 12.14)."""

import hashlib
import os
import sqlite3
from typing import Any

import pytest
from botocore.exceptions import ClientError

from ebsfs.core.blocks import BLOCK_SIZE
from ebsfs.server.records import data_bytes
from tests.serverproc import LocalServer, get_block, list_blocks, upload_image


def _flip_stored_byte(srv: LocalServer, data: bytes, at: int) -> None:
    """Flip one byte of the stored copy of ``data``, on disk, behind the server's back."""
    db = sqlite3.connect(f"file:{srv.data_dir / 'meta.sqlite3'}?mode=ro", uri=True)
    try:
        segment, offset = db.execute(
            "SELECT segment, offset FROM objects WHERE digest = ?",
            (hashlib.sha256(data).digest(),),
        ).fetchone()
    finally:
        db.close()
    (path,) = [p for p in (srv.data_dir / "segments").iterdir() if p.stem == f"{segment:08d}"]
    assert data_bytes(path) > 0
    fd = os.open(path, os.O_RDWR)
    try:
        old = os.pread(fd, 1, offset + at)
        assert old == data[at : at + 1]
        os.pwrite(fd, bytes([old[0] ^ 0x01]), offset + at)
    finally:
        os.close(fd)


@pytest.mark.parametrize("fast", [True, False], ids=["fast-path", "general-path"])
def test_a_damaged_block_is_a_500_and_a_log_line(server_factory: Any, fast: bool) -> None:
    # A fault option (inactive at rate 0) sends every request down the general path.
    srv = server_factory() if fast else server_factory("--throttle-rate", "0.000001",
                                                       "--fault-seed", "1")
    ebs, ec2 = srv.ebs(max_attempts=0), srv.ec2()
    blocks = [os.urandom(BLOCK_SIZE), os.urandom(BLOCK_SIZE)]
    sid = upload_image(ebs, ec2, b"".join(blocks), 1)
    tokens, _ = list_blocks(ebs, sid)
    _flip_stored_byte(srv, blocks[1], 4321)
    with pytest.raises(ClientError) as exc:
        ebs.get_snapshot_block(SnapshotId=sid, BlockIndex=1, BlockToken=tokens[1])
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
    assert exc.value.response["Error"]["Code"] == "InternalServerException"
    log = srv.log_text()
    assert any(sid in line and "block 1" in line and "checksum" in line
               for line in log.splitlines()), log[-2000:]
    # The intact block still reads.
    assert get_block(ebs, sid, 0, tokens[0]) == blocks[0]


def test_corruption_injection_still_alters_verified_answers(server_factory: Any) -> None:
    srv = server_factory("--corrupt-rate", "1")
    ebs, ec2 = srv.ebs(max_attempts=0), srv.ec2()
    data = os.urandom(BLOCK_SIZE)
    sid = upload_image(ebs, ec2, data, 1)
    tokens, _ = list_blocks(ebs, sid)
    with pytest.raises(ValueError, match="checksum"):
        get_block(ebs, sid, 0, tokens[0])
