"""Making what a rename or a write did survive a crash of the machine, and giving space back."""

import ctypes
import os
from pathlib import Path

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_libc = ctypes.CDLL(None, use_errno=True)
_fallocate = getattr(_libc, "fallocate", None)
if _fallocate is not None:
    _fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    _fallocate.restype = ctypes.c_int


def fsync_path(path: Path | str) -> None:
    """fsync a file or directory by path (a directory: so its entries survive a crash)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def punch_hole(fd: int, offset: int, length: int) -> int:
    """Turn ``[offset, offset+length)`` of a file into a hole (it reads as zeros and takes no
    space), keeping the file's size; 0, or the errno (EOPNOTSUPP where it cannot be done)."""
    if _fallocate is None:
        return 95  # EOPNOTSUPP: no fallocate in this libc
    if _fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length) != 0:
        return ctypes.get_errno() or 5
    return 0
