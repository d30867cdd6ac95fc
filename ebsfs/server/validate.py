"""Framework input validation: every constraint checked, all violations reported at once.

AWS's Coral framework validates members before the service sees the request and lists each
violation as ``Value '<v>' at '<wireName>' failed to satisfy constraint: <text>``
(ebs-direct-api.md §2.2); such errors take precedence over every service check.
"""

import re
from typing import Any

from ebsfs.server.errors import EbsError, coral, framework

SNAPSHOT_ID_PATTERN = "^snap-[0-9a-f]+$"
TOKEN_PATTERN = "^[A-Za-z0-9+/=_-]+$"
CHECKSUM_PATTERN = "^[A-Za-z0-9+/=]+$"
ANY_TEXT_PATTERN = r"^[\S\s]+$"
CLIENT_TOKEN_PATTERN = r"^[\S]+$"
KMS_ARN_PATTERN = r"arn:aws[a-z\-]*:kms:.*:[0-9]{12}:key/.*"
#: Longest value a pattern is matched against (the longest limit of a patterned member is
#: KmsKeyArn's 2048).
PATTERN_LIMIT = 4096


class Checks:
    """Collects framework violations; ``done()`` raises them as one ValidationException."""

    def __init__(self) -> None:
        self.violations: list[str] = []

    def _fail(self, value: Any, wire: str, text: str) -> None:
        shown = "null" if value is None else f"'{value}'"
        self.violations.append(f"Value {shown} at '{wire}' failed to satisfy constraint: {text}")

    def required(self, value: Any, wire: str) -> bool:
        """False (and a violation) when the value is missing."""
        if value is None:
            self._fail(None, wire, "Member must not be null")
            return False
        return True

    def at_least(self, value: int | None, wire: str, low: int) -> None:
        if value is not None and value < low:
            self._fail(value, wire, f"Member must have value greater than or equal to {low}")

    def at_most(self, value: int | None, wire: str, high: int) -> None:
        if value is not None and value > high:
            self._fail(value, wire, f"Member must have value less than or equal to {high}")

    def between(self, value: int | None, wire: str, low: int, high: int) -> None:
        self.at_least(value, wire, low)
        self.at_most(value, wire, high)

    def pattern(self, value: str | None, wire: str, regex: str) -> None:
        # The whole value must match, as Java's matches() does: with re.search, "$" would
        # also match before a trailing newline ("snap-abc\n").
        # A value far over its member's length limit (every patterned member has one, and
        # its length check reports it) is not matched: KMS_ARN_PATTERN backtracks for
        # seconds over 64 KiB of ":000000000000:key/".
        if value is not None and len(value) <= PATTERN_LIMIT and not re.fullmatch(regex, value):
            self._fail(value, wire, f"Member must satisfy regular expression pattern: {regex}")

    def length(self, value: str | None, wire: str, low: int, high: int) -> None:
        if value is None:
            return
        if len(value) < low:
            self._fail(value, wire, f"Member must have length greater than or equal to {low}")
        elif len(value) > high:
            self._fail(value, wire, f"Member must have length less than or equal to {high}")

    def enum(self, value: str | None, wire: str, allowed: list[str]) -> None:
        if value is not None and value not in allowed:
            self._fail(value, wire, f"Member must satisfy enum value set: [{', '.join(allowed)}]")

    def snapshot_id(self, value: str | None, wire: str) -> None:
        self.length(value, wire, 1, 64)
        self.pattern(value, wire, SNAPSHOT_ID_PATTERN)

    def done(self) -> None:
        if self.violations:
            raise framework(self.violations)


#: The range of the APIs' Integer members (Java's int): longer text is not even converted.
INT_MIN, INT_MAX = -(2**31), 2**31 - 1
_INTEGER = re.compile(r"-?[0-9]{1,10}")


def parse_int(text: str) -> int | None:
    """The value of an optional minus and ASCII digits that fits an Integer member; None for
    anything else (``+1``, ``1_0``, `` 1``, non-ASCII digits, 5000 digits)."""
    if not _INTEGER.fullmatch(text):
        return None
    value = int(text)
    return value if INT_MIN <= value <= INT_MAX else None


def plain_int(text: str | None) -> int | None:
    """The value of a string of ASCII digits that fits an Integer; None for anything else
    (left to the checks of the general path)."""
    if text is None:
        return None
    value = parse_int(text)
    return value if value is not None and value >= 0 and text[0] != "-" else None


def to_int(text: str | None, wire: str) -> int | None:
    """An integer from a header, path segment or query value; text that is not an Integer
    cannot be deserialised (SerializationException, as for any other member type error)."""
    if text is None:
        return None
    value = parse_int(text)
    if value is None:
        shown = text if len(text) <= 64 else text[:64] + "..."
        raise serialization(f"Unable to parse '{shown}' as an integer for '{wire}'.")
    return value


def serialization(message: str) -> EbsError:
    """The answer to a request the framework cannot even parse."""
    return coral(400, "SerializationException", message)
