"""argparse flags and their help, made from the option table (table.py).

Flags of settings default to None ("not given"), so that the environment and the file can
supply them (settings.resolve); the defaults come from the config dataclasses.
"""

import argparse
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ebsfs.options.table import Option


def add_flags(
    parser: argparse.ArgumentParser,
    options: Iterable[Option],
    types: Mapping[str, Callable[[str], Any]] | None = None,
) -> None:
    """Add each option's flag to ``parser``, in order, in its argument group.

    ``types`` gives argparse types by option name where the table holds none (a parser that
    belongs to a layer above the options).
    """
    groups: dict[str, Any] = {}
    for option in options:
        if option.flag is None:
            continue
        target: Any = parser
        if option.group is not None:
            if option.group not in groups:
                groups[option.group] = parser.add_argument_group(option.group)
            target = groups[option.group]
        _add(target, option, (types or {}).get(option.name, option.argtype))


def _add(target: Any, option: Option, argtype: Callable[[str], Any] | None) -> None:
    help_text = option.help_text()
    common: dict[str, Any] = {"dest": option.name, "help": help_text}
    if option.kind == "flag":
        target.add_argument(option.flag, action="store_true", **common)
    elif option.kind == "switch":
        target.add_argument(option.flag, action="store_const", const=True, default=None,
                            **common)
    elif option.kind == "tristate":
        target.add_argument(option.flag, action="store_const", const=True, default=None,
                            **common)
        target.add_argument(option.off_flag, dest=option.name, action="store_const",
                            const=False, help=option.help_off)
    else:
        if option.metavar is not None:
            common["metavar"] = option.metavar
        if argtype is not None:
            common["type"] = argtype
        if option.choices is not None:
            common["choices"] = list(option.choices)
        action = "append" if option.kind == "append" else "store"
        target.add_argument(option.flag, action=action, default=None, **common)
