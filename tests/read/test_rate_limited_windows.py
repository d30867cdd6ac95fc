"""The windows by Reason through a real mount (issue 14 item 3): two snapshots read at once
under the server's ``--account-rate-limit`` both progress and read right; a draft sealed
under ``--rate-limit`` is stored whole while its puts, made in the upload process, are
throttled, and ``ebsfs stats`` counts those throttled puts (``write.puts_throttled``)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

import pytest

from tests.mounting import MountProc, ebsfs
from tests.serverproc import LocalServer, download_image, upload_image

pytestmark = pytest.mark.timeout(240)

BS = 512 * 1024
MountFactory = Callable[..., MountProc]


def stats_of(m: MountProc) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(ebsfs("stats", "--json", str(m.path), check=True).stdout)
    return out


def test_two_snapshots_read_at_once_share_the_account_limit(
    server_factory: Callable[..., LocalServer], mount_factory: MountFactory
) -> None:
    srv = server_factory()
    rng = random.Random(14)
    images = [rng.randbytes(48 * BS), rng.randbytes(48 * BS)]
    ids = [upload_image(srv.ebs(), srv.ec2(), image) for image in images]
    srv.restart("--account-rate-limit", "20")
    m = mount_factory(srv, "--read-ahead", "4MiB", "--max-concurrency", "16")
    done: dict[int, float] = {}  # reader -> share of the other's bytes read when it ended
    read = [0, 0]
    digests: dict[int, str] = {}
    lock = threading.Lock()

    def reader(i: int) -> None:
        h = hashlib.sha256()
        with open(m.path / ids[i], "rb") as f:
            while chunk := f.read(BS):
                h.update(chunk)
                with lock:
                    read[i] += len(chunk)
                if read[i] >= len(images[i]):
                    break
        with lock:
            done[i] = read[1 - i] / len(images[1 - i])
        digests[i] = h.hexdigest()

    threads = [threading.Thread(target=reader, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(200)
    assert digests == {i: hashlib.sha256(images[i]).hexdigest() for i in (0, 1)}
    # Neither waited for the other: when the first was done, the second was well on its way.
    assert max(done.values()) >= 0.25, done
    stats = stats_of(m)
    read_stats = stats["read"]
    assert read_stats["throttled_share_pct"] > 0, read_stats
    assert read_stats["concurrency_backoffs"] >= 1  # the account's window backed off
    assert "EIO" not in stats["errors"], stats["errors"]


def test_the_snapshot_limit_backs_off_the_snapshot_window_only(
    server_factory: Callable[..., LocalServer], mount_factory: MountFactory
) -> None:
    srv = server_factory()
    image = random.Random(5).randbytes(32 * BS)
    snapshot_id = upload_image(srv.ebs(), srv.ec2(), image)
    srv.restart("--rate-limit", "20")
    m = mount_factory(srv, "--read-ahead", "4MiB", "--max-concurrency", "16")
    with open(m.path / snapshot_id, "rb") as f:
        assert f.read(len(image)) == image
    read_stats = stats_of(m)["read"]
    # RESOURCE_LEVEL_THROTTLE: the snapshot's reads back off; the mount's (account's) window
    # keeps its ceiling for the other snapshots and the writes.
    assert read_stats["lane_backoffs"] >= 1 and read_stats["lane_found_max"] > 0, read_stats
    assert read_stats.get("concurrency_backoffs", 0) == 0, read_stats
    assert read_stats["concurrency_limit"] == 16


def test_a_seal_under_the_rate_limit_is_whole_and_counts_throttled_puts(
    server_factory: Callable[..., LocalServer], mount_factory: MountFactory
) -> None:
    srv = server_factory("--rate-limit", "20")
    m = mount_factory(srv, "--writeback-delay", "600", "--max-concurrency", "16")
    rng = random.Random(3)
    blocks = 48
    image = rng.randbytes(blocks * BS)
    target = m.path / "new" / "limited"
    with open(target, "wb") as f:
        f.truncate(1 << 30)
        for i in reversed(range(blocks)):  # no sequential stream: every block at the seal
            os.pwrite(f.fileno(), image[i * BS:(i + 1) * BS], i * BS)
        os.fsync(f.fileno())
    done = subprocess.run([sys.executable, "-m", "ebsfs", "complete", str(target)], env=m.env,
                          capture_output=True, text=True, timeout=200)
    assert done.returncode == 0, done.stderr
    snapshot_id = done.stdout.strip()
    stats = stats_of(m)
    write = stats["write"]
    assert write["puts_throttled"] > 0, write
    assert write["puts_in_mount_threads"] == 0  # heard from the upload process
    assert write.get("put_failures", 0) == 0
    assert "EIO" not in stats["errors"], stats["errors"]
    stored = download_image(srv.ebs(max_attempts=30), snapshot_id, length=len(image))
    assert stored == image
