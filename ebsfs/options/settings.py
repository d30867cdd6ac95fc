"""Settings from three layers: the command line, then the environment, then a TOML file.

The file is ``--config PATH``, else ``$EBSFS_CONFIG``, else ``/etc/ebsfs/ebsfs.toml`` when it
exists (no file at all is fine). It has three tables, each key optional::

    [aws]       endpoint_url, region, profile, connect_timeout, read_timeout, max_attempts,
                max_pool_connections
    [mount]     snapshots, filters, owner, cache_size, disk_cache, cache_dir, read_ahead,
                max_concurrency, spool_dir, dirty_limit, scratch_limit, writeback_delay,
                upload_process,
                read_only, allow_other, allow_delete, refresh, log_level, io_timeout
    [mount."/srv/snapshots"]   the same keys, for the mount at that path only
    [server]    data_dir, listen, access_key_id, secret_access_key, latency_ms, throttle_rate,
                error_rate, drop_rate, corrupt_rate, token_ttl, complete_delay, log_level,
                timeout_unit, fault_seed, encryption_by_default, read_lag, rate_limit,
                account_rate_limit

The environment layer is ``EBSFS_<KEY>`` for ``[aws]`` and ``[mount]`` keys (``EBSFS_REGION``,
``EBSFS_CACHE_SIZE``; lists comma-separated) and ``EBSFS_SERVER_<KEY>`` for ``[server]``; the
standard ``AWS_REGION``/``AWS_DEFAULT_REGION``, ``AWS_PROFILE`` and ``AWS_ENDPOINT_URL*``
variables also rank above the file. An unknown key or a bad value anywhere in the file is a
``UsageError`` that names the file and the key, even for a table the command does not use, so
a typo never goes unnoticed.
"""

import argparse
import difflib
import hashlib
import math
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ebsfs.core.blocks import BLOCK_SIZE, SNAPSHOT_ID_RE
from ebsfs.core.errors import UsageError
from ebsfs.core.sizes import parse_size
from ebsfs.daemon.logsetup import LEVELS, register_secret
from ebsfs.options.config import AwsConfig, MountConfig

DEFAULT_CONFIG_PATH = "/etc/ebsfs/ebsfs.toml"
CONFIG_ENV = "EBSFS_CONFIG"
#: Where the spools of mounts that set no ``spool_dir`` go, one per mount point (the
#: environment variable moves it, for tests and for machines whose /var/lib is small).
DEFAULT_SPOOL_ROOT = "/var/lib/ebsfs/spool"
SPOOL_ROOT_ENV = "EBSFS_SPOOL_ROOT"

Coerce = Callable[[Any], Any]


def _str(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("expected a non-empty string")
    return value


def _int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("expected a whole number")
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise ValueError(f"expected a whole number, not {value!r}") from None
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"expected a whole number of at least 1, not {value!r}")
    return value


def _seed(value: Any) -> int:
    if isinstance(value, str) and value.strip() == "0":
        return 0
    if value == 0 and not isinstance(value, bool):
        return 0
    return _int(value)


def _float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a number")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise ValueError(f"expected a number, not {value!r}") from None
    if not isinstance(value, int | float) or value < 0:
        raise ValueError(f"expected a number of at least 0, not {value!r}")
    if not math.isfinite(value):  # NaN or infinity as a time: a wait without end
        raise ValueError(f"expected a finite number, not {value!r}")
    return float(value)


def _share(value: Any) -> float:
    share = _float(value)
    if share > 1:
        raise ValueError(f"expected a share between 0 and 1, not {value!r}")
    return share


def _size(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("expected a size")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"expected a size of at least 0, not {value}")
        return value
    if isinstance(value, str):
        return parse_size(value)
    raise ValueError(f"expected a size such as 512KiB or 1GiB, not {value!r}")


