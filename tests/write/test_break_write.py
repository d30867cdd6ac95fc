"""Breaking the write path and local state: scratch overlays, keep, draft names (findings of
the break-write session; each test failed on main before its fix)."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from ebsfs.core.blocks import BLOCK_SIZE
from ebsfs.core.errors import InvalidValueError, NoSpaceError
from ebsfs.fs.partitions import Partition
from ebsfs.fs.scratch import ScratchDirectory
from ebsfs.write.drafts import Drafts
from ebsfs.write.spool import Spool
from ebsfs.write.writeback import WriteTuning
from tests.mounting import mount_factory  # noqa: F401  (fixture)
from tests.serverproc import LocalServer, upload_image

from .fakes import DictReader, FakeApi

pytestmark = pytest.mark.timeout(120)

MIB = 1 << 20
BS = BLOCK_SIZE


# ---- scratch overlays, without a mount ---------------------------------------------------------


def _scratch(root: Path, base: bytes, gate: trio.Event | None = None) -> ScratchDirectory:
    async def resolve(snapshot_id: str, number: int | None) -> tuple[int, Partition | None]:
        return len(base), None

    async def read_disk(snapshot_id: str, offset: int, length: int) -> bytes:
        # The base is remote: a read waits (here until the gate opens).
        if gate is not None:
            await gate.wait()
        await trio.sleep(0)
        return base[offset : offset + length]

    return ScratchDirectory(root, 1 << 30, resolve, read_disk)


def test_two_writes_into_one_uncopied_block_both_land(tmp_path: Path) -> None:
    """Two writers in one block not copied yet: each fetched the base block, and the one
    that came back second wrote the base over the first writer's bytes (lost)."""
    base = os.urandom(2 * BS)

    async def main() -> None:
        gate = trio.Event()
        scratch = _scratch(tmp_path / "scratch", base, gate)
        overlay = await scratch.create("o")
        await scratch.set_base(overlay, b"snap-0123456789abcdef0")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(scratch.write, overlay, 0, b"A" * 4096)
            nursery.start_soon(scratch.write, overlay, 8192, b"B" * 4096)
            await trio.testing.wait_all_tasks_blocked()
            gate.set()
        got = await scratch.read(overlay, 0, BS)
        assert got[:4096] == b"A" * 4096
        assert got[8192:12288] == b"B" * 4096
        assert got[4096:8192] == base[4096:8192]
        scratch.close()

    trio.run(main)


class _FailingDraft:
    def __init__(self, fail_after: int) -> None:
        self.writes = 0
        self.fail_after = fail_after

    async def setxattr(self, name: str, value: bytes) -> None:
        return None

    async def write(self, offset: int, data: bytes) -> int:
        self.writes += 1
        if self.writes > self.fail_after:
            raise NoSpaceError("spool disk full")
        return len(data)

    async def release(self) -> None:
        return None

    def kept(self) -> None:
        return None


class _NewDir:
    def __init__(self) -> None:
        self.drafts: dict[str, Any] = {}

    def get(self, name: str) -> Any:
        return self.drafts.get(name)

    async def create(self, name: str, *, kept_from: str = "") -> Any:
        self.drafts[name] = _FailingDraft(fail_after=1)
        return self.drafts[name]

    async def remove(self, name: str) -> None:
        del self.drafts[name]


def test_a_keep_that_fails_midway_leaves_no_partial_draft(tmp_path: Path) -> None:
    """user.ebsfs.keep answered ENOSPC but left new/NAME holding some of the changed blocks,
    a child that looks whole and seals into a corrupt disk."""
    base = bytes(4 * BS)

    async def main() -> None:
        scratch = _scratch(tmp_path / "scratch", base)
        overlay = await scratch.create("o")
        await scratch.set_base(overlay, b"snap-0123456789abcdef0")
        for i in range(3):
            await scratch.write(overlay, i * BS, b"x" * 10)
        newdir = _NewDir()
        with pytest.raises(NoSpaceError):
            await scratch.keep(overlay, b"child", newdir)  # type: ignore[arg-type]
        assert newdir.get("child") is None
        scratch.close()

    trio.run(main)


# ---- drafts ------------------------------------------------------------------------------------


