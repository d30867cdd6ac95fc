"""Making what a rename or a write did survive a crash of the machine."""

import os
from pathlib import Path


def fsync_path(path: Path | str) -> None:
    """fsync a file or directory by path (a directory: so its entries survive a crash)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
