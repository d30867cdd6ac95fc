"""The drafts of new/ against the fake API: flows A, B, D, the size rules, sealing, recovery."""

import errno
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio

from ebsfs.core.blocks import BLOCK_SIZE
from ebsfs.core.errors import (
    EbsfsError,
    FileTooLargeError,
    InvalidValueError,
    NotPermittedError,
    ReadOnlyError,
)
from ebsfs.write.drafts import Drafts, SnapshotDraft
from ebsfs.write.seal import SealTuning
from ebsfs.write.sink import PutTuning
from ebsfs.write.writeback import WriteTuning

from .fakes import DictReader, FakeApi

BS = BLOCK_SIZE
GIB = 1 << 30

Body = Callable[[Drafts, FakeApi], Awaitable[None]]


def run(tmp_path: Path, body: Body, api: FakeApi | None = None, fault: str = "") -> FakeApi:
    api = api or FakeApi()
    api.complete_fault = fault

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            drafts = await Drafts.open(
                api, tmp_path / "spool", nursery, trio.CapacityLimiter(8),
                lambda sid, gib: DictReader(api, sid),
                tuning=WriteTuning(delay=0.01),
                put_tuning=PutTuning(backoff=0.001, not_found_grace=0.2),
                seal_tuning=SealTuning(first_pause=0.01, max_pause=0.02),
            )
            await body(drafts, api)
            nursery.cancel_scope.cancel()

    trio.run(main)
    return api


async def spool_emptied(drafts: Drafts) -> None:
    """Wait for the background deletion of a completed draft's spool."""
    with trio.fail_after(5):
        while list(drafts.spool_root.iterdir()):
            await trio.sleep(0.01)


async def sealed(drafts: Drafts, draft: SnapshotDraft) -> str:
    done: list[str] = []
    drafts.on_completed(lambda name, sid: done.append(sid))
    await draft.seal()
    with trio.fail_after(10):
        while draft.state == "sealing":
            await trio.sleep(0.01)
    assert draft.state == "completed", draft.m.state_message
    assert draft.name not in drafts.names()
    return done[-1]


def test_flow_a_presized_streamed(tmp_path: Path) -> None:
    image = os.urandom(3 * BS + 1000)

    async def body(drafts: Drafts, api: FakeApi) -> None:
        d = await drafts.create("backup")
        assert d.xattrs()["user.ebsfs.state"] == b"draft"
        await d.truncate(3 << 30)
        await d.truncate(0)  # plain dd's O_TRUNC keeps the declared size
        assert d.size() == 3 * GIB
        for off in range(0, len(image), 128 << 10):
            await d.write(off, image[off : off + (128 << 10)])
        with trio.fail_after(5):  # started in the background: the writes did not wait
            while not d.snapshot_id:
                await trio.sleep(0.01)
        assert d.state == "pending"
        assert await d.read(0, len(image)) == image
        await d.fsync()
        sid = await sealed(drafts, d)
        snap = api.snaps[sid]
        assert snap.volume_size == 3 and snap.tags == {"Name": "backup"}
        assert api.image(sid, 8 * BS) == image + bytes(8 * BS - len(image))
        await spool_emptied(drafts)  # the spool is gone

    run(tmp_path, body)


def test_flow_b_size_from_the_data(tmp_path: Path) -> None:
    image = os.urandom(2 * BS + 12345)

    async def body(drafts: Drafts, api: FakeApi) -> None:
        d = await drafts.create("img")
        await d.write(0, image)
        assert d.size() == len(image) and not d.snapshot_id
        assert await d.read(0, 10**9) == image
        await d.fsync()
        assert d.size() == GIB and d.snapshot_id
        with pytest.raises(FileTooLargeError):
            await d.write(GIB - 1, b"xx")
        with pytest.raises(NotPermittedError):
            await d.truncate(5)
        sid = await sealed(drafts, d)
        assert api.image(sid, len(image)) == image and api.snaps[sid].volume_size == 1

    run(tmp_path, body)


def test_flow_b_size_fixed_at_close(tmp_path: Path) -> None:
    async def body(drafts: Drafts, api: FakeApi) -> None:
        d = await drafts.create("img")
        await d.write(GIB + 5, b"x")
        await d.release()
        assert d.size() == 2 * GIB and d.snapshot_id
        assert api.snaps[d.snapshot_id].volume_size == 2

    run(tmp_path, body)