def test_two_creates_of_one_name_at_once_leave_one_draft(tmp_path: Path) -> None:
    """Two keeps to one name (setxattr on two overlays is not serialized by the kernel) both
    passed the 'exists' check before the spool was made: two spools named alike, one of
    them orphaned (left alone at every later mount)."""
    api = FakeApi()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            drafts = await Drafts.open(
                api, tmp_path / "spool", nursery, trio.CapacityLimiter(8),
                lambda sid, gib: DictReader(api, sid),
                tuning=WriteTuning(delay=0.01),
            )
            results: list[str] = []

            async def one() -> None:
                try:
                    await drafts.create("same")
                    results.append("made")
                except InvalidValueError:
                    results.append("refused")

            async with trio.open_nursery() as racers:
                racers.start_soon(one)
                racers.start_soon(one)
            assert sorted(results) == ["made", "refused"]
            assert len(Spool.find(tmp_path / "spool")) == 1
            await drafts.close()
            nursery.cancel_scope.cancel()

    trio.run(main)


@pytest.mark.parametrize("name", [".", ".."])
def test_a_draft_cannot_be_named_dot_or_dotdot(tmp_path: Path, name: str) -> None:
    api = FakeApi()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            drafts = await Drafts.open(
                api, tmp_path / "spool", nursery, trio.CapacityLimiter(8),
                lambda sid, gib: DictReader(api, sid),
            )
            with pytest.raises(InvalidValueError):
                await drafts.create(name)
            assert Spool.find(tmp_path / "spool") == []
            await drafts.close()
            nursery.cancel_scope.cancel()

    trio.run(main)


# ---- through a mount ---------------------------------------------------------------------------


def test_keep_to_an_unusable_name_is_refused(
    server: LocalServer, mount_factory, tmp_path: Path  # noqa: F811
) -> None:
    """keep=.. and keep=. made drafts no path reaches (never listed, never removable, in the
    spool for good); keep with bytes not UTF-8 made a draft under another name (U+FFFD)."""
    sid = upload_image(server.ebs(), server.ec2(), os.urandom(MIB), name="small")
    m = mount_factory(server)
    overlay = m.path / "scratch" / sid
    overlay.touch()
    for value in (b"..", b".", b"a\xffb", b" "):
        with pytest.raises(OSError) as refused:
            os.setxattr(overlay, "user.ebsfs.keep", value)
        assert refused.value.errno == errno.EINVAL, value
    assert os.listdir(m.path / "new") == []
    assert Spool.find(m.spool_dir) == []


def test_a_draft_name_not_utf8_is_einval_not_eio(
    server: LocalServer, mount_factory, tmp_path: Path  # noqa: F811
) -> None:
    """new/ with a name that is not UTF-8 (a Name tag cannot hold it) was EIO and a
    traceback in the log (UnicodeEncodeError), not EINVAL."""
    m = mount_factory(server)
    path = os.fsencode(m.path / "new") + b"/x\xffy"
    with pytest.raises(OSError) as refused:
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    assert refused.value.errno == errno.EINVAL
    assert "failed unexpectedly" not in m.log_text()


def test_an_overlay_removed_while_open_still_serves_its_handle(
    server: LocalServer, mount_factory, tmp_path: Path  # noqa: F811
) -> None:
    """rm of an open overlay closed its file under the writer: its next write was EIO (EBADF
    and a traceback). As with any file, the name goes at once and the data at the last close."""
    data = os.urandom(MIB)
    sid = upload_image(server.ebs(), server.ec2(), data, name="small")
    m = mount_factory(server)
    overlay = m.path / "scratch" / "open"
    overlay.touch()
    os.setxattr(overlay, "user.ebsfs.base", sid.encode())
    fd = os.open(overlay, os.O_RDWR)
    try:
        assert os.pwrite(fd, b"hello", 0) == 5
        overlay.unlink()
        assert "open" not in os.listdir(m.path / "scratch")
        assert os.pwrite(fd, b"world", 5) == 5
        assert os.pread(fd, 16, 0) == b"helloworld" + data[10:16]
        assert os.pread(fd, 16, BS) == data[BS : BS + 16]
        # A new overlay may take the name meanwhile; the open one is not it.
        overlay.touch()
        os.setxattr(overlay, "user.ebsfs.base", sid.encode())
        assert overlay.read_bytes()[:10] == data[:10]
    finally:
        os.close(fd)
    overlay.unlink()
    assert not list((m.spool_dir / "scratch").iterdir())
    assert "failed unexpectedly" not in m.log_text()


