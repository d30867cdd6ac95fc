"""Scratch overlays (MOUNTPOINT/scratch/): crash-consistent ext4 and XFS images, copied from a
mounted filesystem's device with its log still to replay, read through a local overlay with
the log replayed; discarded without a snapshot; kept as a child snapshot on request."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mounting import MountProc, ebsfs, mount_factory  # noqa: F401  (fixture)
from tests.serverproc import LocalServer, upload_image

pytestmark = pytest.mark.timeout(280)

MIB = 1 << 20
SECTOR = 512


def run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=check, capture_output=True, text=True)


@contextlib.contextmanager
def mounted(source: Path, target: Path, *opts: str) -> Iterator[Path]:
    target.mkdir(parents=True, exist_ok=True)
    run("mount", "-o", ",".join(("loop", *opts)), str(source), str(target))
    try:
        yield target
    finally:
        run("umount", str(target), check=False)


def crash_consistent(image: Path, fstype: str, size: int, copy: Path) -> dict[str, bytes]:
    """Make a filesystem in ``image``, mount it, write files and let the log commit, then copy
    the image while it is still mounted (as a snapshot of a running instance is taken)."""
    with open(image, "wb") as f:
        f.truncate(size)
    if fstype == "ext4":
        run("mkfs.ext4", "-q", "-F", "-L", "crash", str(image))
    else:
        run("mkfs.xfs", "-q", "-f", "-L", "crash", str(image))
    files = {f"newest-{i}.txt": os.urandom(3000 + i) for i in range(20)}
    target = image.parent / f"{fstype}-live"
    with mounted(image, target):
        for name, data in files.items():
            (target / name).write_bytes(data)
        # The log (journal) is committed and flushed, the metadata not yet written in place:
        # exactly what a snapshot of a running instance holds.
        run("sync", "-f", str(target))
        run("cp", "--sparse=always", str(image), str(copy))
    return files


@pytest.mark.parametrize("fstype", ["ext4", "xfs"])
def test_a_dirty_log_is_replayed_in_a_scratch_overlay_and_discarded(
    fstype: str, server: LocalServer, mount_factory, tmp_path: Path  # noqa: F811
) -> None:
    copy = tmp_path / "copy.img"
    files = crash_consistent(tmp_path / "live.img", fstype, 320 * MIB, copy)
    sid = upload_image(server.ebs(), server.ec2(), copy, name=f"crashed-{fstype}")
    m = mount_factory(server)
    snap = m.path / sid
    # Read-only, the log cannot be replayed: the mount fails (docs/usage.md says so).
    (tmp_path / "ro").mkdir(exist_ok=True)
    failed = run("mount", "-o", "loop,ro", str(snap), str(tmp_path / "ro"), check=False)
    assert failed.returncode != 0
    overlay = m.path / "scratch" / sid
    overlay.touch()  # an overlay named after a snapshot shows that snapshot
    assert overlay.stat().st_size == 1 << 30
    assert os.getxattr(overlay, "user.ebsfs.base") == sid.encode()
    with mounted(overlay, tmp_path / "replayed") as fs:
        for name, data in files.items():
            assert (fs / name).read_bytes() == data, name
        (fs / "written-in-scratch").write_bytes(b"local only")
    used = int(os.getxattr(overlay, "user.ebsfs.scratch_bytes"))
    assert 0 < used <= 64 * MIB
    assert os.stat(overlay).st_blocks * 512 == used
    spool_files = list((m.spool_dir / "scratch").iterdir())
    assert len(spool_files) == 1
    overlay.unlink()
    assert not list((m.spool_dir / "scratch").iterdir())
    assert "scratch" in os.listdir(m.path) and os.listdir(m.path / "scratch") == []
    # Nothing was started (so nothing stored either), and the snapshot is as it was.
    listed = server.ec2().describe_snapshots(OwnerIds=["self"])["Snapshots"]
    assert [s["SnapshotId"] for s in listed] == [sid]
    assert run("cmp", "-n", str(copy.stat().st_size), str(copy), str(snap)).returncode == 0


def test_a_partition_overlay_kept_as_a_child_snapshot(
    server: LocalServer, mount_factory, tmp_path: Path  # noqa: F811
) -> None:
    part = tmp_path / "part.img"
    files = crash_consistent(tmp_path / "live.img", "ext4", 64 * MIB, part)
    disk = tmp_path / "disk.img"
    with open(disk, "wb") as f:
        f.truncate(80 * MIB)
    subprocess.run(
        ["sfdisk", "-q", str(disk)],
        input=f'label: gpt\nstart=2048, size={64 * 2048}, type=L, name="root"\n',
        text=True,
        check=True,
        capture_output=True,
    )
    run("dd", f"if={part}", f"of={disk}", "bs=1M", f"seek={2048 * SECTOR}", "oflag=seek_bytes",
        "conv=notrunc,sparse", "status=none")
    sid = upload_image(server.ebs(), server.ec2(), disk, name="rootdisk")
    m = mount_factory(server)
    overlay = m.path / "scratch" / "fix-root"
    overlay.touch()
    with pytest.raises(OSError) as unset:
        overlay.write_bytes(b"x")
    assert unset.value.errno == errno.EINVAL  # no base yet
    with pytest.raises(OSError) as bad:
        os.setxattr(overlay, "user.ebsfs.base", b"snap-0123456789abcdef0/1")
    assert bad.value.errno == errno.EINVAL
    os.setxattr(overlay, "user.ebsfs.base", f"{sid}/1".encode())
    assert overlay.stat().st_size == 64 * MIB
    run("e2fsck", "-fy", str(overlay), check=False)  # replays the journal, repairs
    assert run("e2fsck", "-fn", str(overlay)).returncode == 0
    os.setxattr(overlay, "user.ebsfs.keep", b"root-fixed")
    child = m.path / "new" / "root-fixed"
    assert os.getxattr(child, "user.ebsfs.parent") == sid.encode()
    ebsfs("complete", str(child), env=m.env, check=True)
    sealed = m.path / "by-name" / "root-fixed"
    kept = m.path / "parts" / os.readlink(sealed).removeprefix("../") / "1"
    # The sealed child needs no recovery: a read-only mount of its partition works.
    with mounted(kept, tmp_path / "kept", "ro") as fs:
        for name, data in files.items():
            assert (fs / name).read_bytes() == data, name
    overlay.unlink()


def test_overlays_count_against_the_limit_and_vanish_at_unmount(
    server: LocalServer, tmp_path: Path
) -> None:
    sid = upload_image(server.ebs(), server.ec2(), os.urandom(4 * MIB), name="small")
    with MountProc(server, tmp_path / "mnt", "--scratch-limit", "1MiB") as m:
        overlay = m.path / "scratch" / sid
        overlay.touch()
        with open(overlay, "r+b", buffering=0) as f:
            f.write(b"a")  # block 0 copied: 512 KiB of 1 MiB
            f.seek(MIB)
            f.write(b"b")  # block 2: 1 MiB
            f.seek(3 * MIB)
            with pytest.raises(OSError) as full:
                f.write(b"c")
            assert full.value.errno == errno.ENOSPC
        assert len(list((m.spool_dir / "scratch").iterdir())) == 1
    assert not (m.spool_dir / "scratch").exists() or not list((m.spool_dir / "scratch").iterdir())
