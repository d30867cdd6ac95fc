"""``ebsfs diff SNAP_A SNAP_B``: the block ranges that differ between two snapshots.

ListChangedBlocks reports every index whose block version differs (written in one and not
the other, or written in both). Runs of consecutive indexes are merged into ranges and shown
with byte offsets and sizes; ``--json`` gives the same as exact numbers for scripts.
"""

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, TextIO

from ebsfs.aws.api import Api
from ebsfs.cli import add_aws_options
from ebsfs.core.blocks import BLOCK_SIZE, ID_XATTR
from ebsfs.core.errors import ApiError, EbsfsError, InvalidTokenError, NotFoundError, UsageError
from ebsfs.core.sizes import format_size
from ebsfs.daemon import mounttable
from ebsfs.options import settings
from ebsfs.read.remote import READ_LAG_GRACE, seen_completed, since_completion

SNAPSHOT_ID = re.compile(r"^snap-[0-9a-f]{8,17}\Z")

#: How long a 404 from two snapshots EC2 calls completed is treated as AWS's read-readiness
#: lag (reads can fail for up to about a minute after completion) rather than an answer,
#: counted from the later completion when EC2 says when (else from the first 404).
READINESS_WAIT = READ_LAG_GRACE
#: Times an expired page token is replaced by restarting after the last index seen.
TOKEN_RESTARTS = 3

EXAMPLES = """\
examples:
  ebsfs diff snap-0a1b2c3d4e5f60718 snap-0f1e2d3c4b5a69788
  ebsfs diff web-root-v1 web-root-v2          # Name tags, as in by-name/ (the newest of a name)
  ebsfs diff /mnt/ebs/by-name/web-root        # one snapshot: against its recorded parent
  ebsfs diff --json snap-0a1b2c3d4e5f60718 snap-0f1e2d3c4b5a69788 | jq .changed_bytes
  ebsfs diff --endpoint-url http://127.0.0.1:9537 snap-0a1b2c3d4e5f60718 snap-0f1e2d3c4b5a69788

Each snapshot is a snapshot id, a Name tag (the newest completed snapshot of that name), or
the path of a snapshot file on an ebsfs mount. With one snapshot, the other is its parent as
ebsfs recorded it (the ebsfs:parent tag set when it was started through new/). Both must be
completed and of one lineage (one the ancestor of the other, or siblings).
Exit codes: 0 listed, 2 bad arguments, 3 no such (completed) snapshot,
4 access denied, 5 endpoint unreachable, 1 other AWS errors (docs/errors.md).
"""


class ChangedBlocksApi(Protocol):
    """The part of ``ebsfs.aws.api.Api`` that diff uses."""

    def list_changed_blocks(
        self,
        first_id: str,
        second_id: str,
        start_index: int = 0,
        next_token: str | None = None,
    ) -> Any: ...

    def describe_snapshot(self, snapshot_id: str) -> Any: ...


@dataclass(frozen=True)
class BlockRange:
    """Blocks ``first`` to ``last`` inclusive."""

    first: int
    last: int

    @property
    def blocks(self) -> int:
        return self.last - self.first + 1

    @property
    def offset(self) -> int:
        return self.first * BLOCK_SIZE

    @property
    def size(self) -> int:
        return self.blocks * BLOCK_SIZE

    def label(self) -> str:
        return str(self.first) if self.first == self.last else f"{self.first}-{self.last}"


def merge_runs(indexes: Iterable[int]) -> Iterator[BlockRange]:
    """Consecutive ascending indexes as ranges; ApiError if the answer is out of order."""
    start = prev = -1
    for index in indexes:
        if index <= prev:
            raise ApiError(f"ListChangedBlocks answered block {index} after block {prev}")
        if start < 0:
            start = index
        elif index != prev + 1:
            yield BlockRange(start, prev)
            start = index
        prev = index
    if start >= 0:
        yield BlockRange(start, prev)


