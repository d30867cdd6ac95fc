"""Property tests: every option of the table means the same whichever layer gives it.

Random values for random options of ``ebsfs mount`` go in as flags, as ``EBSFS_*`` variables,
as TOML keys and as an fstab ``-o`` line (options -> fstab line -> ``ebsfs mount`` arguments
-> options); all four must give one MountConfig, holding the values drawn. The same for
``ebsfs server`` (flags, environment, file).
"""

from __future__ import annotations

import json
import os
import string
import tempfile
from dataclasses import dataclass, replace
from typing import Any
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from ebsfs.cli import build_parser
from ebsfs.commands.server import build_config
from ebsfs.core.blocks import BLOCK_SIZE
from ebsfs.options import fstab, parsers, table
from ebsfs.options import settings as option_settings
from ebsfs.options.config import MountConfig, ServerConfig

MOUNTPOINT = "/mnt/layers"
UNITS = {"": 1, "KiB": 1 << 10, "k": 1 << 10, "MiB": 1 << 20, "M": 1 << 20, "GiB": 1 << 30}
_WORD = st.text(string.ascii_letters + string.digits, min_size=1, max_size=8)
_PATH = st.text(string.ascii_letters + string.digits + "/._-", min_size=1, max_size=16).map(
    lambda t: "/" + t
)


@dataclass
class Given:
    """One value as each layer spells it, and what it must become."""

    want: Any
    cli: list[str]
    env: str
    toml: str
    fstab: list[str]


def _plain(option: table.Option, spelled: str, want: Any, toml: str | None = None) -> Given:
    assert option.flag is not None
    return Given(want, [option.flag, spelled], spelled, toml or json.dumps(spelled),
                 [f"{option.fstab[0]}={spelled}"])


@st.composite
def _value(draw: st.DrawFn, option: table.Option) -> Given:
    coerce = option.coerce
    if coerce in (parsers.size, parsers.disk_cache):
        unit = draw(st.sampled_from(sorted(UNITS)))
        n = draw(st.integers(0, 4096))
        if coerce is parsers.disk_cache and 0 < n * UNITS[unit] < BLOCK_SIZE:
            n, unit = n, "MiB"
        want = n * UNITS[unit]
        toml = str(want) if draw(st.booleans()) else None
        return _plain(option, f"{n}{unit}", want, toml)
    if coerce in (parsers.number, parsers.positive):
        low = 1 if coerce is parsers.positive else 0
        whole, tenths = draw(st.integers(low, 100_000)), draw(st.integers(0, 9))
        spelled = f"{whole}.{tenths}" if tenths else str(whole)
        return _plain(option, spelled, float(spelled), spelled)
    if coerce in (parsers.whole, parsers.concurrency, parsers.attempts):
        top = {parsers.concurrency: parsers.MAX_CONCURRENCY,
               parsers.attempts: parsers.MAX_ATTEMPTS}.get(coerce, 4096)
        n = draw(st.integers(1, top))
        return _plain(option, str(n), n, str(n))
    if coerce is parsers.level:
        level = draw(st.sampled_from(["debug", "info", "warning", "error"]))
        return _plain(option, level, level)
    if coerce is parsers.boolean:
        assert option.flag is not None
        on = option.kind == "switch" or draw(st.booleans())
        flag, name = (option.flag, option.fstab[0]) if on else (option.off_flag,
                                                                "no_" + option.name)
        return Given(on, [flag], draw(st.sampled_from(["yes", "true", "on", "1"] if on else
                                                      ["no", "false", "off", "0"])),
                     "true" if on else "false", [name])
    if coerce is parsers.snapshot_ids:
        hexes = st.text("0123456789abcdef", min_size=8, max_size=17)
        ids = draw(st.lists(hexes.map(lambda h: "snap-" + h), min_size=1, max_size=3))
        return Given(tuple(ids), [a for i in ids for a in ("--snapshot", i)], ",".join(ids),
                     json.dumps(ids), ["snapshot=" + ":".join(ids)])
    if coerce is parsers.filters:
        pairs = draw(st.lists(st.tuples(_WORD, _WORD), min_size=1, max_size=3))
        items = [f"tag:{k}={v}" for k, v in pairs]
        return Given(tuple((f"tag:{k}", v) for k, v in pairs),
                     [a for i in items for a in ("--filter", i)], ",".join(items),
                     json.dumps(items), [f"filter={i}" for i in items])
    if coerce is parsers.region:
        name = draw(st.sampled_from(["us-east-1", "eu-west-1", "ap-southeast-2", "local"]))
        return _plain(option, name, name)
    assert coerce is parsers.text, option.name
    if option.name == "owner":
        owners = draw(st.lists(st.sampled_from(["self", "shared", "123456789012"]),
                               min_size=1, max_size=3))
        text = ",".join(owners)
        return Given(text, ["--owner", text], text, json.dumps(text),
                     ["owner=" + ":".join(owners)])
    if option.name == "endpoint_url":
        url = f"http://127.0.0.1:{draw(st.integers(1, 65535))}"
        return _plain(option, url, url)
    spelled = draw(_PATH if option.name.endswith("dir") else _WORD)
    return _plain(option, spelled, spelled)


