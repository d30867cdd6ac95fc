"""``--rate-limit`` and ``--account-rate-limit``: AWS's quotas on GetSnapshotBlock and
PutSnapshotBlock (per snapshot, per account, reads and writes apart), answered as AWS answers
an excess. The bucket logic with a fake clock; the server over HTTP with boto3, counting the
throttled answers of a burst (no timing assumed: passes are bounded by what the rate allows
in the time the burst took)."""

import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import pytest
from botocore.exceptions import ClientError

from ebsfs.commands.server import build_config
from ebsfs.core.errors import UsageError
from ebsfs.server import limits
from ebsfs.server.limits import RateLimits
from tests.server.raw import sign
from tests.serverproc import (
    BLOCK_SIZE,
    LocalServer,
    get_block,
    list_blocks,
    put_block,
    upload_image,
)

SNAP_A = "snap-0123456789abcdef0"
SNAP_B = "snap-0123456789abcdef1"
GET, PUT = "GetSnapshotBlock", "PutSnapshotBlock"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def reasons(lim: RateLimits, op: str, snap: str, n: int, account: str = "000000000000"
            ) -> list[str | None]:
    out = []
    for _ in range(n):
        err = lim.check(op, snap, account)
        out.append(None if err is None else err.reason)
    return out


# -- the buckets, with a fake clock -----------------------------------------------------------


def test_a_snapshot_gets_rate_calls_a_second_with_one_second_of_burst() -> None:
    clock = Clock()
    lim = RateLimits(per_snapshot=5, clock=clock)
    assert reasons(lim, GET, SNAP_A, 6) == [None] * 5 + ["RESOURCE_LEVEL_THROTTLE"]
    err = lim.check(GET, SNAP_A, "000000000000")
    assert err is not None and (err.status, err.code) == (400, "RequestThrottledException")
    clock.now += 0.2  # one more token
    assert reasons(lim, GET, SNAP_A, 2) == [None, "RESOURCE_LEVEL_THROTTLE"]
    clock.now += 60  # never more than a second's worth saved up
    assert reasons(lim, GET, SNAP_A, 6) == [None] * 5 + ["RESOURCE_LEVEL_THROTTLE"]


def test_reads_writes_and_snapshots_are_counted_apart() -> None:
    lim = RateLimits(per_snapshot=2, clock=Clock())
    assert reasons(lim, GET, SNAP_A, 3)[-1] == "RESOURCE_LEVEL_THROTTLE"
    assert reasons(lim, PUT, SNAP_A, 2) == [None, None]
    assert reasons(lim, GET, SNAP_B, 2) == [None, None]
    # Only the block calls are limited.
    for op in ("ListSnapshotBlocks", "ListChangedBlocks", "StartSnapshot", "CompleteSnapshot"):
        assert reasons(lim, op, SNAP_A, 10) == [None] * 10


def test_the_account_limit_spans_snapshots_and_only_counts_what_passes() -> None:
    clock = Clock()
    lim = RateLimits(per_snapshot=2, per_account=3, clock=clock)
    assert reasons(lim, GET, SNAP_A, 3) == [None, None, "RESOURCE_LEVEL_THROTTLE"]
    # The refused call took no account token: one is left for B, then B is refused by the
    # account's quota, not its own.
    assert reasons(lim, GET, SNAP_B, 2) == [None, "ACCOUNT_THROTTLED"]
    assert reasons(lim, GET, SNAP_B, 1, account="111111111111") == [None]
    assert reasons(lim, PUT, SNAP_B, 1) == [None]
    assert lim.throttled == {"RESOURCE_LEVEL_THROTTLE": 1, "ACCOUNT_THROTTLED": 1}


def test_no_limit_by_default_and_malformed_ids_share_no_bucket() -> None:
    lim = RateLimits(clock=Clock())
    assert lim.idle and reasons(lim, GET, SNAP_A, 1000) == [None] * 1000
    lim = RateLimits(per_snapshot=1, per_account=2, clock=Clock())
    assert reasons(lim, GET, "x" * 5000, 3) == [None, None, "ACCOUNT_THROTTLED"]


def test_buckets_of_idle_snapshots_are_forgotten(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "PRUNE_AT", 100)
    clock = Clock()
    lim = RateLimits(per_snapshot=10, clock=clock)
    for n in range(1000):
        assert lim.check(GET, f"snap-{n:017x}", "000000000000") is None
        clock.now += 0.01
    assert len(lim._buckets) <= 101


# -- the server over HTTP ---------------------------------------------------------------------

RATE = 0.2  # calls a second: a burst of 30 lets through 1 + RATE x its duration


def burst(call: Callable[[], Any], n: int = 30) -> tuple[int, list[str], float]:
    """Make ``n`` calls (boto3, no retries): how many passed, the throttled ones' Reasons,
    and how long the burst took."""
    passed, why = 0, []
    start = time.monotonic()
    for _ in range(n):
        try:
            call()
            passed += 1
        except ClientError as exc:
            err = exc.response
            assert err["Error"]["Code"] == "RequestThrottledException", err
            assert err["ResponseMetadata"]["HTTPStatusCode"] == 400
            why.append(err.get("Reason"))
    return passed, why, time.monotonic() - start


