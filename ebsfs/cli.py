"""The ``ebsfs`` command: parses arguments and hands each sub-command to its module.

Each module in ``ebsfs.commands`` provides ``register(subparsers)``, which adds its parser and
sets ``func`` to a function taking the parsed arguments and returning the exit code. Errors
derived from ``EbsfsError`` become one line on stderr and their documented exit code.
"""

import argparse
import contextlib
import importlib
import logging
import math
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from ebsfs import __version__
from ebsfs.core import redact
from ebsfs.core.errors import EbsfsError
from ebsfs.options import fstab, table
from ebsfs.options.flags import add_flags

log = logging.getLogger(__name__)

#: Sub-command modules under ``ebsfs.commands``, in the order ``--help`` lists them.
COMMANDS: tuple[str, ...] = ("mount", "umount", "ls", "stats", "diff", "complete", "server")


def add_aws_options(parser: argparse.ArgumentParser) -> None:
    """The options every command that talks to AWS takes."""
    add_flags(parser, table.AWS_SELECTION)


def positive_seconds(text: str) -> float:
    """An argparse type: a finite number of seconds above 0 (NaN or infinity as a time limit
    would make a wait without end)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text!r}")
    return value


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, like every other ebsfs error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"ebsfs: {message} (see '{self.prog} --help')\n")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or of ``only`` (importing every command module costs
    about a second: ``ebsfs complete`` in a script should not pay for ``mount``'s imports)."""
    parser = _Parser(
        prog="ebsfs",
        description="Amazon EBS snapshots as files, through the EBS direct APIs.",
    )
    parser.add_argument("--version", action="version", version=f"ebsfs {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS if only is None else (only,):
        importlib.import_module(f"ebsfs.commands.{name}").register(subparsers)
    return parser


def _command_parser(parser: argparse.ArgumentParser, name: str | None) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and name in action.choices:
            found: argparse.ArgumentParser = action.choices[name]
            return found
    return parser


#: The exit code after the reader of stdout went away (``ebsfs ls | head``): what a shell
#: reports for a command that SIGPIPE ended, as coreutils' commands do.
EXIT_BROKEN_PIPE = 128 + 13


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    try:
        try:
            return _main(argv)
        finally:
            # Flush here, not at interpreter exit, where a closed pipe prints a warning.
            sys.stdout.flush()
    except BrokenPipeError:
        # Whoever read our output stopped reading: nothing to report, nobody to report it
        # to. Point stdout at /dev/null so that the interpreter's last flush stays quiet.
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Before anything can log or echo the command line.
    redact.register_argv_secrets(argv)
    if fstab.is_helper_call(argv, COMMANDS):
        # mount.fuse3 (mount -t fuse.ebsfs, /etc/fstab) runs ``ebsfs SOURCE MOUNTPOINT -o ...``.
        try:
            argv = fstab.translate(argv)
        except EbsfsError as exc:
            print(f"ebsfs: {exc}", file=sys.stderr)
            return exc.exit_code
    parser = build_parser(argv[0] if argv and argv[0] in COMMANDS else None)
    args, extra = parser.parse_known_args(argv)
    if extra:
        # Said by the command's own parser, so that the hint names its help (ebsfs ls -l).
        _command_parser(parser, getattr(args, "command", None)).error(
            f"unrecognized arguments: {' '.join(extra)}"
        )
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args))
    except EbsfsError as exc:
        print(f"ebsfs: {redact.redact_message(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("ebsfs: interrupted", file=sys.stderr)
        return 130
