"""The one table of options: each row names its flag, environment variables, TOML key, fstab
``-o`` names, help and the config it feeds. Flags (flags.py), the file and environment layers
(settings.py) and the fstab translation (fstab.py) are all read from it.

Defaults live in the config dataclasses (config.py); ``{default}`` in a help text shows them.
The user's view of these options: docs/usage.md and docs/operations.md.
"""

from collections.abc import Callable, Iterator
from dataclasses import MISSING, dataclass, fields
from typing import Any, Literal

from ebsfs.core.redact import LEVELS
from ebsfs.core.sizes import format_size
from ebsfs.options import parsers as p
from ebsfs.options.config import (
    CONFIG_ENV,
    DEFAULT_CONFIG_PATH,
    DEFAULT_DATA_DIR,
    DEFAULT_SERVER_HOST,
    DEFAULT_SERVER_PORT,
    AwsConfig,
    MountConfig,
    ServerConfig,
)

Coerce = Callable[[Any], Any]
#: value: ``--x VALUE``; append: repeatable; switch: ``--x`` sets True (None when absent, so
#: the environment and file may decide); flag: ``--x`` for the command alone (False when
#: absent); tristate: ``--x`` and ``--no-x``; none: no flag (file and environment only).
Kind = Literal["value", "append", "switch", "flag", "tristate", "none"]
#: What fstab does with ``:`` in a value: one flag per part, or commas (``,`` ends an option).
Colon = Literal["repeat", "comma"] | None

#: The config dataclass each section feeds (where the defaults are).
CONFIGS: dict[str, type] = {"aws": AwsConfig, "mount": MountConfig, "server": ServerConfig}
#: ``EBSFS_<KEY>`` or ``EBSFS_SERVER_<KEY>``.
ENV_PREFIX = {"aws": "EBSFS_", "mount": "EBSFS_", "server": "EBSFS_SERVER_"}


@dataclass(frozen=True)
class Option:
    """One option. ``section`` is the TOML table and config it feeds (None: the command alone);
    ``coerce`` reads the environment and the file (None: command line only)."""

    name: str
    section: str | None
    help: str = ""
    coerce: Coerce | None = None
    kind: Kind = "value"
    metavar: str | None = None
    group: str | None = None
    #: The flag when it is not ``--`` and the name with dashes.
    flag_name: str = ""
    env_extra: tuple[str, ...] = ()
    #: Environment variables that botocore reads itself: when set, the file's value is dropped
    #: so that botocore's own resolution (which may differ per service) wins.
    yields_to: tuple[str, ...] = ()
    #: ``-o`` names; None: the name itself for a flag of ``ebsfs mount``.
    fstab_names: tuple[str, ...] | None = None
    fstab_colon: Colon = None
    #: argparse's type for the flag (the server's flags); else the text goes to ``coerce``.
    argtype: Callable[[str], Any] | None = None
    choices: tuple[str, ...] | None = None
    #: Help of ``--no-NAME`` (tristate).
    help_off: str = ""

    @property
    def flag(self) -> str | None:
        if self.kind == "none":
            return None
        return self.flag_name or "--" + self.name.replace("_", "-")

    @property
    def fstab(self) -> tuple[str, ...]:
        """Its ``-o`` names (read for the options of ``ebsfs mount`` alone)."""
        return (self.name,) if self.fstab_names is None else self.fstab_names

    @property
    def off_flag(self) -> str:
        return "--no-" + self.name.replace("_", "-")

    @property
    def env(self) -> tuple[str, ...]:
        """The environment variables that carry it, first found wins."""
        if self.coerce is None or self.section is None:
            return ()
        return (ENV_PREFIX[self.section] + self.name.upper(), *self.env_extra)

    @property
    def toml_key(self) -> str | None:
        return self.name if self.coerce is not None and self.section is not None else None

    def default(self) -> Any:
        """The default of the config field it feeds (MISSING when there is none)."""
        cls = CONFIGS.get(self.section or "")
        found = {f.name: f for f in fields(cls)} if cls is not None else {}
        return found[self.name].default if self.name in found else MISSING

    def help_text(self) -> str:
        """The help, its ``{default}`` filled in from the config dataclass."""
        if "{default}" not in self.help:
            return self.help
        value = self.default()
        if value is MISSING or value is None:
            raise ValueError(f"{self.name}: the help shows a default the config lacks")
        if self.coerce in (p.size, p.disk_cache):
            shown = format_size(value).replace(" ", "")
        elif isinstance(value, float):
            shown = f"{value:g}"
        else:
            shown = str(value)
        return self.help.replace("{default}", shown)


