"""The option table (ebsfs/options/table.py) against docs/operations.md, and its own rules.

The docs' tables of TOML keys and fstab options are compared both ways, so a new option that
is not documented (or a documented one that went away) fails here.
"""

import re
from dataclasses import fields
from pathlib import Path

import pytest

from ebsfs.cli import build_parser
from ebsfs.core.errors import UsageError
from ebsfs.options import fstab, settings, table
from ebsfs.options.config import AwsConfig, MountConfig, ServerConfig

DOCS = Path(__file__).resolve().parents[2] / "docs"
TICKED = re.compile(r"`([^`]+)`")


def _rows(text: str, header: str) -> list[list[str]]:
    """The cells of the Markdown table that starts with ``header``."""
    start = text.index(header)
    rows = []
    for line in text[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def _documented_keys() -> dict[str, set[str]]:
    text = (DOCS / "operations.md").read_text()
    found: dict[str, set[str]] = {}
    for first, keys in _rows(text, "| table | keys |"):
        section = TICKED.findall(first)[0].strip("[]")
        # Keys are ticked; a parenthesis after one explains it ("list of `NAME=VALUE`").
        found[section] = set(TICKED.findall(re.sub(r"\([^)]*\)", "", keys)))
    return found


def test_docs_list_every_toml_key_and_no_other() -> None:
    documented = _documented_keys()
    assert set(documented) == set(settings.SCHEMA)
    for section, keys in settings.SCHEMA.items():
        assert documented[section] == set(keys), section


def test_docs_list_every_fstab_option_and_no_other() -> None:
    text = (DOCS / "operations.md").read_text()
    values: set[str] = set()
    bare: set[str] = set()
    for first, *_ in _rows(text, "| option | becomes |"):
        for name in TICKED.findall(first):
            if "=" in name:
                values.add(name.partition("=")[0])
            else:
                bare.add(name)
    assert values - {"comment"} == set(fstab.VALUE_OPTIONS)
    ignored = {name for name in bare if name in fstab.IGNORED_OPTIONS or "*" in name}
    assert bare - ignored == set(fstab.FLAG_OPTIONS)


def test_usage_option_table_names_real_flags() -> None:
    text = (DOCS / "usage.md").read_text()
    flags = {o.flag for o in table.MOUNT if o.flag}
    for first, *_ in _rows(text, "| option | default | meaning |"):
        for name in TICKED.findall(first):
            assert name.split()[0] in flags, name


def test_every_config_field_has_a_row() -> None:
    def names(section: str) -> set[str]:
        return {o.name for o in table.every_option() if o.section == section}

    assert {f.name for f in fields(AwsConfig)} - {"origins"} == names("aws")
    assert {f.name for f in fields(MountConfig)} - {"mountpoint", "aws"} == names("mount")
    # listen becomes host and port; --fault gives faults.
    server = {f.name for f in fields(ServerConfig)} - {"host", "port", "faults"}
    assert server | {"listen", "fault"} == names("server")


def test_names_are_unique_where_they_must_be() -> None:
    for command in (table.MOUNT, table.SERVER):
        flags = [o.flag for o in command if o.flag]
        assert len(flags) == len(set(flags))
    env = [name for o in table.every_option() for name in o.env]
    assert len(env) == len(set(env))
    fstab_names = [n for o in table.MOUNT if o.flag for n in o.fstab]
    assert len(fstab_names) == len(set(fstab_names))


def test_help_shows_the_config_defaults() -> None:
    for option in table.every_option():
        option.help_text()  # a {default} the config lacks raises
    by_name = {o.name: o for o in table.MOUNT}
    assert by_name["cache_size"].help_text().endswith("(default: 256MiB)")
    assert "(default: 0.5)" in by_name["writeback_delay"].help_text()
    assert "(default: 60;" in by_name["refresh"].help_text()


@pytest.mark.parametrize("flag", ["--io-timeout", "--refresh", "--writeback-delay"])
def test_numeric_flags_speak_alike(flag: str) -> None:
    """Every number of ``ebsfs mount`` is read once, by the table's parser: the same words
    for each (``--io-timeout`` was argparse's float, then applied a second time)."""
    args = build_parser("mount").parse_args(["mount", "/mnt/x", flag, "soon"])
    with pytest.raises(UsageError, match=f"^{flag}: expected a number, not 'soon'$"):
        settings.mount_config("/mnt/x", args, config=settings.EMPTY, environ={})
