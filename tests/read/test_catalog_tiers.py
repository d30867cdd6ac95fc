"""The catalog leaves out what the EBS direct APIs cannot read (archived, Outposts) and looks
ids up without the mount's owner (snapshots shared with the account), against a fake."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import pytest
import trio

from ebsfs.aws.api import BlockPage, SnapshotInfo
from ebsfs.fs.catalog import Catalog, CatalogConfig
from ebsfs.read.remote import Calls

pytestmark = pytest.mark.timeout(30)

A, B, C, D = (f"snap-000000000000000{c}a" for c in "0123")


class Ec2:
    def __init__(self, infos: list[SnapshotInfo]) -> None:
        self.infos = infos
        self.describes: list[tuple[tuple[str, ...], str]] = []

    def describe_snapshots(
        self,
        snapshot_ids: Iterable[str] = (),
        owner: str = "self",
        filters: Iterable[tuple[str, str]] = (),
    ) -> list[SnapshotInfo]:
        ids = tuple(snapshot_ids)
        self.describes.append((ids, owner))
        return [i for i in self.infos if not ids or i.snapshot_id in ids]

    def list_blocks(
        self, snapshot_id: str, start_index: int = 0, max_results: int = 100,
        next_token: str | None = None,
    ) -> BlockPage:
        raise AssertionError("no probe expected")


def test_archived_and_outposts_snapshots_are_left_out(caplog: pytest.LogCaptureFixture) -> None:
    api = Ec2([
        SnapshotInfo(A, "completed", 1, 0.0),
        SnapshotInfo(B, "completed", 1, 0.0, storage_tier="archive"),
        SnapshotInfo(C, "completed", 1, 0.0, outpost_arn="arn:aws:outposts:us-east-1:1:o/op-1"),
    ])

    async def main() -> None:
        cat = Catalog(api, Calls(trio.CapacityLimiter(2)), CatalogConfig(owner="self,shared"))
        await cat.load()
        assert set(cat.snapshots) == {A}
        assert api.describes == [((), "self,shared")]
        with caplog.at_level(logging.WARNING, logger="ebsfs.fs.catalog"):
            assert await cat.lookup(B) is None
            assert await cat.lookup(B) is None  # within the interval: no second call
            assert await cat.lookup(C) is None
        assert api.describes[1:] == [((B,), ""), ((C,), "")]
        text = caplog.text
        assert f"{B} is archived" in text and f"{C} is an Outposts local snapshot" in text

    trio.run(main)


def test_unknown_id_is_looked_up_without_owner() -> None:
    api = Ec2([SnapshotInfo(D, "completed", 1, 0.0, owner_id="111122223333")])

    async def main() -> None:
        cat = Catalog(api, Calls(trio.CapacityLimiter(2)), CatalogConfig(owner="self"))
        found = await cat.lookup(D)
        assert found is not None and found.owner_id == "111122223333"
        assert api.describes == [((D,), "")]

    trio.run(main)