def no_retries(srv: LocalServer) -> Any:
    """An ebs client that makes one attempt per call (every throttled answer is seen)."""
    return boto3.session.Session().client(
        "ebs", endpoint_url=srv.endpoint_url, region_name=srv.region,
        aws_access_key_id=srv.access_key_id, aws_secret_access_key=srv.secret_access_key,
        config=botocore.config.Config(retries={"mode": "standard", "total_max_attempts": 1},
                                      connect_timeout=5, read_timeout=30),
    )


def _one_block_snapshot(srv: LocalServer, fill: int) -> tuple[str, str]:
    """A completed snapshot of one block (its one put is a new snapshot's first call), and
    that block's token."""
    ebs, ec2 = srv.ebs(max_attempts=8), srv.ec2()
    snap = upload_image(ebs, ec2, bytes([fill]) * BLOCK_SIZE)
    tokens, _ = list_blocks(ebs, snap)
    return snap, tokens[0]


def test_block_calls_over_the_per_snapshot_rate_are_throttled(
    server_factory: Callable[..., LocalServer],
) -> None:
    srv = server_factory("--rate-limit", str(RATE))
    a, token_a = _one_block_snapshot(srv, 1)
    b, token_b = _one_block_snapshot(srv, 2)
    ebs = no_retries(srv)

    passed, why, took = burst(lambda: get_block(ebs, a, 0, token_a))
    assert why and set(why) == {"RESOURCE_LEVEL_THROTTLE"}
    assert passed <= 2 + RATE * took
    # Another snapshot has its own quota, and listing is not a block call.
    assert get_block(ebs, b, 0, token_b) == bytes([2]) * BLOCK_SIZE
    list_blocks(ebs, a)

    c = ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    passed, why, took = burst(lambda: put_block(ebs, c, 1, bytes(BLOCK_SIZE)))
    assert why and set(why) == {"RESOURCE_LEVEL_THROTTLE"}
    assert passed <= 2 + RATE * took
    d = ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    put_block(ebs, d, 0, bytes(BLOCK_SIZE))


def test_the_account_rate_spans_snapshots_and_counts_reads_and_writes_apart(
    server_factory: Callable[..., LocalServer],
) -> None:
    srv = server_factory("--account-rate-limit", str(RATE))
    a, token_a = _one_block_snapshot(srv, 1)
    ebs = no_retries(srv)
    c = ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    passed, why, took = burst(lambda: put_block(ebs, c, 1, bytes(BLOCK_SIZE)))
    assert why and set(why) == {"ACCOUNT_THROTTLED"}
    assert passed <= 2 + RATE * took
    # The writes used up the account's writes, not its reads.
    assert get_block(ebs, a, 0, token_a) == bytes([1]) * BLOCK_SIZE
    passed, why, took = burst(lambda: get_block(ebs, a, 0, token_a))
    assert why and set(why) == {"ACCOUNT_THROTTLED"}


def test_a_throttled_answer_closes_the_connection_as_aws_does(
    server_factory: Callable[..., LocalServer],
) -> None:
    srv = server_factory("--rate-limit", str(RATE))
    a, token_a = _one_block_snapshot(srv, 1)
    path = f"/snapshots/{a}/blocks/0?blockToken={token_a}"
    request = "".join(
        f"{k}: {v}\r\n" for k, v in sign(srv, "GET", path).items() if k.lower() != "host"
    )
    head = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\n{request}\r\n").encode()
    statuses = []
    for _ in range(30):
        with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as s:
            s.sendall(head)
            f = s.makefile("rb")
            status = int(f.readline().split()[1])
            headers = {}
            while (line := f.readline().decode("latin-1").strip()):
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
            f.read(int(headers["content-length"]))
            statuses.append(status)
            if status == 400:
                assert headers["x-amzn-errortype"].startswith("RequestThrottledException:")
                assert headers["connection"] == "close"
                assert f.read(1) == b""  # closed by the server, not left open
                return
            assert "connection" not in headers  # a served block keeps the connection
    pytest.fail(f"30 quick gets at {RATE}/s were never throttled: {statuses}")


def test_limits_come_from_the_flag_the_environment_or_the_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    conf = tmp_path / "ebsfs.toml"
    conf.write_text("[server]\nrate_limit = 300\naccount_rate_limit = 500.5\n")
    monkeypatch.setenv("EBSFS_CONFIG", str(conf))
    monkeypatch.delenv("EBSFS_SERVER_RATE_LIMIT", raising=False)
    monkeypatch.delenv("EBSFS_SERVER_ACCOUNT_RATE_LIMIT", raising=False)
    config = build_config({})
    assert (config.rate_limit, config.account_rate_limit) == (300.0, 500.5)
    monkeypatch.setenv("EBSFS_SERVER_RATE_LIMIT", "40")
    assert build_config({}).rate_limit == 40.0
    assert build_config({"rate_limit": 7.0}).rate_limit == 7.0
    monkeypatch.setenv("EBSFS_SERVER_RATE_LIMIT", "-3")
    with pytest.raises(UsageError, match="EBSFS_SERVER_RATE_LIMIT"):
        build_config({})
