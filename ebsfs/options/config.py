"""Frozen configuration records, built once from the command line, environment and file.

Their field defaults are the options' defaults (the table in table.py shows them in help).
Sizes are parsed to bytes before they get here; nothing below the CLI parses text.
"""

from dataclasses import dataclass, field

#: Where ``ebsfs server`` listens by default, and where ebsfs looks for it when neither an
#: endpoint nor a region is configured (docs/server.md).
DEFAULT_SERVER_HOST = "127.0.0.1"
DEFAULT_SERVER_PORT = 9537
DEFAULT_LOCAL_ENDPOINT = f"http://{DEFAULT_SERVER_HOST}:{DEFAULT_SERVER_PORT}"
#: The configuration file read when neither ``--config`` nor ``$EBSFS_CONFIG`` names one.
DEFAULT_CONFIG_PATH = "/etc/ebsfs/ebsfs.toml"
CONFIG_ENV = "EBSFS_CONFIG"
#: Where ``ebsfs server`` keeps its snapshots when given no ``--data-dir``.
DEFAULT_DATA_DIR = "/var/lib/ebsfs/server"
#: The development key pair the local server accepts on loopback when given no other.
DEV_ACCESS_KEY_ID = "AKIAEBSFSLOCALDEV000"
DEV_SECRET_ACCESS_KEY = "ebsfs-local-development-secret-key"
#: Shortest secret access key the local server accepts on a non-loopback address (the
#: development pair is refused there whatever its length: it is published).
MIN_SERVER_SECRET_LENGTH = 16
#: The region used with the local server when none is configured.
DEFAULT_LOCAL_REGION = "us-east-1"


@dataclass(frozen=True)
class AwsConfig:
    """Which AWS (or local server) to talk to, and how patiently."""

    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    max_attempts: int = 6
    max_pool_connections: int = 32
    #: Where each setting that was given came from ("--region", "AWS_REGION",
    #: "/etc/ebsfs/ebsfs.toml [aws] region"), so errors caused by configuration can say so.
    origins: tuple[tuple[str, str], ...] = ()

    def origin(self, key: str) -> str | None:
        """Where ``key`` was set, or None when it was left at its default."""
        return dict(self.origins).get(key)


@dataclass(frozen=True)
class MountConfig:
    """Everything ``ebsfs mount`` needs."""

    mountpoint: str
    aws: AwsConfig = field(default_factory=AwsConfig)
    snapshots: tuple[str, ...] = ()
    filters: tuple[tuple[str, str], ...] = ()
    owner: str = "self"
    cache_size: int = 256 << 20
    #: Bytes of fetched blocks kept in a local file below the memory cache (0: none).
    disk_cache: int = 0
    cache_dir: str = "/var/cache/ebsfs"
    read_ahead: int = 64 << 20
    max_concurrency: int = 128
    spool_dir: str = "/var/lib/ebsfs/spool"
    dirty_limit: int = 128 << 20
    #: Bytes of copied blocks all scratch overlays of the mount may keep in the spool.
    scratch_limit: int = 1 << 30
    writeback_delay: float = 0.5
    #: PutSnapshotBlock in a child process (its own GIL) rather than the mount's threads;
    #: None: when the mount may run on two CPUs or more (on one, the child only adds work).
    upload_process: bool | None = None
    read_only: bool = False
    allow_other: bool = False
    allow_delete: bool = False
    refresh: float = 60.0
    foreground: bool = False
    log_level: str = "info"
    #: How long a read keeps retrying a failing backend before it fails with EIO.
    io_timeout: float = 30.0


@dataclass(frozen=True)
class ServerConfig:
    """Everything ``ebsfs server`` needs; fault rates are shares between 0 and 1."""

    data_dir: str
    host: str = DEFAULT_SERVER_HOST
    port: int = DEFAULT_SERVER_PORT
    access_key_id: str | None = None
    secret_access_key: str | None = None
    latency_ms: float = 0.0
    throttle_rate: float = 0.0
    error_rate: float = 0.0
    drop_rate: float = 0.0
    corrupt_rate: float = 0.0
    token_ttl: float | None = None
    complete_delay: float = 0.0
    log_level: str = "info"
    #: Seconds one StartSnapshot ``Timeout`` minute lasts (60; tests shorten it).
    timeout_unit: float = 60.0
    #: Seed of the fault injector's random choices, for reproducible runs.
    fault_seed: int | None = None
    #: Encrypt every new snapshot, as an account with EBS encryption by default does.
    encryption_by_default: bool = False
    #: A second account (access key id, secret, account id) whose snapshots the server
    #: also holds, to test sharing (``--second-account``; docs/server.md).
    second_account: tuple[str, str, str] | None = None
    #: ``--fault REASON:RATE`` pairs: named AWS errors at a share of requests (docs/server.md).
    faults: tuple[tuple[str, float], ...] = ()
    #: Seconds after ``completed`` during which the direct APIs still answer 404
    #: SNAPSHOT_NOT_FOUND, as AWS does for up to about a minute (``--read-lag``).
    read_lag: float = 0.0
    #: GetSnapshotBlock and PutSnapshotBlock calls a second (each) per snapshot and per
    #: account, as AWS's quotas (``--rate-limit``, ``--account-rate-limit``); 0: no limit.
    rate_limit: float = 0.0
    account_rate_limit: float = 0.0