def changed_indexes(
    api: ChangedBlocksApi,
    first: str,
    second: str,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[int]:
    """Every changed index in order, following NextToken through empty pages."""
    page = _first_page(api, first, second, sleep)
    token: str | None = None
    last_seen = -1
    restarts = 0
    while True:
        for index, _first_token, _second_token in page.changed:
            last_seen = index
            yield index
        if not page.next_token:
            return
        if page.next_token == token:
            raise ApiError("ListChangedBlocks returned the same page token twice")
        token = page.next_token
        try:
            page = api.list_changed_blocks(first, second, next_token=token)
        except InvalidTokenError:
            # Page tokens live about an hour: resume after the last index already reported.
            if restarts >= TOKEN_RESTARTS:
                raise
            restarts += 1
            token = None
            page = api.list_changed_blocks(first, second, start_index=last_seen + 1)


def _first_page(
    api: ChangedBlocksApi, first: str, second: str, sleep: Callable[[float], None]
) -> Any:
    started = time.monotonic()
    delay = 2.0
    while True:
        try:
            return api.list_changed_blocks(first, second, start_index=0, next_token=None)
        except NotFoundError as exc:
            if not _both_completed(api, (first, second), exc):
                raise
            waited = time.monotonic() - started
            if min(since_completion(s, waited) for s in (first, second)) >= READINESS_WAIT:
                raise
            sleep(delay)
            delay = min(delay * 2, 15.0)


def _both_completed(api: ChangedBlocksApi, ids: Iterable[str], original: NotFoundError) -> bool:
    """True if EC2 says both are completed (so the 404 is AWS's read lag); else a clear error."""
    for snapshot_id in ids:
        try:
            info = api.describe_snapshot(snapshot_id)
        except NotFoundError:
            raise NotFoundError(f"no such snapshot: {snapshot_id}") from original
        except EbsfsError:
            return False  # no ec2:DescribeSnapshots permission, say: keep EBS's answer
        if info.state != "completed":
            raise NotFoundError(
                f"snapshot {snapshot_id} is {info.state}: only completed snapshots can be compared"
            ) from original
        completion = getattr(info, "completion_time", 0.0)
        if completion:
            seen_completed(snapshot_id, completion)
    return True


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "diff",
        help="changed block ranges between two snapshots",
        description="List the block ranges that differ between two snapshots of one lineage "
        "(EBS ListChangedBlocks), merged into runs, with a total.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "first", metavar="SNAP_A", help="the older snapshot (say, the parent): an id, a Name "
        "tag or a mount path; alone, the child to compare with its recorded parent"
    )
    parser.add_argument(
        "second", metavar="SNAP_B", nargs="?", help="the newer snapshot (say, the child)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    add_aws_options(parser)
    settings.add_config_option(parser)
    parser.set_defaults(func=run)




def resolve(api: Any, text: str) -> str:
    """A snapshot id from an id, a path on an ebsfs mount, or a Name tag."""
    if SNAPSHOT_ID.match(text):
        return text
    if text.startswith("snap-") and "/" not in text:
        raise UsageError(f"not a snapshot id: {text!r} (expected snap-<hex>)")
    if "/" in text or os.path.exists(text):
        try:
            found = os.getxattr(text, ID_XATTR).decode(errors="replace")
        except OSError as exc:
            raise UsageError(
                f"{text}: not a snapshot file of an ebsfs mount ({exc.strerror})"
            ) from None
        # Anyone may set the attribute on a file of their own: only a mount's answer counts.
        fstype = mounttable.fstype_of(text)
        if fstype != mounttable.FSTYPE:
            raise UsageError(
                f"{text}: not a snapshot file of an ebsfs mount (it is on {fstype or 'no mount'})"
            )
        if not SNAPSHOT_ID.match(found):
            raise UsageError(f"{text}: not a completed snapshot (no snapshot id yet)")
        return found
    named = [
        i for i in api.describe_snapshots((), "self", [("tag:Name", text)])
        if i.state == "completed" and i.name == text
    ]
    if not named:
        raise NotFoundError(f"no completed snapshot named {text!r}")
    return str(max(named, key=lambda i: (i.start_time, i.snapshot_id)).snapshot_id)


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out if out is not None else sys.stdout
    for text in (args.first, args.second):
        if text is not None and not text.strip():
            raise UsageError("a snapshot must be an id, a Name tag or a path, not empty")
        if text is not None and text.startswith("snap-") and "/" not in text:
            resolve(None, text)  # a malformed id is a usage error before any request
    api = Api(settings.aws_config(args))
    if args.second is None:
        second = resolve(api, args.first)
        first = api.describe_snapshot(second).parent
        if not first:
            raise UsageError(
                f"{args.first} ({second}) has no recorded parent: name both snapshots"
            )
    else:
        first, second = resolve(api, args.first), resolve(api, args.second)
    ranges = merge_runs(changed_indexes(api, first, second))
    if args.json:
        _print_json(first, second, list(ranges), out)
    else:
        _print_table(ranges, out)
    return 0


def _print_table(ranges: Iterable[BlockRange], out: TextIO) -> None:
    row = "{:<24} {:>12} {:>12}"
    count = blocks = 0
    for r in ranges:
        if count == 0:
            print(row.format("BLOCKS", "OFFSET", "SIZE"), file=out)
        print(row.format(r.label(), format_size(r.offset), format_size(r.size)), file=out)
        count += 1
        blocks += r.blocks
    if count == 0:
        print("no changed blocks", file=out)
        return
    noun = "range" if count == 1 else "ranges"
    block_noun = "block" if blocks == 1 else "blocks"
    print(
        f"total: {blocks} {block_noun} ({format_size(blocks * BLOCK_SIZE)}) in {count} {noun}",
        file=out,
    )


def _print_json(first: str, second: str, ranges: list[BlockRange], out: TextIO) -> None:
    blocks = sum(r.blocks for r in ranges)
    document = {
        "first_snapshot": first,
        "second_snapshot": second,
        "block_size": BLOCK_SIZE,
        "ranges": [
            {
                "first_block": r.first,
                "last_block": r.last,
                "blocks": r.blocks,
                "offset": r.offset,
                "size": r.size,
            }
            for r in ranges
        ],
        "changed_blocks": blocks,
        "changed_bytes": blocks * BLOCK_SIZE,
    }
    json.dump(document, out, indent=2)
    out.write("\n")
