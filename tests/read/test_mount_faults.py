"""Reads through a real mount while the local server misbehaves."""

from __future__ import annotations

import errno
import json
import os
import time
from pathlib import Path

import pytest

from tests.serverproc import upload_image

MIB = 1 << 20
BLOCK = 512 * 1024


def _image(tmp_path: Path, size: int) -> Path:
    path = tmp_path / "image.bin"
    path.write_bytes(os.urandom(size))
    return path


def _read_all(path: Path, size: int) -> bytes:
    with open(path, "rb") as f:
        return f.read(size)


@pytest.mark.timeout(240)
def test_full_read_survives_throttling_errors_and_drops(
    server_factory, mount_factory, tmp_path: Path
) -> None:
    srv = server_factory()
    image = _image(tmp_path, 24 * MIB + 1234)
    sid = upload_image(srv.ebs(), srv.ec2(), image)
    srv.restart("--throttle-rate", "0.3", "--error-rate", "0.05", "--drop-rate", "0.02")
    m = mount_factory(srv, "--cache-size", "16MiB")
    assert _read_all(m.path / sid, image.stat().st_size) == image.read_bytes()
    stats = json.loads(os.getxattr(m.path, "user.ebsfs.stats"))
    assert stats["errors"] == {}


@pytest.mark.timeout(120)
def test_corrupt_blocks_are_eio_never_wrong_bytes(
    server_factory, mount_factory, tmp_path: Path
) -> None:
    srv = server_factory()
    image = _image(tmp_path, 4 * BLOCK)
    sid = upload_image(srv.ebs(), srv.ec2(), image)
    srv.restart("--corrupt-rate", "1")
    m = mount_factory(srv, "--read-ahead", "0")
    fd = os.open(m.path / sid, os.O_RDONLY)
    try:
        for i in range(4):
            with pytest.raises(OSError) as info:
                data = os.pread(fd, 4096, i * BLOCK)
                pytest.fail(f"block {i} read {data[:16]!r} despite corruption")
            assert info.value.errno == errno.EIO
    finally:
        os.close(fd)
    log = m.log_text()
    lines = [line for line in log.splitlines() if "checksum" in line and sid in line]
    assert any("block 0" in line for line in lines), log[-2000:]


@pytest.mark.timeout(120)
def test_a_read_outlasting_its_tokens(server_factory, mount_factory, tmp_path: Path) -> None:
    srv = server_factory("--token-ttl", "2")
    image = _image(tmp_path, 24 * BLOCK)
    sid = upload_image(srv.ebs(), srv.ec2(), image)
    m = mount_factory(srv, "--read-ahead", "0", "--cache-size", "1MiB")
    data = image.read_bytes()
    start = time.monotonic()
    fd = os.open(m.path / sid, os.O_RDONLY)
    try:
        for i in range(24):
            assert os.pread(fd, BLOCK, i * BLOCK) == data[i * BLOCK : (i + 1) * BLOCK]
            time.sleep(0.45)
    finally:
        os.close(fd)
    assert time.monotonic() - start >= 10  # the read really outlived several token lifetimes
    stats = json.loads(os.getxattr(m.path, "user.ebsfs.stats"))
    assert stats["read"]["list_windows"] >= 3  # tokens were renewed along the way


@pytest.mark.timeout(180)
def test_stopped_server_is_eio_then_recovers(server_factory, mount_factory, tmp_path: Path) -> None:
    srv = server_factory()
    image = _image(tmp_path, 8 * BLOCK)
    sid = upload_image(srv.ebs(), srv.ec2(), image)
    io_timeout = 4.0
    m = mount_factory(
        srv,
        "--read-ahead",
        "0",
        "--io-timeout",
        str(io_timeout),
        "--max-attempts",
        "2",
        "--connect-timeout",
        "1",
        "--read-timeout",
        "2",
    )
    data = image.read_bytes()
    fd = os.open(m.path / sid, os.O_RDONLY)
    try:
        assert os.pread(fd, BLOCK, 0) == data[:BLOCK]
        srv.stop()
        start = time.monotonic()
        with pytest.raises(OSError) as info:
            os.pread(fd, BLOCK, 3 * BLOCK)
        assert info.value.errno == errno.EIO
        # bounded by the configured timeout plus botocore's own (short) attempts
        assert time.monotonic() - start < io_timeout + 20
        srv.start()
        # The endpoint is known down until the mount's prober hears it again (no remount).
        deadline = time.monotonic() + 30
        while True:
            try:
                got = os.pread(fd, BLOCK, 3 * BLOCK)
                break
            except OSError as exc:
                assert exc.errno == errno.EIO and time.monotonic() < deadline
                time.sleep(0.2)
        assert got == data[3 * BLOCK : 4 * BLOCK]
    finally:
        os.close(fd)
