"""Partitions as files (MOUNTPOINT/parts/): the table parser on images made by sfdisk and on
hostile bytes, and end to end a GPT disk with vfat, ext4 and XFS partitions written through
new/, sealed, and each partition read from its own file, with no partition scanning."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ebsfs.fs.partitions import SECTOR, Partition, label_links, read_partitions
from tests.mounting import ebsfs, kernel_mounted
from tests.read.conftest import build_tree, partitioned_disk, sha256_tree
from tests.serverproc import LocalServer

pytestmark = pytest.mark.timeout(280)

MIB = 1 << 20


def run(*cmd: str, **kw: str) -> str:
    env = {**os.environ, **kw} if kw else None
    return subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout


def partitions_of(image: Path) -> list[Partition]:
    data = image.read_bytes()

    async def read(offset: int, length: int) -> bytes:
        return data[offset : offset + length]

    return trio.run(read_partitions, read, len(data))


def test_gpt_table_as_sfdisk_wrote_it(tmp_path: Path) -> None:
    image = partitioned_disk(
        tmp_path / "gpt.img",
        64 * MIB,
        "label: gpt\n"
        'start=2048, size=8192, type=U, name="EFI System"\n'
        'size=16384, type=L, name="root"\n'
        "size=4096, type=L\n",
    )
    parts = partitions_of(image)
    assert [(p.number, p.start, p.size, p.label) for p in parts] == [
        (1, 2048 * SECTOR, 8192 * SECTOR, "EFI System"),
        (2, 10240 * SECTOR, 16384 * SECTOR, "root"),
        (3, 26624 * SECTOR, 4096 * SECTOR, ""),
    ]
    assert label_links(parts) == {"EFI System": 1, "root": 2}


def test_mbr_with_logical_partitions_numbered_as_linux_does(tmp_path: Path) -> None:
    image = partitioned_disk(
        tmp_path / "mbr.img",
        64 * MIB,
        "label: dos\n"
        "start=2048, size=8192, type=83\n"
        "start=10240, size=40960, type=5\n"
        "start=12288, size=4096, type=83\n"
        "start=18432, size=8192, type=83\n",
    )
    parts = partitions_of(image)
    assert [(p.number, p.start // SECTOR, p.size // SECTOR) for p in parts] == [
        (1, 2048, 8192),
        (5, 12288, 4096),
        (6, 18432, 8192),
    ]


def test_a_gpt_whose_crc_is_wrong_is_not_trusted(tmp_path: Path) -> None:
    script = "label: gpt\nstart=2048, size=4096, type=L\n"
    image = partitioned_disk(tmp_path / "gpt.img", 16 * MIB, script)
    with open(image, "r+b") as f:
        f.seek(SECTOR + 80)  # the entry count, under the header's CRC
        f.write((100000).to_bytes(4, "little"))
    assert partitions_of(image) == []


def test_no_table_no_partitions() -> None:
    async def read(offset: int, length: int) -> bytes:
        return bytes(length)

    assert trio.run(read_partitions, read, 1 << 30) == []


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    head=st.binary(min_size=2 * SECTOR, max_size=2 * SECTOR),
    tail=st.binary(max_size=4 * SECTOR),
    mbr_signature=st.booleans(),
    gpt_signature=st.booleans(),
)
def test_hostile_bytes_give_partitions_inside_the_disk_or_none(
    head: bytes, tail: bytes, mbr_signature: bool, gpt_signature: bool
) -> None:
    disk = bytearray(head + tail)
    if mbr_signature:
        disk[510:512] = b"\x55\xaa"
    if gpt_signature:
        disk[SECTOR : SECTOR + 8] = b"EFI PART"
    reads: list[int] = []

    async def read(offset: int, length: int) -> bytes:
        reads.append(length)
        return bytes(disk[offset : offset + length])

    size = len(disk)
    parts = trio.run(read_partitions, read, size)
    for p in parts:
        assert 0 < p.start < size and p.size > 0 and p.start + p.size <= size
    assert sum(reads) <= 2 * SECTOR + (1 << 20) + 128 * SECTOR


# ---- end to end ------------------------------------------------------------------------------


@contextlib.contextmanager
def fat_mounted(image: Path, target: Path) -> Iterator[Path]:
    """A FAT image mounted read-only with fusefat (kernels built without vfat, as here, and
    containers, have only a FUSE driver); it shows 8.3 names in upper case."""
    target.mkdir()
    run("fusefat", "-o", "ro", str(image), str(target))
    try:
        yield target
    finally:
        subprocess.run(["fusermount3", "-u", str(target)], check=False, capture_output=True)


def _disk(tmp_path: Path) -> tuple[Path, dict[str, dict[str, str]]]:
    """A GPT disk: 1 'EFI System' vfat 32 MiB, 2 'root' ext4 64 MiB, 3 'data' XFS 300 MiB."""
    trees = {name: tmp_path / f"tree-{name}" for name in ("efi", "root", "data")}
    want = {name: build_tree(tree, seed=n) for n, (name, tree) in enumerate(trees.items())}
    fat, ext, xfs = tmp_path / "p1.fat", tmp_path / "p2.ext4", tmp_path / "p3.xfs"
    for path, size in ((fat, 32), (ext, 64), (xfs, 300)):
        with open(path, "wb") as f:
            f.truncate(size * MIB)
    run("mkfs.vfat", "-n", "EFI", str(fat))
    run("mcopy", "-s", "-i", str(fat), *(str(p) for p in trees["efi"].iterdir()), "::/")
    run("mkfs.ext4", "-q", "-F", "-L", "root", "-d", str(trees["root"]), str(ext))
    run("mkfs.xfs", "-q", "-f", "-L", "data", str(xfs))
    with kernel_mounted(xfs, tmp_path / "xfs-rw", "loop") as target:
        for item in trees["data"].iterdir():
            run("cp", "-a", str(item), str(target))
    disk = partitioned_disk(
        tmp_path / "disk.img",
        400 * MIB,
        "label: gpt\n"
        f'start=2048, size={32 * 2048}, type=U, name="EFI System"\n'
        f'size={64 * 2048}, type=L, name="root"\n'
        f'size={300 * 2048}, type=L, name="data"\n',
    )
    for part, start in ((fat, 2048), (ext, 2048 + 32 * 2048), (xfs, 2048 + 96 * 2048)):
        run("dd", f"if={part}", f"of={disk}", "bs=1M", f"seek={start * SECTOR}", "oflag=seek_bytes",
            "conv=notrunc,sparse", "status=none")
    for path in (fat, ext, xfs):
        path.unlink()
    return disk, want


def _byte_at(path: Path, offset: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(1)


def test_gpt_disk_written_through_new_each_partition_mounted_from_its_file(
    server: LocalServer, mount_factory, tmp_path: Path
) -> None:
    if not all(shutil.which(t) for t in ("mkfs.xfs", "mcopy", "fusefat")):
        pytest.fail("xfsprogs, mtools and fusefat are needed (make deps installs them)")
    disk, want = _disk(tmp_path)
    m = mount_factory(server)
    draft = m.path / "new" / "rootvol"
    run("dd", f"if={disk}", f"of={draft}", "bs=1M", "conv=sparse,fsync", "status=none")
    # A draft's partitions are there before it is sealed.
    pending = m.path / "parts" / "new" / "rootvol"
    assert sorted(os.listdir(pending)) == ["1", "2", "3", "by-label"]
    with open(pending / "2", "rb") as f, open(disk, "rb") as g:
        g.seek((2048 + 32 * 2048) * SECTOR)
        assert f.read(MIB) == g.read(MIB)
    # A draft's partition is writable within its bounds, as a block device is.
    assert (pending / "2").stat().st_mode & 0o777 == 0o600
    fd = os.open(pending / "2", os.O_RDWR)
    try:
        assert os.pwrite(fd, b"x", 64 * MIB - 1) == 1
        with pytest.raises(OSError) as crossing:
            os.pwrite(fd, b"y", 64 * MIB)
        assert crossing.value.errno == errno.EFBIG
        # Put back the byte the image has there.
        os.pwrite(fd, _byte_at(disk, (2048 + 96 * 2048) * SECTOR - 1), 64 * MIB - 1)
    finally:
        os.close(fd)
    ebsfs("complete", str(draft), env=m.env, check=True)
    sid = os.readlink(m.path / "by-name" / "rootvol").removeprefix("../")
    parts = m.path / "parts" / sid
    assert sorted(os.listdir(parts)) == ["1", "2", "3", "by-label"]
    assert sorted(os.listdir(parts / "by-label")) == ["EFI System", "data", "root"]
    assert os.readlink(parts / "by-label" / "root") == "../2"
    assert (parts / "2").stat().st_size == 64 * MIB
    assert (parts / "3").stat().st_size == 300 * MIB
    with pytest.raises(OSError) as refused:
        open(parts / "1", "r+b")  # noqa: SIM115  # a completed snapshot's are read-only
    assert refused.value.errno == errno.EROFS
    with fat_mounted(parts / "by-label" / "EFI System", tmp_path / "efi-ro") as efi:
        got = sha256_tree(efi)
        got.pop("EFI")  # fusefat shows the volume label as an empty file
        assert got == {k.upper(): v for k, v in want["efi"].items()}
    with kernel_mounted(parts / "by-label" / "root", tmp_path / "root-ro", "loop", "ro") as root:
        assert sha256_tree(root) == want["root"]
    with kernel_mounted(parts / "3", tmp_path / "data-ro", "loop", "ro") as data:
        assert sha256_tree(data) == want["data"]
