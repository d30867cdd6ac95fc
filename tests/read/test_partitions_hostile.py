"""Hostile partition tables: what the parser may cost, whatever the bytes say."""

from __future__ import annotations

import struct

import trio

from ebsfs.fs.partitions import SECTOR, read_partitions

MIB = 1 << 20


def _slot(kind: int, first: int, count: int) -> bytes:
    return bytes([0, 0, 0, 0, kind, 0, 0, 0]) + struct.pack("<II", first, count)


def _sector(*slots: bytes) -> bytes:
    body = b"".join(slots).ljust(64, b"\0")
    return bytes(446) + body + b"\x55\xaa"


def test_an_ebr_chain_of_empty_links_is_followed_a_bounded_number_of_times() -> None:
    """Every EBR holds no partition and links to the next sector: MAX_LOGICAL counted only
    partitions found, so the parser read one sector per EBR, the whole disk's worth (here
    100,000 reads; a 16 TiB draft could hold billions), again at each lookup of a draft's
    parts/ directory. Linux gives up after 100 links; so does this parser now."""
    links = 100_000
    extended = 1
    disk = bytearray(_sector(_slot(0x05, extended, links + 1)))
    for i in range(links):
        disk += _sector(_slot(0, 0, 0), _slot(0x05, i + 1, 1))
    size = len(disk) + 8 * MIB
    reads = 0

    async def read(offset: int, length: int) -> bytes:
        nonlocal reads
        reads += 1
        return bytes(disk[offset : offset + length]).ljust(length, b"\0")

    assert trio.run(read_partitions, read, size) == []
    assert reads <= 2 + 256


def test_logical_partitions_behind_empty_links_are_still_found_within_the_bound() -> None:
    """A few empty EBRs in a chain (as fdisk leaves after a deletion) do not hide what
    follows."""
    disk = bytearray(_sector(_slot(0x05, 1, 4000)))
    disk += _sector(_slot(0, 0, 0), _slot(0x05, 1, 1))  # EBR at LBA 1: empty
    disk += _sector(_slot(0x83, 100, 50), _slot(0x05, 2, 1))  # EBR at LBA 2
    disk += _sector(_slot(0x83, 300, 60))  # EBR at LBA 3: last
    size = 8 * MIB

    async def read(offset: int, length: int) -> bytes:
        return bytes(disk[offset : offset + length]).ljust(length, b"\0")

    parts = trio.run(read_partitions, read, size)
    assert [(p.number, p.start // SECTOR, p.size // SECTOR) for p in parts] == [
        (5, 102, 50),
        (6, 303, 60),
    ]