def _disk_cache(value: Any) -> int:
    size = _size(value)
    if 0 < size < BLOCK_SIZE:
        # It holds whole blocks: less than one would silently mean "off".
        raise ValueError(f"expected 0 (off) or at least 512KiB (one block), not {value!r}")
    return size


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"expected true or false, not {value!r}")


def _strings(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list | tuple) or not all(
        isinstance(item, str) and item for item in value
    ):
        raise ValueError("expected a list of strings")
    return tuple(value)




def _snapshot_ids(value: Any) -> tuple[str, ...]:
    ids = _strings(value)
    for snapshot_id in ids:
        if not SNAPSHOT_ID_RE.match(snapshot_id):
            raise ValueError(f"not a snapshot id: {snapshot_id!r} (expected snap-<hex>)")
    return ids


def _filters(value: Any) -> tuple[tuple[str, str], ...]:
    pairs: list[tuple[str, str]] = []
    items = value if isinstance(value, list | tuple) else _strings(value)
    for item in items:
        if isinstance(item, tuple) and len(item) == 2:
            pairs.append((str(item[0]), str(item[1])))
            continue
        if not isinstance(item, str) or "=" not in item or item.startswith("="):
            raise ValueError(f"expected NAME=VALUE filters such as tag:Env=prod, not {item!r}")
        name, _, val = item.partition("=")
        pairs.append((name, val))
    return tuple(pairs)


def _level(value: Any) -> str:
    text = _str(value).lower()
    if text not in LEVELS:
        raise ValueError(f"expected one of {', '.join(LEVELS)}, not {value!r}")
    return text


def _listen(value: Any) -> str:
    text = _str(value)
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, not {value!r}")
    return text


@dataclass(frozen=True)
class Key:
    """One setting: how to read it and which environment variables carry it."""

    coerce: Coerce
    env: tuple[str, ...] = ()
    #: Environment variables that botocore reads itself: when set, the file's value is dropped
    #: so that botocore's own resolution (which may differ per service) wins.
    yields_to: tuple[str, ...] = ()


