"""The read stack of each completed snapshot: ReadAhead over CachedBlocks over RemoteBlocks,
with DiskCachedBlocks between cache and remote under ``--disk-cache``.

Stacks are made on first use and the most recently used ``max_stacks`` kept; the caches, token
windows and limiter they share are the mount's and bounded on their own. docs/architecture.md.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass
from pathlib import Path

import trio

from ebsfs.aws.runner import Calls
from ebsfs.core.blocks import BLOCK_SIZE, BLOCKS_PER_GIB
from ebsfs.core.errors import MountError
from ebsfs.read.base import BlockReader
from ebsfs.read.cache import BlockCache, CachedBlocks
from ebsfs.read.diskcache import DiskCache, DiskCachedBlocks
from ebsfs.read.readahead import ReadAhead
from ebsfs.read.remote import BlockApi, RemoteBlocks, RemoteTuning, TokenWindows


@dataclass(frozen=True)
class StackConfig:
    """The mount options that shape the read stack."""

    cache_size: int
    read_ahead: int  # bytes; 0 turns read-ahead off
    max_concurrency: int
    io_timeout: float = 30.0
    not_found_grace: float = 180.0  # remote.READ_LAG_GRACE: AWS's read lag, from completion
    max_stacks: int = 256
    disk_cache: int = 0  # bytes of the local disk cache; 0: off (settings refuse under a block)
    disk_cache_file: str = ""  # its file (diskcache.cache_file)


class ReadStacks:
    """One read stack per completed snapshot, sharing the mount's cache, windows and limiter."""

    def __init__(
        self,
        api: BlockApi,
        config: StackConfig,
        nursery: trio.Nursery,
        calls: Calls | None = None,
    ) -> None:
        self.api = api
        self.config = config
        self.nursery = nursery
        self.calls = calls or Calls(trio.CapacityLimiter(config.max_concurrency))
        # The mount's one liveness clock bounds every API call, writes included, from now.
        self.calls.health.configure(config.io_timeout, api)
        # --cache-size bounds the blocks held in memory, fetched as well as cached: each of the
        # max_concurrency fetches holds a block before it enters the cache.
        in_flight = config.max_concurrency * BLOCK_SIZE
        self.cache = BlockCache(max(config.cache_size - in_flight, config.cache_size // 2))
        self.windows = TokenWindows()
        self.remote_counters: Counter[str] = Counter()
        self.readahead_counters: Counter[str] = Counter()
        self.tuning = RemoteTuning(
            io_timeout=config.io_timeout, not_found_grace=config.not_found_grace
        )
        # Read-ahead past half the cache would evict what it fetched before it is read: half
        # of what the cache holds, the fetches' share taken off (half of --cache-size was all
        # of it below 2 x max_concurrency blocks: a 32 MiB cache refetched 2 blocks in 3).
        ahead = min(config.read_ahead, self.cache.max_bytes // 2) // BLOCK_SIZE
        self.read_ahead_blocks = max(ahead, 0)
        self._stacks: OrderedDict[str, BlockReader] = OrderedDict()
        self.disk: DiskCache | None = None
        if config.disk_cache >= BLOCK_SIZE:
            path = Path(config.disk_cache_file)
            try:
                # Queued blocks were just fetched, so the memory cache holds them too as long
                # as the queue is a fraction of it: waiting to be stored costs no memory.
                queue = min(max(self.cache.max_bytes // 4 // BLOCK_SIZE, 8), 128)
                self.disk = DiskCache(path, config.disk_cache, queue_blocks=queue)
            except OSError as exc:
                raise MountError(f"cannot create the disk cache {path}: {exc.strerror}") from None
            nursery.start_soon(self.disk.run)

    def get(self, snapshot_id: str, volume_gib: int) -> BlockReader:
        """The stack of ``snapshot_id`` (made now if it is not held)."""
        stack = self._stacks.get(snapshot_id)
        if stack is not None:
            self._stacks.move_to_end(snapshot_id)
            return stack
        blocks = volume_gib * BLOCKS_PER_GIB
        remote = RemoteBlocks(
            self.api,
            self.calls,
            snapshot_id,
            blocks,
            counters=self.remote_counters,
            tuning=self.tuning,
            windows=self.windows,
        )
        below: BlockReader = remote
        if self.disk is not None:
            below = DiskCachedBlocks(remote, self.disk, snapshot_id)
        cached = CachedBlocks(below, self.cache, snapshot_id)
        stack = ReadAhead(
            cached, self.nursery, self.read_ahead_blocks, blocks, self.readahead_counters
        )
        self._stacks[snapshot_id] = stack
        while len(self._stacks) > self.config.max_stacks:
            self._stacks.popitem(last=False)
        return stack

    def stats(self) -> dict[str, int]:
        """Every layer's counters, merged."""
        return {
            **self.remote_counters,
            **self.readahead_counters,
            **self.cache.stats(),
            **(self.disk.stats() if self.disk is not None else {}),
            "token_windows": len(self.windows),
            "tokens_held": self.windows.tokens,
            "threads_busy": int(self.calls.limiter.borrowed_tokens),
            **self.calls.health.counters,
        }
