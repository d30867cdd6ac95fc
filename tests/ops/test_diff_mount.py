"""ebsfs diff on a parent and a child written through the mount lists exactly the chunks
the child wrote."""

import json
import os
import subprocess
from pathlib import Path

from ebsfs.core.blocks import BLOCK_SIZE
from tests.ops.mounts import ebsfs, ebsfs_env, mounted
from tests.serverproc import LocalServer

MiB = 1 << 20


def _dd(src: Path, dst: Path, *, seek: int = 0, notrunc: bool = True) -> None:
    conv = "notrunc,fsync" if notrunc else "fsync"
    subprocess.run(
        [
            "dd",
            f"if={src}",
            f"of={dst}",
            "bs=64K",
            f"seek={seek}",
            "oflag=seek_bytes",
            f"conv={conv}",
            "status=none",
        ],
        check=True,
        timeout=120,
    )


def test_diff_lists_exactly_the_chunks_written(server: LocalServer, tmp_path: Path) -> None:
    env = ebsfs_env(server, tmp_path)
    parent_img = tmp_path / "parent.img"
    parent_data = os.urandom(4 * MiB)
    parent_img.write_bytes(parent_data)
    mnt = tmp_path / "mnt"
    with mounted(mnt, env=env):
        _dd(parent_img, mnt / "new" / "parent", notrunc=False)
        ebsfs("complete", str(mnt / "new" / "parent"), env=env)
        parent = os.path.basename(os.readlink(mnt / "by-name" / "parent"))

        child = mnt / "new" / "child"
        child.touch()
        subprocess.run(
            ["setfattr", "-n", "user.ebsfs.parent", "-v", parent, str(child)],
            check=True,
            timeout=30,
        )
        # Whole chunk 1; chunks 5-6 exactly; 10 bytes inside chunk 100; the last byte of
        # chunk 7 and the first of chunk 8 (one write straddling a boundary).
        writes = {
            1 * BLOCK_SIZE: os.urandom(BLOCK_SIZE),
            5 * BLOCK_SIZE: os.urandom(2 * BLOCK_SIZE),
            100 * BLOCK_SIZE + 1000: b"0123456789",
            # (a byte the parent does not hold there, or chunk 7 would not change)
            8 * BLOCK_SIZE - 1: bytes([parent_data[8 * BLOCK_SIZE - 1] ^ 0xFF]) + b"y",
        }
        for n, (offset, data) in enumerate(sorted(writes.items())):
            piece = tmp_path / f"piece{n}"
            piece.write_bytes(data)
            _dd(piece, child, seek=offset)
        ebsfs("complete", str(child), env=env)
        child_id = os.path.basename(os.readlink(mnt / "by-name" / "child"))

    proc = ebsfs("diff", "--json", parent, child_id, env=env)
    doc = json.loads(proc.stdout)
    ranges = [(r["first_block"], r["last_block"]) for r in doc["ranges"]]
    assert ranges == [(1, 1), (5, 8), (100, 100)]
    assert doc["changed_blocks"] == 6
    assert doc["changed_bytes"] == 6 * BLOCK_SIZE
    assert doc["ranges"][1]["offset"] == 5 * BLOCK_SIZE
    assert doc["ranges"][1]["size"] == 4 * BLOCK_SIZE

    table = ebsfs("diff", parent, child_id, env=env).stdout.splitlines()
    assert table[0].split() == ["BLOCKS", "OFFSET", "SIZE"]
    assert [line.split()[0] for line in table[1:-1]] == ["1", "5-8", "100"]
    assert table[-1] == "total: 6 blocks (3 MiB) in 3 ranges"

    # The reverse order reports the same blocks; a snapshot against itself, none.
    reverse = json.loads(ebsfs("diff", "--json", child_id, parent, env=env).stdout)
    assert [(r["first_block"], r["last_block"]) for r in reverse["ranges"]] == ranges
    same = ebsfs("diff", parent, parent, env=env).stdout
    assert same == "no changed blocks\n"