SCHEMA: dict[str, dict[str, Key]] = {
    "aws": {
        "endpoint_url": Key(
            _str,
            ("EBSFS_ENDPOINT_URL",),
            yields_to=("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_EBS", "AWS_ENDPOINT_URL_EC2"),
        ),
        "region": Key(_str, ("EBSFS_REGION", "AWS_REGION", "AWS_DEFAULT_REGION")),
        "profile": Key(_str, ("EBSFS_PROFILE", "AWS_PROFILE")),
        "connect_timeout": Key(_float, ("EBSFS_CONNECT_TIMEOUT",)),
        "read_timeout": Key(_float, ("EBSFS_READ_TIMEOUT",)),
        "max_attempts": Key(_int, ("EBSFS_MAX_ATTEMPTS",)),
        "max_pool_connections": Key(_int, ("EBSFS_MAX_POOL_CONNECTIONS",)),
    },
    "mount": {
        "snapshots": Key(_snapshot_ids, ("EBSFS_SNAPSHOTS",)),
        "filters": Key(_filters, ("EBSFS_FILTERS",)),
        "owner": Key(_str, ("EBSFS_OWNER",)),
        "cache_size": Key(_size, ("EBSFS_CACHE_SIZE",)),
        "disk_cache": Key(_disk_cache, ("EBSFS_DISK_CACHE",)),
        "cache_dir": Key(_str, ("EBSFS_CACHE_DIR",)),
        "read_ahead": Key(_size, ("EBSFS_READ_AHEAD",)),
        "max_concurrency": Key(_int, ("EBSFS_MAX_CONCURRENCY",)),
        "spool_dir": Key(_str, ("EBSFS_SPOOL_DIR",)),
        "dirty_limit": Key(_size, ("EBSFS_DIRTY_LIMIT",)),
        "scratch_limit": Key(_size, ("EBSFS_SCRATCH_LIMIT",)),
        "writeback_delay": Key(_float, ("EBSFS_WRITEBACK_DELAY",)),
        "upload_process": Key(_bool, ("EBSFS_UPLOAD_PROCESS",)),
        "read_only": Key(_bool, ("EBSFS_READ_ONLY",)),
        "allow_other": Key(_bool, ("EBSFS_ALLOW_OTHER",)),
        "allow_delete": Key(_bool, ("EBSFS_ALLOW_DELETE",)),
        "refresh": Key(_float, ("EBSFS_REFRESH",)),
        "log_level": Key(_level, ("EBSFS_LOG_LEVEL",)),
        "io_timeout": Key(_float, ("EBSFS_IO_TIMEOUT",)),
    },
    "server": {
        "data_dir": Key(_str, ("EBSFS_SERVER_DATA_DIR",)),
        "listen": Key(_listen, ("EBSFS_SERVER_LISTEN",)),
        "access_key_id": Key(_str, ("EBSFS_SERVER_ACCESS_KEY_ID",)),
        "secret_access_key": Key(_str, ("EBSFS_SERVER_SECRET_ACCESS_KEY",)),
        "latency_ms": Key(_float, ("EBSFS_SERVER_LATENCY_MS",)),
        "throttle_rate": Key(_share, ("EBSFS_SERVER_THROTTLE_RATE",)),
        "error_rate": Key(_share, ("EBSFS_SERVER_ERROR_RATE",)),
        "drop_rate": Key(_share, ("EBSFS_SERVER_DROP_RATE",)),
        "corrupt_rate": Key(_share, ("EBSFS_SERVER_CORRUPT_RATE",)),
        "token_ttl": Key(_float, ("EBSFS_SERVER_TOKEN_TTL",)),
        "complete_delay": Key(_float, ("EBSFS_SERVER_COMPLETE_DELAY",)),
        "log_level": Key(_level, ("EBSFS_SERVER_LOG_LEVEL",)),
        "timeout_unit": Key(_float, ("EBSFS_SERVER_TIMEOUT_UNIT",)),
        "fault_seed": Key(_seed, ("EBSFS_SERVER_FAULT_SEED",)),
        "encryption_by_default": Key(_bool, ("EBSFS_SERVER_ENCRYPTION_BY_DEFAULT",)),
        "read_lag": Key(_float, ("EBSFS_SERVER_READ_LAG",)),
        "rate_limit": Key(_float, ("EBSFS_SERVER_RATE_LIMIT",)),
        "account_rate_limit": Key(_float, ("EBSFS_SERVER_ACCOUNT_RATE_LIMIT",)),
    },
}

#: Command-line flags whose names differ from their key (repeatable flags are singular).
_FLAGS = {"snapshots": "--snapshot", "filters": "--filter"}

#: Keys whose values must never be logged or echoed in an error message.
SECRET_KEYS = frozenset({"secret_access_key"})


@dataclass(frozen=True)
class ConfigFile:
    """A parsed, validated configuration file (``path`` None when there is none)."""

    path: str | None
    sections: Mapping[str, Mapping[str, Any]]
    #: Per-mount-point tables of ``[mount]``, keyed by the normalised mount point.
    mounts: Mapping[str, Mapping[str, Any]]

    def values(self, section: str, mountpoint: str | None = None) -> dict[str, Any]:
        merged = dict(self.sections.get(section, {}))
        if section == "mount" and mountpoint is not None:
            merged.update(self.mounts.get(_normpath(mountpoint), {}))
        return merged


EMPTY = ConfigFile(None, {}, {})


def _normpath(path: str) -> str:
    return os.path.normpath(os.path.abspath(path))