_KEEP_THEN_DIE = r'''
import os, sys, trio
from pathlib import Path
from ebsfs.write.drafts import Drafts, SnapshotDraft
from ebsfs.fs.scratch import ScratchDirectory
from ebsfs.write.writeback import WriteTuning
from tests.write.fakes import DictReader, FakeApi

BS = 512 * 1024
spool = Path(sys.argv[1])
writes = 0
original = SnapshotDraft.write

async def write(self, offset, data):
    global writes
    writes += 1
    if writes == 2:
        os._exit(9)  # the daemon is killed in the middle of the keep
    return await original(self, offset, data)

SnapshotDraft.write = write

async def main():
    api = FakeApi()
    sid = api.add_completed({i: bytes([i + 1]) * BS for i in range(4)})
    async with trio.open_nursery() as nursery:
        drafts = await Drafts.open(api, spool, nursery, trio.CapacityLimiter(8),
                                   lambda s, gib: DictReader(api, s),
                                   tuning=WriteTuning(delay=3600))

        async def resolve(snapshot_id, number):
            return 4 * BS, None

        async def read_disk(snapshot_id, offset, length):
            return bytes(length)

        scratch = ScratchDirectory(spool / "scratch", 1 << 30, resolve, read_disk)
        overlay = await scratch.create("o")
        await scratch.set_base(overlay, sid.encode())
        for i in range(3):
            await scratch.write(overlay, i * BS, b"changed")
        await scratch.keep(overlay, b"child", drafts)

trio.run(main)
'''


def test_a_keep_cut_by_kill_9_brings_back_no_partial_child(tmp_path: Path) -> None:
    """The daemon killed in the middle of user.ebsfs.keep: the next mount brought back
    new/NAME holding some of the changed blocks, a child that looks whole (the keep never
    answered) and seals into a disk never written."""
    import subprocess
    import sys

    spool = tmp_path / "spool"
    died = subprocess.run(
        [sys.executable, "-c", _KEEP_THEN_DIE, str(spool)],
        cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=60,
    )
    assert died.returncode == 9, died.stderr
    assert len(Spool.find(spool)) == 1  # the child was being written
    api = FakeApi()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            drafts = await Drafts.open(
                api, spool, nursery, trio.CapacityLimiter(8),
                lambda sid, gib: DictReader(api, sid),
            )
            assert drafts.names() == []
            assert Spool.find(spool) == []
            await drafts.close()
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_an_overlay_of_a_deleted_snapshot_reads_no_zeros(
    server: LocalServer, mount_factory, tmp_path: Path  # noqa: F811
) -> None:
    """rm of the snapshot under an overlay: its blocks not copied yet read as zeros, and a
    write copied zeros under the new bytes, silently (a corrupt disk, and then a keep). A
    read or write that needs the base now fails; copied blocks still read."""
    data = os.urandom(2 * MIB)
    sid = upload_image(server.ebs(), server.ec2(), data, name="gone")
    m = mount_factory(server, "--allow-delete")
    overlay = m.path / "scratch" / sid
    overlay.touch()
    fd = os.open(overlay, os.O_RDWR)
    try:
        assert os.pwrite(fd, b"kept", 0) == 4
        os.unlink(m.path / sid)
        assert os.pread(fd, 8, 0) == b"kept" + data[4:8]
        with pytest.raises(OSError):
            os.pread(fd, 8, BS)
        with pytest.raises(OSError):
            os.pwrite(fd, b"x", 2 * BS)
    finally:
        os.close(fd)


def test_a_spool_dir_another_user_controls_is_refused(
    server: LocalServer, tmp_path: Path
) -> None:
    """A spool directory owned by another user (or writable by others): its owner could put
    a symlink where the daemon opens files as root. `lock` pointing at a file of root's was
    truncated and overwritten by the mount. Now the mount refuses such a spool (exit 6)."""
    import subprocess

    from tests.mounting import MountProc

    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")
    spool = tmp_path / "spool"
    spool.mkdir()
    os.chown(spool, 65534, 65534)
    spool.chmod(0o755)
    (spool / "lock").symlink_to(victim)
    m = MountProc(server, tmp_path / "mnt", spool_dir=spool, foreground=False)
    m.path.mkdir()
    done = subprocess.run(m.command(), env=m.env, capture_output=True, text=True, timeout=60)
    try:
        assert done.returncode == 6, done.stderr
        assert "spool" in done.stderr
    finally:
        m.stop()
    assert victim.read_bytes() == b"precious\n"
    # Writable by others, even when it is ours: refused too.
    (spool / "lock").unlink()
    os.chown(spool, 0, 0)
    spool.chmod(0o777)
    done = subprocess.run(m.command(), env=m.env, capture_output=True, text=True, timeout=60)
    m.stop()
    assert done.returncode == 6, done.stderr


