"""DescribeSnapshots' filters: their names, limits and parsing from the query, and EC2's
``*``/``?`` wildcard match."""

import functools
import re

from ebsfs.server.ec2base import N
from ebsfs.server.errors import Ec2Error

_FILTER = re.compile(rf"Filter\.{N}\.(Name|Value\.{N})")
FILTER_NAMES = {
    "description",
    "encrypted",
    "owner-alias",
    "owner-id",
    "progress",
    "snapshot-id",
    "start-time",
    "status",
    "storage-tier",
    "tag-key",
    "volume-id",
    "volume-size",
}
#: Limits of DescribeSnapshots filters, as EC2's (50 filters, 200 values each); a value
#: longer than any field it could match (tag values: 256) plus wildcards is refused too.
MAX_FILTERS = 50
MAX_FILTER_VALUES = 200
MAX_FILTER_VALUE_LENGTH = 1024


def parse_filters(params: dict[str, str]) -> list[tuple[str, list[str]]]:
    names: dict[int, str] = {}
    values: dict[int, list[tuple[int, str]]] = {}
    for key, value in params.items():
        m = _FILTER.fullmatch(key)
        if not m:
            continue
        n = int(m.group(1))
        if m.group(2) == "Name":
            names[n] = value
        else:
            values.setdefault(n, []).append((int(m.group(3)), value))
    if len(names) > MAX_FILTERS or any(len(v) > MAX_FILTER_VALUES for v in values.values()):
        raise Ec2Error(
            "FilterLimitExceeded",
            f"The request uses too many filters or too many filter values (at most "
            f"{MAX_FILTERS} filters of {MAX_FILTER_VALUES} values each).",
        )
    for items in values.values():
        for _, value in items:
            if len(value) > MAX_FILTER_VALUE_LENGTH:
                raise Ec2Error(
                    "InvalidParameterValue",
                    f"A filter value is {len(value)} characters long; the limit is "
                    f"{MAX_FILTER_VALUE_LENGTH}.",
                )
    return [(names[n], [v for _, v in sorted(values.get(n, []))]) for n in sorted(names)]


def glob_match(pattern: str, text: str) -> bool:
    """Whether ``text`` matches the EC2 filter value ``pattern``: ``*`` matches any run of
    characters, ``?`` any one, case-sensitively.

    Not a regular expression: a backtracking match of ``*a*a*a*a*b`` against 255 ``a`` took
    seconds. The text between stars is found left to right, each piece at its earliest
    place, which is enough (a later place never leaves more room for the rest); that takes
    at most len(pattern) x len(text) steps, and one C ``find`` for pieces without ``?``.
    """
    pieces = pattern.split("*")
    if len(pieces) == 1:
        return len(text) == len(pattern) and _piece_at(pattern, text, 0)
    first, last = pieces[0], pieces[-1]
    if len(first) + len(last) > len(text):
        return False
    if not _piece_at(first, text, 0) or not _piece_at(last, text, len(text) - len(last)):
        return False
    pos, end = len(first), len(text) - len(last)
    for piece in pieces[1:-1]:
        if not piece:
            continue
        found = _find_piece(piece, text, pos, end)
        if found < 0:
            return False
        pos = found + len(piece)
    return True


@functools.lru_cache(maxsize=4096)
def _piece_regex(piece: str) -> re.Pattern[str]:
    """``piece`` (no ``*``) as a regular expression of literals and ``.`` (for ``?``): no
    quantifier, so no backtracking, and C's speed (matching character by character in
    Python let a request of many values against many tags take seconds of CPU)."""
    return re.compile("".join("." if c == "?" else re.escape(c) for c in piece), re.DOTALL)


def _piece_at(piece: str, text: str, pos: int) -> bool:
    """Whether ``piece`` (no ``*``; ``?`` any character) matches ``text`` at ``pos``."""
    if "?" not in piece:
        return text.startswith(piece, pos)
    if pos + len(piece) > len(text):
        return False
    return _piece_regex(piece).match(text, pos) is not None


def _find_piece(piece: str, text: str, start: int, end: int) -> int:
    """The first place in ``text[start:end]`` where ``piece`` matches; -1 if none."""
    if "?" not in piece:
        return text.find(piece, start, end)
    found = _piece_regex(piece).search(text, start, end)
    return -1 if found is None else found.start()