def _unknown(path: str, name: str, known: list[str]) -> UsageError:
    leaf = name.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(leaf, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return UsageError(f"{path}: unknown key {name!r}{hint}")


def _coerce(path: str, section: str, table: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    schema = SCHEMA[section]
    out: dict[str, Any] = {}
    for key, raw in table.items():
        if key not in schema:
            raise _unknown(path, f"{prefix}.{key}", list(schema))
        try:
            out[key] = schema[key].coerce(raw)
        except ValueError as exc:
            raise UsageError(f"{path}: {prefix}.{key}: {exc}") from None
        if key in SECRET_KEYS:
            register_secret(out[key])
    return out


def parse_config(text: str, path: str) -> ConfigFile:
    """Validate TOML text; UsageError naming ``path`` and the key for anything wrong."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: not valid TOML: {exc}") from None
    sections: dict[str, dict[str, Any]] = {}
    mounts: dict[str, dict[str, Any]] = {}
    for name, table in data.items():
        if name not in SCHEMA:
            home = next((sec for sec, keys in SCHEMA.items() if name in keys), None)
            if home is not None:
                raise UsageError(f"{path}: unknown key {name!r} (it belongs in [{home}])")
            raise _unknown(path, name, list(SCHEMA))
        if not isinstance(table, dict):
            raise UsageError(f"{path}: {name!r} must be a table ([{name}])")
        if name == "mount":
            per_mount = {k: v for k, v in table.items() if k.startswith("/")}
            for mountpoint, sub in per_mount.items():
                if not isinstance(sub, dict):
                    raise UsageError(f'{path}: mount."{mountpoint}" must be a table')
                mounts[_normpath(mountpoint)] = _coerce(path, name, sub, f'mount."{mountpoint}"')
            table = {k: v for k, v in table.items() if k not in per_mount}
        sections[name] = _coerce(path, name, table, name)
    return ConfigFile(path, sections, mounts)


def load_config(path: str | None = None, environ: Mapping[str, str] | None = None) -> ConfigFile:
    """The configuration file chosen by ``path``, ``$EBSFS_CONFIG`` or the default location.

    A path that was asked for explicitly must exist; the default may be absent.
    """
    environ = os.environ if environ is None else environ
    explicit = path or environ.get(CONFIG_ENV) or None
    chosen = explicit or DEFAULT_CONFIG_PATH
    try:
        with open(chosen, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        if explicit:
            raise UsageError(f"configuration file not found: {chosen}") from None
        return EMPTY
    except OSError as exc:
        raise UsageError(f"cannot read configuration file {chosen}: {exc.strerror}") from None
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise UsageError(f"{chosen}: not UTF-8 text") from None
    return parse_config(text, chosen)


def resolve(
    section: str,
    given: Mapping[str, Any],
    *,
    config: ConfigFile,
    mountpoint: str | None = None,
    environ: Mapping[str, str] | None = None,
    origins: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The section's settings that any layer sets: command line, then environment, then file.

    ``given`` holds command-line values by key, None meaning "not given"; keys outside the
    section are ignored. The result holds only keys some layer set, coerced to their types.
    ``origins``, when given, receives where each of them came from.
    """
    origins = {} if origins is None else origins
    environ = os.environ if environ is None else environ
    schema = SCHEMA[section]
    from_file = config.values(section, mountpoint)
    out: dict[str, Any] = {}
    for key, spec in schema.items():
        value = given.get(key)
        if value is not None and value != [] and value != ():
            try:
                out[key] = spec.coerce(value)
            except ValueError as exc:
                raise UsageError(
                    f"{_FLAGS.get(key, '--' + key.replace('_', '-'))}: {exc}"
                ) from None
            origins[key] = _FLAGS.get(key, "--" + key.replace("_", "-"))
            continue
        env_name = next((name for name in spec.env if environ.get(name)), None)
        if env_name is not None:
            try:
                out[key] = spec.coerce(environ[env_name])
            except ValueError as exc:
                raise UsageError(f"{env_name}: {exc}") from None
            origins[key] = env_name
            continue
        if any(environ.get(name) for name in spec.yields_to):
            continue
        if key in from_file:
            out[key] = from_file[key]
            origins[key] = f"{config.path} [{section}] {key}"
    return out


def _aws(
    given: Mapping[str, Any], config: ConfigFile, environ: Mapping[str, str] | None
) -> AwsConfig:
    origins: dict[str, str] = {}
    values = resolve("aws", given, config=config, environ=environ, origins=origins)
    return AwsConfig(**values, origins=tuple(sorted(origins.items())))


def add_config_option(parser: argparse.ArgumentParser) -> None:
    """``--config PATH`` for a command that reads the configuration file."""
    parser.add_argument(
        "--config",
        metavar="PATH",
        help=f"TOML configuration file (default: ${CONFIG_ENV}, else {DEFAULT_CONFIG_PATH} "
        "if it exists); the command line and the environment override it",
    )


def _given(args: argparse.Namespace | Mapping[str, Any]) -> Mapping[str, Any]:
    return args if isinstance(args, Mapping) else vars(args)


def aws_config(
    args: argparse.Namespace | Mapping[str, Any],
    *,
    config: ConfigFile | None = None,
    environ: Mapping[str, str] | None = None,
) -> AwsConfig:
    """The AwsConfig from ``args`` (``endpoint_url``, ``region``, ``profile``...) over the
    environment over the configuration file named by ``args.config``."""
    given = _given(args)
    if config is None:
        config = load_config(given.get("config"), environ)
    return _aws(given, config, environ)


def mount_config(
    mountpoint: str,
    args: argparse.Namespace | Mapping[str, Any],
    *,
    config: ConfigFile | None = None,
    environ: Mapping[str, str] | None = None,
) -> MountConfig:
    """The MountConfig for ``mountpoint``: command line over environment over file.

    ``args`` carries the ``[aws]`` and ``[mount]`` keys by name (None when not given) and
    ``foreground``; ``config`` (the path) picks the file.
    """
    given = _given(args)
    if config is None:
        config = load_config(given.get("config"), environ)
    aws = _aws(given, config, environ)
    values = resolve("mount", given, config=config, mountpoint=mountpoint, environ=environ)
    if "spool_dir" not in values:
        values["spool_dir"] = default_spool_dir(mountpoint, environ)
    return MountConfig(
        mountpoint=mountpoint,
        aws=aws,
        foreground=bool(given.get("foreground")),
        **values,
    )


def spool_root(environ: Mapping[str, str] | None = None) -> str:
    """The directory that holds the default spools: ``$EBSFS_SPOOL_ROOT`` or the default."""
    environ = os.environ if environ is None else environ
    return environ.get(SPOOL_ROOT_ENV) or DEFAULT_SPOOL_ROOT


def escape_path(path: str) -> str:
    """``path`` as one file name, escaped as ``systemd-escape --path`` does: the unit
    ``ebsfs@mnt-snapshots.service`` of ``/mnt/snapshots`` spools in ``.../mnt-snapshots``."""
    trimmed = _normpath(path).strip("/")
    if not trimmed:
        return "-"
    out = []
    for i, byte in enumerate(os.fsencode(trimmed)):
        char = chr(byte)
        if char == "/":
            out.append("-")
        elif (char.isascii() and char.isalnum()) or char in ":_" or (char == "." and i > 0):
            out.append(char)
        else:
            out.append(f"\\x{byte:02x}")
    name = "".join(out)
    if len(name) > 200:  # file names end at 255 bytes: keep a readable head and a hash
        name = name[:180] + "-" + hashlib.sha256(name.encode()).hexdigest()[:16]
    return name


def default_spool_dir(mountpoint: str, environ: Mapping[str, str] | None = None) -> str:
    """The spool of a mount that sets none: one per mount point, under ``spool_root()``, so
    two mounts never share one by default."""
    return os.path.join(spool_root(environ), escape_path(mountpoint))


def server_values(
    args: argparse.Namespace | Mapping[str, Any],
    *,
    config: ConfigFile | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The ``[server]`` settings set by any layer (for ``ebsfs server`` to build its config)."""
    given = _given(args)
    if config is None:
        config = load_config(given.get("config"), environ)
    return resolve("server", given, config=config, environ=environ)