SHOW, READ, WRITE, DAEMON = "what to show", "reading", "writing", "daemon"
SELECTION, FAULTS, TIMING = "AWS selection", "fault injection", "timing"
LIMITS = "AWS's rate limits"

CONFIG = Option(
    "config", None, metavar="PATH",
    help=f"TOML configuration file (default: ${CONFIG_ENV}, else {DEFAULT_CONFIG_PATH} if it "
    "exists); the command line and the environment override it",
)

#: The AWS options every command that talks to AWS takes.
AWS_SELECTION: tuple[Option, ...] = (
    Option("endpoint_url", "aws", coerce=p.text, metavar="URL", group=SELECTION,
           yields_to=("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_EBS", "AWS_ENDPOINT_URL_EC2"),
           help="endpoint for both the ebs and ec2 clients (default: AWS_ENDPOINT_URL_EBS/_EC2,"
           " else AWS when a region is configured, else the local server)"),
    Option("region", "aws", coerce=p.region, group=SELECTION,
           env_extra=("AWS_REGION", "AWS_DEFAULT_REGION"),
           help="AWS region (default: from the environment or profile)"),
    Option("profile", "aws", coerce=p.text, group=SELECTION, env_extra=("AWS_PROFILE",),
           help="AWS profile from ~/.aws/config"),
)

