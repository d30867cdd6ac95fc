"""``ebsfs server``: the local EBS direct API + EC2 snapshot server (docs/server.md).

Each setting comes from its flag, else ``EBSFS_SERVER_<KEY>``, else the ``[server]`` table of
the configuration file (docs/operations.md), else its default.
"""

import argparse
import contextlib
import os
import socket
import stat
import sys
import time
import traceback
from typing import Any, TextIO

from ebsfs.core.errors import EbsfsError, UsageError
from ebsfs.core.redact import register_secret
from ebsfs.daemon.logsetup import setup_logging
from ebsfs.options import settings, table
from ebsfs.options.config import (
    DEFAULT_DATA_DIR,
    DEFAULT_SERVER_HOST,
    DEFAULT_SERVER_PORT,
    DEV_ACCESS_KEY_ID,
    DEV_SECRET_ACCESS_KEY,
    MIN_SERVER_SECRET_LENGTH,
    ServerConfig,
)
from ebsfs.options.flags import add_flags
from ebsfs.options.parsers import listen_address

EXAMPLES = f"""\
examples:
  ebsfs server --data-dir /var/lib/ebsfs/server
  ebsfs server --data-dir /tmp/s --listen 127.0.0.1:0 --latency-ms 50 --throttle-rate 0.05
  AWS_ENDPOINT_URL_EC2=http://{DEFAULT_SERVER_HOST}:{DEFAULT_SERVER_PORT} aws ec2 describe-snapshots

  ebsfs server --data-dir /var/tmp/s --background --log-file /var/tmp/s.log

Without a key pair the server accepts only the development pair from ebsfs.options.config, and only
on a loopback address; on any other address it refuses the development pair and secrets
shorter than 16 characters, wherever they come from. On loopback it answers only requests
whose Host is localhost, 127.0.0.1 or [::1] (or the listen name) with its port. Ready when
the port accepts connections; with --background the command returns then, its pid in
DATA_DIR.pid (stop it with kill). Exit codes: 0 stopped by SIGTERM/SIGINT (with
--background: started), 2 bad arguments, unusable address or key pair, or unusable data
directory.
"""

#: How long --background waits for the port to accept connections.
START_TIMEOUT = 60.0