def test_flow_d_incremental_child(tmp_path: Path) -> None:
    async def body(drafts: Drafts, api: FakeApi) -> None:
        parent = api.add_completed({0: b"a" * BS, 1: b"b" * BS, 5: b"c" * BS}, volume_size=1)
        d = await drafts.create("next")
        with pytest.raises(InvalidValueError):
            await d.setxattr("user.ebsfs.parent", b"snap-0123456789abcdef0")
        with pytest.raises(InvalidValueError):
            await d.setxattr("user.ebsfs.parent", b"not-a-snapshot")
        await d.setxattr("user.ebsfs.parent", parent.encode())
        await d.setxattr("user.ebsfs.description", b"nightly")
        await d.setxattr("user.ebsfs.tag.env", b"test")
        assert d.size() == GIB
        assert await d.read(BS - 2, 4) == b"aabb"
        await d.write(BS + 100, b"NEW")  # into an inherited block
        await d.write(3 * BS, bytes(BS))  # zeros over a hole of the parent: not stored
        await d.write(5 * BS, bytes(BS))  # zeros over the parent's data: stored
        with pytest.raises(NotPermittedError):
            await d.setxattr("user.ebsfs.description", b"late")
        await d.fsync()
        sid = await sealed(drafts, d)
        snap = api.snaps[sid]
        assert snap.parent == parent and snap.description == "nightly"
        assert snap.tags == {"Name": "next", "env": "test"}
        assert sorted(snap.own) == [1, 5]  # only what changed
        view = api.view(sid)
        assert view[1] == b"b" * 100 + b"NEW" + b"b" * (BS - 103)
        assert view[0] == b"a" * BS and view[5] == bytes(BS) and 3 not in view

    run(tmp_path, body)


