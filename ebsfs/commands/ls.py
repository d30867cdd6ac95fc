"""``ebsfs ls``: a table of the snapshots (every state), from EC2 DescribeSnapshots."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict

from ebsfs.aws.api import Api, SnapshotInfo
from ebsfs.cli import add_aws_options
from ebsfs.core.errors import UsageError
from ebsfs.daemon.mounttable import printable
from ebsfs.options import settings


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``ls`` sub-command."""
    p = subparsers.add_parser(
        "ls",
        help="list the snapshots",
        description="List snapshots: id, state, size, name, progress, start time.",
        epilog="""\
examples:
  ebsfs ls
  ebsfs ls --filter tag:Env=prod --filter status=completed
  ebsfs ls --snapshot snap-0a1b2c3d4e5f60718 --json
  ebsfs ls --region eu-west-1 --owner 123456789012
  ebsfs ls --owner self,shared

Every state and tier is listed (pending, completed, error; standard, archive), unlike the
mount, which shows only completed snapshots in the standard tier. A last line, on stderr,
says which endpoint was used and why. Exit codes: 0 listed, 2 bad option or configuration,
3 a --snapshot that does not exist, 4 access denied, 5 endpoint unreachable (docs/errors.md).
""",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--snapshot",
        dest="snapshots",
        action="append",
        default=[],
        metavar="ID",
        help="only this snapshot (repeatable)",
    )
    p.add_argument(
        "--filter",
        dest="filters",
        action="append",
        default=[],
        metavar="tag:KEY=VALUE",
        help="DescribeSnapshots filter (repeatable)",
    )
    p.add_argument(
        "--owner",
        default="self",
        help="comma-separated: self, shared (snapshots others shared with this account), "
        "12-digit account ids (default: self)",
    )
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    settings.add_config_option(p)
    add_aws_options(p)
    p.set_defaults(func=run)


def _filters(texts: list[str]) -> list[tuple[str, str]]:
    out = []
    for text in texts:
        name, sep, value = text.partition("=")
        if not sep or not name:
            raise UsageError(f"--filter: expected NAME=VALUE such as tag:Env=prod, not {text!r}")
        out.append((name, value))
    return out


def _iso(epoch: float) -> str:
    """ISO 8601 in UTC, as the AWS CLI prints StartTime."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + f".{int(epoch % 1 * 1000):03d}Z"


def table(infos: list[SnapshotInfo]) -> str:
    """The table ``ebsfs ls`` prints."""
    header = ("SNAPSHOT", "STATE", "TIER", "SIZE", "NAME", "PARENT", "PROGRESS", "STARTED")
    rows: list[tuple[str, ...]] = [header]
    for i in sorted(infos, key=lambda i: (i.start_time, i.snapshot_id)):
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(i.start_time))
        # Whoever may tag a snapshot (or answer for the endpoint) must not drive the
        # terminal or forge rows: control characters are escaped.
        cells = (
            i.snapshot_id,
            i.state,
            i.storage_tier,
            f"{i.volume_size} GiB",
            i.name or "-",
            i.parent or "-",
            i.progress or "-",
            started + "Z",
        )
        rows.append(tuple(printable(cell) for cell in cells))
    widths = [max(len(r[c]) for r in rows) for c in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def run(args: argparse.Namespace) -> int:
    api = Api(settings.aws_config(args))
    infos = api.describe_snapshots(args.snapshots, args.owner, _filters(args.filters))
    if args.json:
        rows = [asdict(i) | {"name": i.name, "start_time": _iso(i.start_time)} for i in infos]
        print(json.dumps(rows, indent=2, sort_keys=True))
    else:
        print(table(infos))
    # On stderr, so that the table and --json stay what scripts parse; after them, so that an
    # error stays the one line a command prints and a reader that went away hears nothing.
    sys.stdout.flush()
    print(f"endpoint: {api.endpoints.describe()}", file=sys.stderr)
    return 0
