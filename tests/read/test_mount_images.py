"""End to end through the kernel: images uploaded with plain boto3, read through a mount."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mounting import kernel_mounted, loop_device
from tests.read.conftest import build_tree, make_ext4, partitioned_disk, sha256_tree
from tests.serverproc import upload_image

pytestmark = pytest.mark.timeout(240)

MIB = 1 << 20


def run(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


@contextlib.contextmanager
def partition_node(dev: str, number: int) -> Iterator[str]:
    """The device node of partition ``number`` of loop device ``dev``; made with mknod when
    there is no udev to make it (containers), removed afterwards. ``fdisk -l`` and the mount
    of each partition are the checks; how the node appears is the container's business."""
    name = os.path.basename(dev)
    node = f"{dev}p{number}"
    sysfs = Path(f"/sys/block/{name}/{name}p{number}/dev")
    for attempt in range(60):
        if sysfs.exists():
            break
        if attempt == 10:
            # Some container kernels skip the partition scan losetup -P asks for.
            subprocess.run(["partx", "-a", dev], check=False, capture_output=True)
        time.sleep(0.1)
    made = False
    if not os.path.exists(node):
        major, minor = (int(x) for x in sysfs.read_text().split(":"))
        os.mknod(node, 0o600 | stat.S_IFBLK, os.makedev(major, minor))
        made = True
    try:
        yield node
    finally:
        if made:
            os.unlink(node)


def assert_same_prefix_then_zeros(mounted: Path, image: Path) -> None:
    size = image.stat().st_size
    subprocess.run(["cmp", "-n", str(size), str(image), str(mounted)], check=True)
    with open(mounted, "rb") as f:
        f.seek(size)
        while chunk := f.read(8 * MIB):
            assert chunk.count(0) == len(chunk), "bytes past the image are not zeros"


def test_ext4_image_reads_back_exactly(server, mount_factory, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    hashes = build_tree(tree)
    image = tmp_path / "ext4.img"
    size = 40 * MIB + 12 * 1024  # not a multiple of 512 KiB
    make_ext4(image, tree, size)
    sid = upload_image(server.ebs(), server.ec2(), image, name="ext4-image")

    m = mount_factory(server, "--cache-size", "64MiB")
    snap = m.path / sid
    assert snap.stat().st_size == 1 << 30
    assert oct(snap.stat().st_mode & 0o777) == oct(0o444)
    assert os.readlink(m.path / "by-name" / "ext4-image") == f"../{sid}"
    assert_same_prefix_then_zeros(snap, image)
    # the by-name link reads the same bytes
    with open(m.path / "by-name" / "ext4-image", "rb") as f:
        assert hashlib.sha256(f.read(size)).digest() == hashlib.sha256(image.read_bytes()).digest()

    fsck = subprocess.run(["e2fsck", "-fn", str(snap)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr

    with loop_device(snap) as dev, kernel_mounted(dev, tmp_path / "ro", "ro") as root:
        got = sha256_tree(root)
    got.pop("lost+found", None)
    assert got == hashes

    stats = json.loads(os.getxattr(m.path, "user.ebsfs.stats"))
    data = image.read_bytes()
    chunks = [data[i : i + 512 * 1024] for i in range(0, len(data), 512 * 1024)]
    written = sum(1 for c in chunks if c.count(0) != len(c))
    assert stats["read"]["GetSnapshotBlock.ok"] == written, stats  # each block fetched once
    assert stats["read"]["cache_hits"] > 0
    # xattrs of SPEC.md
    assert os.getxattr(snap, "user.ebsfs.snapshot_id") == sid.encode()
    assert os.getxattr(snap, "user.ebsfs.state") == b"completed"
    assert os.getxattr(snap, "user.ebsfs.volume_size") == b"1"
    assert os.getxattr(snap, "user.ebsfs.tag.Name") == b"ext4-image"
    assert "user.ebsfs.description" in os.listxattr(snap)
    assert "user.ebsfs.parent" in os.listxattr(snap)


def test_gpt_image_with_two_partitions(server, mount_factory, tmp_path: Path) -> None:
    script = "label: gpt\nsize=16MiB, name=one\nsize=16MiB, name=two\n"
    image = partitioned_disk(tmp_path / "gpt.img", 48 * MIB, script)
    layout = json.loads(run("sfdisk", "--json", str(image)))["partitiontable"]
    parts = layout["partitions"]
    sector = layout.get("sectorsize", 512)
    expected = []
    for n, part in enumerate(parts):
        tree = tmp_path / f"tree{n}"
        tree.mkdir()
        (tree / "who.txt").write_text(f"partition {n}\n")
        (tree / "data.bin").write_bytes(os.urandom(1 * MIB + n))
        expected.append(sha256_tree(tree))
        fs = tmp_path / f"p{n}.img"
        make_ext4(fs, tree, part["size"] * sector)
        with open(image, "r+b") as out:
            out.seek(part["start"] * sector)
            out.write(fs.read_bytes())
    sid = upload_image(server.ebs(), server.ec2(), image)

    m = mount_factory(server)
    snap = m.path / sid
    listing = run("fdisk", "-l", str(snap))
    rows = [line for line in listing.splitlines() if line.startswith(str(snap))]
    assert len(rows) == 2 and all("Linux filesystem" in r for r in rows), listing
    with loop_device(snap, "-P") as dev:
        for n in range(2):
            with (
                partition_node(dev, n + 1) as part_dev,
                kernel_mounted(part_dev, tmp_path / f"mnt-p{n}", "ro") as root,
            ):
                got = sha256_tree(root)
            got.pop("lost+found", None)
            assert got == expected[n]


def _kernel_read_ahead_kb(path: Path) -> int:
    st = os.stat(path)
    bdi = Path(f"/sys/class/bdi/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/read_ahead_kb")
    return int(bdi.read_text())


@pytest.mark.parametrize(("flag", "want_kb"), [("4MiB", 4096), ("0", None)])
def test_kernel_read_ahead_follows_the_option(
    server, mount_factory, flag: str, want_kb: int | None
) -> None:
    data = os.urandom(4 * MIB)
    sid = upload_image(server.ebs(), server.ec2(), data)
    m = mount_factory(server, "--read-ahead", flag)
    default_kb = 128  # the kernel's own window for a FUSE connection
    deadline = time.monotonic() + 10
    # The daemon sets it once its root answers, just after the mount appears.
    while _kernel_read_ahead_kb(m.path) != (want_kb or default_kb):
        assert time.monotonic() < deadline, _kernel_read_ahead_kb(m.path)
        time.sleep(0.05)
    with open(m.path / sid, "rb") as f:
        assert f.read(len(data)) == data
