"""``ebsfs mount MOUNTPOINT``: completed snapshots as image files, new/ for writing."""

from __future__ import annotations

import argparse
import os
from dataclasses import replace

from ebsfs.daemon.run import DaemonOptions, run_mount
from ebsfs.options import settings, table
from ebsfs.options.config import MountConfig
from ebsfs.options.flags import add_flags

EXAMPLES = """\
examples:
  ebsfs mount /mnt/snapshots
  ebsfs mount /mnt/snapshots --filter tag:Env=prod --cache-size 1GiB
  ebsfs mount /mnt/one --snapshot snap-0a1b2c3d4e5f60718 --read-only
  losetup -r -f --show /mnt/snapshots/snap-0a1b2c3d4e5f60718

Returns once the mount answers (the daemon keeps serving); stop it with `ebsfs umount`.
Reads are checked against each block's SHA256; a block that cannot be read after retries
fails the read with EIO and one log line. The mount's counters: `ebsfs stats MOUNTPOINT`.
Exit codes: 0 mounted, 2 bad option, 3 a --snapshot that does not exist, 4 access denied or
no credentials, 5 endpoint unreachable, 6 FUSE unavailable, a bad, busy or non-empty mount
point (--nonempty mounts over files), or a spool another mount holds (the message names it).
Once mounted it prints where the daemon logs.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``mount`` sub-command."""
    p = subparsers.add_parser(
        "mount",
        help="mount the snapshots as files",
        description="Mount completed EBS snapshots as read-only image files, and new/ "
        "for writing new snapshots. Options not given come from the environment "
        "(EBSFS_*) or the configuration file.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("mountpoint", metavar="MOUNTPOINT", help="an existing empty directory")
    add_flags(p, table.MOUNT)
    p.set_defaults(func=run)


def mount_config_from_args(args: argparse.Namespace) -> MountConfig:
    """The MountConfig: command line over environment over configuration file."""
    config = settings.mount_config(args.mountpoint, args)
    # One HTTP connection per call that may be in flight.
    aws = replace(config.aws, max_pool_connections=config.max_concurrency)
    # The daemon works from /: a relative directory means the one it was given from here.
    return replace(
        config,
        aws=aws,
        cache_dir=os.path.abspath(config.cache_dir),
        spool_dir=os.path.abspath(config.spool_dir),
    )


def run(args: argparse.Namespace) -> int:
    config = mount_config_from_args(args)
    return run_mount(config, DaemonOptions(log_file=args.log_file, nonempty=args.nonempty))
