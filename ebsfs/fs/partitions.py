"""Partition tables (MBR with logical partitions, and GPT) read from the start of a disk image
through any ``read(offset, length)``; untrusted: counts and offsets bounded, GPT CRCs checked.
See docs/architecture.md and docs/usage.md ("Real root volumes").
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

SECTOR = 512
_MBR_SIGNATURE = b"\x55\xaa"
_GPT_SIGNATURE = b"EFI PART"
_PROTECTIVE = 0xEE
_EXTENDED = frozenset({0x05, 0x0F, 0x85})
#: Bounds against hostile tables: GPT entries read (bytes), logical partitions followed.
MAX_GPT_ENTRY_BYTES = 1 << 20
MAX_LOGICAL = 128
#: EBRs read in one chain, empty links included (each costs a read; Linux stops at 100).
MAX_EBRS = 2 * MAX_LOGICAL

Reader = Callable[[int, int], Awaitable[bytes | memoryview]]


@dataclass(frozen=True)
class Partition:
    """One partition: its number (as Linux numbers it), byte range and GPT name."""

    number: int
    start: int
    size: int
    label: str = ""


async def read_partitions(read: Reader, disk_size: int) -> list[Partition]:
    """The partitions of a disk of ``disk_size`` bytes; [] when it has no table."""
    if disk_size < 2 * SECTOR:
        return []
    mbr = bytes(await read(0, SECTOR))
    gpt = bytes(await read(SECTOR, SECTOR))
    entries = _mbr_entries(mbr) if mbr[510:512] == _MBR_SIGNATURE else []
    if gpt[:8] == _GPT_SIGNATURE and (
        not entries or any(kind == _PROTECTIVE for _, kind, _, _ in entries)
    ):
        found = await _gpt(read, gpt, disk_size)
    elif entries:
        found = await _mbr(read, entries, disk_size)
    else:
        found = []
    return [p for p in (_clip(p, disk_size) for p in found) if p is not None]


def _clip(p: Partition, disk_size: int) -> Partition | None:
    if p.size <= 0 or p.start <= 0 or p.start >= disk_size:
        return None
    return Partition(p.number, p.start, min(p.size, disk_size - p.start), p.label)


def _mbr_entries(sector: bytes) -> list[tuple[int, int, int, int]]:
    """(slot number, type, first LBA, sectors) of the primary slots in use."""
    out = []
    for slot in range(4):
        entry = sector[446 + 16 * slot : 462 + 16 * slot]
        first, count = struct.unpack_from("<II", entry, 8)
        if entry[4] and count:
            out.append((slot + 1, entry[4], first, count))
    return out


async def _mbr(
    read: Reader, entries: list[tuple[int, int, int, int]], disk_size: int
) -> list[Partition]:
    found = []
    extended_seen = False
    for number, kind, first, count in entries:
        if kind in _EXTENDED:
            # Linux numbers logical partitions from 5, whatever slot the extended one is in;
            # a second extended partition is invalid and ignored.
            if not extended_seen:
                found.extend(await _logical(read, first, disk_size))
            extended_seen = True
        else:
            found.append(Partition(number, first * SECTOR, count * SECTOR))
    return sorted(found, key=lambda p: p.number)


async def _logical(read: Reader, extended: int, disk_size: int) -> list[Partition]:
    """Logical partitions: a chain of EBRs, each relative to the extended partition."""
    out: list[Partition] = []
    seen: set[int] = set()
    ebr = extended
    while (
        len(out) < MAX_LOGICAL
        and len(seen) < MAX_EBRS
        and ebr not in seen
        and ebr * SECTOR < disk_size
    ):
        seen.add(ebr)
        sector = bytes(await read(ebr * SECTOR, SECTOR))
        if sector[510:512] != _MBR_SIGNATURE:
            break
        slots = [sector[446 + 16 * i : 462 + 16 * i] for i in range(2)]
        kind, (first, count) = slots[0][4], struct.unpack_from("<II", slots[0], 8)
        if kind != 0 and count:
            out.append(Partition(5 + len(out), (ebr + first) * SECTOR, count * SECTOR))
        next_kind, (next_first, _) = slots[1][4], struct.unpack_from("<II", slots[1], 8)
        if next_kind not in _EXTENDED or not next_first:
            break
        ebr = extended + next_first
    return out


async def _gpt(read: Reader, header: bytes, disk_size: int) -> list[Partition]:
    size = struct.unpack_from("<I", header, 12)[0]
    if not 92 <= size <= SECTOR:
        return []
    stored_crc = struct.unpack_from("<I", header, 16)[0]
    if zlib.crc32(header[:16] + b"\0\0\0\0" + header[20:size]) != stored_crc:
        return []
    entries_lba, count, entry_size, entries_crc = struct.unpack_from("<QIII", header, 72)
    total = count * entry_size
    if (
        entry_size < 128
        or entry_size % 8
        or not 0 < total <= MAX_GPT_ENTRY_BYTES
        or entries_lba * SECTOR + total > disk_size
    ):
        return []
    table = bytes(await read(entries_lba * SECTOR, total))
    if len(table) != total or zlib.crc32(table) != entries_crc:
        return []
    out = []
    for i in range(count):
        entry = table[i * entry_size : (i + 1) * entry_size]
        if entry[:16] == bytes(16):
            continue
        first, last = struct.unpack_from("<QQ", entry, 32)
        if last < first:
            continue
        name = entry[56:128].decode("utf-16-le", "replace").split("\0", 1)[0]
        out.append(Partition(i + 1, first * SECTOR, (last - first + 1) * SECTOR, name))
    return out


def label_links(partitions: list[Partition]) -> dict[str, int]:
    """A file name per GPT label (the first partition of a label wins) -> partition number."""
    links: dict[str, int] = {}
    for p in partitions:
        name = "".join(c for c in p.label if c.isprintable() and c != "/").strip()
        if name and name not in (".", "..") and name not in links:
            links[name] = p.number
    return links
