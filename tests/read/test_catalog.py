"""The catalog (which snapshots a mount shows) and the mount's own checks, against fakes."""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterable
from pathlib import Path

import pytest
import trio

from ebsfs.aws.api import BlockPage, SnapshotInfo
from ebsfs.aws.runner import Calls
from ebsfs.cli import build_parser
from ebsfs.commands.mount import mount_config_from_args
from ebsfs.core import errors
from ebsfs.daemon.run import check_mountpoint
from ebsfs.fs.catalog import Catalog, CatalogConfig, is_snapshot_id

pytestmark = pytest.mark.timeout(30)


def info(sid: str, name: str = "", state: str = "completed", start: float = 0.0) -> SnapshotInfo:
    return SnapshotInfo(sid, state, 1, start, tags={"Name": name} if name else {})


class FakeEc2:
    """DescribeSnapshots over ``infos`` (each call's ids and owner recorded) and the one-page
    ListSnapshotBlocks probe of fixed ids (counted)."""

    def __init__(self, infos: list[SnapshotInfo]) -> None:
        self.infos = infos
        self.describes: list[tuple[str, ...]] = []
        self.owners: list[str] = []
        self.lists = 0

    def describe_snapshots(
        self,
        snapshot_ids: Iterable[str] = (),
        owner: str = "self",
        filters: Iterable[tuple[str, str]] = (),
    ) -> list[SnapshotInfo]:
        ids = tuple(snapshot_ids)
        self.describes.append(ids)
        self.owners.append(owner)
        return [i for i in self.infos if not ids or i.snapshot_id in ids]

    def list_blocks(
        self,
        snapshot_id: str,
        start_index: int = 0,
        max_results: int = 100,
        next_token: str | None = None,
    ) -> BlockPage:
        self.lists += 1
        if snapshot_id not in {i.snapshot_id for i in self.infos}:
            raise errors.NotFoundError("ResourceNotFoundException SNAPSHOT_NOT_FOUND")
        return BlockPage([], 0.0, None, 8)


A, B, C = "snap-0000000000000000a", "snap-0000000000000000b", "snap-0000000000000000c"


def catalog(api: FakeEc2, **config: object) -> Catalog:
    return Catalog(api, Calls(trio.CapacityLimiter(2)), CatalogConfig(**config))  # type: ignore[arg-type]


def test_listing_keeps_completed_and_names_point_at_the_newest() -> None:
    api = FakeEc2(
        [info(A, "web", start=1), info(B, "web", start=2), info(C, "db", state="pending")]
    )

    async def main() -> None:
        cat = catalog(api)
        await cat.load()
        assert set(cat.snapshots) == {A, B}
        assert cat.by_name() == {"web": B}

    trio.run(main)


def test_unknown_id_lookup_asks_ec2_once_per_interval() -> None:
    api = FakeEc2([info(A)])

    async def main() -> None:
        cat = catalog(api)
        await cat.load()
        api.infos.append(info(B, "late"))
        assert (await cat.lookup(B)) is not None  # made elsewhere after the listing
        assert await cat.lookup(C) is None
        assert await cat.lookup(C) is None  # rate-limited: no second call
        assert await cat.lookup("not-a-snapshot") is None

    trio.run(main)
    assert api.describes.count((C,)) == 1
    assert ("not-a-snapshot",) not in api.describes


def test_fixed_snapshots_make_no_ec2_call() -> None:
    api = FakeEc2([info(A), info(B)])

    async def main() -> None:
        cat = catalog(api, snapshot_ids=(A,))
        await cat.load()
        assert list(cat.snapshots) == [A] and cat.snapshots[A].volume_size == 8
        assert await cat.lookup(B) is None
        await cat.add_completed(B, "sealed")
        assert cat.by_name() == {"sealed": B}
        with pytest.raises(errors.NotFoundError, match=C):
            await catalog(api, snapshot_ids=(C,)).load()

    trio.run(main)
    assert api.describes == []


def test_snapshot_id_shape() -> None:
    assert is_snapshot_id("snap-0a1b2c3d4e5f60718")
    assert not is_snapshot_id("snap-XYZ") and not is_snapshot_id("by-name")


def test_mountpoint_checks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(errors.MountError, match="does not exist"):
        check_mountpoint(str(tmp_path / "nope"))
    (tmp_path / "file").write_text("")
    with pytest.raises(errors.MountError, match="not a directory"):
        check_mountpoint(str(tmp_path / "file"))
    monkeypatch.setattr("ebsfs.daemon.run.FUSE_DEVICE", str(tmp_path / "no-fuse"))
    with pytest.raises(errors.MountError, match="FUSE is unavailable"):
        check_mountpoint(str(tmp_path))


def test_mount_config_from_args(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("EBSFS_"):
            monkeypatch.delenv(name)
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    monkeypatch.setenv("EBSFS_CONFIG", str(empty))
    args: argparse.Namespace = build_parser().parse_args(
        [
            "mount",
            "/mnt/x",
            "--cache-size",
            "1GiB",
            "--read-ahead",
            "0",
            "--snapshot",
            A,
            "--snapshot",
            B,
            "--filter",
            "tag:Env=prod",
            "--max-concurrency",
            "7",
            "--io-timeout",
            "3",
        ]
    )
    config = mount_config_from_args(args)
    assert config.cache_size == 1 << 30 and config.read_ahead == 0
    assert config.snapshots == (A, B) and config.filters == (("tag:Env", "prod"),)
    assert config.max_concurrency == 7 and config.aws.max_pool_connections == 7
    assert config.io_timeout == 3.0 and not config.foreground
    defaults = mount_config_from_args(build_parser().parse_args(["mount", "/mnt/x"]))
    assert defaults.cache_size == 256 << 20 and defaults.owner == "self"
