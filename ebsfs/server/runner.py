"""Starting and stopping the server: credentials, the listening socket, the sweeper thread."""

import ipaddress
import logging
import os
import signal
import socket
import sqlite3
import threading
import time
from types import FrameType

from ebsfs.core.errors import UsageError
from ebsfs.daemon.notify import notify_ready, notify_stopping
from ebsfs.options.config import DEV_ACCESS_KEY_ID, DEV_SECRET_ACCESS_KEY, ServerConfig
from ebsfs.server.app import App
from ebsfs.server.ebs import (
    ACCOUNT_ID,
    BLOCK_TOKEN_TTL,
    DEFAULT_KMS_KEY_ARN,
    PAGE_TOKEN_TTL,
    Timing,
)
from ebsfs.server.faults import Faults
from ebsfs.server.httpd import Server
from ebsfs.server.limits import RateLimits
from ebsfs.server.sigv4 import Verifier
from ebsfs.server.storage import ERROR, DataDirBusy, Snapshot, Store

log = logging.getLogger(__name__)

SWEEP_INTERVAL = 2.0


def resolve_credentials(config: ServerConfig) -> tuple[str, str, bool]:
    """(access key id, secret, explicit): flags, else the environment, else the dev pair."""
    if config.access_key_id or config.secret_access_key:
        if not (config.access_key_id and config.secret_access_key):
            raise UsageError("--access-key-id and --secret-access-key must be given together")
        return config.access_key_id, config.secret_access_key, True
    env_id = os.environ.get("AWS_ACCESS_KEY_ID")
    env_secret = os.environ.get("AWS_SECRET_ACCESS_KEY")
    if env_id and env_secret:
        return env_id, env_secret, True
    return DEV_ACCESS_KEY_ID, DEV_SECRET_ACCESS_KEY, False


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` resolves to is a loopback address."""
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror as exc:
        raise UsageError(f"cannot resolve listen address {host!r}: {exc}") from None
    return all(ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in infos)


def build(config: ServerConfig) -> tuple[Server, Store]:
    """The bound server (port accepting) and its store, not yet serving."""
    key_id, secret, explicit = resolve_credentials(config)
    if not explicit and not is_loopback(config.host):
        raise UsageError(
            f"refusing to listen on non-loopback {config.host} with the development key pair; "
            "give --access-key-id and --secret-access-key (or AWS_ACCESS_KEY_ID/"
            "AWS_SECRET_ACCESS_KEY)"
        )
    for name in ("throttle_rate", "error_rate", "drop_rate", "corrupt_rate"):
        rate = getattr(config, name)
        if not 0.0 <= rate <= 1.0:
            raise UsageError(f"--{name.replace('_', '-')} must be between 0 and 1, not {rate}")
    try:
        store = Store(config.data_dir)
    except DataDirBusy as exc:
        raise UsageError(str(exc)) from None
    except (OSError, sqlite3.Error) as exc:
        raise UsageError(f"cannot use data directory {config.data_dir}: {exc}") from None
    ttl = config.token_ttl
    timing = Timing(
        block_token_ttl=BLOCK_TOKEN_TTL if ttl is None else ttl,
        page_token_ttl=PAGE_TOKEN_TTL if ttl is None else ttl,
        complete_delay=config.complete_delay,
        minute=config.timeout_unit,
        read_lag=config.read_lag,
    )
    faults = Faults(
        latency_ms=config.latency_ms,
        throttle_rate=config.throttle_rate,
        error_rate=config.error_rate,
        drop_rate=config.drop_rate,
        corrupt_rate=config.corrupt_rate,
        seed=config.fault_seed,
        named=config.faults,
    )
    others = {}
    if config.second_account is not None:
        other_id, other_secret, account = config.second_account
        if other_id == key_id or account == ACCOUNT_ID:
            store.close()
            raise UsageError(
                "--second-account needs its own access key id and an account id other than "
                f"{ACCOUNT_ID}"
            )
        others[other_id] = (Verifier(other_id, other_secret), account)
    limits = RateLimits(config.rate_limit, config.account_rate_limit)
    app = App(store, Verifier(key_id, secret), faults, timing, others, limits)
    if config.encryption_by_default:
        app.ebs.default_key = DEFAULT_KMS_KEY_ARN
    try:
        server = Server((config.host, config.port), app)
    except OSError as exc:
        store.close()
        raise UsageError(f"cannot listen on {config.host}:{config.port}: {exc}") from None
    return server, store


def sweep(app: App) -> None:
    """Forget the blocks of snapshots that reached ``error``: they can never be read."""
    for snap in app.store.live():
        if not snap.blocks_dropped and app.ebs.state(snap)[0] == ERROR:
            log.info(
                "snapshot %s is in error (%s); dropping its blocks",
                snap.snapshot_id,
                app.ebs.state(snap)[1],
            )
            app.store.drop_blocks(snap.snapshot_id)
            app.store.update([snap], _mark_dropped)


def _mark_dropped(snap: Snapshot) -> None:
    snap.blocks_dropped = True


def run(config: ServerConfig) -> int:
    """Serve until SIGTERM or SIGINT; returns the exit code."""
    server, store = build(config)
    stop = threading.Event()

    def sweeper() -> None:
        while not stop.wait(SWEEP_INTERVAL):
            try:
                sweep(server.app)
            except (OSError, sqlite3.Error) as exc:
                # A full disk: one line each time, not a traceback every SWEEP_INTERVAL.
                log.error("sweep failed (%s); retrying in %.0f s", exc, SWEEP_INTERVAL)
            except Exception:
                log.exception("sweep failed")

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        notify_stopping("stopping")
        stop.set()
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    host, port = server.server_address[:2]
    log.info("ebsfs server listening on %s:%s, data in %s", host, port, config.data_dir)
    if config.rate_limit or config.account_rate_limit:
        log.info("rate limits: %s GetSnapshotBlock and %s PutSnapshotBlock calls a second per "
                 "snapshot, %s of each per account", config.rate_limit or "any",
                 config.rate_limit or "any", config.account_rate_limit or "any")
    if config.encryption_by_default:
        log.info("encryption by default: new snapshots are encrypted with %s",
                 DEFAULT_KMS_KEY_ARN)
    notify_ready(f"listening on {config.host}:{port}")
    thread = threading.Thread(target=sweeper, name="sweeper", daemon=True)
    thread.start()
    started = time.monotonic()
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        stop.set()
        server.server_close()
        store.close()
        log.info("ebsfs server stopped after %.0f s", time.monotonic() - started)
    return 0
