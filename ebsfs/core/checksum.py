"""The SHA256 checksums of the EBS direct APIs, used by the client and the local server alike.

Blocks carry ``base64(sha256(data))``. CompleteSnapshot's LINEAR aggregate is the base64
SHA256 of the *raw* 32-byte digests of every distinct index written, in index order
(ebs-direct-api.md §4.3).
"""

import base64
import hashlib
from collections.abc import Iterable


def digest(data: bytes | bytearray | memoryview) -> bytes:
    """The raw 32-byte SHA256 digest of ``data`` (any contiguous bytes-like object)."""
    return hashlib.sha256(data).digest()


def b64(raw_digest: bytes) -> str:
    """The base64 text AWS uses for a raw digest."""
    return base64.b64encode(raw_digest).decode("ascii")


def block_checksum(data: bytes) -> str:
    """The ``x-amz-Checksum`` value of a block."""
    return b64(digest(data))


def linear_aggregate(digests_in_index_order: Iterable[bytes]) -> str:
    """The LINEAR aggregate checksum over raw block digests sorted by block index."""
    h = hashlib.sha256()
    for d in digests_in_index_order:
        h.update(d)
    return b64(h.digest())
