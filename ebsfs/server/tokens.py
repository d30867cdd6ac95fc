"""Opaque block and page tokens, bound to what they were issued for and expiring.

A token is URL-safe base64 of ``kind|binding|value|expiry`` followed by a truncated HMAC
under a key kept in the data directory, so tokens survive a restart as AWS's do, and any
change to a token, or its use for another snapshot, index or operation, is detected.
"""

import base64
import binascii
import hashlib
import hmac
import os
import time

BLOCK = "B"
PAGE_BLOCKS = "L"
PAGE_CHANGED = "C"
PAGE_EC2 = "D"

_MAC_LEN = 16


class TokenMint:
    """Mints and checks tokens; ``verify`` returns the token's value or None."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def mint(self, kind: str, binding: str, value: int, expiry: float) -> str:
        # A random salt makes every listing hand out fresh strings, as AWS does.
        salt = os.urandom(3).hex()
        payload = f"{kind}|{binding}|{value}|{expiry:.3f}|{salt}".encode()
        mac = hmac.new(self._key, payload, hashlib.sha256).digest()[:_MAC_LEN]
        return base64.urlsafe_b64encode(payload + mac).decode("ascii")

    def verify(self, token: str, kind: str, binding: str, now: float | None = None) -> int | None:
        """The value the token carries if it is genuine, of this kind and binding, unexpired."""
        try:
            raw = base64.urlsafe_b64decode(token.encode("ascii"))
        except (binascii.Error, ValueError, UnicodeError):
            return None
        payload, mac = raw[:-_MAC_LEN], raw[-_MAC_LEN:]
        good = hmac.new(self._key, payload, hashlib.sha256).digest()[:_MAC_LEN]
        if len(raw) <= _MAC_LEN or not hmac.compare_digest(mac, good):
            return None
        try:
            t_kind, t_binding, value, expiry, _salt = payload.decode().split("|")
            if t_kind != kind or t_binding != binding:
                return None
            if float(expiry) < (time.time() if now is None else now):
                return None
            return int(value)
        except ValueError:
            return None
