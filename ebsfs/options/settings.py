"""Settings from three layers: the command line, then the environment, then a TOML file.

The file is ``--config PATH``, else ``$EBSFS_CONFIG``, else ``/etc/ebsfs/ebsfs.toml`` when it
exists. Its keys and the environment names come from the option table (table.py); the rules,
for users, are in docs/operations.md. A bad key or value anywhere in the file is a UsageError
naming the file and the key, even in a table the command does not use.
"""

import argparse
import difflib
import hashlib
import os
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ebsfs.core.errors import UsageError
from ebsfs.core.redact import register_secret
from ebsfs.options import parsers
from ebsfs.options import table as option_table
from ebsfs.options.config import CONFIG_ENV, DEFAULT_CONFIG_PATH, AwsConfig, MountConfig
from ebsfs.options.flags import add_flags

#: Where the spools of mounts that set no ``spool_dir`` go, one per mount point (the
#: environment variable moves it, for tests and for machines whose /var/lib is small).
DEFAULT_SPOOL_ROOT = "/var/lib/ebsfs/spool"
SPOOL_ROOT_ENV = "EBSFS_SPOOL_ROOT"

#: The keys of each table of the file (and of the environment), from the option table.
SCHEMA: dict[str, dict[str, option_table.Option]] = {
    section: option_table.settings_of(section) for section in ("aws", "mount", "server")
}
SECRET_KEYS = option_table.SECRET_KEYS
#: Kept for callers of the old private name.
_snapshot_ids = parsers.snapshot_ids


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


def _coerce_one(option: option_table.Option, raw: Any) -> Any:
    assert option.coerce is not None  # only settings are in SCHEMA
    return option.coerce(raw)


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
            out[key] = _coerce_one(schema[key], raw)
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
    except ValueError:  # tomllib's int() of an integer of more than 4300 digits
        raise UsageError(f"{path}: not valid TOML: an integer too long") from None
    except RecursionError:  # arrays or inline tables nested thousands deep
        raise UsageError(f"{path}: not valid TOML: nested too deep") from None
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


#: Larger than any configuration file: what is read beyond it is refused, not parsed.
MAX_CONFIG_BYTES = 1 << 20


def _read_config(path: str) -> bytes:
    """The bytes of a configuration file: /dev/null (none), or a regular file (a FIFO would
    block, /dev/zero would never end) of at most MAX_CONFIG_BYTES, of root or the caller and
    not writable by every user: it chooses the endpoint, spool and cache directories of
    mounts run as root."""
    # O_NONBLOCK: opening a FIFO does not wait for a writer.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if stat.S_ISCHR(st.st_mode) and os.path.samestat(st, os.stat(os.devnull)):
            return b""  # EBSFS_CONFIG=/dev/null: no settings from a file
        if not stat.S_ISREG(st.st_mode):
            raise UsageError(f"configuration file {path} is not a regular file")
        if st.st_mode & stat.S_IWOTH:
            raise UsageError(
                f"configuration file {path} is writable by every user (chmod o-w {path})"
            )
        if st.st_uid not in (0, os.geteuid()):
            raise UsageError(
                f"configuration file {path} belongs to another user (uid {st.st_uid}); "
                "only root's or your own is read"
            )
        chunks: list[bytes] = []
        left = MAX_CONFIG_BYTES + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    finally:
        os.close(fd)
    raw = b"".join(chunks)
    if len(raw) > MAX_CONFIG_BYTES:
        raise UsageError(f"configuration file {path} is larger than {MAX_CONFIG_BYTES} bytes")
    return raw


def load_config(path: str | None = None, environ: Mapping[str, str] | None = None) -> ConfigFile:
    """The configuration file chosen by ``path``, ``$EBSFS_CONFIG`` or the default location.

    A path that was asked for explicitly must exist; the default may be absent.
    """
    environ = os.environ if environ is None else environ
    if path == "":  # --config "$UNSET": not a reason to read the default file instead
        raise UsageError("--config: expected a path, not an empty one")
    explicit = path or environ.get(CONFIG_ENV) or None
    chosen = explicit or DEFAULT_CONFIG_PATH
    try:
        raw = _read_config(chosen)
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
            flag = spec.flag or key
            try:
                out[key] = _coerce_one(spec, value)
            except ValueError as exc:
                raise UsageError(f"{flag}: {exc}") from None
            origins[key] = flag
            continue
        env_name = next((name for name in spec.env if environ.get(name)), None)
        if env_name is not None:
            try:
                out[key] = _coerce_one(spec, environ[env_name])
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
    add_flags(parser, (option_table.CONFIG,))


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
