"""Read-ahead through a real mount: the kernel's window and the daemon's, against the cache."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.mounting import MountProc
from tests.serverproc import LocalServer, upload_image

pytestmark = pytest.mark.timeout(300)
MiB = 1 << 20


def _fetched(mnt: Path) -> int:
    stats = json.loads(os.getxattr(mnt, "user.ebsfs.stats"))["read"]
    return int(stats.get("GetSnapshotBlock.ok", 0))


def _dd(path: Path, mib: int) -> None:
    subprocess.run(
        ["dd", f"if={path}", "of=/dev/null", "bs=1M", f"count={mib}"],
        check=True, capture_output=True, timeout=120,
    )


@pytest.mark.parametrize("cache", ["32MiB", "16MiB"])
def test_a_small_cache_is_not_overrun_by_the_default_read_ahead(
    tmp_path: Path, cache: str
) -> None:
    # --read-ahead 64MiB by default. With a small --cache-size the window was capped at half
    # of --cache-size, but the cache holds less (the fetches in flight take their share) and
    # the kernel's own window stayed at 64 MiB: blocks fetched ahead were evicted before the
    # reader came to them, and a cold dd of 128 blocks made ~200 GetSnapshotBlock calls (with
    # the old 8 MiB, 128).
    mib = 64
    with LocalServer(tmp_path / "srv", "--latency-ms", "10") as server:
        sid = upload_image(server.ebs(), server.ec2(), os.urandom(mib * MiB))
        with MountProc(server, tmp_path / "mnt", "--cache-size", cache) as m:
            image = m.path / sid
            _dd(image, mib)
            first = _fetched(m.path)
            # A second pass the kernel no longer holds: every block fetched once again.
            fd = os.open(image, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
            _dd(image, mib)
            second = _fetched(m.path) - first
    blocks = mib * MiB // (512 * 1024)
    # A few refetches under load: with 16 MiB the daemon's window and the kernel's stack up
    # to what the cache holds (16 blocks), so a slow reader loses one now and then (135 of
    # 128 seen in CI). The overrun this guards against was ~200.
    assert first <= blocks + 16, first
    assert second <= blocks + 16, second


def _kernel_read_ahead_kb(mnt: Path) -> int:
    st = os.stat(mnt)
    bdi = Path(f"/sys/class/bdi/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/read_ahead_kb")
    return int(bdi.read_text())


def test_a_read_ahead_under_one_block_leaves_the_kernel_window_alone(tmp_path: Path) -> None:
    # --read-ahead under a block turns the daemon's read-ahead off (whole blocks only), yet
    # the kernel's window was set to it: 4 KiB for --read-ahead 1, far below its default.
    # And --read-ahead 1GiB set the kernel's to 1 GiB ahead of a 256 MiB cache.
    with LocalServer(tmp_path / "srv") as server:
        kb = {}
        for value in ("0", "1", "511KiB", "1GiB"):
            # Daemonised: `ebsfs mount` returns once the mount is ready (its window set).
            mount = MountProc(server, tmp_path / "mnt", "--read-ahead", value, foreground=False)
            with mount as m:
                kb[value] = _kernel_read_ahead_kb(m.path)
    assert kb["1"] == kb["511KiB"] == kb["0"], kb
    # 1 GiB is capped like the daemon's own window: half of what the default cache holds.
    assert kb["0"] < kb["1GiB"] <= 128 * 1024, kb