#: ``ebsfs mount``'s options, in the order its help lists them.
MOUNT: tuple[Option, ...] = (
    Option("snapshots", "mount", coerce=p.snapshot_ids, kind="append", metavar="ID",
           group=SHOW, flag_name="--snapshot", fstab_names=("snapshot",),
           fstab_colon="repeat",
           help="show only this snapshot (repeatable); no EC2 call is made (but one for an "
           "id answering 404, to wait out the read lag of one that just completed), for IAM "
           "policies that grant only ebs:*"),
    Option("filters", "mount", coerce=p.filters, kind="append", metavar="tag:KEY=VALUE",
           group=SHOW, flag_name="--filter", fstab_names=("filter",),
           help="DescribeSnapshots filter NAME=VALUE (repeatable; the same name twice ORs)"),
    Option("owner", "mount", coerce=p.text, group=SHOW, fstab_colon="comma",
           help="owners of the listed snapshots, comma-separated: self, shared (those others "
           "shared with this account), 12-digit account ids (default: {default})"),
    Option("refresh", "mount", coerce=p.number, metavar="SECONDS", group=SHOW,
           help="list the snapshots again this often (default: {default}; 0: only on "
           "lookups)"),
    Option("cache_size", "mount", coerce=p.size, metavar="SIZE", group=READ,
           help="block cache size (default: {default})"),
    Option("disk_cache", "mount", coerce=p.disk_cache, metavar="SIZE", group=READ,
           help="keep up to SIZE of fetched blocks in a local file below the memory cache, so "
           "reading them again needs no request; 0 or at least 512KiB, one block (default: "
           "0, off: the file holds snapshot data unencrypted; removed at unmount)"),
    Option("cache_dir", "mount", coerce=p.text, metavar="DIR", group=READ,
           help="where the --disk-cache file is made (default: {default})"),
    Option("read_ahead", "mount", coerce=p.size, metavar="SIZE", group=READ,
           help="bytes fetched ahead of sequential readers (default: {default}; 0 turns it "
           "off)"),
    Option("max_concurrency", "mount", coerce=p.concurrency, metavar="N", group=READ,
           help="the most API calls in flight at once (the ceiling of adaptive windows), "
           "and the HTTP connection pool (default: "
           f"{{default}}; at most {p.MAX_CONCURRENCY})"),
    Option("io_timeout", "mount", coerce=p.number, metavar="SECONDS", group=READ,
           help="a read fails with EIO once no request of the mount has succeeded for this "
           "long (a stopped endpoint); throttling alone is retried up to 4 times this "
           "(default: {default})"),
    Option("connect_timeout", "aws", coerce=p.positive, metavar="SECONDS", group=READ,
           help="HTTP connect timeout (default: {default})"),
    Option("read_timeout", "aws", coerce=p.positive, metavar="SECONDS", group=READ,
           help="HTTP read timeout (default: {default})"),
    Option("max_attempts", "aws", coerce=p.attempts, metavar="N", group=READ,
           help="botocore attempts per request, retries included (default: {default})"),
    Option("spool_dir", "mount", coerce=p.text, metavar="DIR", group=WRITE,
           help="where data written to new/ waits until it is stored; one mount at a time "
           "(default: /var/lib/ebsfs/spool/MOUNTPOINT escaped as systemd-escape --path does; "
           "$EBSFS_SPOOL_ROOT moves /var/lib/ebsfs/spool)"),
    Option("dirty_limit", "mount", coerce=p.size, metavar="SIZE", group=WRITE,
           help="data written but not yet stored before writers wait (default: {default})"),
    Option("scratch_limit", "mount", coerce=p.size, metavar="SIZE", group=WRITE,
           help="blocks all scratch/ overlays may copy into the spool together (default: "
           "{default})"),
    Option("writeback_delay", "mount", coerce=p.number, metavar="SECONDS", group=WRITE,
           help="a fully written block is stored once unchanged this long (default: "
           "{default})"),
    Option("upload_process", "mount", coerce=p.boolean, kind="tristate", group=WRITE,
           help="store blocks from a child process with its own GIL (default: when the mount "
           "may use two CPUs or more)",
           help_off="store blocks from the mount's own threads instead of a child process"),
    Option("read_only", "mount", coerce=p.boolean, kind="switch", group=WRITE,
           fstab_names=("ro", "read_only"),
           help="refuse every change (EROFS), new/ included"),
    Option("allow_delete", "mount", coerce=p.boolean, kind="switch", group=WRITE,
           help="let `rm MOUNTPOINT/snap-...` delete completed snapshots"),
    Option("allow_other", "mount", coerce=p.boolean, kind="switch", group=DAEMON,
           help="let other users see the mount (FUSE allow_other)"),
    Option("nonempty", None, kind="flag", group=DAEMON,
           help="mount even if MOUNTPOINT holds files (they are hidden until the unmount)"),
    Option("foreground", "mount", kind="flag", group=DAEMON, fstab_names=(),
           help="stay in the foreground, logging to stderr"),
    Option("log_level", "mount", coerce=p.level, group=DAEMON,
           help="debug, info, warning, error or critical (default: {default})"),
    Option("log_file", None, metavar="PATH", group=DAEMON,
           help="append the log here (default: stderr in the foreground, else syslog)"),
    CONFIG,
    *AWS_SELECTION,
)