def test_thousands_of_overlays_leave_the_mount_working(
    server: LocalServer, tmp_path: Path
) -> None:
    """Every overlay held a descriptor of the daemon for its whole life: a user making
    overlays by the thousand ran the daemon out of them (EMFILE), and then drafts, the
    spool and the endpoint failed too. Now overlays past a share of the descriptor limit
    are refused (ENOSPC) and everything else goes on."""
    import resource

    from tests.mounting import MountProc

    data = os.urandom(MIB)
    sid = upload_image(server.ebs(), server.ec2(), data, name="small")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))  # the daemon inherits it
    try:
        m = MountProc(server, tmp_path / "mnt").start()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        refused = 0
        for i in range(400):
            try:
                os.close(os.open(m.path / "scratch" / f"o{i}", os.O_CREAT | os.O_WRONLY, 0o600))
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                refused += 1
        assert refused > 0
        # Drafts, the spool and reads of snapshots still work.
        with open(m.path / "new" / "still-works", "wb") as f:
            f.write(b"x" * 4096)
            os.fsync(f.fileno())
        first = m.path / "scratch" / "o0"
        os.setxattr(first, "user.ebsfs.base", sid.encode())
        with open(first, "rb") as f:
            assert f.read(4096) == data[:4096]
        with open(m.path / sid, "rb") as f:
            assert os.pread(f.fileno(), 4096, MIB - 4096) == data[-4096:]
        assert "failed unexpectedly" not in m.log_text()
    finally:
        m.stop()


class _GatedDraft:
    def __init__(self, gate: trio.Event) -> None:
        self.gate = gate
        self.blocks: dict[int, bytes] = {}

    async def setxattr(self, name: str, value: bytes) -> None:
        return None

    async def write(self, offset: int, data: bytes) -> int:
        await self.gate.wait()
        self.blocks[offset] = bytes(data)
        return len(data)

    async def release(self) -> None:
        return None

    def kept(self) -> None:
        return None


def test_rm_of_an_overlay_during_its_keep_lets_the_keep_finish(tmp_path: Path) -> None:
    """rm of an overlay while user.ebsfs.keep wrote it out closed its file under the keep:
    EIO (EBADF, a traceback). The keep now holds the overlay as an open file does."""
    base = bytes(4 * BS)

    async def main() -> None:
        scratch = _scratch(tmp_path / "scratch", base)
        overlay = await scratch.create("o")
        await scratch.set_base(overlay, b"snap-0123456789abcdef0")
        for i in range(3):
            await scratch.write(overlay, i * BS, bytes([i + 1]) * 10)
        gate = trio.Event()
        draft = _GatedDraft(gate)
        newdir = _NewDir()

        async def create(name: str, *, kept_from: str = "") -> Any:
            newdir.drafts[name] = draft
            return draft

        newdir.create = create  # type: ignore[method-assign]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(scratch.keep, overlay, b"child", newdir)
            await trio.testing.wait_all_tasks_blocked()
            await scratch.remove("o")
            gate.set()
        assert sorted(draft.blocks) == [0, BS, 2 * BS]
        assert draft.blocks[2 * BS][:10] == b"\x03" * 10
        assert not list((tmp_path / "scratch").iterdir())  # gone once the keep let go
        scratch.close()

    trio.run(main)


