"""Property tests of what users type: sizes (``512KiB``, ``1GiB``, ``8G``) and fstab options.

Round trips against exact arithmetic (``fractions.Fraction``) and the real ``ebsfs mount``
argument parser; garbage must give the one error the CLI prints (ValueError for a size, a
UsageError for an option), never another exception, which the CLI would show as a traceback.
"""

from __future__ import annotations

import string
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ebsfs.cli import build_parser
from ebsfs.core.errors import UsageError
from ebsfs.core.sizes import format_size, parse_size
from ebsfs.options import fstab
from ebsfs.options import settings as ebsfs_settings

UNITS = {
    "": 1, "b": 1,
    "k": 1 << 10, "kib": 1 << 10, "kb": 1000,
    "m": 1 << 20, "mib": 1 << 20, "mb": 1000**2,
    "g": 1 << 30, "gib": 1 << 30, "gb": 1000**3,
    "t": 1 << 40, "tib": 1 << 40, "tb": 1000**4,
}  # fmt: skip


def _cased(draw: st.DrawFn, unit: str) -> str:
    return "".join(c.upper() if draw(st.booleans()) else c for c in unit)


@st.composite
def _whole_sizes(draw: st.DrawFn) -> tuple[str, int]:
    unit = draw(st.sampled_from(sorted(UNITS)))
    n = draw(st.one_of(st.integers(0, 4096), st.integers(0, 1 << 64)))
    space = draw(st.sampled_from(["", " "]))
    return f"{draw(st.sampled_from(['', ' ']))}{n}{space}{_cased(draw, unit)}", n * UNITS[unit]


@given(_whole_sizes())
@settings(max_examples=400, deadline=None)
def test_whole_sizes_are_exact(case: tuple[str, int]) -> None:
    text, want = case
    assert parse_size(text) == want


@st.composite
def _decimal_sizes(draw: st.DrawFn) -> tuple[str, Fraction]:
    unit = draw(st.sampled_from(sorted(UNITS)))
    whole = draw(st.integers(0, 1 << 40))
    frac = draw(st.text(string.digits, min_size=1, max_size=12))
    text = f"{whole}.{frac}{unit}"
    return text, Fraction(f"{whole}.{frac}") * UNITS[unit]


@given(_decimal_sizes())
@settings(max_examples=300, deadline=None)
def test_decimal_sizes_are_exact_or_refused(case: tuple[str, Fraction]) -> None:
    text, exact = case
    if exact.denominator == 1:
        assert parse_size(text) == exact
    else:
        with pytest.raises(ValueError, match="whole number of bytes"):
            parse_size(text)


@given(st.integers(0, 1 << 50))
@settings(max_examples=300, deadline=None)
def test_format_size_reads_back(n: int) -> None:
    shown = format_size(n)
    if "." in shown:
        # Rounded for display (``1.1 KiB``): within a twentieth, and not a size to parse.
        number, unit = shown.split()
        assert abs(Fraction(number) * UNITS[unit.lower()] - n) <= n / 20
    else:
        assert parse_size(shown.removesuffix(" B")) == n


_GARBAGE = st.one_of(
    st.text(max_size=20),
    st.text(string.digits, min_size=300, max_size=400),  # past what a float holds
    st.text(string.digits + ".", min_size=1, max_size=30).map(lambda t: t + "GiB"),
    st.text(string.digits + "kKmMgGtTiIbB. -+e_", max_size=15),
)


@given(_GARBAGE)
@settings(max_examples=500, deadline=None)
def test_any_text_is_a_size_or_a_value_error(text: str) -> None:
    try:
        n = parse_size(text)
    except ValueError as exc:
        assert str(exc) and "\n" not in str(exc)
    else:
        assert isinstance(n, int) and n >= 0


@given(_GARBAGE)
@settings(max_examples=200, deadline=None)
def test_bad_cache_size_is_a_usage_error(text: str) -> None:
    """As ``ebsfs mount --cache-size TEXT`` resolves it: a value or a UsageError."""
    try:
        ebsfs_settings.resolve(
            "mount", {"cache_size": text}, config=ebsfs_settings.EMPTY, environ={}
        )
    except UsageError as exc:
        assert "--cache-size" in str(exc)


