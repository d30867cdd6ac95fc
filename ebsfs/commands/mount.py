"""``ebsfs mount MOUNTPOINT``: completed snapshots as image files, new/ for writing."""

from __future__ import annotations

import argparse
import os
from dataclasses import replace

from ebsfs.cli import add_aws_options
from ebsfs.daemon.run import DaemonOptions, run_mount
from ebsfs.options import settings
from ebsfs.options.config import MountConfig

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
    what = p.add_argument_group("what to show")
    what.add_argument(
        "--snapshot",
        dest="snapshots",
        action="append",
        metavar="ID",
        default=None,
        help="show only this snapshot (repeatable); no EC2 call is made (but one for an id "
        "answering 404, to wait out the read lag of one that just completed), for IAM policies "
        "that grant only ebs:*",
    )
    what.add_argument(
        "--filter",
        dest="filters",
        action="append",
        metavar="tag:KEY=VALUE",
        default=None,
        help="DescribeSnapshots filter NAME=VALUE (repeatable; the same name twice ORs)",
    )
    what.add_argument("--owner", default=None,
                      help="owners of the listed snapshots, comma-separated: self, shared "
                      "(those others shared with this account), 12-digit account ids "
                      "(default: self)")
    what.add_argument(
        "--refresh",
        default=None,
        metavar="SECONDS",
        help="list the snapshots again this often (default: 60; 0: only on lookups)",
    )
    perf = p.add_argument_group("reading")
    perf.add_argument(
        "--cache-size", default=None, metavar="SIZE", help="block cache size (default: 256MiB)"
    )
    perf.add_argument(
        "--disk-cache",
        default=None,
        metavar="SIZE",
        help="keep up to SIZE of fetched blocks in a local file below the memory cache, so "
        "reading them again needs no request; 0 or at least 512KiB, one block (default: 0, "
        "off: the file holds snapshot data unencrypted; removed at unmount)",
    )
    perf.add_argument(
        "--cache-dir",
        default=None,
        metavar="DIR",
        help="where the --disk-cache file is made (default: /var/cache/ebsfs)",
    )
    perf.add_argument(
        "--read-ahead",
        default=None,
        metavar="SIZE",
        help="bytes fetched ahead of sequential readers (default: 8MiB; 0 turns it off)",
    )
    perf.add_argument(
        "--max-concurrency",
        default=None,
        metavar="N",
        help="API calls in flight at once, and the HTTP connection pool (default: 32)",
    )
    perf.add_argument(
        "--io-timeout",
        default=None,
        type=float,
        metavar="SECONDS",
        help="a read fails with EIO once no request of the mount has succeeded for this long "
        "(a stopped endpoint); throttling alone is retried up to 4 times this (default: 30)",
    )
    perf.add_argument(
        "--connect-timeout",
        default=None,
        metavar="SECONDS",
        help="HTTP connect timeout (default: 5)",
    )
    perf.add_argument(
        "--read-timeout", default=None, metavar="SECONDS", help="HTTP read timeout (default: 30)"
    )
    perf.add_argument(
        "--max-attempts",
        default=None,
        metavar="N",
        help="botocore attempts per request, retries included (default: 6)",
    )
    write = p.add_argument_group("writing")
    write.add_argument(
        "--spool-dir",
        default=None,
        metavar="DIR",
        help="where data written to new/ waits until it is stored; one mount at a time "
        "(default: /var/lib/ebsfs/spool/MOUNTPOINT escaped as systemd-escape --path does; "
        "$EBSFS_SPOOL_ROOT moves /var/lib/ebsfs/spool)",
    )
    write.add_argument(
        "--dirty-limit",
        default=None,
        metavar="SIZE",
        help="data written but not yet stored before writers wait (default: 128MiB)",
    )
    write.add_argument(
        "--scratch-limit",
        default=None,
        metavar="SIZE",
        help="blocks all scratch/ overlays may copy into the spool together (default: 1GiB)",
    )
    write.add_argument(
        "--writeback-delay",
        default=None,
        metavar="SECONDS",
        help="a fully written block is stored once unchanged this long (default: 0.5)",
    )
    write.add_argument(
        "--upload-process",
        dest="upload_process",
        action="store_const",
        const=True,
        default=None,
        help="store blocks from a child process with its own GIL (default: when the mount "
        "may use two CPUs or more)",
    )
    write.add_argument(
        "--no-upload-process",
        dest="upload_process",
        action="store_const",
        const=False,
        help="store blocks from the mount's own threads instead of a child process",
    )
    write.add_argument(
        "--read-only",
        action="store_const",
        const=True,
        default=None,
        help="refuse every change (EROFS), new/ included",
    )
    write.add_argument(
        "--allow-delete",
        action="store_const",
        const=True,
        default=None,
        help="let `rm MOUNTPOINT/snap-...` delete completed snapshots",
    )
    daemon = p.add_argument_group("daemon")
    daemon.add_argument(
        "--allow-other",
        action="store_const",
        const=True,
        default=None,
        help="let other users see the mount (FUSE allow_other)",
    )
    daemon.add_argument(
        "--nonempty",
        action="store_true",
        help="mount even if MOUNTPOINT holds files (they are hidden until the unmount)",
    )
    daemon.add_argument(
        "--foreground", action="store_true", help="stay in the foreground, logging to stderr"
    )
    daemon.add_argument(
        "--log-level", default=None, help="debug, info, warning or error (default: info)"
    )
    daemon.add_argument(
        "--log-file",
        default=None,
        metavar="PATH",
        help="append the log here (default: stderr in the foreground, else syslog)",
    )
    settings.add_config_option(p)
    add_aws_options(p)
    p.set_defaults(func=run)


def mount_config_from_args(args: argparse.Namespace) -> MountConfig:
    """The MountConfig: command line over environment over configuration file."""
    config = settings.mount_config(args.mountpoint, args)
    if args.io_timeout is not None:
        config = replace(config, io_timeout=args.io_timeout)
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