def _fault(text: str) -> tuple[str, float]:
    from ebsfs.server.faults import parse_fault

    try:
        return parse_fault(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``server`` sub-command."""
    p = subparsers.add_parser(
        "server",
        help="run the local EBS direct API and EC2 snapshot server",
        description="Serve the EBS direct APIs and the EC2 snapshot calls on one port, "
        "storing snapshots in a data directory.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # Every flag of a setting defaults to None ("not given"): the environment and the file
    # may supply it, and build_config applies the real defaults.
    add_flags(p, table.SERVER, types={"fault": _fault})
    p.set_defaults(func=run)


def build_config(args: argparse.Namespace | dict[str, Any]) -> ServerConfig:
    """The ServerConfig from the flags over the environment over the configuration file."""
    given = dict(vars(args) if isinstance(args, argparse.Namespace) else args)
    listen = given.pop("listen", None)
    second = given.pop("second_account", None)
    faults = tuple(given.pop("fault", None) or ())
    # The flag's own parser allows port 0 (a free port); the file and environment layers
    # are read by ebsfs.options.settings.
    values = settings.server_values({**given, "listen": None})
    if listen is None and "listen" in values:
        listen = listen_address(values["listen"])
    values.pop("listen", None)
    host, port = listen or (DEFAULT_SERVER_HOST, DEFAULT_SERVER_PORT)
    if values.get("timeout_unit", 60.0) <= 0:
        raise UsageError("--timeout-unit must be positive")
    return ServerConfig(
        data_dir=values.pop("data_dir", DEFAULT_DATA_DIR),
        host=host,
        port=port,
        second_account=second,
        faults=faults,
        **values,
    )


def check_key_pair(config: ServerConfig) -> None:
    """Refuse a guessable key pair on a non-loopback address: the published development
    pair (or either half of it), or a short secret, whether given by flag or environment."""
    from ebsfs.server.runner import is_loopback, resolve_credentials

    key_id, secret, _ = resolve_credentials(config)
    if is_loopback(config.host):
        return
    if key_id == DEV_ACCESS_KEY_ID or secret == DEV_SECRET_ACCESS_KEY:
        raise UsageError(
            f"refusing to listen on non-loopback {config.host} with the published development "
            "key pair; give a key pair of your own (--access-key-id and --secret-access-key, "
            "or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)"
        )
    if len(secret) < MIN_SERVER_SECRET_LENGTH:
        raise UsageError(
            f"refusing to listen on non-loopback {config.host} with a secret access key of "
            f"{len(secret)} characters; use at least {MIN_SERVER_SECRET_LENGTH}"
        )
    if config.second_account is not None:
        # The second pair acts as an account too: the same rules.
        other_id, other_secret, _ = config.second_account
        if other_id == DEV_ACCESS_KEY_ID or other_secret == DEV_SECRET_ACCESS_KEY:
            raise UsageError(
                f"refusing to listen on non-loopback {config.host} with the published "
                "development key pair as --second-account; give a key pair of your own"
            )
        if len(other_secret) < MIN_SERVER_SECRET_LENGTH:
            raise UsageError(
                f"refusing to listen on non-loopback {config.host} with a --second-account "
                f"secret of {len(other_secret)} characters; use at least "
                f"{MIN_SERVER_SECRET_LENGTH}"
            )


def _own_file(path: str, flags: int, what: str) -> int:
    """Open (creating it 0600) a file the server writes, refusing what another user may
    have planted where it goes (often a directory all may write to, like /var/tmp): a
    symlink of theirs, a file of theirs, or a hard link to some other file. A symlink of
    this user's own is followed; anything but a regular file (/dev/stderr) is used as is."""
    me = os.geteuid()
    try:
        try:
            link = os.lstat(path)
        except FileNotFoundError:
            link = None
        if link is not None and stat.S_ISLNK(link.st_mode):
            if link.st_uid != me:
                raise UsageError(f"{what} {path} is a symbolic link of uid {link.st_uid}, "
                                 "not of this user; remove it or choose another")
        else:
            flags |= os.O_NOFOLLOW  # not a symlink now: no one may make it one meanwhile
        fd = os.open(path, flags | os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise UsageError(f"{what} {path}: {exc.strerror}") from None
    found = os.fstat(fd)
    if stat.S_ISREG(found.st_mode) and (found.st_uid != me or found.st_nlink != 1):
        os.close(fd)
        whose = (f"belongs to uid {found.st_uid}" if found.st_uid != me
                 else f"has {found.st_nlink} hard links")
        raise UsageError(f"{what} {path} {whose}; remove it or choose another")
    return fd


def _open_log(path: str) -> TextIO:
    return os.fdopen(_own_file(path, os.O_APPEND, "--log-file"), "a", buffering=1)


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def _background(config: ServerConfig, log_path: str) -> int:
    """Fork a detached server; return once its port accepts connections (or it died)."""
    if config.port == 0:
        raise UsageError("--background needs a fixed port (--listen HOST:PORT, not port 0)")
    log_file = _open_log(log_path)
    pid_path = config.data_dir.rstrip("/") + ".pid"
    # Checked before the server starts, written once it listens; removed again if it was
    # made here and the server does not start.
    made = not os.path.lexists(pid_path)
    pid_fd = _own_file(pid_path, 0, "the pid file")
    try:
        return _fork_server(config, log_file, log_path, pid_fd, pid_path)
    except BaseException:
        if made and os.fstat(pid_fd).st_size == 0:
            with contextlib.suppress(OSError):
                os.unlink(pid_path)
        raise
    finally:
        with contextlib.suppress(OSError):
            os.close(pid_fd)


def _fork_server(config: ServerConfig, log_file: TextIO, log_path: str, pid_fd: int,
                 pid_path: str) -> int:
    if _accepts(config.host, config.port):
        raise UsageError(f"something already listens on {config.host}:{config.port}")
    pid = os.fork()
    if pid == 0:  # the server: its own session, stdio on the log file
        code = 1
        try:
            os.close(pid_fd)
            os.setsid()
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(log_file.fileno(), 1)
            os.dup2(log_file.fileno(), 2)
            code = _serve(config, log_file)
        except EbsfsError as exc:
            # Why it did not start (the data directory in use by another server, the port
            # taken meanwhile) goes where the command points: the log.
            with contextlib.suppress(Exception):
                print(f"ebsfs: {exc}", file=log_file, flush=True)
            code = exc.exit_code
        except BaseException:
            with contextlib.suppress(Exception):
                traceback.print_exc(file=log_file)
                log_file.flush()
        finally:
            os._exit(code)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            raise UsageError(
                f"the server exited at start (code {os.waitstatus_to_exitcode(status)}); "
                f"see {log_path}"
            )
        if _accepts(config.host, config.port):
            os.ftruncate(pid_fd, 0)
            os.write(pid_fd, f"{pid}\n".encode())
            print(f"ebsfs server: pid {pid} (in {pid_path}), listening on "
                  f"{config.host}:{config.port}, log {log_path}")
            return 0
        time.sleep(0.1)
    raise UsageError(f"the server (pid {pid}) did not listen within {START_TIMEOUT:.0f} s; "
                     f"see {log_path}")


def _serve(config: ServerConfig, stream: TextIO | None) -> int:
    from ebsfs.server.runner import run as serve

    # Snapshot data, the token key and the database are the server's own.
    os.umask(0o077)
    setup_logging(config.log_level, stream)
    register_secret(config.secret_access_key)
    if config.second_account is not None:
        register_secret(config.second_account[1])
    return serve(config)


def run(args: argparse.Namespace) -> int:
    config = build_config(args)
    check_key_pair(config)
    log_file = getattr(args, "log_file", None)
    if getattr(args, "background", False):
        return _background(config, log_file or config.data_dir.rstrip("/") + ".log")
    sys.stdout.flush()
    return _serve(config, _open_log(log_file) if log_file else None)
