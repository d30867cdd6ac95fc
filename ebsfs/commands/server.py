"""``ebsfs server``: the local EBS direct API + EC2 snapshot server (docs/server.md)."""

import argparse

from ebsfs.config import DEFAULT_SERVER_HOST, DEFAULT_SERVER_PORT, ServerConfig
from ebsfs.errors import UsageError
from ebsfs.logsetup import register_secret, setup_logging

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
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        default="/var/lib/ebsfs/server",
        help="where snapshots live (default: %(default)s)",
    )
    p.add_argument(
        "--listen",
        metavar="HOST:PORT",
        type=_listen,
        default=(DEFAULT_SERVER_HOST, DEFAULT_SERVER_PORT),
        help=f"address to listen on (default: {DEFAULT_SERVER_HOST}:"
        f"{DEFAULT_SERVER_PORT}; port 0 picks a free one)",
    )
    p.add_argument(
        "--access-key-id",
        metavar="ID",
        help="the access key id whose SigV4 signatures are accepted "
        "(default: AWS_ACCESS_KEY_ID, else the development pair)",
    )
    p.add_argument(
        "--secret-access-key",
        metavar="KEY",
        help="its secret (default: AWS_SECRET_ACCESS_KEY, else the development pair)",
    )
    faults = p.add_argument_group("fault injection")
    faults.add_argument(
        "--latency-ms",
        type=_seconds,
        default=0.0,
        metavar="MS",
        help="added to every request, with ±10%% jitter",
    )
    faults.add_argument(
        "--throttle-rate",
        type=_rate,
        default=0.0,
        metavar="P",
        help="share of requests answered with RequestThrottledException",
    )
    faults.add_argument(
        "--error-rate",
        type=_rate,
        default=0.0,
        metavar="P",
        help="share answered with 500 InternalServerException",
    )
    faults.add_argument(
        "--drop-rate",
        type=_rate,
        default=0.0,
        metavar="P",
        help="share whose connection is closed before the response is complete",
    )
    faults.add_argument(
        "--corrupt-rate",
        type=_rate,
        default=0.0,
        metavar="P",
        help="share of GetSnapshotBlock answers with altered bytes",
    )
    faults.add_argument(
        "--fault-seed",
        type=int,
        default=None,
        metavar="N",
        help="seed for the fault choices (default: random)",
    )
    timing = p.add_argument_group("timing")
    timing.add_argument(
        "--token-ttl",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help="block and page token lifetime (default: as AWS, 7 days and 60 minutes)",
    )
    timing.add_argument(
        "--complete-delay",
        type=_seconds,
        default=0.0,
        metavar="SECONDS",
        help="time from CompleteSnapshot to completed (or error)",
    )
    timing.add_argument(
        "--timeout-unit",
        type=_seconds,
        default=60.0,
        metavar="SECONDS",
        help="how long one minute of StartSnapshot's Timeout lasts "
        "(default: %(default)s; tests shorten it)",
    )
    p.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="debug logs one line per request (default: %(default)s)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ebsfs.server.runner import run as serve

    setup_logging(args.log_level)
    register_secret(args.secret_access_key)
    host, port = args.listen
    if args.timeout_unit <= 0:
        raise UsageError("--timeout-unit must be positive")
    config = ServerConfig(
        data_dir=args.data_dir,
        host=host,
        port=port,
        access_key_id=args.access_key_id,
        secret_access_key=args.secret_access_key,
        latency_ms=args.latency_ms,
        throttle_rate=args.throttle_rate,
        error_rate=args.error_rate,
        drop_rate=args.drop_rate,
        corrupt_rate=args.corrupt_rate,
        token_ttl=args.token_ttl,
        complete_delay=args.complete_delay,
        log_level=args.log_level,
        timeout_unit=args.timeout_unit,
        fault_seed=args.fault_seed,
    )
    return serve(config)
