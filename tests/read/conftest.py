"""Fixtures and image builders for the read tests."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
from pathlib import Path

from tests.mounting import mount_factory

__all__ = ["build_tree", "make_ext4", "mount_factory", "sha256_tree"]


def build_tree(root: Path, seed: int = 1) -> dict[str, str]:
    """Files of known content: a large one, many small ones, a sparse one; returns
    relative path -> sha256."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "big.bin").write_bytes(rng.randbytes(9 * 1024 * 1024 + 123))
    small = root / "small"
    small.mkdir()
    for i in range(300):
        sub = small / f"d{i % 10}"
        sub.mkdir(exist_ok=True)
        (sub / f"f{i}.txt").write_bytes(rng.randbytes(rng.randint(0, 6000)))
    with open(root / "sparse.img", "wb") as f:
        f.write(b"head" * 1000)
        f.seek(8 * 1024 * 1024)
        f.write(b"tail" * 1000)
    return sha256_tree(root)


def sha256_tree(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every regular file under ``root``."""
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            if p.is_file() and not p.is_symlink():
                out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    out.pop("lost+found", None)
    return out


def make_ext4(image: Path, tree: Path, size: int) -> None:
    """An ext4 image of ``size`` bytes holding ``tree`` (mkfs.ext4 -d)."""
    with open(image, "wb") as f:
        f.truncate(size)
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-b", "4096", "-d", str(tree), str(image)],
        check=True,
        capture_output=True,
    )


def partitioned_disk(image: Path, size: int, script: str) -> Path:
    """A sparse disk image of ``size`` bytes with the partition table an sfdisk ``script``
    describes (written to the file only: the kernel is not told)."""
    with open(image, "wb") as f:
        f.truncate(size)
    subprocess.run(
        ["sfdisk", "-q", "--no-reread", "--no-tell-kernel", str(image)],
        input=script,
        check=True,
        capture_output=True,
        text=True,
    )
    return image