def test_bad_input_changes_nothing(tmp_path: Path) -> None:
    async def body(drafts: Drafts, api: FakeApi) -> None:
        d = await drafts.create("x")
        with pytest.raises(FileTooLargeError):
            await d.truncate((64 << 40) + 1)
        with pytest.raises(InvalidValueError):
            await d.seal()  # nothing written
        await d.truncate(GIB)
        with pytest.raises(FileTooLargeError):
            await d.write(GIB, b"x")
        with pytest.raises(InvalidValueError):
            await d.setxattr("user.ebsfs.tag.Name", b"other")
        with pytest.raises(NotPermittedError):
            await d.setxattr("user.ebsfs.state", b"completed")
        await d.write(0, b"x")
        with pytest.raises(NotPermittedError):
            await d.truncate(GIB // 2)
        with pytest.raises(FileTooLargeError):
            await d.truncate(2 * GIB)
        with pytest.raises(NotPermittedError):
            await d.setxattr("user.ebsfs.tag.k", b"v")
        await d.fsync()
        assert d.size() == GIB and api.calls["start"] == 1
        await d.seal()
        with pytest.raises(NotPermittedError):
            await d.seal()  # sealing twice
        with pytest.raises(ReadOnlyError):
            await d.write(0, b"y")
        errnos = {FileTooLargeError: errno.EFBIG, NotPermittedError: errno.EPERM,
                  InvalidValueError: errno.EINVAL, ReadOnlyError: errno.EROFS}
        for cls, number in errnos.items():
            assert issubclass(cls, EbsfsError) and cls.errno == number

    run(tmp_path, body)


def test_rm_abandons_a_pending_snapshot(tmp_path: Path) -> None:
    async def body(drafts: Drafts, api: FakeApi) -> None:
        d = await drafts.create("gone")
        await d.truncate(GIB)
        await d.write(0, b"x" * BS)
        await d.fsync()
        sid = d.snapshot_id
        assert sid in api.snaps
        await drafts.remove("gone")
        assert sid not in api.snaps and drafts.names() == []
        assert not list(drafts.spool_root.iterdir())

    run(tmp_path, body)


def test_rm_while_the_snapshot_is_being_started_leaves_no_snapshot(tmp_path: Path) -> None:
    async def body(drafts: Drafts, api: FakeApi) -> None:
        for name, pause in (("now", 0.0), ("soon", 0.001)):
            d = await drafts.create(name)
            await d.truncate(GIB)
            await d.write(0, b"x" * BS)  # StartSnapshot begins in the background
            await trio.sleep(pause)
            await drafts.remove(name)
        await trio.sleep(0.1)
        assert drafts.names() == []
        assert [s for s in api.snaps.values() if s.state != "deleted"] == []

    run(tmp_path, body)


@pytest.mark.parametrize("fault", ["checksum", "count"])
def test_an_aws_error_keeps_the_spool_and_sealing_again_starts_afresh(
    tmp_path: Path, fault: str
) -> None:
    data = os.urandom(BS) * 2
    first: list[str] = []

    async def body(drafts: Drafts, api: FakeApi) -> None:
        d = await drafts.create("x")
        await d.write(0, data)
        await d.seal()
        with trio.fail_after(10):
            while d.state == "sealing":
                await trio.sleep(0.01)
        assert d.state == "error"
        message = d.xattrs()["user.ebsfs.state_message"].decode()
        expected = "Checksum mismatch" if fault == "checksum" else "Changed blocks count mismatch"
        assert expected in message
        assert await d.read(0, len(data)) == data  # nothing lost
        assert d.mode() == 0o400
        first.append(d.snapshot_id or "")
        api.complete_fault = ""
        sid = await sealed(drafts, d)
        assert sid != first[0] and api.image(sid, len(data)) == data

    run(tmp_path, body, fault=fault)


def test_a_restart_brings_back_every_accepted_byte(tmp_path: Path) -> None:
    api = FakeApi()
    a = os.urandom(3 * BS)

    async def first(drafts: Drafts, api: FakeApi) -> None:
        d = await drafts.create("img")
        await d.truncate(GIB)
        await d.write(0, a[: 2 * BS + 7])  # some blocks may be stored, some not
        await trio.sleep(0.05)
        other = await drafts.create("plain")  # flow B, not started
        await other.write(5, b"hello")

    async def second(drafts: Drafts, api: FakeApi) -> None:
        assert drafts.names() == ["img", "plain"]
        d = drafts.get("img")
        assert d is not None and d.state == "pending"
        assert await d.read(0, 2 * BS + 7) == a[: 2 * BS + 7]
        await d.write(2 * BS + 7, a[2 * BS + 7 :])  # finish the dd
        sid = await sealed(drafts, d)
        assert api.image(sid, len(a)) == a
        assert len(api.snaps) == 1  # the same snapshot as before the restart
        p = drafts.get("plain")
        assert p is not None and await p.read(0, 100) == bytes(5) + b"hello"

    run(tmp_path, first, api=api)
    run(tmp_path, second, api=api)


def test_a_restart_while_sealing_resumes(tmp_path: Path) -> None:
    api = FakeApi()
    data = os.urandom(BS)

    async def first(drafts: Drafts, api: FakeApi) -> None:
        d = await drafts.create("img")
        await d.write(0, data)
        api.put_delay = 0.5
        await d.seal()
        await trio.sleep(0.05)  # "crash" while storing
        api.put_delay = 0

    async def second(drafts: Drafts, api: FakeApi) -> None:
        d = drafts.get("img")
        assert d is not None
        done: list[str] = []
        drafts.on_completed(lambda name, sid: done.append(sid))
        with trio.fail_after(10):
            while not done:
                await trio.sleep(0.01)
        assert api.image(done[0], BS) == data

    run(tmp_path, first, api=api)
    run(tmp_path, second, api=api)


def test_rm_right_after_sealing_began_abandons_cleanly(tmp_path: Path) -> None:
    api = FakeApi()
    api.put_delay = 0.2

    async def body(drafts: Drafts, api: FakeApi) -> None:
        d = await drafts.create("x")
        await d.write(0, os.urandom(3 * BS))
        await d.seal()
        sid = d.snapshot_id
        await drafts.remove("x")  # while blocks are still being stored
        await trio.sleep(0.5)  # the sealing task must end quietly, not crash the nursery
        assert drafts.names() == [] and sid not in api.snaps
        assert not list(drafts.spool_root.iterdir())

    run(tmp_path, body, api=api)


def test_an_unreadable_spool_directory_does_not_stop_the_others(tmp_path: Path) -> None:
    api = FakeApi()

    async def first(drafts: Drafts, api: FakeApi) -> None:
        d = await drafts.create("good")
        await d.write(0, b"kept")
        broken = drafts.spool_root / "broken"
        broken.mkdir()
        (broken / "manifest.json").write_text("{not json")
        other = drafts.spool_root / "noname"
        other.mkdir()
        (other / "manifest.json").write_text("{}")

    async def second(drafts: Drafts, api: FakeApi) -> None:
        assert drafts.names() == ["good"]
        d = drafts.get("good")
        assert d is not None and await d.read(0, 4) == b"kept"

    run(tmp_path, first, api=api)
    run(tmp_path, second, api=api)
