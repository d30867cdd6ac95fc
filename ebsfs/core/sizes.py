"""Byte sizes as users write them: ``512KiB``, ``1GiB``, ``8G``, ``4096``."""

import re
from fractions import Fraction

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1 << 10,
    "kb": 1000,
    "kib": 1 << 10,
    "m": 1 << 20,
    "mb": 1000**2,
    "mib": 1 << 20,
    "g": 1 << 30,
    "gb": 1000**3,
    "gib": 1 << 30,
    "t": 1 << 40,
    "tb": 1000**4,
    "tib": 1 << 40,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$", re.ASCII)


def parse_size(text: str) -> int:
    """Parse a size; single letters and ``KiB``-style suffixes are powers of 1024.

    Raises ValueError with a message fit for the user.
    """
    m = _SIZE_RE.match(text)
    unit = m.group(2).lower() if m else ""
    if not m or unit not in _UNITS:
        raise ValueError(f"not a size: {text!r} (examples: 4096, 512KiB, 1GiB, 8G)")
    # Exact arithmetic: a float loses bytes past 2**53, turns 64.1GB into a fraction and
    # overflows (a traceback) on a long string of digits.
    value = Fraction(m.group(1)) * _UNITS[unit]
    if value.denominator != 1:
        raise ValueError(f"not a whole number of bytes: {text!r}")
    return int(value)


def format_size(n: int | float) -> str:
    """A short human form: ``512 KiB``, ``1.5 GiB``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            if unit == "B" or value == int(value):
                return f"{int(value)} {unit}"
            return f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