# ---- fstab options ----------------------------------------------------------------------

_VALUE = st.text(string.ascii_letters + string.digits + "./_=@", min_size=1, max_size=12)
_SNAP = st.text(string.hexdigits, min_size=1, max_size=8).map(lambda h: f"snap-{h}")


@st.composite
def _options(draw: st.DrawFn) -> tuple[list[str], dict[str, object]]:
    """Random ``-o`` options and the ``ebsfs mount`` arguments they must give."""
    options: list[str] = []
    want: dict[str, object] = {"snapshots": [], "filters": []}
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from(["flag", "value", "snapshot", "ignored"]))
        if kind == "flag":
            name = draw(st.sampled_from(sorted(fstab.FLAG_OPTIONS)))
            options.append(name)
            dest = fstab.FLAG_OPTIONS[name].lstrip("-").replace("-", "_")
            if dest == "no_upload_process":
                want["upload_process"] = False
            elif dest == "upload_process":
                want["upload_process"] = True
            else:
                want[dest] = True
        elif kind == "value":
            # Repeatable ones have a kind of their own below; the values of the others are
            # read after argparse (test_option_layers.py checks what they become).
            repeatable = {"snapshot", "filter"}
            name = draw(st.sampled_from(sorted(set(fstab.VALUE_OPTIONS) - repeatable)))
            value = draw(_VALUE)
            spelled = name.replace("_", "-") if draw(st.booleans()) else name
            options.append(f"{spelled}={value}")
            want[name] = value
        elif kind == "snapshot":
            ids = draw(st.lists(_SNAP, min_size=1, max_size=3))
            options.append("snapshot=" + ":".join(ids))
            want["snapshots"].extend(ids)  # type: ignore[attr-defined]
        else:
            options.append(draw(st.sampled_from(sorted(fstab.IGNORED_OPTIONS - {""}))))
    if draw(st.booleans()):
        value = "tag:" + draw(_VALUE)
        options.append(f"filter={value}")
        want["filters"].append(value)  # type: ignore[attr-defined]
    return options, want


@given(_options(), st.sampled_from(["-o", "-o+"]))
@settings(max_examples=300, deadline=None)
def test_fstab_options_reach_ebsfs_mount(case: tuple[list[str], dict], form: str) -> None:
    options, want = case
    joined = ",".join(options) or "rw"
    argv = ["ebsfs", "/mnt/snapshots", "-o", joined]
    if form == "-o+":
        argv = ["ebsfs", "/mnt/snapshots", "-o" + joined]
    assert fstab.is_helper_call(argv, ("mount", "umount"))
    args = build_parser("mount").parse_args(fstab.translate(argv))
    assert args.mountpoint == "/mnt/snapshots"
    got = vars(args)
    for key, value in want.items():
        if key in ("snapshots", "filters") and not value:
            assert not got[key]
            continue
        if key == "upload_process" and value is False:
            assert got["upload_process"] is False
            continue
        assert got[key] == value, key


_OPTION_TEXT = st.one_of(
    st.text(max_size=40),
    st.lists(
        st.one_of(
            st.sampled_from(
                sorted(fstab.VALUE_OPTIONS) + sorted(fstab.FLAG_OPTIONS) + ["x-a", "ro=1"]
            ),
            st.text(string.ascii_letters + "_-=:", max_size=10),
        ),
        max_size=6,
    ).map(",".join),
)


@given(_OPTION_TEXT)
@settings(max_examples=500, deadline=None)
def test_fstab_garbage_is_one_usage_error(text: str) -> None:
    try:
        out = fstab.translate(["ebsfs", "/mnt/s", "-o", text])
    except UsageError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert out[:2] == ["mount", "/mnt/s"]
    # Whatever it let through, ``ebsfs mount``'s parser takes or refuses with its one line
    # (argparse's exit 2), never a traceback.
    try:
        build_parser("mount").parse_args(out)
    except SystemExit as exc:
        assert exc.code == 2
