"""The disk cache through real mounts: a second pass served from the file, a damaged file
never giving wrong bytes, and the option's plumbing (flags, environment, file, fstab)."""

from __future__ import annotations

import argparse
import json
import os
import re
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from ebsfs.commands.mount import mount_config_from_args
from ebsfs.core.errors import UsageError
from ebsfs.options import settings
from ebsfs.options.fstab import translate
from tests.mounting import MountProc, drop_page_cache, ebsfs
from tests.serverproc import LocalServer, upload_image

pytestmark = pytest.mark.timeout(120)

MIB = 1 << 20
BLOCK = 512 * 1024
BLOCKS = 40


#: A memory cache of 4 blocks, and no read-ahead (one fetch per block, no prefetched block
#: dropped before it is read): a second pass has to come from the disk cache or the server.
SMALL_CACHE = ("--cache-size", "4MiB", "--read-ahead", "0")


def _image(tmp_path: Path) -> Path:
    path = tmp_path / "image.bin"
    path.write_bytes(os.urandom(BLOCKS * BLOCK))
    return path


def _stats(m: MountProc) -> dict[str, Any]:
    read: dict[str, Any] = json.loads(os.getxattr(m.path, "user.ebsfs.stats"))["read"]
    return read


def _same_as_image(snap: Path, image: Path) -> None:
    drop_page_cache(snap)  # the second pass must reach the daemon, not the kernel's copy
    done = subprocess.run(
        ["cmp", "-n", str(image.stat().st_size), str(snap), str(image)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _stored_all(m: MountProc) -> dict[str, Any]:
    """The stats once the background writers have stored (or skipped) every fetched block."""
    deadline = time.monotonic() + 20
    while True:
        s = _stats(m)
        if s.get("disk_cache_stored", 0) + s.get("disk_cache_skipped", 0) >= BLOCKS:
            return s
        assert time.monotonic() < deadline, s
        time.sleep(0.05)


def _cache_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("blocks-*"))


def test_second_pass_served_from_disk(server: LocalServer, mount_factory, tmp_path) -> None:
    image = _image(tmp_path)
    sid = upload_image(server.ebs(), server.ec2(), image)
    cache_dir = tmp_path / "cache"
    m = mount_factory(server, *SMALL_CACHE, "--disk-cache", "64MiB", "--cache-dir", str(cache_dir))
    snap = m.path / sid
    [cache_file] = _cache_files(cache_dir)
    assert stat.S_IMODE(cache_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(cache_file.stat().st_mode) == 0o600

    _same_as_image(snap, image)
    first = _stored_all(m)
    assert first["GetSnapshotBlock.ok"] == BLOCKS
    # Blocks arrive one at a time: the writers keep up unless the machine is starved.
    assert first["disk_cache_stored"] >= 8, first
    assert first["disk_cache_max_blocks"] == 128

    _same_as_image(snap, image)
    second = _stats(m)
    fetched_again = second["GetSnapshotBlock.ok"] - first["GetSnapshotBlock.ok"]
    from_disk = second["disk_cache_hits"] - first.get("disk_cache_hits", 0)
    # Only the few blocks the memory cache kept can be served without the file.
    assert from_disk >= first["disk_cache_stored"] - 4, second
    assert fetched_again <= BLOCKS - first["disk_cache_stored"], second
    assert second.get("disk_cache_errors", 0) == 0

    m.stop()
    assert _cache_files(cache_dir) == []  # removed at unmount


def test_damaged_cache_file_still_reads_right(
    server: LocalServer, mount_factory, tmp_path
) -> None:
    image = _image(tmp_path)
    sid = upload_image(server.ebs(), server.ec2(), image)
    cache_dir = tmp_path / "cache"
    m = mount_factory(server, *SMALL_CACHE, "--disk-cache", "64MiB", "--cache-dir", str(cache_dir))
    snap = m.path / sid
    _same_as_image(snap, image)
    first = _stored_all(m)
    [cache_file] = _cache_files(cache_dir)
    # Scribble over every slot the daemon wrote, behind its back.
    size = cache_file.stat().st_size
    with open(cache_file, "r+b") as f:
        for offset in range(0, size, BLOCK):
            f.seek(offset + 1000)
            f.write(os.urandom(4096))
        f.flush()
        os.fsync(f.fileno())

    _same_as_image(snap, image)
    second = _stats(m)
    assert second["disk_cache_errors"] >= first["disk_cache_stored"] - 4, second
    assert second["GetSnapshotBlock.ok"] > first["GetSnapshotBlock.ok"]
    assert "dropped" in m.log_text() and "SHA256" in m.log_text()


def test_environment_turns_it_on(server: LocalServer, tmp_path: Path) -> None:
    image = _image(tmp_path)
    sid = upload_image(server.ebs(), server.ec2(), image)
    cache_dir = tmp_path / "env-cache"
    env = {**server.env(), "EBSFS_DISK_CACHE": "8MiB", "EBSFS_CACHE_DIR": str(cache_dir)}
    m = MountProc(server, tmp_path / "mnt", "--cache-size", "4MiB", env=env)
    with m:
        assert len(_cache_files(cache_dir)) == 1
        _same_as_image(m.path / sid, image)
        assert _stats(m)["disk_cache_max_blocks"] == 16
    assert _cache_files(cache_dir) == []


def test_off_by_default(server: LocalServer, mount_factory, tmp_path) -> None:
    m = mount_factory(server)
    assert "disk_cache_max_blocks" not in _stats(m)


def test_unusable_cache_dir_is_a_clear_mount_error(server: LocalServer, tmp_path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    done = ebsfs(
        "mount", str(mnt), "--foreground", "--spool-dir", str(tmp_path / "spool"),
        "--disk-cache", "8MiB", "--cache-dir", str(blocker / "cache"),
        env=server.env(), timeout=60,
    )
    assert not os.path.ismount(mnt)
    assert done.returncode == 6, done.stderr
    assert f"ebsfs: cannot create the disk cache {blocker}/cache/blocks-" in done.stderr
    assert "Traceback" not in done.stderr


def test_flags_environment_file_and_fstab(tmp_path: Path) -> None:
    conf = tmp_path / "ebsfs.toml"
    conf.write_text('[mount]\ndisk_cache = "1GiB"\ncache_dir = "/srv/ebsfs-cache"\n')
    cfg = settings.mount_config("/mnt/x", {"config": str(conf)}, environ={})
    assert (cfg.disk_cache, cfg.cache_dir) == (1 << 30, "/srv/ebsfs-cache")
    env = {"EBSFS_DISK_CACHE": "512MiB", "EBSFS_CACHE_DIR": "/var/tmp/c"}
    cfg = settings.mount_config("/mnt/x", {"config": str(conf)}, environ=env)
    assert (cfg.disk_cache, cfg.cache_dir) == (512 << 20, "/var/tmp/c")
    cfg = settings.mount_config(
        "/mnt/x", {"config": str(conf), "disk_cache": "0"}, environ=env
    )
    assert cfg.disk_cache == 0
    assert settings.mount_config("/mnt/x", {}, environ={}).disk_cache == 0  # off by default

    with pytest.raises(Exception, match="--disk-cache: not a size"):
        settings.mount_config("/mnt/x", {"disk_cache": "lots"}, environ={})

    assert translate(["ebsfs", "/mnt/s", "-o", "ro,disk_cache=2GiB,cache-dir=/srv/c"]) == [
        "mount", "/mnt/s", "--read-only", "--disk-cache", "2GiB", "--cache-dir", "/srv/c",
    ]

    # A relative --cache-dir or --spool-dir means the directory it was given from (the
    # daemon runs from /).
    ns = argparse.Namespace(
        mountpoint="/mnt/x", config=str(conf), disk_cache="1MiB", cache_dir="rel",
        spool_dir="spool-rel", io_timeout=None, foreground=True,
    )
    cfg = mount_config_from_args(ns)
    assert cfg.cache_dir == os.path.join(os.getcwd(), "rel")
    assert cfg.spool_dir == os.path.join(os.getcwd(), "spool-rel")


def test_a_size_under_one_block_is_refused_from_every_source(tmp_path: Path) -> None:
    """Above 0 but under a block would silently mean "off": refused, naming where it came from."""
    refused = "expected 0 (off) or at least 512KiB (one block)"
    with pytest.raises(UsageError, match=f"^--disk-cache: {re.escape(refused)}, not '100KiB'$"):
        settings.mount_config("/mnt/x", {"disk_cache": "100KiB"}, environ={})
    with pytest.raises(UsageError, match=f"^EBSFS_DISK_CACHE: {re.escape(refused)}"):
        settings.mount_config("/mnt/x", {}, environ={"EBSFS_DISK_CACHE": "1"})
    conf = tmp_path / "ebsfs.toml"
    conf.write_text("[mount]\ndisk_cache = 524287\n")
    with pytest.raises(UsageError, match=f"^{conf}: mount.disk_cache: {re.escape(refused)}"):
        settings.load_config(str(conf), environ={})
    conf.write_text('[mount."/mnt/x"]\ndisk_cache = "4KiB"\n')
    with pytest.raises(UsageError, match=f'mount."/mnt/x".disk_cache: {re.escape(refused)}'):
        settings.load_config(str(conf), environ={})
    # The bounds themselves are fine: 0 is off, one block is the smallest cache.
    for size, expected in (("0", 0), ("512KiB", BLOCK), (BLOCK, BLOCK), ("1MiB", 2 * BLOCK)):
        cfg = settings.mount_config("/mnt/x", {"disk_cache": size}, environ={})
        assert cfg.disk_cache == expected


def test_a_size_under_one_block_is_a_one_line_cli_error(tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    conf = tmp_path / "ebsfs.toml"
    conf.write_text('[mount]\ndisk_cache = "64KiB"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("EBSFS_")}
    cases = [
        (("mount", str(mnt), "--disk-cache", "100KiB"), env, "ebsfs: --disk-cache: "),
        (("mount", str(mnt)), {**env, "EBSFS_DISK_CACHE": "4096"}, "ebsfs: EBSFS_DISK_CACHE: "),
        (("mount", str(mnt), "--config", str(conf)), env, f"ebsfs: {conf}: mount.disk_cache: "),
        # mount -t fuse.ebsfs / fstab: mount.fuse3 runs ebsfs SOURCE MOUNTPOINT -o OPTIONS.
        (("ebsfs", str(mnt), "-o", "ro,disk_cache=1k"), env, "ebsfs: --disk-cache: "),
    ]
    for args, environ, prefix in cases:
        done = ebsfs(*args, env=environ, timeout=60)
        assert done.returncode == 2, (args, done.stderr)
        lines = done.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(prefix), (args, done.stderr)
        assert "at least 512KiB (one block)" in lines[0]
        assert not os.path.ismount(mnt)
