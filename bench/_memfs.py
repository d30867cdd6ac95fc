"""A reference for bench/read.py: the smallest pyfuse3 filesystem, one image file served
from memory with the kernel's page cache kept (``keep_cache``, as ebsfs opens completed
snapshots).

Its second pass shows what the kernel's FUSE page cache costs on this machine, with no
daemon work at all: a warm read through any FUSE filesystem is bounded by it.

Run as ``python -m bench._memfs IMAGE MOUNTPOINT``; prints ``ready`` once mounted and
serves until unmounted.
"""

import errno
import stat
import sys
from typing import Any

import pyfuse3
import trio

_FILE_INODE = pyfuse3.ROOT_INODE + 1
_NAME = b"image"


class _Ops(pyfuse3.Operations):  # type: ignore[misc]
    def __init__(self, data: bytes) -> None:
        super().__init__()
        self.data = data

    async def getattr(self, inode: int, ctx: Any = None) -> Any:
        attr = pyfuse3.EntryAttributes()
        if inode == pyfuse3.ROOT_INODE:
            attr.st_mode = stat.S_IFDIR | 0o555
        elif inode == _FILE_INODE:
            attr.st_mode = stat.S_IFREG | 0o444
            attr.st_size = len(self.data)
        else:
            raise pyfuse3.FUSEError(errno.ENOENT)
        attr.st_ino = inode
        attr.attr_timeout = attr.entry_timeout = 3600
        return attr

    async def lookup(self, parent: int, name: bytes, ctx: Any = None) -> Any:
        if parent != pyfuse3.ROOT_INODE or name != _NAME:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return await self.getattr(_FILE_INODE)

    async def open(self, inode: int, flags: int, ctx: Any) -> Any:
        info = pyfuse3.FileInfo(fh=inode)
        info.keep_cache = True
        return info

    async def read(self, fh: int, off: int, size: int) -> bytes:
        return self.data[off:off + size]


def main(image: str, mountpoint: str) -> None:
    with open(image, "rb") as f:
        data = f.read()
    pyfuse3.init(_Ops(data), mountpoint, {"fsname=ebsfs-bench-memfs", "ro"})
    print("ready", flush=True)
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=False)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