#: ``ebsfs server``'s options, in the order its help lists them.
SERVER: tuple[Option, ...] = (
    Option("data_dir", "server", coerce=p.text, metavar="DIR",
           help=f"where snapshots live (default: {DEFAULT_DATA_DIR})"),
    Option("listen", "server", coerce=p.listen, metavar="HOST:PORT", argtype=p.listen_address,
           help=f"address to listen on (default: {DEFAULT_SERVER_HOST}:{DEFAULT_SERVER_PORT};"
           " port 0 picks a free one)"),
    Option("access_key_id", "server", coerce=p.text, metavar="ID",
           help="the access key id whose SigV4 signatures are accepted (default: "
           "AWS_ACCESS_KEY_ID, else the development pair)"),
    Option("secret_access_key", "server", coerce=p.text, metavar="KEY",
           help="its secret (default: AWS_SECRET_ACCESS_KEY, else the development pair)"),
    Option("second_account", "server", metavar="KEY_ID:SECRET:ACCOUNT_ID", argtype=p.account,
           help="a second key pair, signing for another 12-digit account id: its snapshots "
           "are that account's, shared or not (docs/server.md)"),
    Option("latency_ms", "server", coerce=p.number, metavar="MS", group=FAULTS,
           argtype=p.seconds,
           help="added to every request, with ±10%% jitter (default: {default})"),
    Option("throttle_rate", "server", coerce=p.share, metavar="P", group=FAULTS,
           argtype=p.rate,
           help="share of requests answered with RequestThrottledException"),
    Option("error_rate", "server", coerce=p.share, metavar="P", group=FAULTS, argtype=p.rate,
           help="share answered with 500 InternalServerException"),
    Option("drop_rate", "server", coerce=p.share, metavar="P", group=FAULTS, argtype=p.rate,
           help="share whose connection is closed before the response is complete"),
    Option("corrupt_rate", "server", coerce=p.share, metavar="P", group=FAULTS,
           argtype=p.rate, help="share of GetSnapshotBlock answers with altered bytes"),
    # Its argparse type is the server's own parser (commands/server.py passes it).
    Option("fault", "server", kind="append", metavar="REASON:RATE", group=FAULTS,
           help="answer that AWS error (a Reason such as DEPENDENCY_SERVICE_QUOTA_EXCEEDED, "
           "WRITE_REQUEST_TIMEOUT, DEPENDENCY_RESOURCE_NOT_FOUND, or EC2's "
           "RequestLimitExceeded) to a share of the requests that can get it; repeatable "
           "(docs/server.md)"),
    Option("fault_seed", "server", coerce=p.seed, metavar="N", group=FAULTS, argtype=int,
           help="seed for the fault choices (default: random)"),
    Option("rate_limit", "server", coerce=p.number, metavar="N", group=LIMITS,
           argtype=p.per_second,
           help="GetSnapshotBlock and PutSnapshotBlock calls a second, each, per snapshot; the "
           "excess is throttled (RESOURCE_LEVEL_THROTTLE) as AWS does (AWS: 1000; default: no "
           "limit)"),
    Option("account_rate_limit", "server", coerce=p.number, metavar="N", group=LIMITS,
           argtype=p.per_second,
           help="the same per account, over all its snapshots (ACCOUNT_THROTTLED; AWS: 1000; "
           "default: no limit)"),
    Option("encryption_by_default", "server", coerce=p.boolean, kind="switch",
           help="encrypt every new snapshot with a default KMS key ARN, as an account with "
           "EBS encryption by default does (docs/server.md)"),
    Option("token_ttl", "server", coerce=p.number, metavar="SECONDS", group=TIMING,
           argtype=p.seconds,
           help="block and page token lifetime (default: as AWS, 7 days and 60 minutes)"),
    Option("complete_delay", "server", coerce=p.number, metavar="SECONDS", group=TIMING,
           argtype=p.seconds,
           help="time from CompleteSnapshot to completed or error (default: {default})"),
    Option("read_lag", "server", coerce=p.number, metavar="SECONDS", group=TIMING,
           argtype=p.seconds,
           help="after completed, the direct APIs still answer 404 SNAPSHOT_NOT_FOUND this "
           "long, as AWS does (default: {default})"),
    Option("timeout_unit", "server", coerce=p.positive, metavar="SECONDS", group=TIMING,
           argtype=p.seconds,
           help="how long one minute of StartSnapshot's Timeout lasts (default: {default}; "
           "tests shorten it)"),
    Option("log_level", "server", coerce=p.level, choices=LEVELS,
           help="debug logs one line per request (default: {default})"),
    Option("log_file", None, metavar="FILE",
           help="append the log to FILE (mode 0600) instead of stderr"),
    Option("background", None, kind="flag",
           help="run detached; return once the port accepts connections (the log goes to "
           "--log-file, else DATA_DIR.log; the pid to DATA_DIR.pid)"),
    CONFIG,
)

#: Settings of the file and the environment alone.
FILE_ONLY: tuple[Option, ...] = (
    Option("max_pool_connections", "aws", coerce=p.concurrency, kind="none"),
)

#: Keys whose values must never be logged or echoed in an error message.
SECRET_KEYS = frozenset({"secret_access_key"})


def every_option() -> Iterator[Option]:
    """Each row once."""
    seen: set[int] = set()
    for option in (*MOUNT, *SERVER, *FILE_ONLY):
        if id(option) not in seen:
            seen.add(id(option))
            yield option


def settings_of(section: str) -> dict[str, Option]:
    """The section's keys of the file and the environment, by name, in table order."""
    return {o.name: o for o in every_option() if o.section == section and o.toml_key}
