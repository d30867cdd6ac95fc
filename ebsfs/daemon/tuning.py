"""Process settings that make the read path cheap: malloc's thresholds, an RSS bound, and the
kernel's read-ahead window of the mount's FUSE connection.

Why these values: docs/architecture.md (the read path); measurements: docs/benchmarks.md.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os

import trio

log = logging.getLogger(__name__)

#: Fixed mmap threshold above any buffer of the read path (512 KiB blocks, 1 MiB replies and
#: writes): they come from the heap, and a freed one is reused by the next without page faults,
#: zeroing or munmap.
MMAP_THRESHOLD = 4 << 20
#: free() gives the top of the heap back only past this; ``trim_memory`` bounds RSS instead.
TRIM_THRESHOLD = 256 << 20
#: How often RSS is checked against its budget.
TRIM_INTERVAL = 0.5
#: RSS budget of the daemon past --cache-size, before free memory is handed back to the kernel.
TRIM_SLACK = 64 << 20


def _libc() -> ctypes.CDLL | None:
    with contextlib.suppress(OSError):
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    return None


def tame_malloc() -> None:
    """Make block buffers cheap to allocate while RSS stays within --cache-size plus a constant.

    glibc's dynamic mmap threshold rises after the first large free, and per-thread arenas
    (one worker thread per concurrent request) then keep freed blocks' pages. One arena
    (buffers are allocated holding the GIL, so it is not contended) and fixed thresholds let
    a freed block be reused by the next one wherever it is fetched; ``trim_memory`` returns
    free pages when RSS passes its budget.
    """
    libc = _libc()
    with contextlib.suppress(AttributeError):
        if libc is not None:
            m_trim_threshold, m_mmap_threshold, m_arena_max = -1, -3, -8
            libc.mallopt(m_mmap_threshold, MMAP_THRESHOLD)
            libc.mallopt(m_trim_threshold, TRIM_THRESHOLD)
            libc.mallopt(m_arena_max, 1)


def _rss() -> int:
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def trim_memory(budget: int) -> None:
    """Hand free pages back to the kernel whenever RSS passes ``budget`` (runs until cancelled)."""
    # malloc_trim(0) gives every whole free page back, but the next blocks then fault their
    # pages in again: trim only past the budget, so between two checks at most one interval
    # of growth adds to it.
    libc = _libc()
    trim = getattr(libc, "malloc_trim", None)
    if trim is None:
        return
    while True:
        await trio.sleep(TRIM_INTERVAL)
        if _rss() > budget:
            trim(0)


def set_kernel_read_ahead(device: int, size: int) -> None:
    """Set the kernel read-ahead window of the mount's FUSE connection (its bdi) to ``size``.

    With the kernel's default window every FUSE read is small and a sequential reader meets
    each page the kernel dropped one synchronous round trip at a time; with a window as large
    as ``--read-ahead`` the kernel asks for up to 1 MiB per request and refills the missing
    pages of the next window together. Needs root (sysfs); otherwise nothing changes but speed.
    """
    path = f"/sys/class/bdi/{os.major(device)}:{os.minor(device)}/read_ahead_kb"
    try:
        with open(path, "w") as f:
            f.write(str(max(size // 1024, 4)))
    except OSError as exc:
        log.info("kernel read-ahead left at its default (%s: %s)", path, exc.strerror)