def test_a_base_changed_while_a_write_copies_is_refused(tmp_path: Path) -> None:
    """user.ebsfs.base set again while a write was copying blocks of the first base: the
    check 'written already' ran before the lookup of the new base, so the overlay ended up
    with blocks of one snapshot over another."""
    base = os.urandom(2 * BS)

    async def main() -> None:
        gate = trio.Event()
        scratch = _scratch(tmp_path / "scratch", base)

        async def slow_resolve(snapshot_id: str, number: int | None) -> tuple[int, Any]:
            await gate.wait()
            return 4 * BS, None

        overlay = await scratch.create("o")
        await scratch.set_base(overlay, b"snap-0123456789abcdef0")
        scratch.resolve = slow_resolve
        async with trio.open_nursery() as nursery:

            async def change() -> None:
                with pytest.raises(InvalidValueError):
                    await scratch.set_base(overlay, b"snap-0123456789abcdef1")

            nursery.start_soon(change)
            await trio.testing.wait_all_tasks_blocked()
            await scratch.write(overlay, 0, b"w")
            gate.set()
        assert overlay.snapshot_id == "snap-0123456789abcdef0"
        scratch.close()

    trio.run(main)


def test_a_spool_path_that_is_another_users_symlink_is_refused(
    server: LocalServer, tmp_path: Path
) -> None:
    """A spool path in a directory others can write (EBSFS_SPOOL_ROOT=/tmp) that another user
    made a symlink to a directory of root's: the mount used that directory as its spool, and
    deleted its scratch/ (overlays left by a dead mount), files of root's."""
    import subprocess

    from tests.mounting import MountProc

    rootdir = tmp_path / "roots-own"
    (rootdir / "scratch").mkdir(parents=True)
    (rootdir / "scratch" / "precious").write_bytes(b"precious\n")
    rootdir.chmod(0o755)
    spool = tmp_path / "spool"
    spool.symlink_to(rootdir)
    os.lchown(spool, 65534, 65534)
    m = MountProc(server, tmp_path / "mnt", spool_dir=spool, foreground=False)
    m.path.mkdir()
    done = subprocess.run(m.command(), env=m.env, capture_output=True, text=True, timeout=60)
    try:
        assert done.returncode == 6, done.stderr
    finally:
        m.stop()
    assert (rootdir / "scratch" / "precious").read_bytes() == b"precious\n"


def test_a_draft_being_kept_into_cannot_be_sealed_yet(tmp_path: Path) -> None:
    """chmod a-w of new/NAME while a keep writes it: no snapshot is started during a keep,
    so the seal must wait for it (refused), not run without a snapshot."""
    from ebsfs.core.errors import NotPermittedError

    api = FakeApi()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            drafts = await Drafts.open(
                api, tmp_path / "spool", nursery, trio.CapacityLimiter(8),
                lambda sid, gib: DictReader(api, sid),
            )
            draft = await drafts.create("child", kept_from="scratch/o")
            await draft.truncate(1 << 30)
            await draft.write(0, b"x" * BS)
            with pytest.raises(NotPermittedError):
                await draft.seal()
            draft.kept()
            await draft.seal()
            await drafts.close()
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_a_keep_of_an_unchanged_overlay_is_refused(tmp_path: Path) -> None:
    """keep of an overlay nothing was written to made new/NAME with nothing written: a
    child no seal accepts ("nothing was written"), left for the user to find and rm."""

    async def main() -> None:
        scratch = _scratch(tmp_path / "scratch", bytes(2 * BS))
        overlay = await scratch.create("o")
        await scratch.set_base(overlay, b"snap-0123456789abcdef0")
        newdir = _NewDir()
        with pytest.raises(InvalidValueError):
            await scratch.keep(overlay, b"child", newdir)  # type: ignore[arg-type]
        assert newdir.get("child") is None
        scratch.close()

    trio.run(main)


def test_inodes_of_overlays_made_and_removed_again_are_reused(tmp_path: Path) -> None:
    """Each overlay has its own inode key (one removed while open must not share its inode
    with a new one of the same name), but a name made and removed a million times must not
    take a million inodes: the key is reused once the old overlay is gone."""

    async def main() -> None:
        scratch = _scratch(tmp_path / "scratch", bytes(2 * BS))
        keys = set()
        for _ in range(5):
            keys.add((await scratch.create("o")).key)
            await scratch.remove("o")
        assert len(keys) == 1
        held = await scratch.create("o")
        scratch.opened(held)
        await scratch.remove("o")
        other = await scratch.create("o")
        assert other.key != held.key
        scratch.released(held)
        scratch.close()

    trio.run(main)


