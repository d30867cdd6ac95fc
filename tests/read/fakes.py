"""A fake of the block-reading part of ebsfs.aws.api.Api, with faults, for unit tests of layers."""

from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter

from ebsfs.aws.api import BlockPage
from ebsfs.core.blocks import BLOCK_SIZE
from ebsfs.core.errors import (
    AccessDeniedError,
    ApiError,
    BackendUnavailableError,
    ChecksumError,
    InvalidTokenError,
    NotFoundError,
)


def block_of(index: int) -> bytes:
    """Distinct content for each index."""
    stamp = f"block {index:012d}\n".encode()
    return (stamp * (BLOCK_SIZE // len(stamp) + 1))[:BLOCK_SIZE]


class FakeBlockApi:
    """Serves ``blocks`` of one snapshot; tokens expire after ``ttl`` seconds (wall clock)."""

    def __init__(self, blocks: dict[int, bytes], volume_gib: int = 1, ttl: float = 3600.0) -> None:
        self.blocks = blocks
        self.volume_gib = volume_gib
        self.ttl = ttl
        self.calls: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.corrupt: set[int] = set()  # these indexes fail their checksum
        self.corrupt_once: set[int] = set()
        self.not_found_until = 0.0  # 404 for every call until this wall time
        self.unavailable = False
        self.throttled_until: dict[int, float] = {}  # index -> wall time its GETs throttle until
        self.delay = 0.0
        #: While set, every call hangs until it is cleared (a stopped server).
        self.stuck = False
        self.denied = False  # every call answers AccessDenied (a 4xx: the endpoint works)
        self.in_flight = 0
        self.max_in_flight = 0

    def _count(self, name: str) -> None:
        with self.lock:
            self.calls[name] += 1
        while self.stuck:
            time.sleep(0.01)
        if self.denied:
            raise AccessDeniedError("AccessDeniedException: not for you")

    def probe(self, timeout: float) -> None:
        """As ``Api.probe``: returns once the endpoint answers."""
        with self.lock:
            self.calls["probe"] += 1
        deadline = time.monotonic() + timeout
        while self.stuck and time.monotonic() < deadline:
            time.sleep(0.01)
        if self.unavailable or self.stuck:
            raise BackendUnavailableError("connection refused")

    def list_blocks(
        self,
        snapshot_id: str,
        start_index: int = 0,
        max_results: int = 10000,
        next_token: str | None = None,
    ) -> BlockPage:
        self._count("list")
        if self.unavailable:
            raise BackendUnavailableError("connection refused")
        if time.time() < self.not_found_until:
            raise NotFoundError("ResourceNotFoundException SNAPSHOT_NOT_FOUND")
        start = int(next_token) if next_token else start_index
        idx = sorted(i for i in self.blocks if i >= start)
        page, rest = idx[:max_results], idx[max_results:]
        expiry = time.time() + self.ttl
        return BlockPage(
            blocks=[(i, f"{i}:{expiry}") for i in page],
            expiry=expiry,
            next_token=str(rest[0]) if rest else None,
            volume_size=self.volume_gib,
        )

    def get_verified_block(
        self, snapshot_id: str, index: int, token: str
    ) -> tuple[bytes, bytes]:
        data = self.get_block(snapshot_id, index, token)
        return data, hashlib.sha256(data).digest()

    def get_block(self, snapshot_id: str, index: int, token: str) -> bytes:
        self._count("get")
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay:
                time.sleep(self.delay)
            if self.unavailable:
                raise BackendUnavailableError("connection refused")
            if time.time() < self.not_found_until:
                raise NotFoundError("ResourceNotFoundException SNAPSHOT_NOT_FOUND")
            tok_index, expiry = token.split(":")
            if int(tok_index) != index or float(expiry) < time.time():
                raise InvalidTokenError(
                    "bad token", "ValidationException", "INVALID_BLOCK_TOKEN", 400
                )
            if time.time() < self.throttled_until.get(index, 0.0):
                raise ApiError(
                    "Rate exceeded", "RequestThrottledException", "ACCOUNT_THROTTLED", 400
                )
            if index in self.corrupt:
                raise ChecksumError(f"block {index}: checksum mismatch")
            if index in self.corrupt_once:
                self.corrupt_once.discard(index)
                raise ChecksumError(f"block {index}: checksum mismatch")
            if index not in self.blocks:
                raise ApiError("no such block", "ValidationException", "INVALID_BLOCK_TOKEN", 400)
            return self.blocks[index]
        finally:
            with self.lock:
                self.in_flight -= 1