MOUNT_SETTINGS = [o for o in table.MOUNT if o.toml_key]


@st.composite
def _mount_case(draw: st.DrawFn) -> dict[str, tuple[table.Option, Given]]:
    chosen = draw(st.lists(st.sampled_from(MOUNT_SETTINGS), unique_by=id, max_size=10))
    return {o.name: (o, draw(_value(o))) for o in chosen}


def _toml(case: dict[str, tuple[table.Option, Given]]) -> str:
    lines = []
    for section in ("aws", "mount", "server"):
        lines.append(f"[{section}]")
        lines += [f"{o.name} = {g.toml}" for o, g in case.values() if o.section == section]
    return "\n".join(lines) + "\n"


def _bare(config: MountConfig) -> MountConfig:
    return replace(config, aws=replace(config.aws, origins=()))


@given(_mount_case(), st.booleans())
@settings(max_examples=150, deadline=None)
def test_every_layer_gives_one_mount_config(
    case: dict[str, tuple[table.Option, Given]], dashes: bool
) -> None:
    parser = build_parser("mount")
    empty = option_settings.EMPTY

    def from_args(argv: list[str]) -> MountConfig:
        args = parser.parse_args(["mount", MOUNTPOINT, *argv])
        return option_settings.mount_config(MOUNTPOINT, args, config=empty, environ={})

    by_flags = from_args([a for _, g in case.values() for a in g.cli])
    env = {o.env[0]: g.env for o, g in case.values()}
    by_env = option_settings.mount_config(MOUNTPOINT, {}, config=empty, environ=env)
    parsed = option_settings.parse_config(_toml(case), "layers.toml")
    by_file = option_settings.mount_config(MOUNTPOINT, {}, config=parsed, environ={})
    items = [item for _, g in case.values() for item in g.fstab]
    if dashes:  # option names may use - for _; values stay as they are
        items = [name.replace("_", "-") + sep + value
                 for name, sep, value in (item.partition("=") for item in items)]
    line = ",".join(items)
    argv = fstab.translate(["ebsfs", MOUNTPOINT, "-o", line or "rw"])
    assert argv[:2] == ["mount", MOUNTPOINT]
    by_fstab = from_args(argv[2:])
    assert _bare(by_flags) == _bare(by_env) == _bare(by_file) == _bare(by_fstab)
    for option, value in case.values():
        holder = by_flags.aws if option.section == "aws" else by_flags
        assert getattr(holder, option.name) == value.want, option.name


SERVER_SETTINGS = [o for o in table.SERVER if o.toml_key and o.name != "listen"]


@st.composite
def _server_case(draw: st.DrawFn) -> dict[str, tuple[table.Option, Given]]:
    chosen = draw(st.lists(st.sampled_from(SERVER_SETTINGS), unique_by=id, max_size=8))
    out = {}
    for option in chosen:
        if option.coerce is parsers.share:
            share = draw(st.integers(0, 100)) / 100
            out[option.name] = (option, _plain(option, str(share), share, str(share)))
        elif option.coerce is parsers.seed:
            seed = draw(st.integers(0, 2**31))
            out[option.name] = (option, _plain(option, str(seed), seed, str(seed)))
        elif option.name == "timeout_unit":  # build_config refuses 0: a minute of no time
            unit = draw(st.integers(1, 600))
            out[option.name] = (option, _plain(option, str(unit), float(unit), str(unit)))
        else:
            out[option.name] = (option, draw(_value(option)))
    if draw(st.booleans()):
        port = draw(st.integers(1, 65535))
        listen = next(o for o in table.SERVER if o.name == "listen")
        out["listen"] = (listen, _plain(listen, f"127.0.0.1:{port}", ("127.0.0.1", port)))
    return out


@given(_server_case())
@settings(max_examples=100, deadline=None)
def test_every_layer_gives_one_server_config(case: dict[str, tuple[table.Option, Given]]) -> None:
    parser = build_parser("server")

    def config(argv: list[str], env: dict[str, str]) -> ServerConfig:
        with mock.patch.dict(os.environ, env, clear=True):
            return build_config(parser.parse_args(["server", *argv]))

    empty = ["--config", "/dev/null"]
    by_flags = config([*empty, *(a for _, g in case.values() for a in g.cli)], {})
    by_env = config(empty, {o.env[0]: g.env for o, g in case.values()})
    with tempfile.NamedTemporaryFile("w", suffix=".toml") as file:
        file.write(_toml(case))
        file.flush()
        by_file = config(["--config", file.name], {})
    assert by_flags == by_env == by_file
    for option, value in case.values():
        if option.name == "listen":
            assert (by_flags.host, by_flags.port) == value.want
        else:
            assert getattr(by_flags, option.name) == value.want, option.name