def test_a_full_spool_disk_during_copy_on_write_and_keep(
    server: LocalServer, mount_factory, tmp_path: Path  # noqa: F811
) -> None:
    """The spool's disk fills under an overlay: a write that must copy a block is ENOSPC and
    changes nothing; what was written before reads back; a keep that cannot spool is ENOSPC
    and leaves no new/NAME; once there is room again, both work."""
    from bench.chaos import SpoolDisk

    data = os.urandom(4 * MIB)
    sid = upload_image(server.ebs(), server.ec2(), data, name="fill")
    disk = SpoolDisk(tmp_path, 64)
    disk.setup()
    m = None
    try:
        m = mount_factory(server, spool_dir=disk.path / "spool")
        overlay = m.path / "scratch" / sid
        overlay.touch()
        fd = os.open(overlay, os.O_RDWR)
        try:
            assert os.pwrite(fd, b"first", 0) == 5
            disk.fill()
            with pytest.raises(OSError) as full:
                os.pwrite(fd, b"second", 2 * BS)
            assert full.value.errno == errno.ENOSPC
            assert os.pread(fd, 8, 0) == b"first" + data[5:8]
            assert os.pread(fd, 8, 2 * BS) == data[2 * BS : 2 * BS + 8]
            with pytest.raises(OSError) as kept:
                os.setxattr(overlay, "user.ebsfs.keep", b"child")
            assert kept.value.errno == errno.ENOSPC
            assert os.listdir(m.path / "new") == []
            with pytest.raises(OSError) as touched:
                (m.path / "new" / "other").touch()
            assert touched.value.errno == errno.ENOSPC
            spool = disk.path / "spool"
            assert [p.name for p in spool.iterdir() if p.is_dir()] == ["scratch"]
            # So does a new overlay's file, and the directory of the first one.
            for n in range(200):
                try:
                    (m.path / "scratch" / f"more-{n}").touch()
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
                    break
            disk.free()
            assert os.pwrite(fd, b"second", 2 * BS) == 6
            os.setxattr(overlay, "user.ebsfs.keep", b"child")
            assert os.listdir(m.path / "new") == ["child"]
        finally:
            os.close(fd)
        assert "failed unexpectedly" not in m.log_text()
    finally:
        if m is not None:
            m.stop()
        disk.teardown()


def test_a_full_spool_disk_under_a_new_draft_is_enospc(
    server: LocalServer, mount_factory, tmp_path: Path  # noqa: F811
) -> None:
    """A draft made before the spool's disk filled: its attributes, its size and its first
    write must save the manifest; on a full disk they were EIO (a traceback), not ENOSPC,
    and the draft must stay usable once there is room."""
    from bench.chaos import SpoolDisk

    disk = SpoolDisk(tmp_path, 64)
    disk.setup()
    m = None
    try:
        m = mount_factory(server, spool_dir=disk.path / "spool")
        path = m.path / "new" / "d"
        path.touch()
        disk.fill()
        with pytest.raises(OSError) as tagged:
            os.setxattr(path, "user.ebsfs.description", b"a description")
        assert tagged.value.errno == errno.ENOSPC
        with pytest.raises(OSError) as sized:
            os.truncate(path, 1 << 30)
        assert sized.value.errno == errno.ENOSPC
        with pytest.raises(OSError) as written, open(path, "r+b", buffering=0) as f:
            f.write(b"x" * 4096)
        assert written.value.errno == errno.ENOSPC
        disk.free()
        os.setxattr(path, "user.ebsfs.description", b"a description")
        os.truncate(path, 1 << 30)
        with open(path, "r+b", buffering=0) as f:
            assert f.write(b"x" * 4096) == 4096
        assert "failed unexpectedly" not in m.log_text()
    finally:
        if m is not None:
            m.stop()
        disk.teardown()


def test_a_spool_inside_a_directory_another_user_owns_is_refused(
    server: LocalServer, tmp_path: Path
) -> None:
    """EBSFS_SPOOL_ROOT under a directory another user made (say /tmp/ebsfs, made first by
    them): the spool itself is the mount's, but the owner of the directory above may rename
    it away while mounted and put a directory or symlink of theirs in its place."""
    import subprocess

    from tests.mounting import MountProc

    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, 65534, 65534)
    spool = theirs / "spool"
    m = MountProc(server, tmp_path / "mnt", spool_dir=spool, foreground=False)
    m.path.mkdir()
    done = subprocess.run(m.command(), env=m.env, capture_output=True, text=True, timeout=60)
    try:
        assert done.returncode == 6, done.stderr
    finally:
        m.stop()
