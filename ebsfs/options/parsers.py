"""How each option's text becomes a value: coercers for the environment and the file (which
raise ValueError, worded for the user) and argparse types for the server's flags.

Which option uses which is in ebsfs/options/table.py; the rules are in docs/operations.md.
"""

import argparse
import math
import re
from collections.abc import Callable
from typing import Any

from ebsfs.core.blocks import BLOCK_SIZE, SNAPSHOT_ID_RE
from ebsfs.core.redact import LEVELS
from ebsfs.core.sizes import parse_size


def text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("expected a non-empty string")
    return value


#: What botocore accepts as a region name (a host label, not all digits), ASCII only.
_REGION_RE = re.compile(r"(?![0-9]+$)(?!-)[a-zA-Z0-9-]{1,63}(?<!-)", re.ASCII)


def region(value: Any) -> str:
    result = text(value)
    if not _REGION_RE.fullmatch(result):
        raise ValueError(f"expected a region name such as eu-west-1, not {value!r}")
    return result


def whole(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("expected a whole number")
    if isinstance(value, str):
        # ASCII digits and ASCII blanks only: int() would also take "+5", "5_0" or Unicode
        # digits ("٥"), and str.strip() Unicode spaces (a no-break space pasted from a page).
        digits = value.strip(" \t\n\r\f\v")
        if not (digits.isascii() and digits.isdigit()):
            raise ValueError(f"expected a whole number, not {value[:40]!r}")
        if len(digits) > 18:
            raise ValueError(f"expected a whole number of at most 18 digits, not {value[:40]!r}")
        value = int(digits)
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"expected a whole number of at least 1, not {value!r}")
    return value


def _at_most(value: Any, top: int) -> int:
    result = whole(value)
    if result > top:
        raise ValueError(f"expected at most {top}, not {result}")
    return result


#: Most API calls a mount may have in flight (``max_concurrency``, which also sizes the HTTP
#: connection pool): urllib3 fills a pool with one slot per connection as it makes it, so a
#: typo of a few more digits would hang the mount's first request and fill its memory.
MAX_CONCURRENCY = 1024
#: Most attempts of one call (``max_attempts``): botocore waits up to 20 s between two, so a
#: larger number only hides a failing endpoint for hours.
MAX_ATTEMPTS = 50


def concurrency(value: Any) -> int:
    return _at_most(value, MAX_CONCURRENCY)


def attempts(value: Any) -> int:
    return _at_most(value, MAX_ATTEMPTS)


def seed(value: Any) -> int:
    if isinstance(value, str) and value.strip() == "0":
        return 0
    if value == 0 and not isinstance(value, bool):
        return 0
    return whole(value)


def number(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a number")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise ValueError(f"expected a number, not {value!r}") from None
    if not isinstance(value, int | float) or value < 0:
        raise ValueError(f"expected a number of at least 0, not {value!r}")
    try:
        result = float(value)
    except OverflowError:  # a TOML integer of hundreds of digits
        raise ValueError("expected a finite number, not one that large") from None
    if not math.isfinite(result):  # NaN or infinity as a time: a wait without end
        raise ValueError(f"expected a finite number, not {value!r}")
    return result


def positive(value: Any) -> float:
    """A number above 0: a timeout of 0 is no wait at all (urllib3 refuses it outright)."""
    result = number(value)
    if result <= 0:
        raise ValueError(f"expected a number above 0, not {value!r}")
    return result


def share(value: Any) -> float:
    result = number(value)
    if result > 1:
        raise ValueError(f"expected a share between 0 and 1, not {value!r}")
    return result


def size(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("expected a size")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"expected a size of at least 0, not {value}")
        return value
    if isinstance(value, str):
        return parse_size(value)
    raise ValueError(f"expected a size such as 512KiB or 1GiB, not {value!r}")


def disk_cache(value: Any) -> int:
    result = size(value)
    if 0 < result < BLOCK_SIZE:
        # It holds whole blocks: less than one would silently mean "off".
        raise ValueError(f"expected 0 (off) or at least 512KiB (one block), not {value!r}")
    return result


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"expected true or false, not {value!r}")


