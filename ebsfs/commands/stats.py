"""``ebsfs stats MOUNTPOINT``: the counters of a running mount.

The mount publishes them as JSON in the ``user.ebsfs.stats`` extended attribute of its root
directory (``getfattr -n user.ebsfs.stats --only-values MOUNTPOINT`` shows the same).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from ebsfs.core.blocks import STATS_XATTR
from ebsfs.core.errors import MountError
from ebsfs.daemon import mounttable


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``stats`` sub-command."""
    p = subparsers.add_parser(
        "stats",
        help="a mount's counters",
        description="Cache hits and misses, requests by API and outcome, bytes, retries and "
        "errors of a running mount.",
        epilog="""\
examples:
  ebsfs stats /mnt/snapshots
  ebsfs stats --json /mnt/snapshots | jq .read.cache_hits
  watch -n 5 ebsfs stats /mnt/snapshots

What each counter tells an operator: docs/operations.md. Exit codes: 0 printed, 6 not an
ebsfs mount (or the mount is gone).
""",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("--json", action="store_true", help="print the counters as JSON")
    p.set_defaults(func=run)


def read_stats(mountpoint: str) -> dict[str, Any]:
    """The counters of the mount at ``mountpoint``: only from a ``fuse.ebsfs`` mount, and
    only a JSON object (any filesystem can carry a ``user.ebsfs.stats`` attribute)."""
    mountpoint, _ = mounttable.ebsfs_mount(
        mountpoint, "is not an ebsfs mount (nothing is mounted there)"
    )
    try:
        raw = mounttable.bounded_getxattr(mountpoint, STATS_XATTR)
    except TimeoutError as exc:
        raise MountError(f"{exc} (its daemon hangs?)") from None
    except OSError as exc:
        raise MountError(f"{mountpoint} is not an ebsfs mount ({exc.strerror})") from None
    try:
        result = json.loads(raw)
    except (ValueError, RecursionError):  # UnicodeDecodeError included; absurd nesting
        result = None
    if not isinstance(result, dict):
        raise MountError(f"{mountpoint}: its {STATS_XATTR} attribute is not the counters' JSON")
    return result


def _flatten(prefix: str, value: Any, out: list[tuple[str, Any]]) -> None:
    if isinstance(value, dict):
        for key in sorted(value):
            _flatten(f"{prefix}.{key}" if prefix else str(key), value[key], out)
    else:
        out.append((prefix, value))


def run(args: argparse.Namespace) -> int:
    stats = read_stats(args.mountpoint)
    if args.json:
        print(json.dumps(stats, indent=2, sort_keys=True))
        return 0
    rows: list[tuple[str, Any]] = []
    try:
        _flatten("", stats, rows)
    except RecursionError:
        raise MountError(f"{args.mountpoint}: its counters nest too deeply") from None
    width = max((len(k) for k, _ in rows), default=0)
    for key, value in rows:
        # The mount wrote these: no control characters reach the terminal.
        print(mounttable.printable(f"{key:<{width}}  {value}"))
    return 0
