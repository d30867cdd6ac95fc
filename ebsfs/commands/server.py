"""``ebsfs server``: the local EBS direct API + EC2 snapshot server (docs/server.md).

Each setting comes from its flag, else ``EBSFS_SERVER_<KEY>``, else the ``[server]`` table of
the configuration file (docs/operations.md), else its default.
"""

import argparse
from typing import Any

from ebsfs import settings
from ebsfs.config import DEFAULT_SERVER_HOST, DEFAULT_SERVER_PORT, ServerConfig
from ebsfs.errors import UsageError
from ebsfs.logsetup import register_secret, setup_logging

DEFAULT_DATA_DIR = "/var/lib/ebsfs/server"

EXAMPLES = f"""\
examples:
  ebsfs server --data-dir /var/lib/ebsfs/server
  ebsfs server --data-dir /tmp/s --listen 127.0.0.1:0 --latency-ms 50 --throttle-rate 0.05
  AWS_ENDPOINT_URL_EC2=http://{DEFAULT_SERVER_HOST}:{DEFAULT_SERVER_PORT} aws ec2 describe-snapshots

Without a key pair the server accepts only the development pair from ebsfs.config, and only
on a loopback address. Ready when the port accepts connections. Exit codes: 0 stopped by
SIGTERM/SIGINT, 2 bad arguments or unusable address or data directory.
"""


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, not {text!r}")
    try:
        number = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {port!r}") from None
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"not a port number: {port!r}")
    return host.strip("[]"), number


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1: {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text!r}")
    return value


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
    # Defaults are None ("not given") so that the environment and the file can supply them;
    # the real defaults are applied in run().
    p.add_argument("--data-dir", metavar="DIR",
                   help=f"where snapshots live (default: {DEFAULT_DATA_DIR})")
    p.add_argument("--listen", metavar="HOST:PORT", type=_listen,
                   help=f"address to listen on (default: {DEFAULT_SERVER_HOST}:"
                   f"{DEFAULT_SERVER_PORT}; port 0 picks a free one)")
    p.add_argument("--access-key-id", metavar="ID",
                   help="the access key id whose SigV4 signatures are accepted "
                   "(default: AWS_ACCESS_KEY_ID, else the development pair)")
    p.add_argument("--secret-access-key", metavar="KEY",
                   help="its secret (default: AWS_SECRET_ACCESS_KEY, else the development pair)")
    faults = p.add_argument_group("fault injection")
    faults.add_argument("--latency-ms", type=_seconds, metavar="MS",
                        help="added to every request, with ±10%% jitter (default: 0)")
    faults.add_argument("--throttle-rate", type=_rate, metavar="P",
                        help="share of requests answered with RequestThrottledException")
    faults.add_argument("--error-rate", type=_rate, metavar="P",
                        help="share answered with 500 InternalServerException")
    faults.add_argument("--drop-rate", type=_rate, metavar="P",
                        help="share whose connection is closed before the response is complete")
    faults.add_argument("--corrupt-rate", type=_rate, metavar="P",
                        help="share of GetSnapshotBlock answers with altered bytes")
    faults.add_argument("--fault-seed", type=int, metavar="N",
                        help="seed for the fault choices (default: random)")
    p.add_argument("--encryption-by-default", action="store_const", const=True, default=None,
                   help="encrypt every new snapshot with a default KMS key ARN, as an account "
                   "with EBS encryption by default does (docs/server.md)")
    timing = p.add_argument_group("timing")
    timing.add_argument("--token-ttl", type=_seconds, metavar="SECONDS",
                        help="block and page token lifetime (default: as AWS, 7 days and "
                        "60 minutes)")
    timing.add_argument("--complete-delay", type=_seconds, metavar="SECONDS",
                        help="time from CompleteSnapshot to completed or error (default: 0)")
    timing.add_argument("--timeout-unit", type=_seconds, metavar="SECONDS",
                        help="how long one minute of StartSnapshot's Timeout lasts "
                        "(default: 60; tests shorten it)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                   help="debug logs one line per request (default: info)")
    settings.add_config_option(p)
    p.set_defaults(func=run)


def build_config(args: argparse.Namespace | dict[str, Any]) -> ServerConfig:
    """The ServerConfig from the flags over the environment over the configuration file."""
    given = dict(vars(args) if isinstance(args, argparse.Namespace) else args)
    listen = given.pop("listen", None)
    # The flag's own parser allows port 0 (a free port); the file and environment layers
    # are read by ebsfs.settings.
    values = settings.server_values({**given, "listen": None})
    if listen is None and "listen" in values:
        listen = _listen(values["listen"])
    values.pop("listen", None)
    host, port = listen or (DEFAULT_SERVER_HOST, DEFAULT_SERVER_PORT)
    if values.get("timeout_unit", 60.0) <= 0:
        raise UsageError("--timeout-unit must be positive")
    return ServerConfig(
        data_dir=values.pop("data_dir", DEFAULT_DATA_DIR), host=host, port=port, **values
    )


def run(args: argparse.Namespace) -> int:
    from ebsfs.server.runner import run as serve

    config = build_config(args)
    setup_logging(config.log_level)
    register_secret(config.secret_access_key)
    return serve(config)
