"""``--owner``: its values, the listings they make, and its fstab form."""

from __future__ import annotations

from typing import Any

import pytest

from ebsfs.aws.api import Api, parse_owner
from ebsfs.core.errors import UsageError
from ebsfs.options.config import AwsConfig
from ebsfs.options.fstab import translate_options


def test_parse_owner() -> None:
    assert parse_owner("self") == (["self"], False)
    assert parse_owner("") == (["self"], False)
    assert parse_owner("self,shared") == (["self"], True)
    assert parse_owner("shared") == ([], True)
    assert parse_owner("123456789012, self,self") == (["123456789012", "self"], False)
    for bad in ("all", "amazon", "12345", "self,"):
        with pytest.raises(UsageError, match="--owner"):
            parse_owner(bad)


class _Pages:
    def __init__(self, calls: list[dict[str, Any]], answers: dict[str, list[str]]) -> None:
        self.calls = calls
        self.answers = answers

    def paginate(self, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        key = "shared" if "RestorableByUserIds" in kwargs else "owned"
        if "SnapshotIds" in kwargs:
            key = "ids"
        items = [{"SnapshotId": s, "State": "completed", "StorageTier": "archive"}
                 for s in self.answers[key]]
        return [{"Snapshots": items}]


class _Ec2:
    def __init__(self, pages: _Pages) -> None:
        self.pages = pages

    def get_paginator(self, name: str) -> _Pages:
        assert name == "describe_snapshots"
        return self.pages


def test_listings_merge_and_ids_go_without_owner() -> None:
    calls: list[dict[str, Any]] = []
    api = Api(AwsConfig(endpoint_url="http://127.0.0.1:9", region="us-east-1"))
    api._ec2 = _Ec2(_Pages(calls, {"owned": ["snap-1", "snap-2"], "shared": ["snap-2", "snap-3"],
                                   "ids": ["snap-9"]}))
    infos = api.describe_snapshots((), "self,shared", [("tag:Env", "prod")])
    assert [i.snapshot_id for i in infos] == ["snap-1", "snap-2", "snap-3"]
    assert infos[0].storage_tier == "archive"
    assert calls[0]["OwnerIds"] == ["self"] and "RestorableByUserIds" not in calls[0]
    assert calls[1]["RestorableByUserIds"] == ["self"] and "OwnerIds" not in calls[1]
    assert all(c["Filters"] == [{"Name": "tag:Env", "Values": ["prod"]}] for c in calls)
    calls.clear()
    api.describe_snapshots(["snap-9"], "self")
    assert calls == [{"SnapshotIds": ["snap-9"]}]


def test_fstab_owner_list() -> None:
    assert translate_options(["owner=self:shared"]) == ["--owner", "self,shared"]
    assert translate_options(["owner=123456789012"]) == ["--owner", "123456789012"]