def strings(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list | tuple) or not all(
        isinstance(item, str) and item for item in value
    ):
        raise ValueError("expected a list of strings")
    return tuple(value)


def snapshot_ids(value: Any) -> tuple[str, ...]:
    ids = strings(value)
    for snapshot_id in ids:
        if not SNAPSHOT_ID_RE.match(snapshot_id):
            raise ValueError(f"not a snapshot id: {snapshot_id!r} (expected snap-<hex>)")
    return ids


def filters(value: Any) -> tuple[tuple[str, str], ...]:
    pairs: list[tuple[str, str]] = []
    items = value if isinstance(value, list | tuple) else strings(value)
    for item in items:
        if isinstance(item, tuple) and len(item) == 2:
            pairs.append((str(item[0]), str(item[1])))
            continue
        if not isinstance(item, str) or "=" not in item or item.startswith("="):
            raise ValueError(f"expected NAME=VALUE filters such as tag:Env=prod, not {item!r}")
        name, _, val = item.partition("=")
        pairs.append((name, val))
    return tuple(pairs)


def level(value: Any) -> str:
    result = text(value).lower()
    if result not in LEVELS:
        raise ValueError(f"expected one of {', '.join(LEVELS)}, not {value!r}")
    return result


def listen(value: Any) -> str:
    result = text(value)
    # The rules of the --listen flag (which the server applies to this text too), but for a
    # free port (0), which only the command line may ask for.
    try:
        _, port = listen_address(result)
    except argparse.ArgumentTypeError:
        raise ValueError(f"expected HOST:PORT, not {value!r}") from None
    if port == 0:
        raise ValueError(f"expected HOST:PORT, not {value!r}")
    return result


# ---- argparse types of the server's flags (argparse words their errors) ----


def listen_address(value: str) -> tuple[str, int]:
    """``HOST:PORT`` as (host, port); port 0 (a free one) is allowed on the command line."""
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, not {value!r}")
    # ASCII digits only: int() would also take "+80", "8_0" or " 80".
    if not (port.isascii() and port.isdigit() and len(port) <= 5) or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"not a port number: {port!r}")
    return host.strip("[]"), int(port)


def _flag_number(value: str, what: str, ok: Callable[[float], bool], rule: str) -> float:
    """A flag's number: ``what`` names it when it is not one, ``rule`` when ``ok`` refuses it."""
    try:
        result = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not {what}: {value!r}") from None
    if not ok(result):
        raise argparse.ArgumentTypeError(f"{rule}: {value!r}")
    return result


def rate(value: str) -> float:
    return _flag_number(value, "a number", lambda r: 0.0 <= r <= 1.0, "must be between 0 and 1")


def seconds(value: str) -> float:
    return _flag_number(value, "a number of seconds", lambda r: not r < 0, "must not be negative")


def per_second(value: str) -> float:
    return _flag_number(
        value, "a number of calls a second", lambda r: 0.0 <= r < math.inf,
        "must be a finite number of at least 0",
    )


def account(value: str) -> tuple[str, str, str]:
    """``ACCESS_KEY_ID:SECRET:ACCOUNT_ID`` (the secret may hold colons)."""
    key_id, sep, rest = value.partition(":")
    secret, sep2, account_id = rest.rpartition(":")
    if not (sep and sep2 and key_id and secret):
        raise argparse.ArgumentTypeError("expected ACCESS_KEY_ID:SECRET:ACCOUNT_ID")
    if not (len(account_id) == 12 and account_id.isascii() and account_id.isdigit()):
        raise argparse.ArgumentTypeError(f"not a 12-digit account id: {account_id!r}")
    return key_id, secret, account_id
