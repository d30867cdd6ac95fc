"""The catalog leaves out what the EBS direct APIs cannot read (archived, Outposts) and looks
ids up without the mount's owner (snapshots shared with the account), against a fake."""

from __future__ import annotations

import logging

import pytest
import trio

from ebsfs.aws.api import SnapshotInfo
from ebsfs.aws.runner import Calls
from ebsfs.fs.catalog import Catalog, CatalogConfig
from tests.read.test_catalog import FakeEc2

pytestmark = pytest.mark.timeout(30)

A, B, C, D = (f"snap-000000000000000{c}a" for c in "0123")


def asked(api: FakeEc2) -> list[tuple[tuple[str, ...], str]]:
    """Every DescribeSnapshots call: its ids and owner; no probe of fixed ids expected."""
    assert api.lists == 0
    return list(zip(api.describes, api.owners, strict=True))


def test_archived_and_outposts_snapshots_are_left_out(caplog: pytest.LogCaptureFixture) -> None:
    api = FakeEc2([
        SnapshotInfo(A, "completed", 1, 0.0),
        SnapshotInfo(B, "completed", 1, 0.0, storage_tier="archive"),
        SnapshotInfo(C, "completed", 1, 0.0, outpost_arn="arn:aws:outposts:us-east-1:1:o/op-1"),
    ])

    async def main() -> None:
        cat = Catalog(api, Calls(trio.CapacityLimiter(2)), CatalogConfig(owner="self,shared"))
        await cat.load()
        assert set(cat.snapshots) == {A}
        assert asked(api) == [((), "self,shared")]
        with caplog.at_level(logging.WARNING, logger="ebsfs.fs.catalog"):
            assert await cat.lookup(B) is None
            assert await cat.lookup(B) is None  # within the interval: no second call
            assert await cat.lookup(C) is None
        assert asked(api)[1:] == [((B,), ""), ((C,), "")]
        text = caplog.text
        assert f"{B} is archived" in text and f"{C} is an Outposts local snapshot" in text

    trio.run(main)


def test_unknown_id_is_looked_up_without_owner() -> None:
    api = FakeEc2([SnapshotInfo(D, "completed", 1, 0.0, owner_id="111122223333")])

    async def main() -> None:
        cat = Catalog(api, Calls(trio.CapacityLimiter(2)), CatalogConfig(owner="self"))
        found = await cat.lookup(D)
        assert found is not None and found.owner_id == "111122223333"
        assert asked(api) == [((D,), "")]

    trio.run(main)
